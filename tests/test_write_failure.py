"""When the manifest can no longer be written (EFBIG under a file-size limit, as a full
disk would), every submit stops at once, the run ends with a clear message and exit 1,
and every paid remote id is either in the manifest or in the fallback file and on
stderr: none is recorded nowhere."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.manifest.store import Manifest
from pipeline.manifest.unrecorded import FALLBACK_NAME

from .conftest import FAKE_KEY, write_spec

pytestmark = pytest.mark.slow

CONCURRENCY = 4
JOBS = 40


def limited(max_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def run_limited(spec: Path, cwd: Path, max_bytes: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
        preexec_fn=limited(max_bytes),
    )  # fmt: skip


@pytest.mark.parametrize("max_kb", [100, 250])
def test_failed_manifest_write_stops_submits_and_loses_no_remote_id(
    tmp_path, emulator_factory, max_kb
):
    emulator = emulator_factory(task_seconds=0.3)
    root = tmp_path / "out"
    spec = write_spec(
        tmp_path,
        f"""
        name: efbig
        output:
          root: {root}
        providers:
          pixellabs:
            base_url: {emulator.urls["pixellabs"]}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: {CONCURRENCY}
        prompts:
          - text: "subject {{n}}"
            vars: {{n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}
        seeds: [1, 2, 3, 4]
        run:
          poll: {{initial: 0.05s, max: 0.2s}}
    """,
    )
    result = run_limited(spec, tmp_path, max_kb * 1024)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "submits stopped" in result.stderr, result.stderr
    failed_at = re.search(r"first failed write at (\S+?)\)", result.stderr)
    assert failed_at, result.stderr
    first_failure = datetime.fromisoformat(failed_at.group(1)).timestamp()

    fallback = root / FALLBACK_NAME
    unrecorded = (
        [json.loads(line) for line in fallback.read_text().splitlines()]
        if fallback.exists()
        else []
    )
    for entry in unrecorded:  # each also named on stderr, with its job
        assert entry["remote_id"] in result.stderr and entry["job_id"] in result.stderr
        assert entry["provider"] == "pixellabs"
    with Manifest.open(root, readonly=True) as manifest:
        recorded = {r.remote_id for r in manifest.iter_records() if r.remote_id}
    lost = {e["remote_id"] for e in unrecorded}

    charges = emulator.ledger("pixellabs")
    assert charges, "the limit must leave room for some submits"
    for charge in charges:
        assert charge["task_id"] in recorded | lost, f"paid task recorded nowhere: {charge}"
    late = [c for c in charges if c["at"] > first_failure]
    # Only requests already in flight at the failure may be charged after it.
    assert {c["task_id"] for c in late} <= lost, (late, unrecorded)
    assert len(late) <= CONCURRENCY

    # Room again: the rerun takes the unrecorded ids back and pays for nothing twice.
    rerun = run_limited(spec, tmp_path, resource.RLIM_INFINITY)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with Manifest.open(root, readonly=True) as manifest:
        assert manifest.counts() == {"pixellabs": {"done": JOBS}}
        recorded = {r.remote_id for r in manifest.iter_records()}
    charges = emulator.ledger("pixellabs")
    assert len(charges) == JOBS and {c["task_id"] for c in charges} == recorded
    assert not fallback.exists()  # set aside once taken back, never read twice
    assert unrecorded == [] or list(root.glob("unrecorded-remote-ids.adopted-*.jsonl"))
