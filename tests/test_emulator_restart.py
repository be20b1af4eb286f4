"""The built-in emulators remember across a restart, as a real API does.

A run on in-process emulators (``emulate:`` in the spec) is stopped (Ctrl-C, or SIGKILL
between submits) and run again: every job ends ``done``, none fails with "task not
found", and the persisted charge ledgers show each job paid for exactly once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from subprocess import Popen

import httpx
import pytest

from pipeline.emulators.persist import DB_NAME, stored_charges
from pipeline.errors import ManifestError
from pipeline.manifest.store import Manifest

from .conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

PROVIDERS = ("pixellabs", "pixai", "apixo", "acedata")
JOBS = 48  # 3 prompts x 2 ratios x 2 seeds x 4 providers, as the quickstart


def quick_spec(tmp_path: Path) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: quick
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            emulate: {{task_seconds: 1.0, render: false}}
            concurrency: 4
          pixai:
            emulate: {{task_seconds: 1.0, render: false}}
            concurrency: 4
          apixo:
            emulate: {{task_seconds: 1.0, render: false}}
            concurrency: 4
            params: {{model: nano-banana}}
            options: {{completion: webhook}}
          acedata:
            emulate: {{task_seconds: 1.5, render: false}}
            concurrency: 4
            params: {{duration: 5, quality: 360p}}
        prompts:
          - a lighthouse on a cliff at dusk
          - a cozy reading nook with a sleeping cat
          - a corgi astronaut floating above Saturn
        matrix:
          aspect_ratio: ["1:1", "16:9"]
        seeds: [7, 42]
        run:
          poll: {{initial: 0.1s, max: 0.5s}}
        """,
    )


def states(root: Path) -> dict[str, int]:
    """Jobs per state over every provider; {} while the manifest is not there yet."""
    try:
        with Manifest.open(root, readonly=True) as manifest:
            counts = manifest.counts()
    except ManifestError:
        return {}
    total: dict[str, int] = {}
    for by_state in counts.values():
        for state, n in by_state.items():
            total[state] = total.get(state, 0) + n
    return total


def remote_ids(root: Path) -> dict[str, set[str]]:
    with Manifest.open(root, readonly=True) as manifest:
        found: dict[str, set[str]] = {name: set() for name in PROVIDERS}
        for record in manifest.iter_records():
            if record.remote_id is not None:  # APIXO's is "model/taskId"
                found[record.job.provider].add(record.remote_id.rpartition("/")[2])
        return found


