"""The invariants of the stateful reliability test catch what they claim to catch."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.models import TRANSITIONS

from .stateful_checks import (
    ALLOWED_EDGES,
    PNG_END,
    RunWindow,
    Snapshot,
    World,
    check_charges,
    check_events,
    check_outputs,
    check_remote_ids,
)


def test_every_edge_the_code_allows_is_an_allowed_edge():
    """A new edge in ``models.TRANSITIONS`` must be judged and written into the test's
    own list (``stateful_checks.ALLOWED_EDGES``), not slip in unseen."""
    code = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert sorted(code - ALLOWED_EDGES) == []


@pytest.mark.parametrize(
    "edge",
    [
        ("done", "pending"),
        ("done", "downloading"),
        ("succeeded", "running"),
        ("downloading", "submitted"),
        ("submitted", "submitting"),
        ("submitted", "pending"),
        ("running", "pending"),
        ("unknown", "submitting"),
    ],
)
def test_backward_moves_are_not_allowed(edge):
    assert edge not in ALLOWED_EDGES


def world(tmp_path: Path, *runs: RunWindow) -> World:
    return World(root=tmp_path, providers=["p"], prompts=["a"], runs=list(runs))


def event(n: int, edge: tuple[str, str], at: float, detail: str | None = None) -> dict[str, Any]:
    return {"id": n, "from_state": edge[0], "to_state": edge[1], "at": at, "detail": detail}


def snapshot(state: str, events: list[dict[str, Any]], remote_id: str | None = None) -> Snapshot:
    job = {"id": "j", "provider": "p", "params": '{"prompt": "a"}', "state": state}
    return Snapshot({"j": {**job, "remote_id": remote_id}}, {"j": events}, {})


def test_events_must_chain_and_resets_need_their_option(tmp_path):
    plain = RunWindow(start=time.time() - 10, end=time.time())
    path = ["pending", "submitting", "unknown", "pending", "submitting"]
    steps = enumerate(itertools.pairwise(path))
    events = [event(i, edge, time.time() - 5) for i, edge in steps]
    problems = check_events(world(tmp_path, plain), snapshot("submitted", events))
    assert any("needs --resubmit_unknown" in p for p in problems), problems
    assert any("events end in submitting" in p for p in problems), problems


def test_events_outside_every_run_are_reported(tmp_path):
    early = RunWindow(start=time.time() - 100, end=time.time() - 90)
    events = [event(1, ("pending", "submitting"), time.time())]
    problems = check_events(world(tmp_path, early), snapshot("submitting", events))
    assert problems == [f"job j event 1 pending → submitting: {NO_RUN}"]


NO_RUN = "made while none of the test's runs was running"


def test_a_second_charge_needs_a_reset_the_user_asked_for(tmp_path):
    charges = {"p": [{"task_id": "t1", "body": {"prompt": "a"}}] * 2}
    timed_out = [
        event(1, ("pending", "submitting"), 0),
        event(2, ("submitting", "submitted"), 0),
        event(3, ("submitted", "timed_out"), 0),
        event(4, ("timed_out", "pending"), 0),
    ]
    assert check_charges(world(tmp_path), snapshot("pending", timed_out), charges)
    unknown = [event(1, ("pending", "submitting"), 0), event(2, ("submitting", "unknown"), 0)]
    unknown.append(event(3, ("unknown", "pending"), 0))
    assert check_charges(world(tmp_path), snapshot("pending", unknown), charges) == []


def test_a_remote_id_lost_without_a_reset_is_reported(tmp_path):
    seen = world(tmp_path)
    seen.remote_ids["j"] = "r1"
    problems = check_remote_ids(seen, snapshot("failed", [], remote_id=None))
    assert problems and "lost remote id r1" in problems[0]


def test_a_done_output_must_be_whole(tmp_path):
    whole = b"\x89PNG" + b"x" * 20 + PNG_END
    (tmp_path / "a.png").write_bytes(whole[:-4])  # cut short, then "verified" by itself
    cut = whole[:-4]
    output = {"idx": 0, "path": "a.png", "size": len(cut)}
    output["sha256"] = hashlib.sha256(cut).hexdigest()
    state = Snapshot({"j": {"state": "done"}}, {}, {"j": [output]})
    assert check_outputs(tmp_path, state) == [
        "job j output 0 (a.png): a PNG cut short (no IEND): a partial body was promoted"
    ]


def test_a_paid_task_must_be_named_by_its_job_unless_it_was_unknown(tmp_path):
    charges = {"p": [{"task_id": "t2", "body": {"prompt": "a"}}]}
    done = [event(1, ("pending", "submitting"), 0), event(2, ("submitting", "submitted"), 0)]
    problems = check_charges(world(tmp_path), snapshot("submitted", done, "p/t1"), charges)
    assert problems and "task t2 of job j is named nowhere" in problems[0]
    assert check_charges(world(tmp_path), snapshot("submitted", done, "p/t2"), charges) == []
