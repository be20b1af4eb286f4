"""Small programs that drive the runner's own code paths where the CLI has no command
for exactly the step being measured. Each prints one JSON line.

    python -m benchmarks.drivers download --concurrency 8 --out DIR URL...
        pipeline.outputs.download.download with the client of
        pipeline.http.client.make_download_client
    python -m benchmarks.drivers manifest SPEC
        what `pipeline run` does before its first request: load + check the spec,
        open the manifest, add every job
    python -m benchmarks.drivers age OUTROOT --done-share 0.99
        mark that share of the manifest's jobs done (a resume test's starting point)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

import anyio


async def _download(urls: list[str], out: Path, concurrency: int, size: int | None) -> dict:
    from pipeline.http.client import make_download_client
    from pipeline.models import OutputRef
    from pipeline.outputs.download import download
    from pipeline.outputs.guard import DownloadPolicy

    limiter = anyio.CapacityLimiter(concurrency)
    policy = DownloadPolicy(allow_private=True)  # the benchmark's file hosts are on loopback
    total = 0

    async def one(index: int, url: str) -> None:
        nonlocal total
        async with limiter:
            ref = OutputRef(url, ext="png", size=size, content_type="image/")
            dest = out / f"{index}.png"
            output = await download(
                client,
                ref,
                dest,
                job_id=f"job{index}",
                index=0,
                rel_path=dest.name,
                policy=policy,
            )
            total += output.size

    async with make_download_client(timeout=120, max_connections=max(concurrency, 8)) as client:
        started, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as group:
            for index, url in enumerate(urls):
                group.start_soon(one, index, url)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"bytes": total, "elapsed": elapsed, "cpu": cpu, "files": len(urls)}


def _manifest(spec_path: Path) -> dict:
    from pipeline.commands import EXPANSION_KEY, expansion_fingerprint, load_checked_spec
    from pipeline.manifest.store import Manifest
    from pipeline.matrix import iter_jobs

    started = time.perf_counter()
    spec = load_checked_spec(spec_path)
    checked = time.perf_counter()
    with Manifest.open(spec.output.root, spec_name=spec.name) as manifest:
        added = manifest.add_jobs(iter_jobs(spec))
        # as `pipeline run` leaves it: the expansion is recorded, so a resume can skip it
        manifest.set_meta(EXPANSION_KEY, expansion_fingerprint(spec))
    return {
        "added": added,
        "check_seconds": checked - started,
        "add_seconds": time.perf_counter() - checked,
        "elapsed": time.perf_counter() - started,
    }


def _age(root: Path, share: float) -> dict:
    """Mark ``share`` of the jobs done, spread evenly (every 1/(1-share)-th stays pending)."""
    keep_every = max(1, round(1 / (1 - share))) if share < 1 else 0
    conn = sqlite3.connect(root / "manifest.sqlite")
    with conn:
        where = f"rowid % {keep_every} != 0" if keep_every else "1"
        done = conn.execute(
            f"UPDATE jobs SET state = 'done', finished_at = updated_at WHERE {where}"
        ).rowcount
        pending = conn.execute("SELECT count(*) FROM jobs WHERE state = 'pending'").fetchone()[0]
    conn.close()
    return {"done": done, "pending": pending}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drivers")
    sub = parser.add_subparsers(dest="what", required=True)
    dl = sub.add_parser("download")
    dl.add_argument("--concurrency", type=int, default=1)
    dl.add_argument("--out", type=Path, required=True)
    dl.add_argument("--size", type=int)
    dl.add_argument("urls", nargs="+")
    mf = sub.add_parser("manifest")
    mf.add_argument("spec", type=Path)
    age = sub.add_parser("age")
    age.add_argument("root", type=Path)
    age.add_argument("--done-share", type=float, default=0.99)
    args = parser.parse_args(argv)
    if args.what == "download":
        args.out.mkdir(parents=True, exist_ok=True)
        result = anyio.run(_download, args.urls, args.out, args.concurrency, args.size)
    elif args.what == "manifest":
        result = _manifest(args.spec)
    else:
        result = _age(args.root, args.done_share)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
