"""Scenario 6 — a shared run (issue 14): one run's manifest in PostgreSQL.

1. jobs/s with 1, 2 and 3 ``pipeline run`` processes started together on one PostgreSQL
   run, against one emulator process whose tasks finish at once, with a provider
   ``concurrency`` high enough that the runners' own CPU is the limit, not the account.
2. The cost per job of the PostgreSQL manifest against SQLite (the default): the same
   spec, one runner, wall time, the runner's CPU and the whole machine's CPU per job.

Rounds are interleaved (SQLite, PostgreSQL × 1, × 2, × 3, then again) so drift hits every
contender alike; the one-runner PostgreSQL run serves both parts. Every PostgreSQL run
gets a fresh database on a throwaway server this scenario starts (tests/pgserver.py),
every run a fresh output folder, so each starts empty. Without PostgreSQL's server
binaries the scenario reports itself skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Config,
    Emulator,
    Proc,
    Row,
    emulator,
    machine_cpu_seconds,
    run_measured_together,
    runner_cmd,
    write_spec,
)
from benchmarks.scenarios.overhead import emu_cpu_seconds

NAME = "shared"
KNOBS = {"task_seconds": 0, "task_jitter": 0, "render": False, "output_bytes": 1_000}
CONCURRENCY = 64  # high enough that the account's limit never holds the runners back
POLL = "{initial: 0.001s, max: 0.5s}"
RUNNERS = (1, 2, 3)
RUN_NAME = "bench"
SETTLE = 0.3  # seconds for exited backends to be reaped before reading
TIMEOUT = 1800  # seconds for one round on a slow shared machine


@dataclass
class Round:
    """One measured run: its runner processes, the machine's CPU over it, the job states."""

    procs: list[Proc]
    machine_cpu: float
    server_cpu: float  # the PostgreSQL server's processes (idle in the SQLite runs)
    emulator_cpu: float
    states: dict[str, int] = field(default_factory=dict)
    jobs: int = 0

    @property
    def wall(self) -> float:
        return max(p.wall for p in self.procs)  # first start → last exit

    @property
    def runner_cpu(self) -> float:
        return sum(p.cpu for p in self.procs)

    @property
    def complete(self) -> bool:
        return self.states.get("done", 0) == self.jobs and all(p.rc == 0 for p in self.procs)

    def trouble(self) -> str:
        """What went wrong, in a line: the job states and the runners' exit codes."""
        exits = ", ".join(str(p.rc) for p in self.procs)
        return f"states {dict(sorted(self.states.items()))} of {self.jobs:,} jobs; exits {exits}"

    def output(self) -> str:
        """Each runner's last words, for the log."""
        return "\n".join(
            f"    runner {n + 1} (exit {p.rc}): {(p.stderr.strip() or p.stdout.strip())[-600:]}"
            for n, p in enumerate(self.procs)
        )


def postgres_missing() -> str | None:
    """Why no throwaway PostgreSQL can start here, or None when one can."""
    try:
        import psycopg  # noqa: F401

        from tests import pgserver
    except ImportError as exc:
        return f"cannot import the PostgreSQL driver or tests/pgserver.py ({exc})"
    if pgserver.find_bindir() is None:
        return pgserver.MISSING
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(pgserver.SERVER_USER)
        except KeyError:
            return f"running as root needs the {pgserver.SERVER_USER!r} user to start PostgreSQL"
    return None


