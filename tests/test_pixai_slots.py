"""PixAI allows 10 tasks waiting or running per account. When other tasks on the same key
hold every slot (another client, the tasks of ``unknown`` jobs), its refusal — in
whatever words — means "not now": jobs wait for a slot and finish, none fails."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.commands import run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import EmulatorProcess
from .test_pixai_e2e import KEY, pixai_spec

CREATE = (
    "mutation createGenerationTask($parameters: JSONObject!) "
    "{ createGenerationTask(parameters: $parameters) { id status } }"
)


CANCEL = "mutation cancelGenerationTask($id: ID!) { cancelGenerationTask(id: $id) { id status } }"


def occupy_every_slot(url: str) -> list[str]:
    """Ten tasks created outside the run, with the run's key."""
    ids = []
    for n in range(10):
        answer = httpx.post(
            f"{url}/graphql",
            json={"query": CREATE, "variables": {"parameters": {"prompts": f"other client {n}"}}},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        ids.append(answer.json()["data"]["createGenerationTask"]["id"])
    refused = httpx.post(
        f"{url}/graphql",
        json={"query": CREATE, "variables": {"parameters": {"prompts": "one too many"}}},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ).json()
    assert refused["errors"], refused  # the account really is full
    return ids


def free_slots_once_refused(emulator: EmulatorProcess, outside: list[str]) -> None:
    """Once the run has been refused a few times, the other client cancels its tasks."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        created = emulator.admin("pixai", "stats")["requests"]["graphql createGenerationTask"]
        if created >= 11 + 10:  # ours: ten outside, the check, and ten refusals at least
            break
        time.sleep(0.05)
    for task_id in outside:
        httpx.post(
            f"{emulator.urls['pixai']}/graphql",
            json={"query": CANCEL, "variables": {"id": task_id}},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        ).raise_for_status()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("TOO_MANY_TASKS", "Too many tasks in progress"),
        (None, "You already have 10 generations pending or running"),
        ("CONCURRENT_TASK_LIMIT", "Limit reached"),
        ("E_QUOTA_2", "Maximum number of running tasks exceeded, try again later"),
    ],
)
def test_a_full_account_makes_jobs_wait_for_a_slot_never_fail(
    tmp_path: Path, emulator_factory: Any, code: str | None, message: str
) -> None:
    emulator = emulator_factory(
        ["pixai"], task_seconds=600, task_limit_code=code, task_limit_message=message
    )
    url = emulator.urls["pixai"]
    outside = occupy_every_slot(url)
    emulator.configure("pixai", task_seconds=0.3)  # the run's own tasks are quick
    spec = pixai_spec(tmp_path, url, seeds="[1, 2, 3]")
    freeing = threading.Thread(target=free_slots_once_refused, args=(emulator, outside))

    freeing.start()
    try:
        summary = run_spec(spec, quiet=True, handle_signals=False)
    finally:
        freeing.join()

    with Manifest.open(spec.output.root, readonly=True) as manifest:
        states = Counter(r.state for r in manifest.iter_records())
    assert states == {JobState.DONE: 6}, (states, summary.errors)
    charges = emulator.ledger("pixai")
    assert len(charges) == 16  # the ten outside tasks and one per job
    ours = [c for c in charges if c["task_id"] not in outside]
    assert len({str(c["body"]) for c in ours}) == 6
    assert [n for n in summary.notes if "task slot" in n] == summary.notes[:1], summary.notes
    assert len(summary.notes) == 1 and message in summary.notes[0]  # said once, in its words
