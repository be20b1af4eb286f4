"""Time in the completion room, injectable: followers take ``sleep`` and ``clock``
(defaults ``anyio.sleep`` and ``time.monotonic``), so their tests run on virtual time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "Sleep", "wait_event"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


async def wait_event(event: anyio.Event, seconds: float, sleep: Sleep = anyio.sleep) -> bool:
    """Wait until ``event`` is set, at most ``seconds`` as ``sleep`` counts them.

    True when the event is set. With ``anyio.sleep`` this is ``move_on_after`` around
    ``event.wait()``; an injected sleep runs the timeout as a ``sleep`` call in a helper
    task instead, so that it decides when the time is up.
    """
    if sleep is anyio.sleep:  # real time: anyio's own deadline, no helper task
        with anyio.move_on_after(max(seconds, 0.0)):
            await event.wait()
        return event.is_set()
    if event.is_set():
        await anyio.lowlevel.checkpoint()
        return True
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_after, group.cancel_scope, max(seconds, 0.0), sleep)
        await event.wait()
        group.cancel_scope.cancel()
    return event.is_set()


async def _cancel_after(scope: anyio.CancelScope, seconds: float, sleep: Sleep) -> None:
    await sleep(seconds)
    scope.cancel()
