"""The kill sweep: a run over all four providers, SIGKILLed again and again, resumed each
time, then run to completion; nothing is paid twice, lost or corrupt.

Set-up: 442 jobs (104 on each provider, 26 more with outputs past the download's
in-memory hold, so that a kill can land with a ``.part`` half written), against
``pipeline emulate --state`` processes (the charge ledgers outlive every kill; twice
the emulators are SIGKILLed with the runner, a machine crash, and restarted on their
ports). The emulators drop a few submit answers after creating the task, cut a few
downloads short and refuse a few requests with 429.

Kills: 20 at random moments (seeded; the seed is printed, ``KILL_SWEEP_SEED`` repeats
a sweep) and 8 at forced points (``pipeline.failpoints``): before a submit leaves,
after its answer but before its commit, with a ``.part`` half written, and with the
files in place but the job not yet ``done``.

What must hold at the end ("paid" = a charge in an emulator's ledger; a job's charges
are those whose request body is the job's, minus the run's callback URL):
- every job is ``done`` or ``unknown``; ``PRAGMA integrity_check`` is ok after every kill;
- no job has more than one paid task (0 duplicate charges), and every charge is some
  job's;
- a ``done`` job's one paid task is its recorded remote id; a paid task not named by a
  job's remote id belongs to an ``unknown`` job (a kill between its submit leaving and
  its answer being recorded, or an answer the emulator dropped): counted and printed;
- every output file's sha256 is the manifest's, and the manifest's is that of the bytes
  the emulator serves for the job's remote task; no ``.part`` is left.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.errors import ManifestError
from pipeline.failpoints import ENV as FAILPOINTS_ENV
from pipeline.manifest.store import Manifest
from pipeline.models import JobRecord, JobState, ProviderSettings
from pipeline.providers import registry

from .conftest import write_spec
from .test_emulator_persist import acedata_result, apixo_result, pixai_result, pixellabs_result

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "kill-sweep-fake-key"
BIG = "pixellabs_big"
ENTRIES = {"pixellabs": "pixellabs", "pixai": "pixai", "apixo": "apixo", "acedata": "acedata"}
ENTRIES[BIG] = "pixellabs"
JOBS = 4 * 104 + 26
RANDOM_KILLS = 20
REBOOTS = 2
FORCED = (
    "submit.before_send",
    "submit.after_answer",
    "download.part_written",
    "download.before_finish",
) * 2
KNOBS: dict[str, Any] = {
    "task_seconds": 2.0,
    "task_jitter": 0.3,
    "render": False,
    "drop_after_create_rate": 0.01,
    "error_after_create_rate": 0.01,  # a 5xx after the task was created and charged
    "truncate_rate": 0.02,
    "rate_limit_rate": 0.02,
}
BIG_KNOBS = {**KNOBS, "task_seconds": 1.5, "output_bytes": 1_100_000}
RESULTS = {
    "pixellabs": pixellabs_result,
    "apixo": apixo_result,
    "acedata": acedata_result,
    "pixai": pixai_result,
}


@dataclass
class Emulator:
    """One ``pipeline emulate --state`` process, restartable on the port it first got."""

    entry: str
    knobs: dict[str, Any]
    state: Path
    port: int = 0
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [sys.executable, "-m", "pipeline", "emulate", "--provider", ENTRIES[self.entry]]
        args += ["--port", str(self.port), "--state", str(self.state)]
        args += [arg for k, v in self.knobs.items() for arg in ("--knob", f"{k}={json.dumps(v)}")]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"emulate {self.entry} exited with {self.process.wait()}"
        self.port = int(line.strip().rpartition(":")[2])

    def stop(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            self.process.wait(timeout=30)


@dataclass
class Tally:
    """What the sweep did, for the closing figures."""

    kills: int = 0
    reboots: int = 0
    forced_hit: Counter[str] = field(default_factory=Counter)
    forced_missed: Counter[str] = field(default_factory=Counter)
    finished_early: int = 0
    window_kills: int = 0  # kills that left a submit between intent and recorded answer
    caught: set[str] = field(default_factory=set)  # jobs such a kill left `submitting`


def sweep_spec(tmp_path: Path, emulators: dict[str, Emulator]) -> Path:
    ratios = ["1:1", "16:9", "4:3", "3:4"]
    exclude = "".join(
        f'\n            - {{provider: {BIG}, aspect_ratio: "{r}"}}' for r in ratios[1:]
    )
    return write_spec(
        tmp_path,
        f"""
        name: sweep
        output:
          root: {tmp_path / "out"}
          path: "{{provider}}/{{prompt_slug}}/{{seed}}-{{job_id}}-{{index}}.{{ext}}"
        providers:
          pixellabs: {{base_url: "{emulators["pixellabs"].url}", api_key: "{KEY}"}}
          pixai:
            base_url: "{emulators["pixai"].url}"
            api_key: "{KEY}"
            options: {{ws_safety_poll: 2s}}
          apixo:
            base_url: "{emulators["apixo"].url}"
            api_key: "{KEY}"
            params: {{model: nano-banana}}
            options: {{completion: webhook, safety_poll: 2s}}
          acedata:
            base_url: "{emulators["acedata"].url}"
            api_key: "{KEY}"
            params: {{duration: 5, quality: 360p}}
          {BIG}:
            type: pixellabs
            base_url: "{emulators[BIG].url}"
            api_key: "{KEY}"
            concurrency: 2
        prompts:
          - text: "sweep subject {{n}}"
            vars: {{n: {list(range(1, 14))}}}
        matrix:
          aspect_ratio: {json.dumps(ratios)}
          exclude:{exclude}
        seeds: [1, 2]
        run:
          poll: {{initial: 0.1s, max: 0.5s}}
        """,
    )


def plan_rounds(rng: random.Random) -> list[tuple[str, str | None]]:
    """("random", None | "reboot") and ("forced", point) rounds; forced ones come early,
    while there is still something to submit and download."""
    rounds: list[tuple[str, str | None]] = [("random", None)] * RANDOM_KILLS
    for index in rng.sample(range(RANDOM_KILLS), REBOOTS):
        rounds[index] = ("random", "reboot")
    forced = list(FORCED)
    rng.shuffle(forced)
    for position, point in zip(sorted(rng.sample(range(1, 16), len(forced))), forced, strict=True):
        rounds.insert(position, ("forced", point))
    return rounds


def submitting(root: Path) -> set[str]:
    """Jobs whose submit intent is recorded and whose answer is not."""
    try:
        with Manifest.open(root, readonly=True) as manifest:
            return {r.job.id for r in manifest.iter_records(states=[JobState.SUBMITTING])}
    except ManifestError:  # not created yet
        return set()


def integrity(path: Path) -> str:
    if not path.exists():
        return "ok"
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def records(root: Path) -> list[JobRecord]:
    with Manifest.open(root, readonly=True) as manifest:
        return list(manifest.iter_records(with_outputs=True))


def wire_key(entry: str, body: Any) -> tuple[str, str]:
    """A submit's identity on the wire: its body, minus what changes from run to run."""
    if "variables" in body:  # PixAI's GraphQL request; its ledger keeps the parameters
        body = {"parameters": body["variables"]["parameters"]}
    kept = {k: v for k, v in body.items() if k not in ("callback_url", "request_type")}
    return entry, json.dumps(kept, sort_keys=True, separators=(",", ":"))


