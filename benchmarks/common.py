"""What every scenario shares: measured child processes, emulators, specs, result rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
BENCH_KEY = "bench_key_not_secret"


# -- configuration and results -----------------------------------------------------------


@dataclass
class Config:
    """How big and how often. ``size`` is "full", "quick" or "tiny" (the smoke test)."""

    size: str = "full"
    runs: int = 3
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pipeline-bench")
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)
    options: dict[str, Any] = field(default_factory=dict)

    def pick(self, full: Any, quick: Any, tiny: Any) -> Any:
        return {"full": full, "quick": quick, "tiny": tiny}[self.size]

    def scratch(self, name: str) -> Path:
        """A fresh, empty directory under the work directory."""
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


@dataclass
class Row:
    """One figure of one scenario: the runner's samples, and its baseline's if any.

    ``pairs`` holds per-run ratios (runner / baseline) when both ran in the same round.
    ``higher_is_better`` says which direction the target points.
    """

    scenario: str
    metric: str
    unit: str
    values: list[float]
    baseline: str | None = None
    baseline_values: list[float] | None = None
    pairs: list[float] | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline_values or not self.values:
            return None
        base = statistics.median(self.baseline_values)
        return statistics.median(self.values) / base if base else None


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``median (min–max)`` with a sensible number of significant digits."""
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- measured child processes ------------------------------------------------------------


@dataclass
class Proc:
    """A finished child: wall time, its own CPU (user+sys) and peak RSS, exit code."""

    args: list[str]
    started: float  # epoch seconds just before it was spawned
    wall: float
    user: float
    sys: float
    maxrss_mb: float
    rc: int
    stdout: str
    stderr: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t, rss MB)
    jobs: int = 0  # filled in by scenarios that count jobs

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def json(self) -> Any:
        """The last line of stdout, parsed (drivers and peers print one JSON object)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError(f"{self.args[:4]} printed nothing; stderr: {self.stderr[-2000:]}")
        return json.loads(lines[-1])

    def check(self) -> Proc:
        if self.rc != 0:
            raise RuntimeError(f"{' '.join(self.args[:6])} exited {self.rc}: {self.stderr[-2000:]}")
        return self


def run_measured(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    watch: Callable[[subprocess.Popen[bytes], float], bool] | None = None,
    interval: float = 0.05,
    sample_rss: bool = False,
) -> Proc:
    """Run ``args`` to the end and return its own rusage (``os.wait4``, not the
    harness's, not the emulator's). ``watch(process, elapsed)`` is called every
    ``interval`` while it runs; returning True sends it SIGINT (a clean stop).

    The exit is polled for every 1% of the time elapsed (at least 1 ms, at most
    ``interval``): a fixed 50 ms poll made a 0.2 s curl download read as 0.25 s (curl's
    figures in scenario 2 were capped at 797 MB/s by it)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.time()
        t0 = time.perf_counter()
        process = subprocess.Popen(list(args), cwd=cwd, env=full_env, stdout=out, stderr=err)
        samples: list[tuple[float, float]] = []
        interrupted = False
        next_look = 0.0  # when to sample RSS and call ``watch`` next
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - t0
            if elapsed >= next_look:
                next_look = elapsed + interval
                if sample_rss:
                    rss = _rss_mb(process.pid)
                    if rss is not None:
                        samples.append((elapsed, rss))
                if watch is not None and not interrupted and watch(process, elapsed):
                    process.send_signal(signal.SIGINT)
                    interrupted = True
            if elapsed > timeout:
                process.kill()
            time.sleep(min(interval, max(0.001, elapsed / 100)))
        wall = time.perf_counter() - t0
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(
            list(args),
            started,
            wall,
            usage.ru_utime,
            usage.ru_stime,
            usage.ru_maxrss / 1024,
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            samples,
        )


