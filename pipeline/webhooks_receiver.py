"""The run's embedded webhook receiver: an HTTP server that turns callbacks into hints.

One per run, started by the session when a lane is called back. Providers are told
``{base}/hooks/{token}/{provider}``, where ``token`` is unguessable and new every run.
A request is answered at once and never waits on the run:

    wrong path, wrong token, unknown provider   404, nothing changes
    body over ``max_body`` bytes                413
    not JSON, or no task id in it               400
    anything else                               200, and a hint for the task it names

A callback is a *hint*: "task X may have changed". No callback is believed: whoever
waits for X confirms with a status query. So a forged, duplicate, late or unknown
callback costs at most one status query and changes nothing by itself.

Hints reach waiters two ways: ``watch(provider, key)`` gives one task's ``Mailbox``
(the webhook follower), ``hints(provider)`` a ``HintSubscription`` to every task of a
provider (a batch poller deciding whom to ask about). A hint that arrives before its
waiter registers is kept for a while (a bounded memory), so a fast task is not missed.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from aiohttp import web

from pipeline.models import WebhookSettings

__all__ = ["MAX_BODY", "HintSubscription", "Mailbox", "TaskIdOf", "WebhookReceiver"]

MAX_BODY = 1024 * 1024
"""Largest callback body accepted, in bytes."""
EARLY_HINTS = 10_000
"""Hints remembered for tasks nobody waits for yet (oldest forgotten first)."""
MAX_PENDING_HINTS = 100_000
"""Task ids a subscription holds before its reader takes them."""

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

    def __init__(self, settings: WebhookSettings, *, max_body: int = MAX_BODY) -> None:
        self.settings = settings
        self.token = secrets.token_urlsafe(24)
        self.stats: Counter[str] = Counter()
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
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.settings.host, self.settings.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

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

    def hint(self, provider: str, key: str) -> None:
        """Task ``key`` of ``provider`` may have changed: wake whoever waits for it."""
        where = (provider, key)
        boxes = self._mailboxes.get(where)
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
            self.stats["refused"] += 1
            return _answer(404, "not found")
        if request.content_length is not None and request.content_length > self._max_body:
            self.stats["too_large"] += 1
            return _answer(413, "body too large")
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            self.stats["too_large"] += 1
            return _answer(413, "body too large")
        except ValueError:
            self.stats["bad_body"] += 1
            return _answer(400, "body is not JSON")
        key = task_id_of(body)
        if key is None:
            self.stats["bad_body"] += 1
            return _answer(400, "no task id in the body")
        self.stats["hints"] += 1
        self.hint(provider, key)
        return _answer(200, "ok")

    async def _not_found(self, request: web.Request) -> web.Response:
        self.stats["refused"] += 1
        return _answer(404, "not found")


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"status": message}, status=status)
