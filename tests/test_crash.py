"""The runner is killed with SIGKILL mid-run; the rerun finishes every job and the
emulator's ledger shows that no job was submitted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest.store import Manifest

from .conftest import FAKE_KEY, run_cli, write_spec

pytestmark = pytest.mark.slow

JOBS = 24


def crash_spec(tmp_path: Path, url: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: crash
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 4
        prompts:
          - text: "crash test subject {{n}}"
            vars: {{n: [1, 2, 3, 4, 5, 6]}}
        matrix:
          aspect_ratio: ["1:1", "4:3"]
        seeds: [10, 20]
        run:
          poll: {{initial: 0.1s, max: 0.3s}}
    """,
    )


def counts(root: Path, provider: str = "pixellabs") -> dict[str, int]:
    try:
        with Manifest.open(root, readonly=True) as manifest:
            return manifest.counts().get(provider, {})
    except ManifestError:  # not created yet, or its schema is being written right now
        return {}


def start_runner(
    spec: Path, cwd: Path, env: dict[str, str], *, capture: bool
) -> subprocess.Popen[str]:
    """`pipeline run SPEC --quiet` in its own process, to be stopped by a signal."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        cwd=cwd, env=env, text=True, stdout=output, stderr=output,
    )  # fmt: skip


def kill_between_submits(process: subprocess.Popen[str], root: Path) -> dict[str, int]:
    """Freeze the runner (SIGSTOP) at a moment when some jobs are done and no submit is
    half-recorded, then SIGKILL it. A submit caught between request and commit has an
    unknowable outcome (tested separately: it becomes `unknown`)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = counts(root)
        if state.get("done", 0) >= 4 and state.get("pending", 0) > 0:
            os.kill(process.pid, signal.SIGSTOP)
            frozen = counts(root)
            if frozen.get("submitting", 0) == 0:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return frozen
            os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"never reached a kill point: {counts(root)}")


def test_sigkill_mid_run_then_rerun_finishes_without_paying_twice(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.8)
    spec = crash_spec(tmp_path, emulator.urls["pixellabs"])
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    runner = start_runner(spec, tmp_path, env, capture=False)
    at_kill = kill_between_submits(runner, root)
    assert at_kill.get("done", 0) < JOBS, at_kill

    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    assert counts(root) == {"done": JOBS}
    ledger = emulator.ledger("pixellabs")
    submitted = Counter(
        (e["body"]["prompt"], e["body"]["seed"], e["body"]["aspectRatio"]) for e in ledger
    )
    assert len(submitted) == JOBS
    assert max(submitted.values()) == 1, [k for k, n in submitted.items() if n > 1]
    assert not list(root.rglob("*.part"))


def test_sigterm_stops_cleanly_and_rerun_continues(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.8)
    spec = crash_spec(tmp_path, emulator.urls["pixellabs"])
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    runner = start_runner(spec, tmp_path, env, capture=True)
    deadline = time.monotonic() + 120
    while counts(root).get("done", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, out + err
    assert "interrupted" in out
    state = counts(root)
    assert state.get("submitting", 0) == 0 and state.get("unknown", 0) == 0, state
    assert (root / "manifest.jsonl").exists()

    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert counts(root) == {"done": JOBS}
    assert len(emulator.ledger("pixellabs")) == JOBS


def test_resumed_webhook_jobs_are_checked_at_once(tmp_path, emulator_factory):
    """Callbacks for tasks of a stopped run went to that run's receiver: the resumed run
    looks at each in-flight task at once instead of waiting for the safety poll (10 s)."""
    emulator = emulator_factory(["apixo"], task_seconds=1.0)
    spec = write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          apixo:
            base_url: "{emulator.urls["apixo"]}"
            api_key: "${{PIXELLABS_API_KEY}}"
            concurrency: 8
            params: {{model: nano-banana}}
            options: {{completion: webhook}}
        prompts: [a, b, c, d, e, f, g, h]
        run:
          poll: {{initial: 0.1s, max: 0.5s}}
    """,
    )
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    runner = start_runner(spec, tmp_path, env, capture=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = counts(root, "apixo")
        if state.get("submitted", 0) + state.get("running", 0) >= 4:
            break
        time.sleep(0.02)
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=60)
    time.sleep(1.5)  # the tasks finish while nobody is listening

    started = time.monotonic()
    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert time.monotonic() - started < 8
    assert counts(root, "apixo") == {"done": 8}
    assert len(emulator.ledger("apixo")) == 8
