"""The run's embedded webhook receiver: an HTTP server that turns callbacks into hints.

One per run, started by the session when a lane is called back. Providers are told
``{base}/hooks/{token}/{provider}``, where ``token`` is unguessable and new every run
(one for all the runners of a shared run).
A request is answered at once and never waits on the run:

    wrong path, wrong token, unknown provider   404, nothing changes
    body over ``max_body`` bytes                413
    not JSON, nested too deep, no task id       400
    anything else                               200, and a hint for the task it names

Hostile clients are held off below HTTP (``completion.receiver_guard``): a request head must come
within ``header_timeout`` and its body within ``body_timeout``, at most
``max_connections`` are open, every answer closes its connection, and what is dropped
is summed up in at most one log line per ``log_interval``, never one per connection.

A callback is a *hint*: "task X may have changed". No callback is believed: whoever
waits for X confirms with a status query. So a forged, duplicate, late or unknown
callback costs at most one status query and changes nothing by itself.

Hints reach waiters two ways: ``watch(provider, key)`` gives one task's ``Mailbox``
(the webhook follower), ``hints(provider)`` a ``HintSubscription`` to every task of a
provider (a batch poller deciding whom to ask about). A hint that arrives before its
waiter registers is kept for a while (a bounded memory), so a fast task is not missed.

In a shared run every runner's receiver takes the run's token, and a hint for a task no
waiter here knows is also handed to ``relay``, which passes it (through the manifest's
database) to the runner that waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from aiohttp import web

from pipeline.completion.receiver_guard import ConnectionGuard, QuietLog, counting_logger, fd_budget
from pipeline.models import WebhookSettings

__all__ = ["MAX_BODY", "HintSubscription", "Mailbox", "TaskIdOf", "WebhookReceiver"]

MAX_BODY = 1024 * 1024
"""Largest callback body accepted, in bytes."""
EARLY_HINTS = 10_000
"""Hints remembered for tasks nobody waits for yet (oldest forgotten first)."""
MAX_PENDING_HINTS = 100_000
"""Task ids a subscription holds before its reader takes them."""
HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request head, from its connection."""
BODY_TIMEOUT = 30.0
"""Seconds a client has to send the rest of its request, from its head."""
MAX_CONNECTIONS = 256
"""Connections open at once (fewer under a low ``ulimit -n``); callbacks are short."""
LOG_INTERVAL = 60.0
"""Seconds between two summary lines about dropped connections."""

_logger = logging.getLogger("pipeline.completion.webhook")

TaskIdOf = Callable[[object], str | None]
"""Reads the task key out of a callback body (an adapter's ``callback_task_id``)."""


class Mailbox:
    """Hints for one task: ``wait`` returns True once per burst of hints."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.hints = 0

    def notify(self) -> None:
        self.hints += 1
        self._event.set()

    async def wait(self, within: float) -> bool:
        """True if a hint came (now or since the last wait), False after ``within`` s."""
        with anyio.move_on_after(max(within, 0.0)):
            await self._event.wait()
        if not self._event.is_set():
            return False
        self._event = anyio.Event()
        return True


class HintSubscription:
    """Every task key hinted for one provider, taken in batches."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._event = anyio.Event()
        self.dropped = 0

    def add(self, key: str) -> None:
        if len(self._pending) >= MAX_PENDING_HINTS:
            self.dropped += 1
            return
        self._pending.add(key)
        self._event.set()

    async def next(self, within: float | None = None) -> set[str]:
        """The keys hinted since the last call; waits for one (empty after ``within`` s)."""
        with anyio.move_on_after(within):
            await self._event.wait()
        keys, self._pending = self._pending, set()
        self._event = anyio.Event()
        return keys

    def __aiter__(self) -> HintSubscription:
        return self

    async def __anext__(self) -> set[str]:
        return await self.next()


