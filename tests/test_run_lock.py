"""One run per output folder: a second `pipeline run` on it is refused at once, naming
the holder; `status` and `export` work beside a run; a SIGKILLed run's lock is taken
over by the next run (the kernel released it)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

import pytest

from pipeline.manifest.lock import LOCK_NAME, RunLocked, hold_run_lock
from pipeline.manifest.store import Manifest

from .conftest import FAKE_KEY, run_cli, write_spec
from .test_crash import JOBS, counts, crash_spec, kill_between_submits, start_runner

pytestmark = pytest.mark.slow


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def in_flight(root: Path) -> bool:
    state = counts(root)
    return state.get("submitted", 0) + state.get("running", 0) > 0


def test_second_run_on_one_folder_is_refused_while_status_and_export_work(
    tmp_path, emulator_factory
):
    emulator = emulator_factory(task_seconds=1.0)
    spec = crash_spec(tmp_path, emulator.urls["pixellabs"])
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    first = start_runner(spec, tmp_path, env, capture=True)
    try:
        wait_for(lambda: in_flight(root))

        started = time.monotonic()
        second = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env, timeout=60)
        assert second.returncode != 0, second.stdout + second.stderr
        assert time.monotonic() - started < 20  # refused at once, not after a run
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert socket.gethostname() in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run must still be going"

        status = run_cli("status", str(root), cwd=tmp_path, env=env, timeout=60)
        assert status.returncode == 0, status.stderr
        assert f"{JOBS} jobs" in status.stdout
        export = run_cli("export", str(root), cwd=tmp_path, env=env, timeout=60)
        assert export.returncode == 0, export.stderr
        assert len(export.stdout.splitlines()) == JOBS
    finally:
        out, err = first.communicate(timeout=240)
    assert first.returncode == 0, out + err

    assert counts(root) == {"done": JOBS}
    with Manifest.open(root, readonly=True) as manifest:
        outputs = [o for r in manifest.iter_records(with_outputs=True) for o in r.outputs]
    assert len(outputs) == JOBS
    for output in outputs:
        data = (root / output.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == output.sha256, output.path
    assert len(emulator.ledger("pixellabs")) == JOBS


def test_sigkilled_run_leaves_a_lock_the_next_run_takes_over(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.8)
    spec = crash_spec(tmp_path, emulator.urls["pixellabs"])
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    runner = start_runner(spec, tmp_path, env, capture=False)
    kill_between_submits(runner, root)
    holder = json.loads((root / LOCK_NAME).read_text())
    assert holder["pid"] == runner.pid  # the dead run's record is still in the file

    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert counts(root) == {"done": JOBS}
    assert len(emulator.ledger("pixellabs")) == JOBS
    assert json.loads((root / LOCK_NAME).read_text())["pid"] != runner.pid


def test_lock_is_taken_before_the_manifest_is_written(tmp_path):
    """A refused run must not have touched the manifest (no submitting rows reset)."""
    root = tmp_path / "out"
    with (
        hold_run_lock(root),
        pytest.raises(RunLocked, match=f"pid {os.getpid()}"),
        hold_run_lock(root),
    ):
        pass  # pragma: no cover
    assert not (root / "manifest.sqlite").exists()
    with hold_run_lock(root):  # released on exit
        pass


def test_refused_run_leaves_submitting_rows_alone(tmp_path):
    spec = write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: http://127.0.0.1:9
            api_key: fake
        prompts: [a]
    """,
    )
    root = tmp_path / "out"
    with Manifest.open(root, spec_name="x") as manifest:
        assert manifest.total() == 0
    with hold_run_lock(root):
        result = run_cli("run", str(spec), "--quiet", cwd=tmp_path)
    assert result.returncode != 0 and "in use by another" in result.stderr, result.stderr
    with Manifest.open(root, readonly=True) as manifest:
        assert manifest.total() == 0  # nothing was added or reset
