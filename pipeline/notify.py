"""How a job learns its remote task is finished.

A ``Follower`` turns a remote id into the task's final ``RemoteTask``, reporting every
intermediate state through ``on_update``. Each completion mode has one:

    poll          PollFollower (here): ``status`` per task with a growing interval
    batch         notify_batch: one ``status_many`` request per round for every task
    subscription  notify_ws: one shared WebSocket per API key, events routed by task id
    webhook       webhooks: callbacks are hints, confirmed with a status query

Transient errors are retried with backoff (honouring Retry-After); final ones (the task
is unknown to the provider) end the job. A lane picks its mode from the provider
entry's ``options.completion``, defaulting to the adapter's first completion mode.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from pipeline.errors import TransientError
from pipeline.limits import Backoff, retrying
from pipeline.models import PollAdvice, ProviderSettings, RemoteTask, RunSettings
from pipeline.providers.base import Provider

__all__ = [
    "FOLLOWERS",
    "FollowContext",
    "Follower",
    "PollFollower",
    "ProgressPace",
    "UpdateCallback",
    "estimated_first_delay",
    "expected_finish",
    "make_follower",
    "transient_delay",
]

UpdateCallback = Callable[[RemoteTask], None]


class Follower(Protocol):
    async def ready(self) -> None:
        """Return when tasks submitted from now on cannot be missed (e.g. a subscription
        is live, or failed to come up in time). The scheduler awaits it before submits."""
        ...

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask: ...


@dataclass
class FollowContext:
    """What a follower may use: the adapter, timings, a task group for background loops
    (a batch round, a WebSocket), and run-wide services such as the webhook receiver."""

    adapter: Provider
    settings: ProviderSettings
    run: RunSettings
    task_group: TaskGroup
    services: dict[str, Any] = field(default_factory=dict)


FOLLOWERS: dict[str, str] = {
    "poll": "pipeline.notify:create_poll_follower",
    "batch": "pipeline.notify_batch:create",
    "subscription": "pipeline.notify_ws:create",
    "webhook": "pipeline.webhooks:create",
}
"""Completion mode → ``module:function`` taking a FollowContext, imported on first use."""


def make_follower(mode: str, context: FollowContext) -> Follower:
    """The lane's follower, with the poll settings the spec left unset taken from the
    API's documented advice (``Provider.poll_advice``)."""
    module_name, _, function = FOLLOWERS[mode].partition(":")
    factory: Callable[[FollowContext], Follower] = getattr(
        importlib.import_module(module_name), function
    )
    advice = getattr(context.adapter, "poll_advice", None)
    if isinstance(advice, PollAdvice):
        context = replace(context, run=context.run.advised(advice))
    return factory(context)


def create_poll_follower(context: FollowContext) -> Follower:
    return PollFollower(context.adapter, context.run)


def expected_finish(provider: object, remote_id: str) -> float | None:
    """Seconds from now until the API expects the task done, from its submit answer
    (``Provider.first_check_in``, e.g. PixelLabs' ``estimatedTime``); None if unknown."""
    first_check_in = getattr(provider, "first_check_in", None)
    if not callable(first_check_in):
        return None
    seconds = first_check_in(remote_id)
    return max(float(seconds), 0.0) if isinstance(seconds, int | float) else None


ESTIMATE_CAP = 4.0
"""An estimate from the submit answer puts off the first check by at most this × poll_max."""


def estimated_first_delay(expected: float, run: RunSettings) -> float:
    """The first wait for a task the API expects done in ``expected`` seconds."""
    return min(expected, ESTIMATE_CAP * run.poll_max)


def transient_delay(exc: BaseException) -> float | bool | None:
    """For ``retrying``: the server's retry-after for transient errors, False otherwise."""
    if isinstance(exc, TransientError):
        return exc.retry_after if exc.retry_after is not None else True
    return False


class PollFollower:
    """Polls one task with growing spacing; once the provider reports progress twice,
    the next poll is aimed at the projected finish instead (fewer polls, less latency).
    When the submit answer estimated the task's duration (``expected_finish``), the first
    poll is aimed there (a check before it would be wasted; at most ``ESTIMATE_CAP`` ×
    ``poll_max`` away, in case of a wild estimate), and spacing starts again from
    ``poll_initial`` if the task is not done by then.
    """

    def __init__(
        self,
        provider: Provider,
        run: RunSettings,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._run = run
        self._backoff = backoff or Backoff(initial=1.0, factor=2.0, maximum=run.poll_max)
        self._sleep = sleep
        self._clock = clock

    async def ready(self) -> None:
        return None

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask:
        aimed = first_delay is not None  # a one-off first check; then the usual schedule
        if first_delay is None:
            expected = expected_finish(self._provider, remote_id)
            if expected is None:
                first_delay = self._run.poll_initial
            else:
                first_delay, aimed = estimated_first_delay(expected, self._run), True
        delay = first_delay
        pace = ProgressPace()
        while True:
            await self._sleep(delay)
            task = await self._poll(remote_id)
            on_update(task)
            if task.status.terminal:
                return task
            grown = min(max(delay, 0.05) * self._run.poll_factor, self._run.poll_max)
            if aimed:  # the estimate fell short: the finish is near
                grown, aimed = self._run.poll_initial, False
            projected = pace.observe(self._clock(), task.progress)
            delay = grown if projected is None else _clamp(projected, self._run)

    async def _poll(self, remote_id: str) -> RemoteTask:
        async def once() -> RemoteTask:
            return await self._provider.status(remote_id)

        return await retrying(
            once,
            retries=self._run.retries,
            backoff=self._backoff,
            is_transient=transient_delay,
            sleep=self._sleep,
        )


class ProgressPace:
    """Projects when a task will finish from how fast its progress (0-100) rises."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def observe(self, now: float, progress: float | None) -> float | None:
        """Seconds until the projected finish, or None while it cannot be told."""
        if progress is None or not 0 < progress < 100:
            return None
        last, self._last = self._last, (now, progress)
        if last is None or progress <= last[1] or now <= last[0]:
            return None
        rate = (progress - last[1]) / (now - last[0])
        return (100.0 - progress) / rate


def _clamp(projected: float, run: RunSettings) -> float:
    """Aim slightly past the projection (a poll just before the end is wasted)."""
    return min(max(projected * 1.05 + 0.05, run.poll_initial), run.poll_max)