class WebhookReceiver:
    """The aiohttp server behind ``/hooks/{token}/{provider}``, and its waiters."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        max_body: int = MAX_BODY,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        log_interval: float = LOG_INTERVAL,
        token: str | None = None,
        relay: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.token = token or secrets.token_urlsafe(24)
        self.relay = relay  # hints for tasks not waited for here (shared runs)
        self.stats: Counter[str] = Counter()
        self.dropped = QuietLog(_logger, interval=log_interval)
        self._guard = ConnectionGuard(
            self.dropped,
            max_connections=min(max_connections, fd_budget()),
            header_timeout=header_timeout,
            body_timeout=body_timeout,
        )
        self._server: asyncio.Server | None = None
        self._max_body = max_body
        self._readers: dict[str, TaskIdOf] = {}
        self._mailboxes: dict[tuple[str, str], set[Mailbox]] = {}
        self._early: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._subscriptions: dict[str, set[HintSubscription]] = {}
        self._runner: web.AppRunner | None = None
        self._port = settings.port

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post("/hooks/{token}/{provider}", self._receive)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            logger=counting_logger(self.dropped),  # no traceback per bad request
        )
        await runner.setup()
        assert runner.server is not None  # set up above
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._guard.factory(runner.server),
                self.settings.host,
                self.settings.port,
                reuse_address=True,
                backlog=1024,  # a burst waits in the kernel instead of being reset
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._guard.close_all()
        self.dropped.flush()

    @property
    def base_url(self) -> str:
        """The receiver as providers reach it: ``public_url``, or ``http://host:port``."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self._port}"

    def url_for(self, provider: str) -> str:
        return f"{self.base_url}/hooks/{self.token}/{provider}"

    # -- who listens -------------------------------------------------------------------

    def register(self, provider: str, task_id_of: TaskIdOf) -> str:
        """Accept callbacks for ``provider``; returns the URL to give it."""
        self._readers[provider] = task_id_of
        return self.url_for(provider)

    @contextmanager
    def watch(self, provider: str, key: str) -> Iterator[Mailbox]:
        """A mailbox for hints about one task, for the duration of the block."""
        mailbox = Mailbox()
        where = (provider, key)
        self._mailboxes.setdefault(where, set()).add(mailbox)
        if where in self._early:  # the callback beat the waiter
            del self._early[where]
            mailbox.notify()
        try:
            yield mailbox
        finally:
            boxes = self._mailboxes.get(where, set())
            boxes.discard(mailbox)
            if not boxes:
                self._mailboxes.pop(where, None)

    @contextmanager
    def hints(self, provider: str) -> Iterator[HintSubscription]:
        """Every hint for ``provider`` while the block lasts."""
        subscription = HintSubscription()
        self._subscriptions.setdefault(provider, set()).add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.get(provider, set()).discard(subscription)

    def hint(self, provider: str, key: str, *, relayed: bool = False) -> None:
        """Task ``key`` of ``provider`` may have changed: wake whoever waits for it here,
        and, unless it came ``relayed`` from another runner, pass it on when nobody does."""
        where = (provider, key)
        boxes = self._mailboxes.get(where)
        if not boxes and not relayed and self.relay is not None:
            self.relay(provider, key)
        for mailbox in boxes or ():
            mailbox.notify()
        if not boxes:
            self._early[where] = None
            self._early.move_to_end(where)
            while len(self._early) > EARLY_HINTS:
                self._early.popitem(last=False)
        for subscription in self._subscriptions.get(provider, ()):
            subscription.add(key)

    # -- HTTP --------------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        token = request.match_info["token"].encode()
        token_ok = secrets.compare_digest(token, self.token.encode())
        task_id_of = self._readers.get(provider)
        if not token_ok or task_id_of is None:
            return self._refuse("refused", 404, "not found")
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            key = task_id_of(body)
        except Exception:  # an adapter tripped over a hostile body: that is a bad body
            key = None
        if key is None:
            return self._refuse("bad_body", 400, "no task id in the body")
        self.stats["hints"] += 1
        self.hint(provider, key)
        return _answer(200, "ok")

    async def _json_body(self, request: web.Request) -> object:
        """The request's JSON body, or the answer that refuses it."""
        if request.content_length is not None and request.content_length > self._max_body:
            return self._refuse("too_large", 413, "body too large")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse("too_large", 413, "body too large")
        except ConnectionError:  # the guard cut a slow body short; nobody reads an answer
            return self._refuse("bad_body", 408, "request timeout")
        try:
            return json.loads(raw)
        except ValueError:
            return self._refuse("bad_body", 400, "body is not JSON")
        except RecursionError:
            return self._refuse("bad_body", 400, "body is nested too deeply")

    def _refuse(self, stat: str, status: int, message: str) -> web.Response:
        self.stats[stat] += 1
        return _answer(status, message)

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._refuse("refused", 404, "not found")


def _answer(status: int, message: str) -> web.Response:
    """A short JSON answer that closes the connection (one request per connection)."""
    response = web.json_response({"status": message}, status=status)
    response.force_close()
    return response
