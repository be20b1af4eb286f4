"""Callbacks an emulated API sends to its clients: POST a JSON body to a URL, later.

Shared by every emulator whose API pushes results (APIXO, AceData Pixverse). One
``CallbackSender`` per application holds a schedule of deliveries and one background
ticker that sends each when it falls due, at most ``MAX_CONCURRENT`` at once. A delivery
answered with anything but 200, or not answered within ``callback_timeout``, is retried
after each of ``callback_retry_delays`` in turn, then given up. The knobs also lose
callbacks (``callback_loss_rate``), send them twice (``callback_duplicate_rate``) and
send them late (``callback_delay``).

The body is computed when the delivery is sent (a callable), so it shows the task as it
is then. Every attempt is logged; ``GET /_emulator/callbacks`` shows the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from pipeline.emulators.app import EchoHook, Handler, build_app
from pipeline.emulators.state import STATE_KEY, EmulatorState

__all__ = [
    "SENDER_KEY",
    "CallbackSender",
    "attach_sender",
    "build_app_with_callbacks",
    "callback_routes",
]

Payload = Callable[[], Mapping[str, Any]]

MAX_PENDING = 100_000
"""Deliveries waiting at most; beyond that new ones are dropped (and counted)."""
MAX_CONCURRENT = 32
"""Deliveries in flight at once."""
MAX_LOG = 10_000
"""Attempts remembered for ``/_emulator/callbacks`` (the oldest are forgotten)."""
IDLE_WAKE = 0.25
"""The ticker re-reads the clock at least this often (a test clock may jump)."""


@dataclass(order=True, slots=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    payload: Payload = field(compare=False)
    task_id: str = field(compare=False)
    attempt: int = field(default=0, compare=False)  # 0: first try; n: n-th retry


class CallbackSender:
    """Sends scheduled callbacks for one emulator, from one background ticker."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.counts: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self._queue: list[_Delivery] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._in_flight: set[asyncio.Task[None]] = set()

    def schedule(self, url: str, task_id: str, at: float, payload: Payload) -> None:
        """Send ``payload()`` to ``url`` at ``at`` (the emulator's clock), as the knobs say."""
        knobs, dice = self.state.knobs, self.state.dice
        if dice.roll(knobs.callback_loss_rate):
            self.counts["lost"] += 1
            return
        due = at + knobs.callback_delay
        self._push(_Delivery(due, next(self._seq), url, payload, task_id))
        if dice.roll(knobs.callback_duplicate_rate):
            self.counts["duplicated"] += 1
            self._push(_Delivery(due + 0.01, next(self._seq), url, payload, task_id))

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _push(self, delivery: _Delivery) -> None:
        if len(self._queue) >= MAX_PENDING:
            self.counts["dropped"] += 1
            return
        heapq.heappush(self._queue, delivery)
        self.counts["scheduled"] += 1
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """The ticker: send whatever is due, then sleep until the next one is."""
        while True:
            now = self.state.clock()
            while self._queue and self._queue[0].due <= now:
                delivery = heapq.heappop(self._queue)
                await self._slots.acquire()
                task = asyncio.create_task(self._deliver(session, delivery))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            wait = IDLE_WAKE if not self._queue else min(IDLE_WAKE, self._queue[0].due - now)
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that
            # arrives as the event is set, and the sender would outlive its emulator.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._wake.wait()

    async def _deliver(self, session: aiohttp.ClientSession, delivery: _Delivery) -> None:
        try:
            outcome = await self._post(session, delivery)
        finally:
            self._slots.release()
        self._record(delivery, outcome)
        if outcome == "200":
            self.counts["delivered"] += 1
            return
        delays = self.state.knobs.callback_retry_delays
        if delivery.attempt >= len(delays):
            self.counts["given_up"] += 1
            return
        self.counts["retried"] += 1
        due = self.state.clock() + delays[delivery.attempt]
        retry = _Delivery(due, next(self._seq), delivery.url, delivery.payload, delivery.task_id)
        retry.attempt = delivery.attempt + 1
        self._push(retry)

    async def _post(self, session: aiohttp.ClientSession, delivery: _Delivery) -> str:
        """The attempt's outcome: the status code as text, or what went wrong."""
        body = json.dumps(delivery.payload(), separators=(",", ":")).encode()
        timeout = aiohttp.ClientTimeout(total=self.state.knobs.callback_timeout)
        headers = {"Content-Type": "application/json"}
        try:
            async with session.post(
                delivery.url, data=body, headers=headers, timeout=timeout
            ) as response:
                await response.read()
                return str(response.status)
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return f"error: {type(exc).__name__}"

    def _record(self, delivery: _Delivery, outcome: str) -> None:
        self.counts["attempts"] += 1
        self.log.append(
            {
                "task_id": delivery.task_id,
                "url": delivery.url,
                "attempt": delivery.attempt,
                "at": self.state.clock(),
                "outcome": outcome,
            }
        )
        if len(self.log) > MAX_LOG:
            del self.log[: len(self.log) - MAX_LOG]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "pending": self.pending, "attempts": self.log}

    async def aclose(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)


SENDER_KEY = web.AppKey("callback_sender", CallbackSender)


def attach_sender(app: web.Application) -> CallbackSender:
    """Give ``app`` (built around an EmulatorState) a sender whose ticker runs while the
    application does."""
    sender = CallbackSender(app[STATE_KEY])
    app[SENDER_KEY] = sender

    async def ticker(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            loop = asyncio.create_task(sender.run(session))
            yield
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await sender.aclose()

    app.cleanup_ctx.append(ticker)
    return sender


async def show_callbacks(request: web.Request) -> web.Response:
    return web.json_response(request.app[SENDER_KEY].to_dict())


def callback_routes() -> list[web.RouteDef]:
    """``GET /_emulator/callbacks``: counts, pending deliveries and the attempt log."""
    return [web.get("/_emulator/callbacks", show_callbacks)]


def build_app_with_callbacks(
    state: EmulatorState,
    routes: Iterable[web.RouteDef],
    not_found: Handler,
    *,
    echo: EchoHook | None = None,
) -> web.Application:
    """``app.build_app`` for an API that sends callbacks: also ``callback_routes`` and a
    sender (``app[SENDER_KEY]``) with its ticker."""
    app = build_app(state, [*callback_routes(), *routes], not_found, echo=echo)
    attach_sender(app)
    return app
