"""Completion by polling: ``status`` per task, spaced by a growing interval or aimed at
the finish that the task's progress or the submit answer projects."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from pipeline.completion.follower import (
    FollowContext,
    Follower,
    UpdateCallback,
    estimated_first_delay,
    expected_finish,
)
from pipeline.models import RemoteTask, RunSettings
from pipeline.providers.base import Provider
from pipeline.retry import Backoff, ask_status

__all__ = ["PollFollower", "ProgressPace", "create"]


def create(context: FollowContext, adapter: Provider) -> Follower:
    return PollFollower(adapter, context.run)


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
        return await ask_status(
            self._provider,
            remote_id,
            retries=self._run.retries,
            backoff=self._backoff,
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