def run_measured_together(
    commands: Sequence[Sequence[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> list[Proc]:
    """Start every command at once and wait for all: each one's own rusage (``os.wait4``
    on its pid) and its wall time from the common start to its own exit, so the slowest
    one's ``wall`` is the group's. Past ``timeout`` the rest are killed."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    with ExitStack() as files:
        outs = [(files.enter_context(tempfile.TemporaryFile()),
                 files.enter_context(tempfile.TemporaryFile())) for _ in commands]  # fmt: skip
        started = time.time()
        t0 = time.perf_counter()
        processes = [
            subprocess.Popen(list(args), cwd=cwd, env=full_env, stdout=out, stderr=err)
            for args, (out, err) in zip(commands, outs, strict=True)
        ]
        ended: dict[int, tuple[float, int, Any]] = {}  # index -> (wall, status, rusage)
        killed = False
        while len(ended) < len(processes):
            elapsed = time.perf_counter() - t0
            for index, process in enumerate(processes):
                if index in ended:
                    continue
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    ended[index] = (time.perf_counter() - t0, status, usage)
            if elapsed > timeout and not killed:
                for index, process in enumerate(processes):
                    if index not in ended:
                        process.kill()
                killed = True
            time.sleep(min(0.05, max(0.001, elapsed / 100)))
        procs = []
        for index, (args, (out, err)) in enumerate(zip(commands, outs, strict=True)):
            wall, status, usage = ended[index]
            processes[index].returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            procs.append(
                Proc(list(args), started, wall, usage.ru_utime, usage.ru_stime,
                     usage.ru_maxrss / 1024, processes[index].returncode,
                     out.read().decode(errors="replace"), err.read().decode(errors="replace"))
            )  # fmt: skip
        return procs


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent so far (user + nice + system, all cores,
    from /proc/stat): every process counts, not only ours."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    user, nice, system = (int(value) for value in fields[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def runner_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "pipeline", *args]


# -- emulators in their own process -----------------------------------------------------


class Emulator:
    """``pipeline emulate`` for one provider in a separate process (its CPU is its own)."""

    def __init__(self, provider: str, knobs: dict[str, Any]) -> None:
        args = [PYTHON, "-m", "pipeline", "emulate", "--provider", provider, "--port", "0"]
        for key, value in knobs.items():
            args += ["--knob", f"{key}={json.dumps(value)}"]
        self.provider = provider
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"emulator {provider} exited with {self.process.wait()}")
        name, _, self.url = line.strip().partition(" ")
        assert name == provider, line

    def admin(self, what: str) -> Any:
        response = httpx.get(f"{self.url}/_emulator/{what}", timeout=60)
        response.raise_for_status()
        return response.json()

    def configure(self, **knobs: Any) -> None:
        httpx.post(f"{self.url}/_emulator/config", json=knobs, timeout=30).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_emulator/reset", timeout=60).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def emulator(provider: str, **knobs: Any) -> Iterator[Emulator]:
    running = Emulator(provider, knobs)
    try:
        yield running
    finally:
        running.stop()


# -- specs -------------------------------------------------------------------------------


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(f"benchmark prompt number {i}\n" for i in range(count)))
    return path


def write_spec(
    directory: Path,
    *,
    url: str,
    prompts: int,
    seeds: int,
    concurrency: int,
    out: Path | str,
    provider: str = "pixellabs",
    poll: str | None = None,
    name: str = "bench",
    extra_provider: str = "",
    deadline: str = "1h",
) -> Path:
    """A spec of ``prompts`` × ``seeds`` jobs (prompts from a file, streamed)."""
    write_prompts(directory / "prompts.txt", prompts)
    poll_line = f"  poll: {poll}\n" if poll else ""
    text = (
        f"name: {name}\n"
        f"output:\n  root: {out}\n"
        f"providers:\n  {provider}:\n    base_url: {url}\n    api_key: {BENCH_KEY}\n"
        f"    concurrency: {concurrency}\n{extra_provider}"
        "prompts:\n  - file: prompts.txt\n"
        f"seeds: {{start: 0, count: {seeds}}}\n"
        f"run:\n  deadline: {deadline}\n{poll_line}"
    )
    path = directory / "spec.yaml"
    path.write_text(text)
    return path


def count_outputs(root: Path, suffix: str = ".png") -> int:
    return sum(1 for p in root.rglob(f"*{suffix}") if p.is_file())