def job_key(record: JobRecord) -> tuple[str, str]:
    entry = record.job.provider
    adapter = registry.get(ENTRIES[entry])(ProviderSettings(name=entry, type=ENTRIES[entry]))
    request = adapter.build_submit(record.job).json
    assert request is not None
    return wire_key(entry, dict(request))


def task_id_of(record: JobRecord) -> str:
    assert record.remote_id is not None
    return record.remote_id.rpartition("/")[2]  # APIXO's remote id is "model/taskId"


async def served_sha256(emulators: dict[str, Emulator], done: list[JobRecord]) -> dict[str, str]:
    """sha256 of the bytes each emulator serves now for each done job's remote task."""
    gate = asyncio.Semaphore(8)

    async def one(client: httpx.AsyncClient, record: JobRecord) -> tuple[str, str]:
        async with gate:
            url = await RESULTS[ENTRIES[record.job.provider]](client, task_id_of(record))
            assert url is not None, record
            answer = await client.get(url)
            assert answer.status_code == 200, (record.job.id, answer.status_code)
            return record.job.id, hashlib.sha256(answer.content).hexdigest()

    clients = {
        entry: httpx.AsyncClient(
            base_url=emulator.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        )
        for entry, emulator in emulators.items()
    }
    try:
        pairs = await asyncio.gather(*(one(clients[r.job.provider], r) for r in done))
    finally:
        for client in clients.values():
            await client.aclose()
    return dict(pairs)


def ledgers(emulators: dict[str, Emulator]) -> dict[tuple[str, str], list[str]]:
    """Paid task ids by wire key, over every emulator's (persisted) ledger."""
    paid: dict[tuple[str, str], list[str]] = {}
    for entry, emulator in emulators.items():
        charges = httpx.get(f"{emulator.url}/_emulator/ledger", timeout=30).json()["charges"]
        for charge in charges:
            paid.setdefault(wire_key(entry, charge["body"]), []).append(charge["task_id"])
    return paid


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[dict[str, Emulator]]:
    started = {
        entry: Emulator(entry, BIG_KNOBS if entry == BIG else KNOBS, tmp_path / "emu" / entry)
        for entry in ENTRIES
    }
    try:
        yield started  # the test starts them, with its seed
    finally:
        for emulator in started.values():
            emulator.stop(signal.SIGTERM)


