"""A server asking to wait a day (``Retry-After: 86400``) neither freezes a run nor stops
status queries of tasks already paid for; the wait is cut to ``run.max_retry_after`` and
the run says so once. Real processes, real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestError
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY
from .test_run_e2e import pixellabs_spec

SUBMIT_ROUTE = "POST /v1/generate"
A_DAY = 86400


def start_run(spec: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def states(root: Path) -> Counter[JobState]:
    path = root / "manifest.sqlite"
    if not path.exists() or path.stat().st_size == 0:
        return Counter()  # never opened before the run made it
    try:
        with Manifest.open(root, readonly=True) as manifest:
            return Counter(record.state for record in manifest.iter_records())
    except ManifestError:  # not there yet, or being created by the run
        return Counter()


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def interrupt(run: subprocess.Popen[str]) -> tuple[int, str]:
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    return run.returncode, out + err


def test_a_429_with_a_day_long_retry_after_on_submits_never_stops_polls_of_paid_tasks(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(task_seconds=4.0, task_jitter=0.0)
    url = emulator.urls["pixellabs"]
    spec = pixellabs_spec(tmp_path, url, seeds="[1]")
    spec.write_text(spec.read_text().replace("concurrency: 4", "concurrency: 2"))
    root = tmp_path / "out"

    first = start_run(spec, tmp_path)  # two tasks paid for, then interrupted
    wait_for(lambda: states(root)[JobState.SUBMITTED] == 2, 60, "two submitted jobs")
    code, output = interrupt(first)
    assert states(root)[JobState.SUBMITTED] == 2, output

    emulator.configure(
        "pixellabs", fault_routes=[SUBMIT_ROUTE], rate_limit_rate=1.0, retry_after=A_DAY
    )
    spec.write_text(spec.read_text().replace("concurrency: 2", "concurrency: 4"))
    second = start_run(spec, tmp_path)  # two paid tasks to follow, submits refused
    try:
        wait_for(lambda: states(root)[JobState.DONE] == 2, 30, "the paid tasks to be done")
        faults = emulator.admin("pixellabs", "stats")["faults"]
        assert faults.get("rate_limited", 0) >= 1  # submits really were refused meanwhile
    finally:
        code, output = interrupt(second)
    assert code != 0, output
    assert len(emulator.ledger("pixellabs")) == 2


def test_a_day_long_retry_after_is_cut_to_max_retry_after_and_said_once(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(fault_routes=[SUBMIT_ROUTE], rate_limit_rate=1.0, retry_after=A_DAY)
    spec = pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]")
    spec.write_text(
        spec.read_text().replace(
            "deadline: 2m", "deadline: 2m\n  retries: 1\n  max_retry_after: 1s"
        )
    )
    started = time.monotonic()
    run = start_run(spec, tmp_path)
    out, err = run.communicate(timeout=120)
    elapsed = time.monotonic() - started

    assert run.returncode == 1, out + err  # incomplete: every job left pending
    assert elapsed < 60, elapsed
    assert states(tmp_path / "out") == {JobState.PENDING: 6}
    notes = [line for line in (out + err).splitlines() if "max_retry_after" in line]
    assert len(notes) == 1, out + err
    assert "86400" in notes[0], notes
    assert emulator.ledger("pixellabs") == []
