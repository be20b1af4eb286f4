"""The deadline bounds waiting; it never replaces asking the provider (issue 10, #1 and
the download half of #10). Charges are counted on the emulator's ledger."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import httpx

from pipeline.commands import load_checked_spec, run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, run_cli, write_spec
from .test_crash import counts, start_runner

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}


def two_jobs(tmp_path: Path, url: str, *, deadline: str, poll: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: deadline
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs: {{base_url: "{url}", api_key: "${{PIXELLABS_API_KEY}}", concurrency: 2}}
        prompts: [a lighthouse at dusk, a paper boat]
        seeds: [1]
        run:
          poll: {poll}
          deadline: {deadline}
    """,
    )


def states(root: Path) -> dict[str, JobState]:
    with Manifest.open(root, readonly=True) as manifest:
        return {r.job.id: r.state for r in manifest.iter_records()}


def test_resume_after_the_deadline_asks_first_and_downloads_what_finished(
    tmp_path, emulator_factory
):
    """Killed with both tasks in flight; rerun long after the deadline: they finished
    remotely meanwhile, so they are downloaded, and --retry-failed pays for nothing."""
    emulator = emulator_factory(task_seconds=0.5)
    spec = two_jobs(
        tmp_path, emulator.urls["pixellabs"], deadline="3s", poll="{initial: 30s, max: 30s}"
    )
    root = tmp_path / "out"
    env = {**os.environ, **ENV}
    runner = start_runner(spec, tmp_path, env, capture=False)
    give_up = time.monotonic() + 60
    while counts(root).get("submitted", 0) + counts(root).get("running", 0) < 2:
        assert time.monotonic() < give_up and runner.poll() is None, counts(root)
        time.sleep(0.02)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    time.sleep(3.5)  # past the 3 s deadline; the 0.5 s tasks are long finished

    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert counts(root) == {"done": 2}
    retried = run_cli("run", str(spec), "--quiet", "--retry-failed", cwd=tmp_path, env=env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert len(emulator.ledger("pixellabs")) == 2


def test_retry_failed_asks_a_timed_out_task_before_paying_for_it_again(tmp_path, emulator_factory):
    """Timed out while still running (PixelLabs cannot cancel), finished later:
    --retry-failed downloads it from the recorded task instead of submitting anew."""
    emulator = emulator_factory(task_seconds=4.0)
    path = two_jobs(
        tmp_path, emulator.urls["pixellabs"], deadline="2s", poll="{initial: 0.05s, max: 0.1s}"
    )
    spec = load_checked_spec(path, env=ENV)
    first = run_spec(spec, quiet=True, handle_signals=False)
    assert first.count(JobState.TIMED_OUT) == 2, first.states
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        timed_out = manifest.failures()
    assert all(r.remote_id and "still running" in (r.error or "") for r in timed_out)

    time.sleep(2.5)  # the remote tasks finish (4 s after their submit)
    retried = run_spec(spec, quiet=True, handle_signals=False, retry_failed=True)
    assert retried.complete, retried.states
    assert retried.submitted == 0
    assert len(emulator.ledger("pixellabs")) == 2


def test_a_deadline_during_a_download_leaves_the_job_to_the_next_run(tmp_path, emulator_factory):
    """The file host stalls past the deadline: the job goes back to `succeeded` with
    the reason, never stays `downloading`, and the rerun fetches it without a submit."""
    emulator = emulator_factory(task_seconds=0.05, download_delay=10.0)
    path = two_jobs(
        tmp_path, emulator.urls["pixellabs"], deadline="3s", poll="{initial: 0.05s, max: 0.1s}"
    )
    spec = load_checked_spec(path, env=ENV)
    first = run_spec(spec, quiet=True, handle_signals=False)
    assert set(states(spec.output.root).values()) == {JobState.SUCCEEDED}, first.states
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        for record in manifest.iter_records():
            last = manifest.events(record.job.id)[-1]
            assert last.to_state is JobState.SUCCEEDED and "deadline" in (last.detail or "")

    emulator.configure("pixellabs", download_delay=0.0)
    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.complete and again.submitted == 0, again.states
    assert len(emulator.ledger("pixellabs")) == 2


async def run_for(spec, seconds: float, clock=time.time) -> None:  # type: ignore[no-untyped-def]
    """One run of ``spec`` interrupted after ``seconds`` (as Ctrl-C would), its
    scheduler reading ``clock``."""
    from pipeline.commands import iter_jobs
    from pipeline.runner.scheduler import RunOptions, Scheduler
    from pipeline.runner.session import open_session

    with Manifest.open(spec.output.root, spec_name=spec.name) as manifest:
        manifest.add_jobs(iter_jobs(spec))
        async with open_session(spec) as session:
            scheduler = Scheduler(
                spec, manifest, session, options=RunOptions(handle_signals=False), clock=clock
            )
            with anyio.move_on_after(seconds):
                await scheduler.run()


def test_a_task_still_running_after_the_deadline_is_asked_then_cancelled(
    tmp_path, emulator_factory
):
    """Resumed two hours later (an injected clock) while the PixAI tasks still run: each
    is asked first, then timed out and cancelled, which --retry-failed may resubmit."""
    emulator = emulator_factory(["pixai"], task_seconds=60)
    path = write_spec(
        tmp_path,
        f"""
        name: cancel
        output:
          root: {tmp_path / "out"}
        providers:
          pixai: {{base_url: "{emulator.urls["pixai"]}", api_key: k, options: {{completion: poll}}}}
        prompts: [a moth, a lamp]
        run:
          poll: {{initial: 30s, max: 30s}}
          deadline: 10m
    """,
    )
    spec = load_checked_spec(path)
    root = spec.output.root
    anyio.run(run_for, spec, 3.0)
    assert set(states(root).values()) <= {JobState.SUBMITTED, JobState.RUNNING}
    before = emulator.admin("pixai", "stats")["requests"].get("graphql getTaskById", 0)

    anyio.run(run_for, spec, 30.0, lambda: time.time() + 7200)
    after = emulator.admin("pixai", "stats")["requests"].get("graphql getTaskById", 0)
    assert after - before >= 2  # each task was asked about before it was timed out
    with Manifest.open(root, readonly=True) as manifest:
        ended = manifest.failures()
    assert [r.state for r in ended] == [JobState.TIMED_OUT] * 2
    assert all("still running when asked; remote task cancelled" in (r.error or "") for r in ended)
    assert {r.failure for r in ended} == {"remote"}
    assert len(emulator.ledger("pixai")) == 2


def test_retry_failed_submits_anew_once_the_provider_no_longer_knows_the_task(
    tmp_path, emulator_factory
):
    """Timed out, then the provider forgot the task (404 on status): asked first, then
    submitted anew in the same run."""
    emulator = emulator_factory(task_seconds=30)
    path = two_jobs(
        tmp_path, emulator.urls["pixellabs"], deadline="2s", poll="{initial: 0.05s, max: 0.1s}"
    )
    spec = load_checked_spec(path, env=ENV)
    first = run_spec(spec, quiet=True, handle_signals=False)
    assert first.count(JobState.TIMED_OUT) == 2, first.states
    httpx.post(f"{emulator.urls['pixellabs']}/_emulator/reset", timeout=10).raise_for_status()
    emulator.configure("pixellabs", task_seconds=0.05)

    retried = run_spec(spec, quiet=True, handle_signals=False, retry_failed=True)
    assert retried.complete and retried.submitted == 2, retried.states
    assert len(emulator.ledger("pixellabs")) == 2  # the new submits (the reset forgot the old)
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        for record in manifest.iter_records():
            details = [e.detail or "" for e in manifest.events(record.job.id)]
            assert any("status: 404" in d for d in details), details


def test_a_run_interrupted_mid_download_leaves_no_job_downloading(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.05, download_delay=30.0)
    path = two_jobs(
        tmp_path, emulator.urls["pixellabs"], deadline="5m", poll="{initial: 0.05s, max: 0.1s}"
    )
    spec = load_checked_spec(path, env=ENV)
    anyio.run(run_for, spec, 3.0)  # Ctrl-C while both downloads wait on the file host
    assert set(states(spec.output.root).values()) == {JobState.SUCCEEDED}

    emulator.configure("pixellabs", download_delay=0.0)
    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.complete and again.submitted == 0, again.states
