"""Completion by GraphQL subscription: one shared WebSocket per API key.

PixAI streams every task of an account on one subscription
(``personalEvents { taskUpdated }``), so a run keeps ONE socket per API key and routes
each event to whoever waits for that task id (``SocketHub``). The socket speaks
``graphql-transport-ws`` (graphql-ws v5): ``connection_init`` with the adapter's
connection params, ``connection_ack``, one ``subscribe``, then ``next`` events;
``ping`` is answered with ``pong``.

Polls (``adapter.status``) happen only where events cannot be trusted:

- **while the socket is down**: each task is polled, spaced as the run's ``poll``
  settings say but never closer than 1.5 s (PixAI asks for that);
- **when the socket (re)connects**: events sent while it was down are lost, so every
  task in flight is reconciled with ONE status query — except tasks this adapter
  submitted after the current subscription went live (their events cannot have been
  missed);
- **a safety net**: a task that heard nothing for ``options.ws_safety_poll`` seconds
  (default ``max(poll_max, 30)``) is polled once, in case an event was lost.

With the socket healthy a job costs no status query at all. Events for tasks nobody
waits for are kept in a small bounded cache (an event may overtake the ``follow`` call
of the task it belongs to) and otherwise ignored.

GraphQL knowledge stays in the adapter (``SubscriptionCapable``); this module only
moves messages. The hub's loop runs in the session's background task group and
reconnects with exponential backoff and jitter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
from anyio.abc import TaskGroup

from pipeline.completion.follower import FollowContext, Follower, UpdateCallback
from pipeline.completion.timing import Clock, Sleep, wait_event
from pipeline.models import RemoteTask, RunSettings
from pipeline.providers.base import SubscriptionCapable
from pipeline.retry import Backoff, ask_status, retrying, transient_delay
from pipeline.units import parse_duration

__all__ = ["SocketHub", "SubscriptionFollower", "create"]

PROTOCOL = "graphql-transport-ws"
SUBSCRIPTION_ID = "1"
MIN_POLL_SECONDS = 1.5
"""PixAI: poll no faster than every 1.5 s."""
SAFETY_POLL_FLOOR = 30.0
ACK_TIMEOUT = 15.0
FIRST_CONNECT_WAIT = 5.0
"""How long the first submits wait for the socket to be subscribed."""
RECENT_EVENTS = 512
"""Events of tasks nobody waits for (yet) kept, newest last."""
RECONNECT_FLOOR = 0.1
"""Never reconnect faster than this, even when backoff is switched off for tests."""


class ProtocolTrouble(Exception):
    """The server broke the protocol or ended the subscription: reconnect."""


def create(context: FollowContext, source: SubscriptionCapable) -> Follower:
    """The subscription follower of one lane; lanes with the same key share the socket."""
    secret = f"{source.ws_url}\n{context.settings.api_key or ''}"
    key = "pixai-ws:" + hashlib.sha256(secret.encode()).hexdigest()
    hub = context.services.get(key)
    if not isinstance(hub, SocketHub):
        hub = SocketHub(source, context.task_group)
        context.services[key] = hub
        hub.start()
    options = context.settings.options
    safety = parse_duration(
        options.get("ws_safety_poll", max(context.run.poll_max, SAFETY_POLL_FLOOR))
    )
    return SubscriptionFollower(hub, source, context.run, safety_poll=safety)


@dataclass(eq=False)
class Waiter:
    """One ``follow`` call: the newest event for its task and a wake-up signal."""

    remote_id: str
    latest: Mapping[str, Any] | None = None
    covered: int | None = None
    """Generation of the socket whose events are known to reach this waiter."""
    gap: float = MIN_POLL_SECONDS
    """Seconds between polls while the socket is down."""
    heard_at: float = 0.0
    """When the task's state was last learned (event or poll)."""
    wake: anyio.Event = field(default_factory=anyio.Event)
    sleep: Sleep = anyio.sleep
    """The hub's sleep: what counts the seconds of ``wait``."""

    async def wait(self, seconds: float) -> bool:
        """True when woken (event or socket change), False when ``seconds`` passed."""
        woken = await wait_event(self.wake, seconds, self.sleep)
        if woken:
            self.wake = anyio.Event()
        return woken


