"""Completion by webhook: callbacks wake the waiter, a status query tells the truth.

``WebhookFollower`` (mode ``webhook``) registers the task with the run's receiver
(``completion.receiver``), waits for a hint, and then *confirms* with ``adapter.status``:
nothing in a callback body is believed. While waiting it polls only as a slow safety
net (``options.safety_poll``); when no callback has come by ``options.callback_timeout``
it falls back to ordinary polling. Both options take seconds or text like ``90s``.

An adapter that can be called back (``CallbackCapable``) has a ``callback_url`` attribute,
set by the session before any submit, and reads the task out of a callback body with
``callback_task_id``; if its remote ids are not what callbacks name, ``hint_key`` maps a
remote id to the name callbacks use. An adapter class with ``requires_callback = True``
is given a callback URL whatever its completion mode (e.g. an API whose submit would
block without one); its follower may listen with ``receiver.hints(provider)``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from pipeline.completion.follower import FollowContext, UpdateCallback
from pipeline.completion.poll import PollFollower
from pipeline.completion.receiver import Mailbox, WebhookReceiver
from pipeline.errors import SpecError
from pipeline.models import RemoteTask, RunSettings, WebhookSettings
from pipeline.providers.base import CallbackCapable, Provider
from pipeline.retry import Backoff, ask_status
from pipeline.units import parse_duration

__all__ = [
    "SERVICE",
    "WebhookFollower",
    "attach_callbacks",
    "create",
    "open_receiver",
    "wants_callbacks",
]

SERVICE = "webhooks"
"""Key of the receiver in ``FollowContext.services``."""
DEFAULT_CALLBACK_TIMEOUT = 300.0
"""Seconds without a callback before the follower falls back to polling."""


# -- the session's side -------------------------------------------------------------------


def wants_callbacks(mode: str, adapter_type: type[Provider]) -> bool:
    """Whether a lane needs the receiver: webhook mode, or an API that always calls back."""
    return mode == "webhook" or adapter_type.requires_callback


@asynccontextmanager
async def open_receiver(
    settings: WebhookSettings,
    *,
    token: str | None = None,
    relay: Callable[[str, str], None] | None = None,
) -> AsyncIterator[WebhookReceiver]:
    """The run's receiver; ``token`` and ``relay`` as ``WebhookReceiver`` takes them."""
    receiver = WebhookReceiver(settings, token=token, relay=relay)
    await receiver.start()
    try:
        yield receiver
    finally:
        with anyio.CancelScope(shield=True):
            await receiver.aclose()


def attach_callbacks(
    services: Mapping[str, object], name: str, adapter: Provider, mode: str
) -> None:
    """Give a lane's adapter its callback URL, when the lane is called back."""
    receiver = services.get(SERVICE)
    if not isinstance(receiver, WebhookReceiver) or not wants_callbacks(mode, type(adapter)):
        return
    if not isinstance(adapter, CallbackCapable):  # refused when its class was defined
        raise TypeError(f"{adapter.type} adapter cannot be called back (not CallbackCapable)")
    adapter.callback_url = receiver.register(name, adapter.callback_task_id)


# -- the follower ---------------------------------------------------------------------------


def create(context: FollowContext, adapter: CallbackCapable) -> WebhookFollower:
    receiver = context.services.get(SERVICE)
    if receiver is None:
        raise RuntimeError("webhook completion needs the run's receiver (open_session starts it)")
    if not isinstance(receiver, WebhookReceiver):
        raise TypeError(f"services[{SERVICE!r}] is not a WebhookReceiver")
    options = context.settings.options
    at = f"providers.{context.settings.name}.options"
    return WebhookFollower(
        adapter,
        receiver,
        context.run,
        provider=context.settings.name,
        callback_timeout=_seconds(options, "callback_timeout", DEFAULT_CALLBACK_TIMEOUT, at),
        safety_poll=_seconds(options, "safety_poll", max(4 * context.run.poll_max, 10.0), at),
    )


def _seconds(options: Mapping[str, Any], key: str, default: float, at: str) -> float:
    value = options.get(key, default)
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{key}: {exc}", path=f"{at}.{key}") from None
    if seconds <= 0:
        raise SpecError(f"{key} must be more than 0 seconds", path=f"{at}.{key}")
    return seconds


class WebhookFollower:
    """Waits for a callback about the task, confirms it by a status query; polls when
    callbacks stay away."""

    def __init__(
        self,
        adapter: Provider,
        receiver: WebhookReceiver,
        run: RunSettings,
        *,
        provider: str,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        safety_poll: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._adapter = adapter
        self._receiver = receiver
        self._run = run
        self._provider = provider
        self._callback_timeout = callback_timeout
        self._safety_poll = safety_poll
        self._clock = clock
        self._sleep = sleep
        self._backoff = Backoff(initial=1.0, factor=2.0, maximum=run.poll_max)
        self.confirmations = 0

    async def ready(self) -> None:
        return None

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask:
        with self._receiver.watch(self._provider, self._adapter.hint_key(remote_id)) as mailbox:
            task = await self._await_callback(remote_id, mailbox, on_update, first_delay)
        if task is not None:
            return task
        poller = PollFollower(self._adapter, self._run, sleep=self._sleep)
        return await poller.follow(remote_id, on_update=on_update, first_delay=0.0)

    async def _await_callback(
        self,
        remote_id: str,
        mailbox: Mailbox,
        on_update: UpdateCallback,
        first_delay: float | None,
    ) -> RemoteTask | None:
        """The final task once a hint (or the safety poll) confirms it; None when no
        callback came in time. ``first_delay`` brings the first safety check forward."""
        deadline = self._clock() + self._callback_timeout
        first = self._safety_poll if first_delay is None else first_delay
        next_check = self._clock() + first
        while True:
            hinted = await mailbox.wait(min(deadline, next_check) - self._clock())
            now = self._clock()
            if not hinted and now < next_check:
                return None  # the callback deadline came first
            task = await self._confirm(remote_id)
            on_update(task)
            if task.status.terminal:
                return task
            # A hint the status does not bear out (forged, or the API lags): look again
            # soon, but never faster than the poll settings allow.
            pause = self._run.poll_max if hinted else self._safety_poll
            next_check = self._clock() + pause
            if hinted:
                await self._sleep(self._run.poll_initial)

    async def _confirm(self, remote_id: str) -> RemoteTask:
        self.confirmations += 1
        return await ask_status(
            self._adapter,
            remote_id,
            retries=self._run.retries,
            backoff=self._backoff,
            sleep=self._sleep,
        )
