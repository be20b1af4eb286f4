"""Virtual time for components that take an injected ``clock`` and ``sleep``.

Sleepers wait on events; the clock moves only when the test says so (``advance``) or,
under ``drive``, whenever every task is blocked (it jumps to the next wake-up). Nothing
really waits, so a test of minutes of spacing runs in milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.lowlevel import checkpoint

T = TypeVar("T")
EPOCH = 1_700_000_000.0


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await checkpoint()  # as ``anyio.sleep(0)``: a turn for the others, no wait
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), event))
        try:
            await event.wait()
        finally:
            event.set()  # a cancelled sleeper is no wake-up to jump to (``_prune``)

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].is_set():
            heapq.heappop(self._sleepers)

    def _next_wake(self) -> float | None:
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    def _wake_until(self, moment: float) -> None:
        self.now = max(self.now, moment)
        while self._sleepers and self._sleepers[0][0] <= moment:
            heapq.heappop(self._sleepers)[2].set()

    async def settle(self) -> None:
        """Return once every other task is blocked (cheap yields first, then anyio's check,
        which polls every 0.1 s while something still runs)."""
        for _ in range(20):
            await checkpoint()
        await anyio.wait_all_tasks_blocked()

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: wake each sleeper at its time, letting the others run."""
        target = self.now + seconds
        await self.settle()
        while (wake := self._next_wake()) is not None and wake <= target:
            self._wake_until(wake)
            await self.settle()
        self.now = target

    async def drive(self, main: Callable[[], Awaitable[T]]) -> T:
        """Run ``main`` to the end, jumping the clock whenever everything waits.

        ``main`` must not wait for blocked tasks itself (``settle``, ``advance``): it would
        race the jumps."""
        results: list[T] = []
        async with anyio.create_task_group() as group:

            async def run_main() -> None:
                results.append(await main())
                group.cancel_scope.cancel()

            group.start_soon(run_main)
            while True:
                await self.settle()
                wake = self._next_wake()
                if wake is None or math.isinf(wake):
                    raise RuntimeError("deadlock: every task is blocked and nobody sleeps")
                self._wake_until(wake)
                await checkpoint()
        return results[0]
