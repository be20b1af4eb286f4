"""An unexpected error at any phase of a job leaves it in a state the next run moves
forward, with the reason recorded (issue 10, #10). The error is injected by an adapter
subclass and a download client that raise; everything else is real HTTP on loopback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest

from pipeline.commands import load_checked_spec, run_spec
from pipeline.completion.poll import PollFollower
from pipeline.manifest.store import Manifest
from pipeline.models import Job, JobState, RemoteTask
from pipeline.providers.pixellabs import PixelLabsProvider
from pipeline.runner.scheduler import Scheduler
from pipeline.runner.session import open_session

from .conftest import FAKE_KEY, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}
JOBS = 2
S = JobState
MOVABLE = {S.PENDING, S.SUBMITTED, S.RUNNING, S.SUCCEEDED, S.UNKNOWN}
"""States the next run takes further by itself (`unknown`: with --resubmit-unknown)."""


class Injected(RuntimeError):
    """Stands for a bug or a local trouble nothing maps."""


class FaultyAdapter(PixelLabsProvider):
    phase = ""

    async def submit(self, job: Job) -> str:
        if self.phase == "before-submit":
            raise Injected("before the submit left")
        remote_id = await super().submit(job)
        if self.phase == "after-submit":
            raise Injected("after the task was created")
        return remote_id

    async def status(self, remote_id: str) -> RemoteTask:
        if self.phase == "status":
            raise Injected("while reading the status")
        return await super().status(remote_id)


async def _boom(request: httpx.Request) -> None:
    raise Injected("in the download")


def spec_file(tmp_path: Path, url: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: stuck
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs: {{base_url: "{url}", api_key: "${{PIXELLABS_API_KEY}}", concurrency: 2}}
        prompts: [a copper kettle, a wool hat]
        seeds: [1]
        run:
          poll: {{initial: 0.05s, max: 0.1s}}
    """,
    )


async def faulty_run(spec, phase: str) -> None:  # type: ignore[no-untyped-def]
    from pipeline.commands import iter_jobs

    with Manifest.open(spec.output.root, spec_name=spec.name) as manifest:
        manifest.add_jobs(iter_jobs(spec))
        async with (
            open_session(spec) as opened,
            httpx.AsyncClient(event_hooks={"request": [_boom]}) as broken,
        ):
            lane = opened.lanes["pixellabs"]
            adapter = FaultyAdapter(lane.settings, lane.adapter.client)
            adapter.phase = phase
            faulty = replace(lane, adapter=adapter, follower=PollFollower(adapter, spec.run))
            session = replace(opened, lanes={"pixellabs": faulty})
            if phase == "download":
                session = replace(session, downloads=broken)
            summary = await Scheduler(spec, manifest, session).run()
    assert summary.errors, "the injected error was not seen"


@pytest.mark.parametrize("phase", ["before-submit", "after-submit", "status", "download"])
def test_an_unexpected_error_leaves_every_job_movable_with_its_reason(
    tmp_path, emulator_factory, phase
):
    emulator = emulator_factory(task_seconds=0.05)
    spec = load_checked_spec(spec_file(tmp_path, emulator.urls["pixellabs"]), env=ENV)
    anyio.run(faulty_run, spec, phase)

    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records())
    assert len(records) == JOBS
    for record in records:
        assert record.state in MOVABLE, (phase, record.state)
        assert "Injected" in (record.error or ""), (phase, record)
    if phase.endswith("submit"):  # the task may exist: never resubmitted blindly
        assert {r.state for r in records} == {S.UNKNOWN}

    again = run_spec(spec, quiet=True, handle_signals=False)
    if not phase.endswith("submit"):
        assert again.complete and again.submitted == 0, again.states
    assert len(emulator.ledger("pixellabs")) == (0 if phase == "before-submit" else JOBS)