def test_kill_sweep(tmp_path: Path, emulators: dict[str, Emulator], capsys: Any) -> None:
    seed = int(os.environ.get("KILL_SWEEP_SEED") or random.SystemRandom().randrange(2**32))
    with capsys.disabled():
        print(f"\nkill sweep: seed {seed} (KILL_SWEEP_SEED={seed} repeats it)", flush=True)
    rng = random.Random(seed)
    for emulator in emulators.values():  # the emulators' own dice follow the sweep's seed
        emulator.knobs = {**emulator.knobs, "seed": rng.randrange(2**31)}
        emulator.start()
    spec, root = sweep_spec(tmp_path, emulators), tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    tally, started = Tally(), time.monotonic()

    for number, (kind, detail) in enumerate(plan_rounds(rng)):
        env = {**os.environ, FAILPOINTS_ENV: f"{detail}:{rng.randint(1, 6)}"}
        if kind == "random":
            env.pop(FAILPOINTS_ENV)
        with (logs / f"round-{number:02d}.txt").open("w") as log:
            runner = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
                cwd=tmp_path, env=env, stdout=log, stderr=log,
            )  # fmt: skip
            wait = rng.uniform(0.4, 2.5) if kind == "random" else 30.0
            try:
                code = runner.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                runner.kill()  # SIGKILL
                runner.wait()
                code = None
        if detail == "reboot":  # the machine went down with it: so do the emulators
            for emulator in emulators.values():
                emulator.stop(signal.SIGKILL)
            for emulator in emulators.values():
                emulator.start()
            tally.reboots += 1
        if kind == "forced":
            assert detail is not None
            hit = code == -signal.SIGKILL
            (tally.forced_hit if hit else tally.forced_missed)[detail] += 1
            tally.kills += hit
        elif code is None:
            tally.kills += 1
        else:
            tally.finished_early += 1
        caught = submitting(root) - tally.caught  # a kill during start-up catches none
        tally.caught |= caught
        tally.window_kills += bool(caught)
        message = f"seed {seed}, round {number} ({kind} {detail})"
        assert integrity(root / "manifest.sqlite") == "ok", message

    final_started = time.monotonic()
    final = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    elapsed, final_took = time.monotonic() - started, time.monotonic() - final_started
    context = f"seed {seed}: {final.stdout}{final.stderr}"
    assert "Traceback" not in final.stderr, context
    assert integrity(root / "manifest.sqlite") == "ok", context
    for emulator in emulators.values():
        assert integrity(emulator.state / ENTRIES[emulator.entry] / "state.sqlite") == "ok"

    jobs, paid = records(root), ledgers(emulators)
    states = Counter(r.state.value for r in jobs)
    unknown = [r for r in jobs if r.state.value == "unknown"]
    unknown_paid = sum(1 for r in unknown if paid.get(job_key(r)))
    with capsys.disabled():
        print(
            f"kill sweep: {len(jobs)} jobs, {tally.kills} kills ({RANDOM_KILLS} random, "
            f"{sum(tally.forced_hit.values())} forced, {tally.reboots} with the emulators), "
            f"{tally.window_kills} in the submit window ({len(tally.caught)} submits "
            f"caught), {len(unknown)} unknown jobs ({unknown_paid} paid), {elapsed:.0f} s "
            f"(final run {final_took:.0f} s); "
            f"forced points hit {dict(tally.forced_hit)}, missed "
            f"{dict(tally.forced_missed)}, {tally.finished_early} rounds finished before "
            f"their kill; seed {seed}",
            flush=True,
        )
    assert len(jobs) == JOBS, context
    assert set(states) <= {"done", "unknown"}, (states, context)
    assert final.returncode == (1 if unknown else 0), context
    assert tally.kills >= RANDOM_KILLS, (tally, context)

    check_charges(jobs, paid, seed)
    check_outputs(root, jobs, emulators, seed)


def check_charges(jobs: list[JobRecord], paid: dict[tuple[str, str], list[str]], seed: int) -> None:
    """Paid tasks per job <= 1; each is the job's remote id, or the job is unknown."""
    matched = 0
    for record in jobs:
        tasks = paid.get(job_key(record), [])
        matched += len(tasks)
        where = f"seed {seed}, job {record.job.id} ({record.job.provider}, {record.state.value})"
        assert len(tasks) <= 1, f"{where}: paid {len(tasks)} times: {tasks}"
        if record.state.value == "done":
            assert tasks == [task_id_of(record)], where
        else:  # unknown: a submit whose answer never made it into the manifest
            assert record.remote_id is None, where
    stray = sum(map(len, paid.values())) - matched
    assert stray == 0, f"seed {seed}: {stray} paid tasks belong to no job"


def check_outputs(
    root: Path, jobs: list[JobRecord], emulators: dict[str, Emulator], seed: int
) -> None:
    done = [r for r in jobs if r.state.value == "done"]
    for emulator in emulators.values():  # faults off for the check; the bytes stay the same
        quiet = {"rate_limit_rate": 0, "truncate_rate": 0, "drop_after_create_rate": 0}
        httpx.post(f"{emulator.url}/_emulator/config", json=quiet, timeout=30).raise_for_status()
    served = asyncio.run(served_sha256(emulators, done))
    for record in done:
        where = f"seed {seed}, job {record.job.id}"
        assert len(record.outputs) == 1, where
        output = record.outputs[0]
        data = (root / output.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == output.sha256, where
        assert output.size == len(data), where
        assert served[record.job.id] == output.sha256, f"{where}: not the bytes served"
    assert not [p for p in root.rglob("*.part")], f"seed {seed}: .part files left"
