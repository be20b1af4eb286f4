"""The results table: printed, and appended to benchmarks/RESULTS.md with the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from benchmarks.common import REPO, Row, fmt, median, spread
from benchmarks.peers import curl

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
LIBRARIES = ("httpx", "aiohttp", "httpx-aiohttp", "anyio")


def machine() -> dict[str, str]:
    info = {
        "cores": str(os.cpu_count()),
        "ram": _ram(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "curl": curl.available() or "curl missing",
    }
    for name in LIBRARIES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["pipeline"] = _revision()
    return info


def _ram() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            kb = int(meminfo.readline().split()[1])
        return f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" + uncommitted changes in pipeline/" if dirty else "")


HEADER = (
    "| scenario | metric | runner: median (min–max) | baseline: median (min–max) "
    "| ratio (per-run min–max) | target | result |"
)
RULE = "|---|---|---|---|---|---|---|"


def table(rows: Sequence[Row]) -> list[str]:
    lines = [HEADER, RULE]
    for row in rows:
        value = f"{spread(row.values)} {row.unit}" if row.values else "—"
        base = (
            f"{row.baseline}: {spread(row.baseline_values)}"
            if row.baseline and row.baseline_values
            else (row.baseline or "")
        )
        ratio = ""
        if row.ratio is not None:
            ratio = f"{row.ratio:.2f}×"
            if row.pairs and len(row.pairs) > 1:
                ratio += f" ({min(row.pairs):.2f}–{max(row.pairs):.2f})"
        verdict = {True: "**met**", False: "**MISSED**", None: ""}[row.passed]
        note = f" — {row.note}" if row.note else ""
        lines.append(
            f"| {row.scenario} | {row.metric}{note} | {value} | {base} | {ratio} | "
            f"{row.target} | {verdict} |"
        )
    return lines


def section(rows: Sequence[Row], *, mode: str, runs: int, seconds: float) -> str:
    info = machine()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = [
        f"## {stamp} — `python -m benchmarks{' --quick' if mode == 'quick' else ''}` "
        f"({mode}, {runs} run(s) per figure, {seconds / 60:.1f} min)",
        "",
        f"Machine: {info['cores']} cores, {info['ram']} RAM, {info['cpu']}; {info['os']}; "
        f"Python {info['python']}; {info['curl']}.",
        "Libraries: "
        + ", ".join(f"{name} {info[name]}" for name in LIBRARIES)
        + f". pipeline at {info['pipeline']}.",
        "",
    ]
    return "\n".join([*head, *table(rows), ""]) + "\n"


def append(text: str, path: Path = RESULTS) -> None:
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nAppended by `make bench` (`python -m benchmarks`). Each "
            "figure is the median with min–max over the runs; each ratio is against the "
            "baseline measured in the same run (rounds interleaved).\n\n"
        )
    with path.open("a", encoding="utf-8") as out:
        out.write(text)


def summary(rows: Sequence[Row]) -> str:
    met = sum(1 for r in rows if r.passed is True)
    missed = [r for r in rows if r.passed is False]
    text = f"targets met: {met}, missed: {len(missed)}"
    for row in missed:
        figure = f"{fmt(median(row.values))} {row.unit}"
        text += f"\n  MISSED {row.scenario}: {row.metric} = {figure} (target {row.target})"
    return text
