"""wait_event: an event wait with a timeout, on real time or on an injected sleep."""

from __future__ import annotations

import anyio
import pytest

from pipeline.completion.timing import wait_event

from .virtual_time import VirtualTime

pytestmark = pytest.mark.anyio


async def set_soon(event: anyio.Event) -> None:
    event.set()


async def test_real_time_a_set_event_wins_and_a_timeout_ends_the_wait() -> None:
    event = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(set_soon, event)
        assert await wait_event(event, 30.0)
    assert not await wait_event(anyio.Event(), 0.01)


async def test_on_virtual_time_the_injected_sleep_decides_when_time_is_up() -> None:
    vt = VirtualTime()
    outcomes: list[tuple[bool, float]] = []

    async def wait(event: anyio.Event, seconds: float) -> None:
        outcomes.append((await wait_event(event, seconds, vt.sleep), vt.now))

    late, early = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(wait, late, 5.0)
        group.start_soon(wait, early, 5.0)
        await vt.advance(2.0)
        early.set()
        await vt.advance(4.0)
    assert outcomes == [(True, 2.0), (False, 5.0)]
    assert vt.now == 6.0
