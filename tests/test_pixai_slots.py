"""PixAI allows 10 tasks waiting or running per account. When other tasks on the same key
hold every slot (another client, the tasks of ``unknown`` jobs), its refusal — in
whatever words — means "not now": jobs wait for a slot and finish, none fails."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.commands import run_spec
from pipeline.manifest import Manifest
from pipeline.models import JobState

from .test_pixai_e2e import KEY, pixai_spec

CREATE = (
    "mutation createGenerationTask($parameters: JSONObject!) "
    "{ createGenerationTask(parameters: $parameters) { id status } }"
)


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
        ["pixai"], task_seconds=2.0, task_limit_code=code, task_limit_message=message
    )
    url = emulator.urls["pixai"]
    outside = occupy_every_slot(url)
    emulator.configure("pixai", task_seconds=0.3)  # the run's own tasks are quick
    spec = pixai_spec(tmp_path, url, seeds="[1, 2, 3]")

    summary = run_spec(spec, quiet=True, handle_signals=False)

    with Manifest.open(spec.output.root, readonly=True) as manifest:
        states = Counter(r.state for r in manifest.iter_records())
    assert states == {JobState.DONE: 6}, (states, summary.errors)
    charges = emulator.ledger("pixai")
    assert len(charges) == 16  # the ten outside tasks and one per job
    ours = [c for c in charges if c["task_id"] not in outside]
    assert len({str(c["body"]) for c in ours}) == 6
    refusals = Counter(emulator.admin("pixai", "stats")["requests"])
    assert refusals["graphql createGenerationTask"] > 6  # it really was refused first
