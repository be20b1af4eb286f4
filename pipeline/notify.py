"""How a job learns its remote task is finished.

A ``Follower`` turns a remote id into the task's final ``RemoteTask``, reporting every
intermediate state through ``on_update``. ``PollFollower`` asks ``status`` with a
growing interval; transient errors are retried with backoff (honouring Retry-After),
final ones (the task is unknown to the provider) end the job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from pipeline.errors import TransientError
from pipeline.limits import Backoff, retrying
from pipeline.models import RemoteTask, RunSettings
from pipeline.providers.base import Provider

__all__ = ["Follower", "PollFollower", "UpdateCallback", "transient_delay"]

UpdateCallback = Callable[[RemoteTask], None]


class Follower(Protocol):
    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask: ...


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
