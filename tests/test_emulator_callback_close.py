"""The emulators' callback sender stops when cancelled, whatever else wakes it in the same
moment (an emulator closed by a cancelled run must not keep its sender running)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pipeline.emulators import serve
from pipeline.emulators.callbacks import SENDER_KEY


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ticks", range(6))
def test_the_sender_stops_when_cancelled_as_it_is_woken(ticks: int) -> None:
    async def main() -> None:
        async with serve(["apixo"]) as running, aiohttp.ClientSession() as session:
            sender = running["apixo"].app[SENDER_KEY]
            ticker = asyncio.create_task(sender.run(session))
            await asyncio.sleep(0.05)  # waiting for work
            sender._wake.set()  # work came in…
            for _ in range(ticks):
                await asyncio.sleep(0)
            ticker.cancel()  # …as the emulator closes
            done, _ = await asyncio.wait([ticker], timeout=5)
            assert ticker in done, "the sender went on after it was cancelled"
            assert ticker.cancelled()

    asyncio.run(main())
