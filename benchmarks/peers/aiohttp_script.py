"""The baseline a competent user writes for a one-off batch: asyncio + aiohttp, a
semaphore, submit → poll → download to disk. No manifest, no sidecars, no fsync, no
verification beyond the HTTP status.

    python -m benchmarks.peers.aiohttp_script --base-url URL --prompts FILE --seeds N \
        --concurrency 64 --out DIR [--poll-initial 1 --poll-max 30 --poll-factor 1.5]

Prints one JSON line: {"jobs", "done", "elapsed"} (elapsed excludes interpreter start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp


async def one_job(session, sem, args, prompt, seed, out: Path) -> bool:
    async with sem:
        async with session.post("/v1/generate", json={"prompt": prompt, "seed": seed}) as r:
            r.raise_for_status()
            gen_id = (await r.json())["generationId"]
        delay = args.poll_initial
        while True:
            await asyncio.sleep(delay)
            async with session.get(f"/v1/generate/{gen_id}") as r:
                r.raise_for_status()
                status = await r.json()
            if status["status"] == "completed":
                break
            if status["status"] == "failed":
                return False
            delay = min(max(delay, 0.05) * args.poll_factor, args.poll_max)
        async with session.get(status["imageUrl"]) as r:
            r.raise_for_status()
            with open(out / f"{gen_id}.png", "wb") as file:
                async for chunk in r.content.iter_chunked(1 << 20):
                    file.write(chunk)
        return True


async def main(args) -> dict:
    prompts = Path(args.prompts).read_text().splitlines()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"Authorization": f"Bearer {args.key}"}
    started = time.perf_counter()
    async with aiohttp.ClientSession(args.base_url, headers=headers, connector=connector) as s:
        jobs = [one_job(s, sem, args, p, seed, out) for p in prompts for seed in range(args.seeds)]
        results = await asyncio.gather(*jobs)
    return {"jobs": len(jobs), "done": sum(results), "elapsed": time.perf_counter() - started}


def parse(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", default="bench_key_not_secret")
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--seeds", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--poll-initial", type=float, default=1.0)
    parser.add_argument("--poll-max", type=float, default=30.0)
    parser.add_argument("--poll-factor", type=float, default=1.5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
