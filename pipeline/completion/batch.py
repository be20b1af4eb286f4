"""Batch status: one ``status_many`` round for every task a lane has in flight.

One background loop per lane, started by the first ``follow`` in the session's task
group. Each round asks about every registered task at once (the adapter splits the ids
into as few requests as its API allows: for Pixverse one ``retrieve_batch`` per 50),
hands each answer to the task's waiters, and finishes those that reached an end.

When: every task has its own schedule of checks (when its next one is *due*), and a round
runs when the earliest is due; every other task rides along, and each task asked about
has its next check put off by its own growing interval. So a new task brings the next
round forward only when its own first check is due, and a change in one task resets
nobody's spacing.

    without callbacks  first check after ``first_delay`` (else the adapter's estimate
                       from the submit answer, else ``run.poll_initial``), then spacing
                       × ``run.poll_factor`` up to ``run.poll_max``
    with callbacks     the same, but checks are a safety net (lost callbacks): the first
                       no sooner than ``run.poll_max``, then growing up to 4 × that

When the run has a webhook receiver, every callback for the lane is a hint (``hint``)
that asks for a round — never believed by itself, the round is what counts. Hints are
gathered so that one round confirms many: a round starts once callbacks have come for a
fifth of the most tasks in flight so far (``HINT_ROUND_SHARE``; at once in a run of a
handful of tasks), or when the oldest callback has waited ``HINT_WAIT_SHARE`` of its
task's age (at most ``HINT_WAIT_MAX``) — the delay a callback adds stays a small share
of the task's own duration, as with polling. A hinted task still running after its
round (the API lags behind its callback) is checked again ``run.poll_initial`` later.
Rounds are at least ``MIN_INTERVAL`` apart.

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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from pipeline.completion.follower import (
    FollowContext,
    Follower,
    UpdateCallback,
    estimated_first_delay,
    expected_finish,
)
from pipeline.completion.receiver import HintSubscription, WebhookReceiver
from pipeline.completion.timing import Clock, Sleep, wait_event
from pipeline.completion.webhook import SERVICE
from pipeline.errors import AccountError, FinalError, TransientError
from pipeline.models import RemoteTask, RunSettings
from pipeline.providers.base import BatchStatusCapable, Provider
from pipeline.retry import Backoff, retrying, transient_delay

__all__ = [
    "HINT_ROUND_SHARE",
    "HINT_WAIT_MAX",
    "HINT_WAIT_SHARE",
    "MIN_INTERVAL",
    "BatchFollower",
    "create",
]

MIN_INTERVAL = 0.05
"""Seconds between the starts of two rounds, at least."""
HINT_ROUND_SHARE = 0.2
"""A round starts as soon as callbacks have come for this share of the most tasks
followed at once so far (the peak, so that the run's tail is not confirmed one by one)."""
HINT_WAIT_SHARE = 0.15
"""Otherwise a callback waits for its round at most this share of its task's age."""
HINT_WAIT_MAX = 10.0
"""… and never more than this many seconds (nor more than ``run.poll_max``)."""
SAFETY_FACTOR = 4.0
SAFETY_FLOOR = 10.0
"""With callbacks, safety checks grow up to ``max(SAFETY_FACTOR × poll_max, SAFETY_FLOOR)``."""
EARLY_HINTS = 1_000
EARLY_HINT_SECONDS = 60.0
"""Callbacks for tasks not followed yet (a fast task) are remembered: this many, this long."""

HintSource = Callable[[], AbstractContextManager[HintSubscription]]


def create(context: FollowContext, adapter: BatchStatusCapable) -> Follower:
    receiver = context.services.get(SERVICE)
    hints: HintSource | None = None
    if isinstance(receiver, WebhookReceiver):
        name = context.settings.name
        hints = functools.partial(receiver.hints, name)
    return BatchFollower(adapter, context.run, context.task_group, hints=hints)


@dataclass(eq=False)
class _Waiter:
    """One ``follow`` call waiting for its task to end."""

    on_update: UpdateCallback
    done: anyio.Event = field(default_factory=anyio.Event)
    result: RemoteTask | None = None
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class _Schedule:
    """When one task's next check is due, and the spacing after it."""

    since: float
    due: float
    interval: float


class BatchFollower:
    """Follows many tasks of one lane with one status request per round."""

    def __init__(
        self,
        provider: Provider,
        run: RunSettings,
        task_group: TaskGroup,
        *,
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        hints: HintSource | None = None,
    ) -> None:
        self._provider = provider
        self._run = run
        self._group = task_group
        self._backoff = backoff or Backoff(initial=1.0, factor=2.0, maximum=run.poll_max)
        self._clock = clock
        self._sleep = sleep
        self._hints = hints
        if hints is None:
            self._max_interval = run.poll_max
        else:
            self._max_interval = max(SAFETY_FACTOR * run.poll_max, SAFETY_FLOOR)
        self._waiters: dict[str, list[_Waiter]] = {}
        self._schedules: dict[str, _Schedule] = {}
        self._by_hint_key: dict[str, str] = {}
        self._hinted: dict[str, float] = {}  # remote id → when its first hint came
        self._hinted_any = False
        self._early: OrderedDict[str, float] = OrderedDict()  # hint key → when
        self._earliest_due: float | None = None  # cached min of the schedules' due times
        self._peak = 0  # most tasks followed at once so far
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
        self._peak = max(self._peak, len(self._waiters))
        self._plan(remote_id, first_delay)
        self._start()
        self._wake.set()
        try:
            await waiter.done.wait()
        finally:
            self._forget(remote_id, waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def hint(self, key: str | None = None) -> None:
        """Something happened (a callback arrived): a round soon confirms it.

        ``key`` names the task as callbacks do (the adapter's ``hint_key``); a hint
        about a task nobody follows here yet is remembered for a while (the callback of a
        fast task may beat its ``follow``), ``None`` means any task: a round at once.
        """
        now = self._clock()
        if key is None:
            self._hinted_any = True
        else:
            remote_id = self._by_hint_key.get(key)
            if remote_id is None or remote_id not in self._waiters:
                self._remember_early(key, now)
                return
            self._hinted.setdefault(remote_id, now)
        self._wake.set()

    # -- schedules -----------------------------------------------------------------------

    def _plan(self, remote_id: str, first_delay: float | None) -> None:
        """Give a newly followed task its first check (or bring an existing one forward)."""
        now = self._clock()
        schedule = self._schedules.get(remote_id)
        if schedule is not None:
            if first_delay is not None:
                self._set_due(schedule, min(schedule.due, now + max(first_delay, 0.0)))
            return
        explicit = first_delay is not None
        if first_delay is None:
            expected = expected_finish(self._provider, remote_id)
            first_delay = self._run.poll_initial
            if expected is not None:
                first_delay = estimated_first_delay(expected, self._run)
        if self._hints is not None and not explicit:
            first_delay = max(first_delay, self._run.poll_max)  # callbacks tell; this is a net
        first_delay = max(first_delay, 0.0)
        schedule = _Schedule(since=now, due=now + first_delay, interval=first_delay)
        self._schedules[remote_id] = schedule
        self._set_due(schedule, schedule.due)
        key = self._provider.hint_key(remote_id)
        self._by_hint_key[key] = remote_id
        early = self._early.pop(key, None)
        if early is not None and now - early <= EARLY_HINT_SECONDS:
            self._hinted.setdefault(remote_id, now)

    def _set_due(self, schedule: _Schedule, due: float) -> None:
        schedule.due = due
        if self._earliest_due is not None and due < self._earliest_due:
            self._earliest_due = due

    def _remember_early(self, key: str, now: float) -> None:
        self._early.pop(key, None)
        self._early[key] = now
        while len(self._early) > EARLY_HINTS:
            self._early.popitem(last=False)

    def _after_round(self, asked: Sequence[str], hinted: dict[str, float]) -> None:
        """Put off the next check of every task asked about by its own growing interval;
        a hinted task still running is looked at again soon (the API may lag)."""
        now = self._clock()
        factor, cap = self._run.poll_factor, self._max_interval
        for remote_id in asked:
            schedule = self._schedules.get(remote_id)
            if schedule is None:
                continue  # finished
            if remote_id in hinted:
                schedule.interval = self._run.poll_initial
            else:
                schedule.interval = min(max(schedule.interval, MIN_INTERVAL) * factor, cap)
            schedule.due = now + schedule.interval
        self._earliest_due = None

    def _task_due(self) -> float:
        if self._earliest_due is None:
            dues = (schedule.due for schedule in self._schedules.values())
            self._earliest_due = min(dues, default=math.inf)
        return self._earliest_due

    def _hint_due(self) -> float:
        """When the gathered hints want their round."""
        if self._hinted_any:
            return -math.inf
        if not self._hinted:
            return math.inf
        enough = max(1, math.ceil(HINT_ROUND_SHARE * self._peak))
        if len(self._hinted) >= enough:
            return -math.inf
        return min(at + self._hint_wait(remote_id, at) for remote_id, at in self._hinted.items())

    def _hint_wait(self, remote_id: str, at: float) -> float:
        schedule = self._schedules.get(remote_id)
        age = at - schedule.since if schedule is not None else 0.0
        longest = min(HINT_WAIT_MAX, self._run.poll_max)
        return max(min(HINT_WAIT_SHARE * age, longest), MIN_INTERVAL)

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

    async def _loop(self) -> None:
        while True:
            await self._until_due()
            self._last_round = self._clock()
            hinted, self._hinted, self._hinted_any = self._hinted, {}, False
            ids = list(self._waiters)
            if not ids:
                continue
            await self._round(ids)
            self._after_round(ids, hinted)

    async def _until_due(self) -> None:
        while (wait := self._due() - self._clock()) > 0:
            self._wake = anyio.Event()
            await wait_event(self._wake, wait, self._sleep)

    def _due(self) -> float:
        if not self._waiters:
            return math.inf
        at = min(self._task_due(), self._hint_due())
        return max(at, self._last_round + MIN_INTERVAL)

    async def _round(self, ids: list[str]) -> None:
        """One status round for ``ids``; every waiter hears the outcome."""
        self.rounds += 1

        async def once() -> list[RemoteTask]:
            return await self._provider.status_many(ids)

        try:
            tasks = await retrying(
                once,
                retries=self._run.retries,
                backoff=self._backoff,
                is_transient=transient_delay,
                sleep=self._sleep,
            )
        except FinalError as exc:
            if isinstance(exc, AccountError) or len(ids) == 1:
                self._fail(ids, exc)
                return
            await self._one_by_one(ids)
            return
        except Exception as exc:  # transient after retries, or a bug: never hang a waiter
            self._fail(ids, exc)
            return
        self._dispatch(tasks)

    async def _one_by_one(self, ids: Sequence[str]) -> None:
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

    def _dispatch(self, tasks: Sequence[RemoteTask]) -> None:
        for task in tasks:
            for waiter in list(self._waiters.get(task.remote_id, ())):
                self._deliver(task.remote_id, waiter, task)

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
            self._hinted.pop(remote_id, None)
            schedule = self._schedules.pop(remote_id, None)
            if schedule is not None and schedule.due == self._earliest_due:
                self._earliest_due = None
            self._by_hint_key.pop(self._provider.hint_key(remote_id), None)