def run(config: Config) -> list[Row]:
    jobs = config.pick(3_000, 600, 40)
    prompts = config.pick(100, 40, 8)
    seeds = max(1, jobs // prompts)
    jobs = prompts * seeds
    scaling = f"6 shared run ({jobs:,} jobs, 1 emulator, c={CONCURRENCY})"
    cost = f"6 PostgreSQL vs SQLite manifest ({jobs:,} jobs, 1 runner)"
    missing = postgres_missing()
    if missing:
        return [Row(scaling, "jobs/s", "jobs/s", [], note=f"skipped: {missing}"),
                Row(cost, "wall per job", "ms", [], note=f"skipped: {missing}")]  # fmt: skip
    from tests import pgserver

    sqlite: list[Round] = []
    shared: dict[int, list[Round]] = {n: [] for n in RUNNERS}
    work = config.scratch("shared")
    outputs = work / "outputs"
    count = 0
    with pgserver.running_server() as server, emulator("pixellabs", **KNOBS) as emu:
        spec = write_spec(
            work, url=emu.url, prompts=prompts, seeds=seeds, concurrency=CONCURRENCY,
            out="${BENCH_OUT}", poll=POLL, name=RUN_NAME,
        )  # fmt: skip
        for round_ in range(config.runs):
            for runners in (0, *RUNNERS):  # 0: one runner on the SQLite manifest
                count += 1
                out = outputs / f"run-{count:03d}"
                label = "SQLite" if runners == 0 else f"PostgreSQL × {runners}"
                config.log(f"  shared run {round_ + 1}: {label}")
                emu.reset()
                database: AbstractContextManager[str | None] = (
                    _no_database()
                    if runners == 0
                    else pgserver.fresh_database(server, f"bench_{count}")
                )
                cpu = _Meters(emu, _postmaster_pid(server.data))
                with database as url:
                    measured = _measure(spec, work, out, url, max(runners, 1), jobs, cpu)
                if not measured.complete:
                    config.log(f"    NOT every job done: {measured.trouble()}")
                    config.log(measured.output())
                (sqlite if runners == 0 else shared[runners]).append(measured)
    import shutil

    shutil.rmtree(outputs, ignore_errors=True)
    return _scaling_rows(scaling, shared) + _cost_rows(cost, sqlite, shared[1])


@contextmanager
def _no_database() -> Iterator[None]:
    yield None


@dataclass
class _Meters:
    """CPU seconds so far of the machine, the PostgreSQL server and the emulator."""

    emu: Emulator
    postmaster: int

    def read(self) -> tuple[float, float, float]:
        return machine_cpu_seconds(), _tree_cpu_seconds(self.postmaster), emu_cpu_seconds(self.emu)


def _postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its children, live (their own) and gone (reaped into its
    cutime/cstime): the postmaster and its backends, checkpointer, WAL writer."""

    def fields(stat: Path) -> list[str]:
        return stat.read_text().rpartition(")")[2].split()

    mine = fields(Path(f"/proc/{pid}/stat"))
    ticks = sum(int(value) for value in mine[11:15])  # utime stime cutime cstime
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            theirs = fields(stat)
        except OSError:
            continue  # gone meanwhile: then it is in the parent's cutime, or soon
        if int(theirs[1]) == pid:
            ticks += sum(int(value) for value in theirs[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _measure(
    spec: Path, work: Path, out: Path, url: str | None, runners: int, jobs: int, cpu: _Meters
) -> Round:
    from pipeline.manifest import open_run

    command = runner_cmd("run", str(spec), "--quiet")
    if url is not None:
        command += ["--manifest", url]
    before = cpu.read()
    procs = run_measured_together(
        [command] * runners, cwd=work, env={"BENCH_OUT": str(out)}, timeout=TIMEOUT
    )
    machine = machine_cpu_seconds() - before[0]
    time.sleep(SETTLE)  # the runners' backends exit after them: let the postmaster reap them
    after = cpu.read()
    measured = Round(procs, machine, after[1] - before[1], after[2] - before[2], jobs=jobs)
    with open_run(out, url=url, run=RUN_NAME, readonly=True) as manifest:
        for states in manifest.counts().values():
            for state, n in states.items():
                measured.states[state] = measured.states.get(state, 0) + n
    return measured


def _scaling_rows(scenario: str, shared: dict[int, list[Round]]) -> list[Row]:
    def rate(rounds: list[Round]) -> list[float]:
        return [r.jobs / r.wall for r in rounds]

    def cpu_ms(rounds: list[Round]) -> list[float]:
        return [1000 * r.runner_cpu / r.jobs for r in rounds]

    one = [r for r in shared[1] if r.complete]
    rows: list[Row] = []
    for n in RUNNERS:
        done = [r for r in shared[n] if r.complete]
        note = _incomplete_note(shared[n])
        base: dict[str, Any] = {}
        if n > 1 and one:
            both = [(r, o) for r, o in zip(shared[n], shared[1], strict=True)
                    if r.complete and o.complete]  # fmt: skip
            base = {"baseline": "1 runner", "baseline_values": rate(one),
                    "pairs": [rate([r])[0] / rate([o])[0] for r, o in both] or None}  # fmt: skip
        rows += [
            Row(scenario, f"jobs/s, {_runners(n)} (first start → last exit)", "jobs/s",
                rate(done), target="report", note=note, **base),
            Row(scenario, f"runner CPU per job, {_runners(n)} (sum of their rusage)", "ms",
                cpu_ms(done), target="report", note=note),
        ]  # fmt: skip
    return rows


def _cost_rows(scenario: str, sqlite: list[Round], postgres: list[Round]) -> list[Row]:
    pairs = [(s, p) for s, p in zip(sqlite, postgres, strict=True) if s.complete and p.complete]
    note = "; ".join(filter(None, [_incomplete_note(sqlite, "SQLite"),
                                   _incomplete_note(postgres, "PostgreSQL")]))  # fmt: skip
    figures: dict[str, Callable[[Round], float]] = {
        "wall per job": lambda r: 1000 * r.wall / r.jobs,
        "runner CPU per job": lambda r: 1000 * r.runner_cpu / r.jobs,
        "PostgreSQL server CPU per job": lambda r: 1000 * r.server_cpu / r.jobs,
        "emulator CPU per job": lambda r: 1000 * r.emulator_cpu / r.jobs,
        "whole-machine CPU per job": lambda r: 1000 * r.machine_cpu / r.jobs,
    }
    rows = []
    for metric, figure in figures.items():
        pg = [figure(p) for _, p in pairs]
        lite = [figure(s) for s, _ in pairs]
        extra = {
            "whole-machine CPU per job": "everything on the machine: runner, PostgreSQL "
            "server, emulator, harness, and any other tenant of a shared box",
            "PostgreSQL server CPU per job": "postmaster and its children; the SQLite "
            "runs' figure is the idle server's",
        }.get(metric, "")
        rows.append(
            Row(scenario, f"{metric}, PostgreSQL manifest", "ms", pg, "SQLite", lite,
                [a / b for a, b in zip(pg, lite, strict=True)] if all(lite) else None,
                target="report",
                note="; ".join(filter(None, [extra, note])))
        )  # fmt: skip
    return rows


def _incomplete_note(rounds: list[Round], label: str = "") -> str:
    bad = [r for r in rounds if not r.complete]
    if not bad:
        return ""
    who = f"{label}: " if label else ""
    return (f"{who}{len(bad)} of {len(rounds)} run(s) left out, NOT every job done "
            f"({bad[0].trouble()})")  # fmt: skip


def _runners(n: int) -> str:
    return "1 runner" if n == 1 else f"{n} runners"
