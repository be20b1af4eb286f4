"""Batch status: one ``status_many`` round for every task a lane has in flight.

One background loop per lane, started by the first ``follow`` in the session's task
group. Each round asks about every registered task at once (the adapter splits the ids
into as few requests as its API allows: for Pixverse one ``retrieve_batch`` per 50),
hands each answer to the task's waiters, and finishes those that reached an end.

Spacing: ``run.poll_initial`` after a round in which something changed, growing by
``run.poll_factor`` up to ``run.poll_max`` while nothing does. A new task brings the next
round forward to at most its ``first_delay`` away. When the run has a webhook receiver,
every callback for the lane is a hint (``hint``) that starts a round at once — never
believed by itself, the round is what counts. Rounds are at least ``MIN_INTERVAL``
apart, so a burst of callbacks costs a few requests, not one each.

Errors: a transient error retries the round with backoff (Retry-After honoured); after
``run.retries`` failures in a row the round's waiters get the error, so their jobs stay
in flight for the next run, as with polling. A final error on the batch request is
narrowed down by asking about each task alone, so it fails only the tasks it concerns;
an account error fails them all.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from pipeline.errors import AccountError, FinalError, TransientError
from pipeline.limits import Backoff, retrying
from pipeline.models import RemoteStatus, RemoteTask, RunSettings
from pipeline.notify import FollowContext, Follower, UpdateCallback, transient_delay
from pipeline.providers.base import Provider
from pipeline.webhooks import SERVICE
from pipeline.webhooks_receiver import HintSubscription, WebhookReceiver

__all__ = ["MIN_INTERVAL", "BatchFollower", "create"]

MIN_INTERVAL = 0.05
"""Seconds between the starts of two rounds, at least."""

HintSource = Callable[[], AbstractContextManager[HintSubscription]]


def create(context: FollowContext) -> Follower:
    receiver = context.services.get(SERVICE)
    hints: HintSource | None = None
    if isinstance(receiver, WebhookReceiver):
        name = context.settings.name
        hints = functools.partial(receiver.hints, name)
    return BatchFollower(context.adapter, context.run, context.task_group, hints=hints)


@dataclass(eq=False)
class _Waiter:
    """One ``follow`` call waiting for its task to end."""

    on_update: UpdateCallback
    done: anyio.Event = field(default_factory=anyio.Event)
    result: RemoteTask | None = None
    error: BaseException | None = None


class BatchFollower:
    """Follows many tasks of one lane with one status request per round."""

    def __init__(
        self,
        provider: Provider,
        run: RunSettings,
        task_group: TaskGroup,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        hints: HintSource | None = None,
    ) -> None:
        self._provider = provider
        self._run = run
        self._group = task_group
        self._backoff = backoff or Backoff(initial=1.0, factor=2.0, maximum=run.poll_max)
        self._clock = clock
        self._hints = hints
        self._waiters: dict[str, list[_Waiter]] = {}
        self._by_hint_key: dict[str, str] = {}
        self._seen: dict[str, tuple[RemoteStatus, float | None]] = {}
        self._interval = run.poll_initial
        self._next_round = math.inf
        self._last_round = -math.inf
        self._wake = anyio.Event()
        self._started = False
        self.rounds = 0
        """Rounds run so far (each is one ``status_many`` call, retries aside)."""

    @property
    def following(self) -> int:
        """Tasks with at least one waiter."""
        return len(self._waiters)

    async def ready(self) -> None:
        return None

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask:
        waiter = _Waiter(on_update)
        self._waiters.setdefault(remote_id, []).append(waiter)
        self._by_hint_key[self._hint_key(remote_id)] = remote_id
        self._start()
        self._schedule(self._run.poll_initial if first_delay is None else first_delay)
        try:
            await waiter.done.wait()
        finally:
            self._forget(remote_id, waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def hint(self, key: str | None = None) -> None:
        """Something happened (a callback arrived): run a round now.

        ``key`` names the task as callbacks do (the adapter's ``hint_key``); a hint
        about a task nobody follows here is ignored, ``None`` means any task.
        """
        if key is not None and self._by_hint_key.get(key) not in self._waiters:
            return
        self._interval = self._run.poll_initial
        self._schedule(0.0)

    # -- the round loop ----------------------------------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._group.start_soon(self._loop, name=f"batch status {self._provider.type}")
            if self._hints is not None:
                self._group.start_soon(self._listen, self._hints, name="batch status hints")

    async def _listen(self, hints: HintSource) -> None:
        with hints() as subscription:
            async for keys in subscription:
                for key in keys:
                    self.hint(key)

    def _schedule(self, delay: float) -> None:
        at = self._clock() + max(delay, 0.0)
        if at < self._next_round:
            self._next_round = at
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._until_due()
            self._next_round = math.inf
            self._last_round = self._clock()
            ids = list(self._waiters)
            if not ids:
                continue
            changed = await self._round(ids)
            if changed:
                self._interval = self._run.poll_initial
            else:
                grown = max(self._interval, MIN_INTERVAL) * self._run.poll_factor
                self._interval = min(grown, self._run.poll_max)
            if self._waiters:
                self._schedule(self._interval)

    async def _until_due(self) -> None:
        while (wait := self._due() - self._clock()) > 0:
            self._wake = anyio.Event()
            with anyio.move_on_after(wait):
                await self._wake.wait()

    def _due(self) -> float:
        return max(self._next_round, self._last_round + MIN_INTERVAL)

    def _hint_key(self, remote_id: str) -> str:
        hint_key = getattr(self._provider, "hint_key", None)
        return str(hint_key(remote_id)) if callable(hint_key) else remote_id

    async def _round(self, ids: list[str]) -> bool:
        """One status round; True when something changed (or went wrong)."""
        self.rounds += 1

        async def once() -> list[RemoteTask]:
            return await self._provider.status_many(ids)

        try:
            tasks = await retrying(
                once,
                retries=self._run.retries,
                backoff=self._backoff,
                is_transient=transient_delay,
            )
        except FinalError as exc:
            if isinstance(exc, AccountError) or len(ids) == 1:
                self._fail(ids, exc)
                return True
            return await self._one_by_one(ids)
        except Exception as exc:  # transient after retries, or a bug: never hang a waiter
            self._fail(ids, exc)
            return True
        return self._dispatch(tasks)

    async def _one_by_one(self, ids: Sequence[str]) -> bool:
        """After a final error on the batch: ask each task alone, so it fails only its own."""
        for remote_id in ids:
            try:
                task = await self._provider.status(remote_id)
            except FinalError as exc:
                self._fail([remote_id], exc)
                continue
            except TransientError:
                continue  # next round
            self._dispatch([task])
        return True

    def _dispatch(self, tasks: Sequence[RemoteTask]) -> bool:
        changed = False
        for task in tasks:
            waiters = self._waiters.get(task.remote_id)
            if not waiters:
                continue
            seen = (task.status, task.progress)
            if self._seen.get(task.remote_id) != seen:
                self._seen[task.remote_id] = seen
                changed = True
            for waiter in list(waiters):
                self._deliver(task.remote_id, waiter, task)
        return changed

    def _deliver(self, remote_id: str, waiter: _Waiter, task: RemoteTask) -> None:
        try:
            waiter.on_update(task)
        except Exception as exc:  # the caller's bookkeeping failed: that follow raises it
            self._finish(remote_id, waiter, error=exc)
            return
        if task.status.terminal:
            self._finish(remote_id, waiter, result=task)

    def _fail(self, ids: Sequence[str], error: BaseException) -> None:
        for remote_id in ids:
            for waiter in list(self._waiters.get(remote_id, ())):
                self._finish(remote_id, waiter, error=error)

    def _finish(
        self,
        remote_id: str,
        waiter: _Waiter,
        *,
        result: RemoteTask | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End one follow; it leaves the rounds at once (its coroutine resumes later)."""
        self._forget(remote_id, waiter)
        waiter.result, waiter.error = result, error
        waiter.done.set()

    def _forget(self, remote_id: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(remote_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(remote_id, None)
            self._seen.pop(remote_id, None)
            self._by_hint_key.pop(self._hint_key(remote_id), None)
