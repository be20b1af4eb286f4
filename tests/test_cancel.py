"""``pipeline cancel`` on the emulators over HTTP (issue 13, item 6): PixAI tasks in flight
are stopped at the API and their remote ids kept; a provider with no cancel keeps its
tasks followed; jobs never submitted are marked cancelled, left by a plain run and taken
up again by ``run --retry-failed``; a run holding the output folder makes cancel refuse."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pipeline.manifest import hold_run_lock
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, run_cli, write_spec
from .test_crash import start_runner

ENV = {"PIXELLABS_API_KEY": FAKE_KEY, "PIXAI_API_KEY": FAKE_KEY}


def spec_for(tmp_path: Path, urls: dict[str, str]) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: cancel
        output:
          root: {tmp_path / "out"}
        providers:
          pixai: {{base_url: "{urls["pixai"]}", api_key: "${{PIXAI_API_KEY}}", concurrency: 1,
                  options: {{completion: poll}}}}
          pixellabs: {{base_url: "{urls["pixellabs"]}", api_key: "${{PIXELLABS_API_KEY}}",
                      concurrency: 1}}
        prompts: [a lighthouse at dusk, a paper boat, a red kite]
        seeds: [1]
        run:
          poll: {{initial: 0.2s, max: 0.5s}}
        """,
    )


def records(root: Path) -> dict[str, tuple[str, JobState, str | None]]:
    with Manifest.open(root, readonly=True) as manifest:
        return {r.job.id: (r.job.provider, r.state, r.remote_id) for r in manifest.iter_records()}


def wait_in_flight(root: Path) -> None:
    """Until each provider has one task in flight (concurrency 1: the others pending)."""
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        try:
            found = records(root).values()
        except Exception:  # not created yet
            found = []  # type: ignore[assignment]
        flying = {p for p, state, _ in found if state in (JobState.SUBMITTED, JobState.RUNNING)}
        if flying == {"pixai", "pixellabs"}:
            return
        time.sleep(0.1)
    raise AssertionError("the run did not get a task in flight per provider")


def test_cancel_stops_pixai_keeps_the_rest_followed_and_marks_pending(tmp_path, emulator_factory):
    emulator = emulator_factory(["pixai", "pixellabs"], task_seconds=600, render=False)
    emulator.configure("pixellabs", task_seconds=15)  # outlives the cancel, then collected
    spec = spec_for(tmp_path, emulator.urls)
    root = tmp_path / "out"
    runner = start_runner(spec, tmp_path, {**os.environ, **ENV}, capture=False)
    try:
        wait_in_flight(root)
    finally:
        runner.send_signal(signal.SIGTERM)  # ends with the tasks in flight, recorded
        runner.wait(timeout=60)
    before = records(root)

    cancelled = run_cli("cancel", str(spec), cwd=tmp_path, env=ENV)
    assert cancelled.returncode == 0, cancelled.stderr
    after = records(root)
    pixai_flying = [j for j, (p, s, _) in before.items() if p == "pixai" and s.value in
                    ("submitted", "running")]  # fmt: skip
    for job in pixai_flying:
        assert after[job][1] is JobState.CANCELLED
        assert after[job][2] == before[job][2]  # the paid remote id is kept
        assert before[job][2] in cancelled.stdout
    for job, (provider, state, remote) in before.items():
        if provider == "pixellabs" and state in (JobState.SUBMITTED, JobState.RUNNING):
            assert after[job] == (provider, state, remote)  # no cancel at that API: followed
        if state is JobState.PENDING:
            assert after[job][1] is JobState.CANCELLED and after[job][2] is None
    assert "pixellabs API has no cancel" in cancelled.stdout
    cancels = emulator.admin("pixai", "stats")
    assert "cancelGenerationTask" in str(cancels), cancels

    # A plain run leaves the cancelled jobs; the pixellabs task is collected once done.
    emulator.configure("pixellabs", task_seconds=0.1)  # for the tasks submitted from now
    emulator.configure("pixai", task_seconds=0.1)
    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=ENV)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    states = {job: state for job, (_, state, _) in records(root).items()}
    assert {s for j, s in states.items() if after[j][1] is JobState.CANCELLED} == {
        JobState.CANCELLED
    }
    # --retry-failed takes them all up again.
    retried = run_cli("run", str(spec), "--quiet", "--retry-failed", cwd=tmp_path, env=ENV)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert {state for _, state, _ in records(root).values()} == {JobState.DONE}


def test_cancel_refuses_while_a_run_holds_the_folder(tmp_path):
    urls = {"pixai": "http://127.0.0.1:9", "pixellabs": "http://127.0.0.1:9"}
    spec = spec_for(tmp_path, urls)
    root = tmp_path / "out"
    with Manifest.open(root):
        pass
    with hold_run_lock(root):
        refused = run_cli("cancel", str(spec), cwd=tmp_path, env=ENV)
    assert refused.returncode == 1, refused.stderr
    assert "in use by another pipeline run" in refused.stderr, refused.stderr


def test_cancel_reaches_the_spec_in_process_emulator(tmp_path):
    """`emulate:` entries: cancel serves the emulator from the folder's saved state, as
    the run did, so the task it left in flight is found and stopped."""
    spec = write_spec(
        tmp_path,
        f"""
        name: cancel-emulated
        output: {{root: {tmp_path / "out"}}}
        providers:
          pixai: {{emulate: {{task_seconds: 600, render: false}}, concurrency: 1,
                  options: {{completion: poll}}}}
        prompts: [a lighthouse at dusk, a paper boat]
        seeds: [1]
        """,
    )
    root = tmp_path / "out"
    runner = start_runner(spec, tmp_path, dict(os.environ), capture=False)
    try:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            try:
                found = records(root).values()
            except Exception:  # not created yet
                found = []  # type: ignore[assignment]
            if any(state in (JobState.SUBMITTED, JobState.RUNNING) for _, state, _ in found):
                break
            time.sleep(0.1)
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)
    cancelled = run_cli("cancel", str(root), cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "stopped 1 remote task(s)" in cancelled.stdout, cancelled.stdout
    assert "cancelled 1 job(s) not yet submitted" in cancelled.stdout
    assert {state for _, state, _ in records(root).values()} == {JobState.CANCELLED}
