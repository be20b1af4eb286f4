"""Three `pipeline run` processes share one 600-job, four-provider run through a real
PostgreSQL; one of them is SIGKILLed at random moments and restarted. The promises of one
process hold for all of them together: every job ends `done` or `unknown`, no task is paid
twice, no job is done twice, and no provider ever sees more tasks at once than its
`concurrency` allows (the emulators record the peak)."""

from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.manifest import open_run
from pipeline.models import JobState
from tests.conftest import write_spec

PROVIDERS = ("pixellabs", "pixai", "apixo", "acedata")
CONCURRENCY = 3
PER_PROVIDER = 150  # 15 prompts x 10 seeds
LEASE = 3.0


def shared_spec(tmp_path: Path, urls: dict[str, str]) -> Path:
    prompts = "\n".join(f"  - subject number {i}" for i in range(15))
    return write_spec(
        tmp_path,
        f"""
name: shared-kill
output: {{root: {tmp_path / "out"}}}
providers:
  pixellabs: {{base_url: "{urls["pixellabs"]}", api_key: k-not-secret, concurrency: {CONCURRENCY}}}
  pixai: {{base_url: "{urls["pixai"]}", api_key: k-not-secret, concurrency: {CONCURRENCY}}}
  apixo:
    base_url: "{urls["apixo"]}"
    api_key: k-not-secret
    concurrency: {CONCURRENCY}
    params: {{model: nano-banana}}
  acedata:
    base_url: "{urls["acedata"]}"
    api_key: k-not-secret
    concurrency: {CONCURRENCY}
    params: {{duration: 5}}
prompts:
{prompts}
seeds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
run:
  poll: {{initial: 0.1s, max: 0.5s}}
  lease: {LEASE:g}s
""",
    )


def start(spec: Path, url: str, tmp_path: Path, n: int) -> subprocess.Popen[str]:
    log = (tmp_path / f"runner{n}.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--manifest", url, "-q"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(900)
def test_three_runners_one_killed_again_and_again(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(
        list(PROVIDERS), task_seconds=0.3, task_jitter=0.2, render=False,
        callback_retry_delays=[0.2],
    )  # fmt: skip
    spec = shared_spec(tmp_path, emulator.urls)
    rng = random.Random(14)
    runners = [start(spec, pg_url, tmp_path, n) for n in range(3)]
    kills = 0
    deadline = time.monotonic() + 600
    while kills < 4 and runners[0].poll() is None and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 5.0))
        if runners[0].poll() is not None:
            break
        runners[0].send_signal(signal.SIGKILL)  # no goodbye: its lease just stops
        runners[0].wait()
        kills += 1
        runners[0] = start(spec, pg_url, tmp_path, 0)
    for runner in runners:
        runner.wait(timeout=max(60.0, deadline - time.monotonic()))
    logs = "\n".join((tmp_path / f"runner{n}.log").read_text() for n in range(3))
    assert kills >= 1, logs
    assert all(runner.returncode in (0, 1) for runner in runners), logs

    with open_run(tmp_path / "out", url=pg_url, run="shared-kill", readonly=True) as manifest:
        records = list(manifest.iter_records())
        states = collections.Counter(r.state for r in records)
        done_events = collections.Counter(
            e.job_id
            for r in records
            for e in manifest.events(r.job.id)
            if e.to_state is JobState.DONE
        )
    assert len(records) == PER_PROVIDER * len(PROVIDERS)
    assert set(states) <= {JobState.DONE, JobState.UNKNOWN}, (states, logs)
    assert states[JobState.DONE] > 0
    assert max(done_events.values()) == 1  # no job was done twice
    assert len(done_events) == states[JobState.DONE]
    peaks = {p: emulator.stats(p)["peak_tasks"] for p in PROVIDERS}
    print(f"kills {kills}, states {dict(states)}, peak tasks {peaks}")
    remote_ids = [r.remote_id for r in records if r.remote_id is not None]
    assert len(remote_ids) == len(set(remote_ids))
    for provider in PROVIDERS:
        ledger = emulator.ledger(provider)
        bodies = collections.Counter(json.dumps(c["body"], sort_keys=True) for c in ledger)
        assert max(bodies.values()) == 1, provider  # 0 duplicate charges
        ours = [r for r in records if r.job.provider == provider]
        done = sum(1 for r in ours if r.state is JobState.DONE)
        unknown = sum(1 for r in ours if r.state is JobState.UNKNOWN)
        assert done <= len(ledger) <= done + unknown, provider
        stats = emulator.stats(provider)
        assert 0 < stats["peak_tasks"] <= CONCURRENCY, (provider, stats["peak_tasks"])
