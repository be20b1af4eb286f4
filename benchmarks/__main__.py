"""``python -m benchmarks [--quick] [--scenario NAME ...] [--runs N]`` — see __init__."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.common import Config, Row
from benchmarks.scenarios import downloads, latency, overhead, requests_per_job, scale, shared

SCENARIOS = {m.NAME: m for m in (overhead, downloads, scale, requests_per_job, latency, shared)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes, 2 runs")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable)")  # fmt: skip
    parser.add_argument("--size", choices=["full", "quick", "tiny"], help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; quick 2)")
    parser.add_argument(
        "--results",
        type=Path,
        default=report.RESULTS,
        help="where to append the results (default benchmarks/RESULTS.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: $TMPDIR)")
    parser.add_argument("--overhead-jobs", type=int, help="override the overhead job count")
    parser.add_argument(
        "--provider", action="append", help="requests/latency: only this provider (repeatable)"
    )
    parser.add_argument(
        "--httpx-jobs",
        type=int,
        help="overhead jobs for the httpx contenders (default: 1,000 at most)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="overhead concurrency (repeatable; default 64 and 256)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=["aiohttp", "httpx"],
        help="runner HTTP backends for overhead (default both)",
    )
    parser.add_argument(
        "--scale-run-seconds", type=float, help="stop the 100,000-job run after this many seconds"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = args.size or ("quick" if args.quick else "full")
    config = Config(size=mode, runs=args.runs or (2 if args.quick else 3))
    if args.workdir:
        config.workdir = args.workdir
    config.options = {
        "overhead_jobs": args.overhead_jobs,
        "httpx_jobs": args.httpx_jobs,
        "providers": tuple(args.provider) if args.provider else None,
        "concurrency": tuple(args.concurrency) if args.concurrency else None,
        "backends": tuple(args.backend) if args.backend else None,
        "scale_run_seconds": args.scale_run_seconds,
    }
    names = args.scenario or list(SCENARIOS)
    started = time.perf_counter()
    rows: list[Row] = []
    for name in names:
        config.log(f"scenario {name}")
        rows += SCENARIOS[name].run(config)
    elapsed = time.perf_counter() - started
    text = report.section(rows, mode=mode, runs=config.runs, seconds=elapsed)
    print(text)
    print(report.summary(rows), file=sys.stderr)
    if not args.no_write:
        report.append(text, args.results)
        print(f"appended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
