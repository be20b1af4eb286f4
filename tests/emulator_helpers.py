"""What the emulator tests (tests/test_emulator_*.py) share: one emulator in-process with
a client holding a key, a callback receiver, and waiting for a condition.

Each API's own calls (submit, poll, its error-body checks) stay in its test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from aiohttp import web

from pipeline.emulators import ManualClock, RunningEmulator, serve


@asynccontextmanager
async def emulator_client(
    name: str, headers: Mapping[str, str], clock: ManualClock | None = None, **knobs: Any
) -> AsyncIterator[tuple[RunningEmulator, httpx.AsyncClient]]:
    """The emulator ``name`` with ``knobs`` (no task jitter unless asked), and a client
    sending ``headers`` (its key) to it."""
    settings = {"task_jitter": 0.0, **knobs}
    async with serve([name], knobs={name: settings}, clock=clock) as running:
        emulator = running[name]
        async with httpx.AsyncClient(
            base_url=emulator.base_url, headers=dict(headers), timeout=10.0
        ) as client:
            yield emulator, client


@asynccontextmanager
async def hook_server(statuses: list[int] | None = None) -> AsyncIterator[tuple[str, list[Any]]]:
    """A callback receiver answering ``statuses`` in turn (then 200); yields its URL and
    the bodies it got."""
    bodies: list[Any] = []
    answers = list(statuses or [])

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({}, status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", bodies
    finally:
        await runner.cleanup()


async def wait_until(condition: Callable[[], object], seconds: float = 10.0) -> None:
    """Return once ``condition()`` is true; fail after ``seconds``."""
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.02)
