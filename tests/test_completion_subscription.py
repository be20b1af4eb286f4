"""The subscription follower and its socket hub on virtual time, with a fake socket: events
end a follow without a status query; silence brings a safety poll; a socket that is down
means polls spaced from 1.5 s and reconnects spaced by the hub's backoff."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest

from pipeline.completion.subscription import RECONNECT_FLOOR, SocketHub, SubscriptionFollower
from pipeline.models import RemoteStatus, RemoteTask, RunSettings

from .virtual_time import VirtualTime

pytestmark = pytest.mark.anyio

RUN = RunSettings(poll_initial=1.0, poll_max=10.0, poll_factor=2.0, retries=2)
SAFETY = 30.0


class FakeSource:
    """A SubscriptionSource whose tasks run until ``finish``; records when it was polled."""

    ws_url = "ws://fake.test/graphql"

    def __init__(self, vt: VirtualTime) -> None:
        self.vt = vt
        self.done: set[str] = set()
        self.polls: list[float] = []
        self.finish_after_polls: int | None = None

    def ws_connection_params(self) -> dict[str, Any]:
        return {}

    def subscription_payload(self) -> dict[str, Any]:
        return {}

    def task_update(self, payload: Any) -> Mapping[str, Any] | None:
        return payload if isinstance(payload, Mapping) else None

    async def task_from_payload(self, payload: Mapping[str, Any]) -> RemoteTask:
        status = RemoteStatus.SUCCEEDED if payload.get("done") else RemoteStatus.RUNNING
        return RemoteTask(str(payload["id"]), status)

    def submit_sent_at(self, remote_id: str) -> float | None:
        return self.vt.now  # submitted now: the live socket covers it

    async def status(self, remote_id: str) -> RemoteTask:
        self.polls.append(self.vt.now)
        if self.finish_after_polls is not None and len(self.polls) >= self.finish_after_polls:
            self.done.add(remote_id)
        done = remote_id in self.done
        return RemoteTask(remote_id, RemoteStatus.SUCCEEDED if done else RemoteStatus.RUNNING)


class FakeSocketHub(SocketHub):
    """Connects at once and routes what the test ``send``s; ``down`` refuses connections."""

    def __init__(self, source: FakeSource, group: anyio.abc.TaskGroup, vt: VirtualTime) -> None:
        super().__init__(source, group, clock=vt.clock, sleep=vt.sleep)  # type: ignore[arg-type]
        self.down = False
        self._send, self._inbox = anyio.create_memory_object_stream[Mapping[str, Any]](100)

    async def send(self, task: Mapping[str, Any]) -> None:
        await self._send.send(task)

    async def _connect_once(self, http: aiohttp.ClientSession) -> None:
        self.stats["connect_attempts"] += 1
        if self.down:
            raise OSError("connection refused")
        self._set_live()
        async for task in self._inbox:
            self.route(task)


@asynccontextmanager
async def hub_and_follower(
    vt: VirtualTime, *, down: bool = False
) -> AsyncIterator[tuple[FakeSocketHub, SubscriptionFollower, FakeSource]]:
    source = FakeSource(vt)
    async with anyio.create_task_group() as group:
        hub = FakeSocketHub(source, group, vt)
        hub.down = down
        follower = SubscriptionFollower(hub, source, RUN, safety_poll=SAFETY)  # type: ignore[arg-type]
        hub.start()
        yield hub, follower, source
        group.cancel_scope.cancel()


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


def ignore(task: RemoteTask) -> None:
    return None


async def test_an_event_ends_the_follow_without_a_status_query(vt: VirtualTime) -> None:
    results: list[RemoteTask] = []
    with anyio.fail_after(10):
        async with hub_and_follower(vt) as (hub, follower, source):
            await follower.ready()
            assert hub.live
            async with anyio.create_task_group() as jobs:

                async def follow() -> None:
                    results.append(await follower.follow("t", on_update=ignore))

                jobs.start_soon(follow)
                await vt.settle()
                await hub.send({"id": "t", "done": False})
                await vt.settle()
                await hub.send({"id": "t", "done": True})
    assert [task.status for task in results] == [RemoteStatus.SUCCEEDED]
    assert source.polls == [] and vt.now == 0.0
    assert hub.stats["events"] == 2


async def test_silence_brings_one_safety_poll_per_safety_interval(vt: VirtualTime) -> None:
    with anyio.fail_after(10):
        async with hub_and_follower(vt) as (hub, follower, source):
            await follower.ready()
            async with anyio.create_task_group() as jobs:
                jobs.start_soon(lambda: follower.follow("t", on_update=ignore))
                await vt.advance(SAFETY - 0.1)
                assert source.polls == []
                await vt.advance(0.2)
                assert source.polls == [SAFETY]
                await vt.advance(SAFETY)
                assert source.polls == [SAFETY, 2 * SAFETY]
                assert hub.stats["polls_safety"] == 2
                source.done.add("t")
                await vt.advance(SAFETY)
            assert source.polls == [SAFETY, 2 * SAFETY, 3 * SAFETY]


async def test_while_the_socket_is_down_polls_are_spaced_from_1_5_s(vt: VirtualTime) -> None:
    async def scenario() -> tuple[list[float], int]:
        async with hub_and_follower(vt, down=True) as (hub, follower, source):
            await follower.ready()  # the first attempt failed
            assert not hub.live
            source.finish_after_polls = 4
            task = await follower.follow("t", on_update=ignore)
            assert task.status is RemoteStatus.SUCCEEDED
            return source.polls, hub.stats["connect_attempts"]

    with anyio.fail_after(10):
        polls, attempts = await vt.drive(scenario)
    # 1.5 s (PixAI's floor), then x poll_factor up to poll_max
    assert polls == pytest.approx([1.5, 4.5, 10.5, 20.5])
    # a reconnect every RECONNECT_FLOOR (the suite zeroes backoff) on the same clock
    assert abs(attempts - 20.5 / RECONNECT_FLOOR) <= 2