def start_run(spec: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        cwd=cwd, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for_mid_run(process: subprocess.Popen[str], root: Path) -> None:
    """Until some jobs are done and others are in flight at the providers."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = states(root)
        in_flight = sum(now.get(s, 0) for s in ("submitted", "running"))
        if now.get("done", 0) >= 6 and in_flight >= 4 and now.get("pending", 0) > 0:
            return
        assert process.poll() is None, f"the run ended before the kill: {now}"
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"never mid-run: {states(root)}")


def kill_between_submits(process: subprocess.Popen[str], root: Path) -> None:
    """SIGKILL at a moment when no submit is half-recorded (frozen with SIGSTOP to look).

    A kill inside a submit makes that job `unknown` (the kill sweep counts those)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        os.kill(process.pid, signal.SIGSTOP)
        if states(root).get("submitting", 0) == 0:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    process.kill()
    raise AssertionError("no moment without a submit in flight")


def assert_finished_and_paid_once(root: Path) -> None:
    assert states(root) == {"done": JOBS}
    ids = remote_ids(root)
    for name in PROVIDERS:
        charged = [c.task_id for c in stored_charges(root / ".emulators" / name)]
        assert len(charged) == len(set(charged)) == JOBS // len(PROVIDERS), (name, charged)
        assert set(charged) == ids[name], name


@pytest.mark.parametrize("stop", ["sigint", "sigkill"])
def test_stopped_demo_rerun_finds_its_tasks(tmp_path: Path, stop: str) -> None:
    spec, root = quick_spec(tmp_path), tmp_path / "out"
    runner = start_run(spec, tmp_path)
    wait_for_mid_run(runner, root)
    if stop == "sigint":
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) == 130
    else:
        kill_between_submits(runner, root)
    stopped = states(root)
    assert stopped.get("done", 0) < JOBS, stopped

    rerun = run_cli("run", str(spec), "--quiet", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "not found" not in rerun.stdout + rerun.stderr
    assert_finished_and_paid_once(root)


# -- `pipeline emulate --state DIR`: a separate emulator process, restarted ----------------

KEY_HEADERS = {"Authorization": "Bearer restart-test-fake-key"}


def start_emulate(
    state: Path, *names: str, knobs: dict[str, object]
) -> tuple[Popen[str], dict[str, str]]:
    args = [sys.executable, "-m", "pipeline", "emulate", "--state", str(state)]
    for name in names:
        args += ["--provider", name]
    for key, value in knobs.items():
        args += ["--knob", f"{key}={json.dumps(value)}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    urls: dict[str, str] = {}
    while len(urls) < len(names):
        line = process.stdout.readline()
        assert line, f"emulate exited with {process.wait()}"
        name, _, url = line.strip().partition(" ")
        urls[name] = url
    return process, urls


def stop(process: Popen[str], signum: int) -> None:
    os.killpg(process.pid, signum)
    process.wait(timeout=30)


def test_emulate_state_survives_sigkill_during_submits(tmp_path: Path) -> None:
    """Every submit answered before a SIGKILL is found after the restart, charged once."""
    process, urls = start_emulate(tmp_path, "pixellabs", knobs={"task_seconds": 0.5})
    answered: list[str] = []
    stop_flag = threading.Event()

    def submit_forever(worker: int) -> None:
        with httpx.Client(base_url=urls["pixellabs"], headers=KEY_HEADERS, timeout=5) as c:
            for n in itertools.count():
                if stop_flag.is_set():
                    return
                try:
                    body = {"prompt": f"worker {worker} job {n}", "seed": n}
                    answer = c.post("/v1/generate", json=body)
                except httpx.HTTPError:
                    return
                answered.append(answer.json()["generationId"])

    workers = [threading.Thread(target=submit_forever, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(answered) >= 40, "the emulator stopped answering submits"
    stop(process, signal.SIGKILL)  # while submits are in flight
    stop_flag.set()
    for worker in workers:
        worker.join()
    with sqlite3.connect(tmp_path / "pixellabs" / DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    process, urls = start_emulate(tmp_path, "pixellabs", knobs={"task_seconds": 0.5})
    try:
        with httpx.Client(base_url=urls["pixellabs"], headers=KEY_HEADERS, timeout=5) as c:
            for task_id in answered:
                assert c.get(f"/v1/generate/{task_id}").status_code == 200, task_id
            charged = [e["task_id"] for e in c.get("/_emulator/ledger").json()["charges"]]
            for task_id in charged:  # a task created as the kill landed is kept whole
                assert c.get(f"/v1/generate/{task_id}").status_code == 200, task_id
    finally:
        stop(process, signal.SIGTERM)
    assert set(answered) <= set(charged) and len(charged) == len(set(charged))
    assert len(charged) - len(answered) <= 4  # at most one unanswered per worker


def test_emulate_state_serves_the_same_bytes_after_a_restart(tmp_path: Path) -> None:
    """Rendered media (a drawn PNG, an encoded MP4) come back byte for byte in a new
    process on a new port; only what is needed to render them is kept."""
    names = ("pixellabs", "acedata")
    process, urls = start_emulate(tmp_path, *names, knobs={"task_seconds": 0.2})
    try:
        with httpx.Client(headers=KEY_HEADERS, timeout=30) as c:
            pl = c.post(urls["pixellabs"] + "/v1/generate", json={"prompt": "same", "seed": 1})
            video = {"prompt": "same", "seed": 1, "callback_url": "http://127.0.0.1:9/"}
            ad = c.post(urls["acedata"] + "/pixverse/videos", json=video)
            ids = {"pixellabs": pl.json()["generationId"], "acedata": ad.json()["task_id"]}
            time.sleep(0.5)
            before = {name: sha_of_result(c, name, urls[name], ids[name]) for name in names}
    finally:
        stop(process, signal.SIGTERM)
    assert len(list((tmp_path / "pixellabs").iterdir())) <= 4  # no rendered files kept

    process, urls = start_emulate(tmp_path, *names, knobs={"task_seconds": 0.2})
    try:
        with httpx.Client(headers=KEY_HEADERS, timeout=30) as c:
            after = {name: sha_of_result(c, name, urls[name], ids[name]) for name in names}
    finally:
        stop(process, signal.SIGTERM)
    assert after == before


def sha_of_result(client: httpx.Client, name: str, base: str, task_id: str) -> str:
    if name == "pixellabs":
        url = client.get(f"{base}/v1/generate/{task_id}").json()["imageUrl"]
    else:
        body = {"id": task_id, "action": "retrieve"}
        url = client.post(f"{base}/pixverse/tasks", json=body).json()["response"]["data"][0][
            "video_url"
        ]
    assert url.startswith(base)
    answer = client.get(url)
    assert answer.status_code == 200
    return hashlib.sha256(answer.content).hexdigest()


def test_a_second_emulate_on_the_same_state_is_refused(tmp_path: Path) -> None:
    process, _ = start_emulate(tmp_path, "pixellabs", knobs={})
    try:
        second = run_cli("emulate", "--provider", "pixellabs", "--state", str(tmp_path),
                         cwd=tmp_path, timeout=60)  # fmt: skip
    finally:
        stop(process, signal.SIGTERM)
    assert second.returncode == 1
    assert f"in use by pid {process.pid}" in second.stderr
    assert "Traceback" not in second.stderr
