"""The beginner's version of the baseline: the same batch with plain httpx (its default
transport), a semaphore, submit → poll → download to disk. No manifest, no fsync.

Same arguments and output as ``aiohttp_script``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from benchmarks.peers.aiohttp_script import parse


async def one_job(client, sem, args, prompt, seed, out: Path) -> bool:
    async with sem:
        r = await client.post("/v1/generate", json={"prompt": prompt, "seed": seed})
        r.raise_for_status()
        gen_id = r.json()["generationId"]
        delay = args.poll_initial
        while True:
            await asyncio.sleep(delay)
            r = await client.get(f"/v1/generate/{gen_id}")
            r.raise_for_status()
            status = r.json()
            if status["status"] == "completed":
                break
            if status["status"] == "failed":
                return False
            delay = min(max(delay, 0.05) * args.poll_factor, args.poll_max)
        async with client.stream("GET", status["imageUrl"]) as r:
            r.raise_for_status()
            with open(out / f"{gen_id}.png", "wb") as file:
                async for chunk in r.aiter_bytes(1 << 20):
                    file.write(chunk)
        return True


async def main(args) -> dict:
    prompts = Path(args.prompts).read_text().splitlines()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {args.key}"}
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, limits=limits, timeout=60
    ) as client:
        jobs = [
            one_job(client, sem, args, p, seed, out) for p in prompts for seed in range(args.seeds)
        ]
        results = await asyncio.gather(*jobs)
    return {"jobs": len(jobs), "done": sum(results), "elapsed": time.perf_counter() - started}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
