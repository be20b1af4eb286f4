"""AceData Pixverse end to end over real HTTP on loopback: spec → scheduler → emulator
(a separate process) → verified MP4s, with batch status rounds."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import anyio
import av

from pipeline.commands import load_checked_spec, run_spec
from pipeline.completion.batch import BatchFollower
from pipeline.emulators.pixverse import BLOCKING_ROUTE, SUBMIT_ROUTE, tasks_route
from pipeline.manifest.store import Manifest
from pipeline.matrix import iter_jobs
from pipeline.models import JobState, Spec
from pipeline.runner.scheduler import RunOptions, RunSummary, Scheduler
from pipeline.runner.session import open_session

from .conftest import EmulatorProcess, write_spec

KEY = "3d6e4c2a-0b1f-4b7e-9a55-6f0c2f1e8d11"
ENV = {"ACEDATA_API_KEY": KEY}
QUIET_CALLBACKS = {"callback_retry_delays": [], "callback_timeout": 2}


def pixverse_spec(
    tmp_path: Path,
    url: str,
    *,
    seeds: str,
    concurrency: int = 4,
    matrix: str = "",
    poll: str = "{initial: 0.2s, max: 0.6s}",
) -> Spec:
    path = write_spec(
        tmp_path,
        f"""
        name: pixverse-e2e
        output:
          root: {tmp_path / "out"}
        providers:
          acedata:
            base_url: {url}
            api_key: ${{ACEDATA_API_KEY}}
            concurrency: {concurrency}
            params: {{quality: 360p, duration: 5}}
        prompts:
          - a paper boat drifting down a rainy street
          - a lighthouse in a storm
        {matrix}
        seeds: {seeds}
        run:
          poll: {poll}
          deadline: 2m
        """,
    )
    return load_checked_spec(path, env=ENV)


def stats(emulator: EmulatorProcess) -> dict[str, int]:
    requests: dict[str, int] = emulator.admin("acedata", "stats")["requests"]
    return requests


def test_run_completes_with_verified_videos(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["acedata"], task_seconds=0.5, **QUIET_CALLBACKS)
    spec = pixverse_spec(
        tmp_path,
        emulator.urls["acedata"],
        seeds="[1, 2]",
        matrix='matrix: {aspect_ratio: ["16:9", "9:16"]}',
    )

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    assert summary.submitted == 8
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
    for record in records:
        (output,) = record.outputs
        path = spec.output.root / output.path
        assert path.suffix == ".mp4" and output.content_type == "video/mp4"
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == output.sha256
        with av.open(io.BytesIO(data)) as container:
            frame = next(container.decode(video=0))
        portrait = record.job.params["aspect_ratio"] == "9:16"
        assert (frame.width < frame.height) == portrait
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["remote_id"] == record.remote_id
        assert KEY not in json.dumps(sidecar)
    requests = stats(emulator)
    assert requests.get(BLOCKING_ROUTE, 0) == 0
    assert requests.get(tasks_route("retrieve"), 0) == 0
    assert requests[SUBMIT_ROUTE] == 8
    assert emulator.admin("acedata", "stats")["downloads_with_auth"] == 0

    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.submitted == 0 and len(emulator.ledger("acedata")) == 8


def test_failed_tasks_carry_the_provider_reason(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["acedata"], task_seconds=0.3, failure_rate=1.0, **QUIET_CALLBACKS)
    spec = pixverse_spec(tmp_path, emulator.urls["acedata"], seeds="[1]")
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.FAILED) == 2
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        failures = manifest.failures()
    reasons = [failure.error or "" for failure in failures]
    assert all(reason.startswith(("forbidden: ", "api_error: ")) for reason in reasons), reasons


def test_bad_key_stops_the_lane_without_paying(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["acedata"], task_seconds=0.3, **QUIET_CALLBACKS)
    path = tmp_path / "broke"
    path.mkdir()
    spec = load_checked_spec(
        write_spec(
            path,
            f"""
            name: broke
            output: {{root: {path / "out"}}}
            providers:
              acedata:
                base_url: {emulator.urls["acedata"]}
                api_key: broke-account
            prompts: [a fox]
            """,
        )
    )
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert "used_up" in summary.stopped["acedata"]
    assert summary.count(JobState.PENDING) == 1
    assert emulator.ledger("acedata") == []


async def run_counting_rounds(spec: Spec) -> tuple[RunSummary, int]:
    with Manifest.open(spec.output.root, spec_name=spec.name) as manifest:
        manifest.add_jobs(iter_jobs(spec))
        async with open_session(spec) as session:
            options = RunOptions(handle_signals=False)
            summary = await Scheduler(spec, manifest, session, options=options).run()
            follower = session.lanes["acedata"].follower
            assert isinstance(follower, BatchFollower)
            return summary, follower.rounds


def test_fifty_in_flight_cost_one_request_per_round(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(
        ["acedata"], task_seconds=1.5, task_jitter=0.0, render=False, **QUIET_CALLBACKS
    )
    seeds = "{start: 1, count: 25}"
    spec = pixverse_spec(tmp_path, emulator.urls["acedata"], seeds=seeds, concurrency=50)

    summary, rounds = anyio.run(run_counting_rounds, spec)

    assert summary.complete and summary.submitted == 50
    requests = stats(emulator)
    assert requests[tasks_route("retrieve_batch")] == rounds
    assert 2 <= rounds <= 25  # polling each task would cost 50 per round
    assert requests.get(tasks_route("retrieve"), 0) == 0
    assert requests.get(BLOCKING_ROUTE, 0) == 0
    assert len(emulator.ledger("acedata")) == 50


def test_callbacks_wake_the_round_early(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["acedata"], task_seconds=0.3, **QUIET_CALLBACKS)
    slow_polls = "{initial: 30s, max: 30s}"  # without hints nothing would finish for 30 s
    spec = pixverse_spec(tmp_path, emulator.urls["acedata"], seeds="[1, 2]", poll=slow_polls)

    summary, rounds = anyio.run(run_counting_rounds, spec)

    assert summary.complete and summary.submitted == 4
    assert summary.elapsed < 20
    charges = emulator.ledger("acedata")
    assert all("/hooks/" in charge["body"]["callback_url"] for charge in charges)
    callbacks = emulator.admin("acedata", "callbacks")["counts"]
    assert callbacks["delivered"] == 4
    assert stats(emulator)[tasks_route("retrieve_batch")] == rounds <= 4
