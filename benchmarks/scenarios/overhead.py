"""Scenario 1 — overhead: many jobs whose tasks finish at once, 100 KB outputs.

The runner (`pipeline run`, manifest + sidecars + verification on, both HTTP backends)
against the hand-written peers, each in its own process against the same emulator
process (reset between runs). Rounds are interleaved so drift hits every contender alike.

Every run writes into a directory of its own, and they are all deleted at the end of
the scenario, not between runs: on ext4, creating files soon after thousands were
deleted makes the kernel scan for inodes it may not reuse yet (``recently_deleted``),
which measured 1 → 2+ s of system time per 2,000 jobs as runs piled up — a cost of
the benchmark's churn, not of the contenders. When the disk lacks room for that, each
run's directory is deleted before the next (and the log says so).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    PYTHON,
    Config,
    Emulator,
    Proc,
    Row,
    emulator,
    median,
    run_measured,
    runner_cmd,
    write_spec,
)

NAME = "overhead"
KNOBS = {"task_seconds": 0, "task_jitter": 0, "render": False, "output_bytes": 100_000}
POLL_INITIAL = 0.001
TARGET_JOBS_PER_S = 500.0
TARGET_CPU_RATIO = 2.0


def run(config: Config) -> list[Row]:
    jobs = config.options.get("overhead_jobs") or config.pick(10_000, 2_000, 30)
    prompts = config.pick(100, 40, 6)
    seeds = max(1, jobs // prompts)
    jobs = prompts * seeds
    concurrencies = config.options.get("concurrency") or config.pick((64, 256), (64, 256), (8,))
    backends = config.options.get("backends") or ("aiohttp", "httpx")
    # httpx's own transport is slow enough that 10,000 jobs would take minutes per run;
    # its contenders run fewer jobs (figures are per job, so they stay comparable).
    httpx_jobs = config.options.get("httpx_jobs") or min(jobs, 1_000)
    rows: list[Row] = []
    outputs = _Outputs(config, jobs, len(concurrencies) * config.runs * 4)
    with emulator("pixellabs", **KNOBS) as emu:
        for concurrency in concurrencies:
            results: dict[str, list[Proc]] = {}
            emu_cpu: dict[str, list[float]] = {}
            for round_ in range(config.runs):
                for name, launch in _contenders(
                    config, emu, jobs, prompts, seeds, concurrency, backends, httpx_jobs, outputs
                ):
                    config.log(f"  overhead c={concurrency} run {round_ + 1}: {name}")
                    emu.reset()
                    before = emu_cpu_seconds(emu)
                    proc = launch()
                    emu_cpu.setdefault(name, []).append(emu_cpu_seconds(emu) - before)
                    results.setdefault(name, []).append(proc)
            rows += _rows(concurrency, jobs, results, emu_cpu)
    outputs.remove_all()
    return rows


class _Outputs:
    """A fresh output directory for every run (see the module docstring)."""

    def __init__(self, config: Config, jobs: int, runs: int) -> None:
        import shutil

        self.root = config.scratch("overhead-outputs")
        self._count = 0
        needed = 2 * runs * jobs * KNOBS["output_bytes"]  # outputs, sidecars, slack
        self.keep = shutil.disk_usage(self.root).free > needed
        if not self.keep:
            config.log(f"  overhead: under {needed / 1e9:.0f} GB free; clearing between runs")

    def fresh(self) -> Path:
        if not self.keep:
            self.remove_all()
        self._count += 1
        return self.root / f"run-{self._count:03d}"

    def remove_all(self) -> None:
        import shutil

        for path in list(self.root.iterdir()):
            shutil.rmtree(path, ignore_errors=True)


def _contenders(
    config: Config,
    emu: Emulator,
    jobs: int,
    prompts: int,
    seeds: int,
    concurrency: int,
    backends: tuple[str, ...],
    httpx_jobs: int,
    outputs: _Outputs,
) -> list[tuple[str, Callable[[], Proc]]]:
    work = config.scratch(f"overhead-c{concurrency}")
    out = "${BENCH_OUT}"  # a fresh directory per run, from the environment
    poll = f"{{initial: {POLL_INITIAL}s, max: 0.5s}}"
    spec = write_spec(
        work, url=emu.url, prompts=prompts, seeds=seeds, concurrency=concurrency, out=out,
        poll=poll,
    )  # fmt: skip
    small = config.scratch(f"overhead-c{concurrency}-httpx")
    small_seeds = max(1, httpx_jobs // prompts)
    small_spec = write_spec(
        small, url=emu.url, prompts=prompts, seeds=small_seeds, concurrency=concurrency,
        out=out, poll=poll,
    )  # fmt: skip

    def runner(backend: str) -> Callable[[], Proc]:
        spec_, work_, jobs_ = (spec, work, jobs)
        if backend == "httpx":
            spec_, work_, jobs_ = (small_spec, small, prompts * small_seeds)

        def launch() -> Proc:
            proc = run_measured(
                runner_cmd("run", str(spec_), "--quiet"),
                cwd=work_,
                env={"PIPELINE_HTTP_BACKEND": backend, "BENCH_OUT": str(outputs.fresh())},
            ).check()
            if f"done {jobs_}/{jobs_}" not in proc.stdout:
                raise RuntimeError(f"runner did not finish every job: {proc.stdout[-500:]}")
            proc.jobs = jobs_
            return proc

        return launch

    def peer(module: str) -> Callable[[], Proc]:
        seeds_ = small_seeds if module == "httpx_script" else seeds

        def launch() -> Proc:
            args = [PYTHON, "-m", f"benchmarks.peers.{module}", "--base-url", emu.url]
            args += ["--prompts", str(work / "prompts.txt"), "--seeds", str(seeds_)]
            args += ["--concurrency", str(concurrency), "--out", str(outputs.fresh())]
            args += ["--poll-initial", str(POLL_INITIAL), "--poll-max", "0.5"]
            proc = run_measured(args, cwd=work).check()
            proc.jobs = proc.json()["jobs"]
            if proc.json()["done"] != proc.jobs:
                raise RuntimeError(f"{module} did not finish every job: {proc.stdout}")
            return proc

        return launch

    contenders = [(f"runner[{b}]", runner(b)) for b in backends]
    contenders.append(("aiohttp script", peer("aiohttp_script")))
    if "httpx" in backends:
        contenders.append(("httpx script", peer("httpx_script")))
    return contenders


def emu_cpu_seconds(emu: Emulator) -> float:
    """The emulator process's CPU so far (utime + stime), from /proc."""
    import os

    with open(f"/proc/{emu.process.pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rows(
    concurrency: int, jobs: int, results: dict[str, list[Proc]], emu_cpu: dict[str, list[float]]
) -> list[Row]:
    def rate(name: str) -> list[float]:
        return [p.jobs / p.wall for p in results[name]]

    def cpu_ms(name: str) -> list[float]:
        return [1000 * p.cpu / p.jobs for p in results[name]]

    def pairs(metric: Callable[[str], list[float]], a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(metric(a), metric(b), strict=True)]

    scenario = f"1 overhead ({jobs:,} jobs, c={concurrency})"
    main, peer = "runner[aiohttp]", "aiohttp script"
    rows = []
    if main in results:
        speed = rate(main)
        cpu_ratio = pairs(cpu_ms, main, peer)
        rows += [
            Row(scenario, "jobs/s (wall, process start → exit)", "jobs/s", speed, peer,
                rate(peer), pairs(rate, main, peer), f"≥ {TARGET_JOBS_PER_S:g}",
                median(speed) >= TARGET_JOBS_PER_S),
            Row(scenario, "runner CPU per job", "ms", cpu_ms(main), peer, cpu_ms(peer),
                cpu_ratio, f"≤ {TARGET_CPU_RATIO:g}× {peer}",
                median(cpu_ratio) <= TARGET_CPU_RATIO),
            Row(scenario, "runner peak RSS", "MB", [p.maxrss_mb for p in results[main]], peer,
                [p.maxrss_mb for p in results[peer]]),
            Row(scenario, "emulator CPU per job (runner's run)", "ms",
                [1000 * s / jobs for s in emu_cpu[main]], peer,
                [1000 * s / jobs for s in emu_cpu[peer]],
                note="the other process on the same 2 cores"),
        ]  # fmt: skip
    alt = "runner[httpx]"
    if alt in results and main in results:
        rows += [
            Row(scenario, "jobs/s, PIPELINE_HTTP_BACKEND=httpx", "jobs/s", rate(alt), main,
                rate(main), pairs(rate, alt, main),
                note=f"backend choice; {results[alt][0].jobs:,} jobs per run"),
            Row(scenario, "CPU per job, PIPELINE_HTTP_BACKEND=httpx", "ms", cpu_ms(alt), main,
                cpu_ms(main), pairs(cpu_ms, alt, main), note="backend choice"),
        ]  # fmt: skip
    beginner = "httpx script"
    if beginner in results:
        rows += [
            Row(scenario, "httpx script jobs/s (beginner's peer)", "jobs/s", rate(beginner),
                peer, rate(peer), pairs(rate, beginner, peer),
                note=f"{results[beginner][0].jobs:,} jobs per run"),
            Row(scenario, "httpx script CPU per job", "ms", cpu_ms(beginner), peer,
                cpu_ms(peer), pairs(cpu_ms, beginner, peer)),
        ]  # fmt: skip
    return rows
