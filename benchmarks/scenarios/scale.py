"""Scenario 3 — scale: a spec of a million jobs, and memory that must not grow with jobs.

- ``pipeline plan`` on the big spec: wall time and peak RSS;
- manifest creation (what ``pipeline run`` does before its first request: load and
  check the spec, open the manifest, add every job): wall time and peak RSS;
- resume start-up: the same manifest with 99% of its jobs done, ``pipeline run`` against
  the emulator; time to first submit = the emulator ledger's first charge minus the
  moment the process was spawned (then the run is stopped with SIGINT);
- a whole run of a 100,000-job spec: peak RSS, with RSS sampled from /proc as it runs so
  growth with the number of jobs done shows.
"""

from __future__ import annotations

import re
import time
from typing import Any

from benchmarks.common import (
    PYTHON,
    Config,
    Proc,
    Row,
    emulator,
    median,
    run_measured,
    runner_cmd,
    write_spec,
)

NAME = "scale"
TARGET_SECONDS = 60.0
TARGET_MB = 300.0
TARGET_FIRST_SUBMIT = 5.0
KNOBS = {"task_seconds": 0, "task_jitter": 0, "render": False, "output_bytes": 10_000}
DONE = re.compile(r"done (\d+)/(\d+)")


def run(config: Config) -> list[Row]:
    prompts, seeds = config.pick((1000, 1000), (100, 1000), (20, 50))
    jobs = prompts * seeds
    rows: list[Row] = []
    with emulator("pixellabs", **KNOBS) as emu:
        work = config.scratch("scale")
        out = work / "out"
        spec = write_spec(
            work, url=emu.url, prompts=prompts, seeds=seeds, concurrency=64, out=out,
            poll="{initial: 0.001s, max: 0.5s}",
        )  # fmt: skip
        scenario = f"3 scale ({jobs:,}-job spec)"
        plans = [_plan(config, spec, work, i) for i in range(config.runs)]
        creations = [_create(config, spec, work, out, i) for i in range(config.runs)]
        rows += _time_and_memory(scenario, "pipeline plan", plans)
        rows += _time_and_memory(scenario, "manifest creation", creations)
        config.log(f"  scale: marking 99% of {jobs:,} jobs done")
        run_measured(
            [PYTHON, "-m", "benchmarks.drivers", "age", str(out), "--done-share", "0.99"]
        ).check()
        starts = [_first_submit(config, spec, work, emu, i) for i in range(config.runs)]
        rows.append(
            Row(scenario, "resume (99% done): spawn → first submit", "s",
                [s for s, _ in starts], target=f"≤ {TARGET_FIRST_SUBMIT:g} s",
                passed=median([s for s, _ in starts]) <= TARGET_FIRST_SUBMIT,
                note="first charge in the emulator's ledger minus process spawn time")
        )  # fmt: skip
        rows.append(
            Row(scenario, "resume: peak RSS up to first submit (+ stop)", "MB",
                [p.maxrss_mb for _, p in starts])
        )  # fmt: skip
        rows += _whole_run(config, emu)
    return rows


def _plan(config: Config, spec: Any, work: Any, round_: int) -> Proc:
    config.log(f"  scale: pipeline plan, run {round_ + 1}")
    return run_measured(runner_cmd("plan", str(spec), "--show", "1"), cwd=work).check()


def _create(config: Config, spec: Any, work: Any, out: Any, round_: int) -> Proc:
    import shutil

    config.log(f"  scale: manifest creation, run {round_ + 1}")
    shutil.rmtree(out, ignore_errors=True)
    return run_measured(
        [PYTHON, "-m", "benchmarks.drivers", "manifest", str(spec)], cwd=work
    ).check()


def _time_and_memory(scenario: str, what: str, procs: list[Proc]) -> list[Row]:
    seconds = [p.wall for p in procs]
    memory = [p.maxrss_mb for p in procs]
    return [
        Row(scenario, f"{what}: wall time", "s", seconds, target=f"≤ {TARGET_SECONDS:g} s",
            passed=median(seconds) <= TARGET_SECONDS),
        Row(scenario, f"{what}: peak RSS", "MB", memory, target=f"≤ {TARGET_MB:g} MB",
            passed=max(memory) <= TARGET_MB),
    ]  # fmt: skip


def _first_submit(
    config: Config, spec: Any, work: Any, emu: Any, round_: int
) -> tuple[float, Proc]:
    config.log(f"  scale: resume start-up, run {round_ + 1}")
    emu.reset()
    last_check = [0.0]

    def watch(process: Any, elapsed: float) -> bool:
        if elapsed - last_check[0] < 0.1:
            return False
        last_check[0] = elapsed
        return bool(emu.admin("stats")["charges"])

    proc = run_measured(runner_cmd("run", str(spec), "--quiet"), cwd=work, watch=watch, timeout=600)
    charges = emu.admin("ledger")["charges"]
    if not charges:
        raise RuntimeError(
            f"resumed run submitted nothing: {proc.stdout[-500:]} {proc.stderr[-500:]}"
        )
    return min(c["at"] for c in charges) - proc.started, proc


def _whole_run(config: Config, emu: Any) -> list[Row]:
    prompts, seeds = config.pick((100, 1000), (100, 100), (10, 10))
    jobs = prompts * seeds
    limit = config.options.get("scale_run_seconds")
    work = config.scratch("scale-run")
    out = work / "out"
    spec = write_spec(
        work, url=emu.url, prompts=prompts, seeds=seeds, concurrency=64, out=out,
        poll="{initial: 0.001s, max: 0.5s}",
    )  # fmt: skip
    config.log(f"  scale: a {jobs:,}-job run" + (f" (stopped after {limit} s)" if limit else ""))
    emu.reset()
    started = time.perf_counter()
    proc = run_measured(
        runner_cmd("run", str(spec), "--quiet"),
        cwd=work,
        sample_rss=True,
        interval=0.5,
        watch=(lambda _p, elapsed: elapsed > limit) if limit else None,
    )
    wall = time.perf_counter() - started
    match = DONE.search(proc.stdout)
    done = int(match.group(1)) if match else 0
    samples = proc.samples
    early = [rss for t, rss in samples if t <= wall / 4] or [0.0]
    late = [rss for t, rss in samples if t >= wall * 3 / 4] or [0.0]
    scenario = f"3 scale ({jobs:,}-job run, {done:,} done in {wall:.0f} s)"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return [
        Row(scenario, "peak RSS of the run", "MB", [proc.maxrss_mb], target=f"≤ {TARGET_MB:g} MB",
            passed=proc.maxrss_mb <= TARGET_MB,
            note="" if done == jobs else f"stopped early ({done:,} of {jobs:,} jobs done)"),
        Row(scenario, "RSS in the first quarter vs the last quarter (max)", "MB",
            [max(late)], "first quarter", [max(early)],
            note="growth with jobs done shows as a ratio above 1"),
    ]  # fmt: skip
