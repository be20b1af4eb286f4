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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from pipeline.errors import TransientError
from pipeline.limits import Backoff, retrying
from pipeline.models import ProviderSettings, RemoteTask, RunSettings
from pipeline.providers.base import Provider

__all__ = [
    "FOLLOWERS",
    "FollowContext",
    "Follower",
    "PollFollower",
    "UpdateCallback",
    "make_follower",
    "transient_delay",
]

UpdateCallback = Callable[[RemoteTask], None]


class Follower(Protocol):
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
    module_name, _, function = FOLLOWERS[mode].partition(":")
    factory: Callable[[FollowContext], Follower] = getattr(
        importlib.import_module(module_name), function
    )
    return factory(context)


def create_poll_follower(context: FollowContext) -> Follower:
    return PollFollower(context.adapter, context.run)


def transient_delay(exc: BaseException) -> float | bool | None:
    """For ``retrying``: the server's retry-after for transient errors, False otherwise."""
    if isinstance(exc, TransientError):
        return exc.retry_after if exc.retry_after is not None else True
    return False


class PollFollower:
    """Polls one task at a time with exponential spacing between polls."""

    def __init__(
        self,
        provider: Provider,
        run: RunSettings,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._provider = provider
        self._run = run
        self._backoff = backoff or Backoff(initial=1.0, factor=2.0, maximum=run.poll_max)
        self._sleep = sleep

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask:
        delay = self._run.poll_initial if first_delay is None else first_delay
        while True:
            await self._sleep(delay)
            task = await self._poll(remote_id)
            on_update(task)
            if task.status.terminal:
                return task
            delay = min(max(delay, 0.05) * self._run.poll_factor, self._run.poll_max)

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
