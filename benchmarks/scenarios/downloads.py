"""Scenario 2 — downloads: one big file, and many 2 MB files at concurrency 8.

The runner's own download path (``pipeline.outputs.download.download`` through the client of
``pipeline.http.client.make_download_client``: stream to ``.part``, sha256, verify, fsync,
rename) against ``curl`` fetching the same URLs from the same file server, a separate
aiohttp process serving from the page cache with sendfile. curl does not fsync, so a
"curl + fsync" row shows what durability alone costs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.common import PYTHON, REPO, Config, Row, median, run_measured
from benchmarks.peers import curl

NAME = "downloads"
TARGET_RATIO = 0.9
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class FileServer:
    def __init__(self, root: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.fileserver", str(root)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("file server did not start")
        self.url = line.split()[1]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def make_file(path: Path, size: int) -> Path:
    """A file of ``size`` random-ish bytes that starts and ends like a PNG (never like an
    error page; a download checks that a PNG ends with its IEND chunk)."""
    block = os.urandom(1 << 20)
    with path.open("wb") as file:
        file.write(PNG_SIGNATURE)
        left = size - len(PNG_SIGNATURE) - len(PNG_IEND)
        while left > 0:
            file.write(block[: min(left, len(block))])
            left -= len(block)
        file.write(PNG_IEND)
    return path


def run(config: Config) -> list[Row]:
    big = config.pick(200, 50, 2) * 1_000_000
    small, count = config.pick((2_000_000, 100), (2_000_000, 40), (200_000, 6))
    work = config.scratch("downloads")
    files = work / "files"
    files.mkdir()
    make_file(files / "big.png", big)
    make_file(files / "small.png", small)
    curl_version = curl.available()
    server = FileServer(files)
    try:
        cases = [
            (f"one {big / 1e6:g} MB file", [f"{server.url}/big.png"], 1, big),
            (
                f"{count} × {small / 1e6:g} MB, concurrency 8",
                [f"{server.url}/small.png?n={i}" for i in range(count)],
                8,
                small,
            ),
        ]
        rows = []
        for label, urls, parallel, size in cases:
            rows += _case(config, work, label, urls, parallel, size, curl_version)
        if curl_version is None:
            rows.append(Row("2 downloads", "curl", "", [], note="curl is not installed"))
        return rows
    finally:
        server.stop()


def _case(
    config: Config,
    work: Path,
    label: str,
    urls: list[str],
    parallel: int,
    size: int,
    curl_version: str | None,
) -> list[Row]:
    total_mb = size * len(urls) / 1e6
    speeds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for round_ in range(config.runs):
        for backend in ("aiohttp", "httpx"):
            name = f"runner[{backend}]"
            config.log(f"  downloads {label} run {round_ + 1}: {name}")
            out = _fresh(work / "out")
            args = [PYTHON, "-m", "benchmarks.drivers", "download", "--out", str(out)]
            args += ["--concurrency", str(parallel), "--size", str(size), *urls]
            proc = run_measured(args, env={"PIPELINE_HTTP_BACKEND": backend}).check()
            result = proc.json()
            assert result["bytes"] == size * len(urls), result
            speeds.setdefault(name, []).append(total_mb / result["elapsed"])
            cpu.setdefault(name, []).append(result["cpu"])  # download phase, all threads
        if curl_version is not None:
            config.log(f"  downloads {label} run {round_ + 1}: curl")
            out = _fresh(work / "out")
            proc = curl.download(urls, out, parallel=parallel)
            speeds.setdefault("curl", []).append(total_mb / proc.wall)
            cpu.setdefault("curl", []).append(proc.cpu)
            fsync_seconds = _fsync_all(out)
            speeds.setdefault("curl + fsync", []).append(total_mb / (proc.wall + fsync_seconds))
    shutil.rmtree(work / "out", ignore_errors=True)
    return _rows(label, speeds, cpu, total_mb)


def _rows(
    label: str, speeds: dict[str, list[float]], cpu: dict[str, list[float]], total_mb: float
) -> list[Row]:
    scenario = f"2 downloads ({label})"
    rows = []
    base = "curl" if "curl" in speeds else None
    for name in ("runner[aiohttp]", "runner[httpx]"):
        pairs = None
        passed = None
        if base:
            pairs = [a / b for a, b in zip(speeds[name], speeds[base], strict=True)]
            passed = median(pairs) >= TARGET_RATIO if name == "runner[aiohttp]" else None
        rows.append(
            Row(scenario, f"{name} MB/s (verify + fsync + rename)", "MB/s", speeds[name], base,
                speeds.get(base) if base else None, pairs,
                f"≥ {TARGET_RATIO:g}× curl" if name == "runner[aiohttp]" else "", passed)
        )  # fmt: skip
    rows.append(
        Row(scenario, "runner[aiohttp] CPU per MB", "ms/MB",
            [1000 * c / total_mb for c in cpu["runner[aiohttp]"]], base,
            [1000 * c / total_mb for c in cpu[base]] if base else None,
            note="runner: CPU of the download phase (all threads); curl: whole process")
    )  # fmt: skip
    if "curl + fsync" in speeds:
        rows.append(
            Row(scenario, "runner[aiohttp] MB/s vs curl + fsync", "MB/s",
                speeds["runner[aiohttp]"], "curl + fsync", speeds["curl + fsync"],
                [a / b for a, b in zip(speeds["runner[aiohttp]"], speeds["curl + fsync"],
                                       strict=True)],
                note="same durability as the runner")
        )  # fmt: skip
    return rows


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _fsync_all(directory: Path) -> float:
    import time

    started = time.perf_counter()
    for path in directory.iterdir():
        if path.suffix == ".bin":
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.perf_counter() - started