class SocketHub:
    """One WebSocket for one API key, its subscription, and the waiters it serves."""

    def __init__(
        self,
        source: SubscriptionCapable,
        task_group: TaskGroup,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.source = source
        self.clock = clock
        self.sleep = sleep
        self.generation = 0
        self.live_since: float | None = None
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        self._task_group = task_group
        self._started = False
        self._waiters: dict[str, set[Waiter]] = {}
        self._recent: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._backoff = Backoff(initial=0.5, factor=2.0, maximum=30.0, jitter=0.5)
        self._first_attempt = anyio.Event()

    @property
    def live(self) -> bool:
        return self.live_since is not None

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._task_group.start_soon(self._run)

    async def first_attempt_done(self) -> None:
        """Return once the first connection is subscribed or has failed (at most
        ``FIRST_CONNECT_WAIT`` s). Tasks submitted after that need no reconciling poll."""
        await wait_event(self._first_attempt, FIRST_CONNECT_WAIT, self.sleep)

    # -- waiters ------------------------------------------------------------------------

    def register(self, remote_id: str) -> Waiter:
        waiter = Waiter(remote_id, latest=self._recent.pop(remote_id, None), sleep=self.sleep)
        sent_at = self.source.submit_sent_at(remote_id)
        if self.live_since is not None and sent_at is not None and sent_at >= self.live_since:
            waiter.covered = self.generation
        self._waiters.setdefault(remote_id, set()).add(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        waiters = self._waiters.get(waiter.remote_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[waiter.remote_id]

    def route(self, task: Mapping[str, Any]) -> None:
        remote_id = str(task.get("id"))
        waiters = self._waiters.get(remote_id)
        self.stats["events"] += 1
        if not waiters:
            self.stats["events_unclaimed"] += 1
            self._recent[remote_id] = task
            self._recent.move_to_end(remote_id)
            while len(self._recent) > RECENT_EVENTS:
                self._recent.popitem(last=False)
            return
        for waiter in waiters:
            waiter.latest = task
            waiter.wake.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake.set()

    # -- the socket ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await self._connect_once(http)
                except (aiohttp.ClientError, OSError, TimeoutError, ProtocolTrouble) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                finally:
                    if self.live:
                        self.stats["drops"] += 1
                        attempt = 0
                    self._set_down()
                    self._first_attempt.set()
                attempt += 1
                await self.sleep(max(RECONNECT_FLOOR, self._backoff.delay(attempt)))

    async def _connect_once(self, http: aiohttp.ClientSession) -> None:
        self.stats["connect_attempts"] += 1
        ws = await http.ws_connect(self.source.ws_url, protocols=(PROTOCOL,), heartbeat=30.0)
        try:
            if ws.protocol != PROTOCOL:
                raise ProtocolTrouble(f"server chose subprotocol {ws.protocol!r}")
            init = {"type": "connection_init", "payload": self.source.ws_connection_params()}
            await ws.send_str(json.dumps(init))
            with anyio.fail_after(ACK_TIMEOUT):
                await self._await_ack(ws)
            subscribe = {
                "id": SUBSCRIPTION_ID,
                "type": "subscribe",
                "payload": self.source.subscription_payload(),
            }
            await ws.send_str(json.dumps(subscribe))
            self._set_live()
            await self._read(ws)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await ws.close()

    async def _await_ack(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await self._receive(ws)
            if message is None:
                raise ProtocolTrouble(f"closed before connection_ack ({ws.close_code})")
            if message.get("type") == "connection_ack":
                return
            await self._answer_ping(ws, message)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await self._receive(ws)
            if message is None:
                raise ProtocolTrouble(f"socket closed ({ws.close_code})")
            kind = message.get("type")
            if kind == "next" and message.get("id") == SUBSCRIPTION_ID:
                task = self.source.task_update(message.get("payload"))
                if task is not None:
                    self.route(task)
            elif kind in ("error", "complete") and message.get("id") == SUBSCRIPTION_ID:
                raise ProtocolTrouble(f"subscription ended: {message.get('payload', kind)}")
            else:
                await self._answer_ping(ws, message)

    @staticmethod
    async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any] | None:
        """The next JSON message, or None once the socket is closed."""
        while True:
            frame = await ws.receive()
            if frame.type is aiohttp.WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    message = json.loads(frame.data)
                    if isinstance(message, dict):
                        return message
            elif frame.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return None

    @staticmethod
    async def _answer_ping(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        if message.get("type") == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if "payload" in message:
                pong["payload"] = message["payload"]
            await ws.send_str(json.dumps(pong))

    def _set_live(self) -> None:
        self.generation += 1
        self.live_since = self.clock()
        self.stats["connects"] += 1
        self._first_attempt.set()
        self._wake_all()

    def _set_down(self) -> None:
        if self.live_since is not None:
            self.live_since = None
            self._wake_all()


class SubscriptionFollower:
    """Waits for a task's terminal event; polls only where events cannot be trusted."""

    def __init__(
        self, hub: SocketHub, source: SubscriptionCapable, run: RunSettings, *, safety_poll: float
    ) -> None:
        self._hub = hub
        self._source = source
        self._run = run
        self._safety_poll = safety_poll
        self._backoff = Backoff(initial=1.0, factor=2.0, maximum=run.poll_max)

    @property
    def hub(self) -> SocketHub:
        return self._hub

    async def ready(self) -> None:
        """Hold submits until the first connection is subscribed (or failed), so events of
        the first tasks cannot be missed and need no reconciling poll."""
        await self._hub.first_attempt_done()

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask:
        self._hub.start()
        waiter = self._hub.register(remote_id)
        try:
            return await self._until_terminal(waiter, on_update)
        finally:
            self._hub.unregister(waiter)

    async def _until_terminal(self, waiter: Waiter, on_update: UpdateCallback) -> RemoteTask:
        waiter.gap = self._first_gap()
        waiter.heard_at = self._hub.clock()
        while True:
            task = await self._next_news(waiter)
            if task is None:
                continue
            waiter.heard_at = self._hub.clock()
            on_update(task)
            if task.status.terminal:
                return task

    def _first_gap(self) -> float:
        return max(self._run.poll_initial, MIN_POLL_SECONDS)

    async def _next_news(self, waiter: Waiter) -> RemoteTask | None:
        """An event, or a poll where one is due; None after waking for nothing."""
        hub = self._hub
        payload, waiter.latest = waiter.latest, None
        if payload is not None:
            return await self._retry(lambda: self._source.task_from_payload(payload))
        if hub.live and waiter.covered != hub.generation:
            generation = hub.generation
            task = await self._poll(waiter.remote_id, "polls_reconcile")
            waiter.covered, waiter.gap = generation, self._first_gap()
            return task
        if hub.live:
            if await waiter.wait(waiter.heard_at + self._safety_poll - hub.clock()):
                return None
            return await self._poll(waiter.remote_id, "polls_safety")
        if await waiter.wait(waiter.gap):
            return None
        waiter.gap = min(waiter.gap * self._run.poll_factor, max(self._run.poll_max, waiter.gap))
        return await self._poll(waiter.remote_id, "polls_fallback")

    async def _poll(self, remote_id: str, why: str) -> RemoteTask:
        self._hub.stats[why] += 1
        return await ask_status(
            self._source,
            remote_id,
            retries=self._run.retries,
            backoff=self._backoff,
            sleep=self._hub.sleep,
        )

    async def _retry(self, call: Callable[[], Any]) -> RemoteTask:
        async def once() -> RemoteTask:
            task: RemoteTask = await call()
            return task

        return await retrying(
            once,
            retries=self._run.retries,
            backoff=self._backoff,
            is_transient=transient_delay,
            sleep=self._hub.sleep,
        )
