"""How a run shares its manifest: alone (``Local``, SQLite) or with other runners
(``Shared``, PostgreSQL). The scheduler has one code path and asks its coordinator which
jobs to take, when a task slot and a submit are free, and whether money is left.

``Local`` is what one process needs and costs nothing: the manifest is read a page at a
time, and the budget is counted in memory. ``Shared`` joins the run as one of its runners
(``manifest.Runners``): it claims jobs a page at a time, renews its lease in the
background and reaps the runners that stopped renewing, and takes every account limit
(task slots, submit rate, budget) from the database, so that they hold across all runners.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import anyio

from pipeline.cost import Costs, spent_on
from pipeline.errors import ManifestError
from pipeline.manifest import Manifest
from pipeline.models import Job, JobRecord, JobState
from pipeline.runner.budget import RUN_BUDGET, BudgetGate, Refusal, refusal_text
from pipeline.runner.session import Lane

if TYPE_CHECKING:
    from pipeline.manifest import Runners

__all__ = [
    "DEFAULT_LEASE",
    "Budget",
    "Coordinator",
    "Local",
    "RunCounts",
    "Shared",
    "coordinate",
]

S = JobState
IN_FLIGHT = (S.SUBMITTED, S.RUNNING, S.SUCCEEDED, S.DOWNLOADING)
WORKING = (S.PENDING, S.SUBMITTING, *IN_FLIGHT)  # what another runner may still hand back
DEFAULT_LEASE = 30.0
"""Seconds a runner's lease lasts unless renewed (renewed every third of it)."""
RunCounts = tuple[dict[str, dict[str, int]], int]
"""Jobs by provider and state, and the runners at work."""
SLOT_WAIT = (0.05, 0.5)  # first and longest pause between tries for a free task slot
RESHARE = 1.0  # seconds between two counts of the runners sharing a provider's slots
IDLE_LOOK = 1.0  # seconds between two looks of a runner whose jobs wait on the others'


class Budget(Protocol):
    """What a submit's money goes through (``BudgetGate`` is the one-process form)."""

    costs: Costs

    def reserve(self, job: Job) -> Refusal | None: ...
    def release(self, job: Job) -> None: ...
    @property
    def spent(self) -> Mapping[str, Decimal]: ...


class Coordinator(Protocol):
    def start(self, lanes: Mapping[str, Lane], costs: Costs, note: Callable[[str], None]) -> Budget:
        """Begin (a shared run: join it); the budget the run's submits go through."""
        ...

    async def keep_alive(self, lost: Callable[[str], None]) -> None:
        """In the background for the whole run; ``lost(why)`` if the run must stop."""
        ...

    def records(
        self, provider: str, *, page: int, stopped: Callable[[], bool]
    ) -> AsyncGenerator[JobRecord, None]:
        """The jobs for this process to take further: paid ones first, then new ones
        (none while ``stopped()``)."""
        ...

    def stopped_feeding(self, provider: str) -> None:
        """No more submits for ``provider`` here: jobs taken but not submitted may go."""
        ...

    def slot(self, provider: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the account's task slots, held while a job is worked on."""
        ...

    async def pace(self, lane: Lane) -> None:
        """Wait for the account's submit rate (after the lane's own limiter)."""
        ...

    def take_back(self, job_id: str) -> bool:
        """Hold again a job taken over while its submit was out (to record its answer)."""
        ...

    def hand_back(self, job_id: str) -> None:
        """Release a job taken back, for any runner to take further."""
        ...

    def settle(self) -> str | None:
        """However the run ends: no job of this process stays mid-step. Returns why
        the run had to stop short, if it had (a shared run's lease was lost)."""
        ...

    def run_counts(self) -> RunCounts | None:
        """A shared run's jobs by provider and state (every runner's) and its runners
        at work; None, without asking anything, when this process is alone."""
        ...


def coordinate(manifest: Manifest, *, lease: float = DEFAULT_LEASE) -> Coordinator:
    """The coordinator for ``manifest``: ``Shared`` where other runners may be at work."""
    if manifest.shared:
        from pipeline.manifest import PgManifest, Runners

        assert isinstance(manifest, PgManifest)
        return Shared(Runners(manifest), lease=lease)
    return Local(manifest)


class Local:
    """One process, one manifest: today's behaviour, with nothing to ask anyone."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def start(self, lanes: Mapping[str, Lane], costs: Costs, note: Callable[[str], None]) -> Budget:
        # what earlier runs spent counts, before unknown jobs are retried
        return BudgetGate(costs, self.manifest.iter_records() if costs.priced else ())

    async def keep_alive(self, lost: Callable[[str], None]) -> None:
        return None

    async def records(
        self, provider: str, *, page: int, stopped: Callable[[], bool]
    ) -> AsyncGenerator[JobRecord, None]:
        for record in self.manifest.iter_records(provider=provider, states=IN_FLIGHT):
            yield record
        for record in self.manifest.iter_records(provider=provider, states=[S.PENDING]):
            yield record

    def stopped_feeding(self, provider: str) -> None:
        return None

    def slot(self, provider: str) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def pace(self, lane: Lane) -> None:
        return None

    def take_back(self, job_id: str) -> bool:
        return False

    def hand_back(self, job_id: str) -> None:
        return None

    def run_counts(self) -> RunCounts | None:
        return None

    def settle(self) -> str | None:
        with contextlib.suppress(ManifestError):  # a manifest that failed writes nothing
            self.manifest.reset([S.DOWNLOADING], S.SUCCEEDED, note="run ended mid-download")
            self.manifest.reset([S.SUBMITTING], S.UNKNOWN, note="run ended mid-submit")
        return None


class Shared:
    """One of several runners of a run in PostgreSQL."""

    def __init__(self, runners: Runners, *, lease: float = DEFAULT_LEASE) -> None:
        self.runners = runners
        self.lease = lease
        self._note: Callable[[str], None] = lambda text: None
        self._slots: dict[str, SlotPool] = {}

    def start(self, lanes: Mapping[str, Lane], costs: Costs, note: Callable[[str], None]) -> Budget:
        self._note = note
        manifest = self.runners.manifest
        self._slots = {name: SlotPool(lane.settings.concurrency) for name, lane in lanes.items()}

        def count_spent() -> dict[str, Decimal]:
            spent = spent_on(costs, manifest.iter_records())
            counters = {_key(provider): value for provider, value in spent.items()}
            return counters | {RUN_KEY: sum(spent.values(), Decimal(0))}

        self.runners.join(self.lease, count_spent if costs.priced else None)
        try:
            for name, lane in lanes.items():
                self.runners.ensure_slots(name, lane.settings.concurrency)
        except BaseException:
            self.settle()
            raise
        if not costs.priced:
            return BudgetGate(costs, ())  # nothing has a price: nothing to count
        return SharedBudget(costs, self.runners)

    async def keep_alive(self, lost: Callable[[str], None]) -> None:
        """Renew the lease every third of it, and reap the runners that stopped."""
        from pipeline.manifest import LeaseLost

        renewed = anyio.current_time()
        while True:
            await anyio.sleep(_jittered(self.lease / 3))
            try:
                self.runners.renew(self.lease)
                renewed = anyio.current_time()
            except LeaseLost as exc:
                lost(str(exc))
                return
            except ManifestError as exc:  # the database is out of reach: it may come back
                if anyio.current_time() - renewed >= self.lease:
                    lost(f"the lease could not be renewed for {self.lease:g}s ({exc})")
                    return
                continue
            with contextlib.suppress(ManifestError):  # someone else reaps next time
                reaped = self.runners.reap()
                if reaped:
                    self._note(
                        f"took over from runner(s) {', '.join(reaped.runners)} (they stopped "
                        f"renewing): {reaped.freed} job(s) free again, {reaped.unknown} submit(s) "
                        f"cut short now unknown, {reaped.succeeded} download(s) to fetch again"
                    )

    async def records(
        self, provider: str, *, page: int, stopped: Callable[[], bool]
    ) -> AsyncGenerator[JobRecord, None]:
        """Claimed a page at a time; with nothing free, waits while another runner still
        holds jobs (if it dies, they come free), looking again every ``IDLE_LOOK``
        seconds, and ends when none does."""
        pool = self._pool(provider)
        try:
            while True:
                batch = self.runners.claim(provider, IN_FLIGHT, page)
                if not batch and not stopped():
                    batch = self.runners.claim(provider, [S.PENDING], page)
                if batch:
                    pool.feeding = True
                    self._reshare(provider, pool)
                for record in batch:
                    yield record
                if batch:
                    continue
                pool.feeding = False  # until more comes: the slots not in use go back
                self._return_idle(provider, pool)
                states = (S.SUBMITTING, *IN_FLIGHT) if stopped() else WORKING
                if not self.runners.others_working(provider, states):
                    return
                await anyio.sleep(_jittered(min(IDLE_LOOK, self.lease / 3)))
        finally:
            pool.feeding = False
            self._return_idle(provider, pool)

    def stopped_feeding(self, provider: str) -> None:
        with contextlib.suppress(ManifestError):  # else they go when this runner leaves
            self.runners.release_pending(provider)

    @contextlib.asynccontextmanager
    async def slot(self, provider: str) -> AsyncIterator[None]:
        """A task slot held in the database, passed on here from job to job without a
        round trip while this runner keeps no more than its share (see ``SlotPool``)."""
        pool = self._pool(provider)
        slot = await self._take_slot(provider, pool)
        try:
            yield
        finally:
            self._give_slot(provider, pool, slot)

    def _pool(self, provider: str) -> SlotPool:
        if provider not in self._slots:  # a lane the run did not start with: its own limit
            self._slots[provider] = SlotPool(1)
        return self._slots[provider]

    async def _take_slot(self, provider: str, pool: SlotPool) -> int:
        if pool.idle and not pool.waiting:
            return pool.idle.pop()
        me = _Waiter()
        pool.waiting.append(me)
        try:
            while me.slot is None:
                if pool.asking:  # another waiter asks the database for all of us
                    await me.woken.wait()
                    me.woken = anyio.Event()
                    continue
                pool.asking = True
                try:
                    await self._ask_for_slots(provider, pool, me)
                finally:
                    pool.asking = False
                    if pool.waiting:  # the next in line asks now
                        pool.waiting[0].woken.set()
        except BaseException:
            if me in pool.waiting:
                pool.waiting.remove(me)
            if me.slot is not None:  # handed over as we were cancelled
                self._give_slot(provider, pool, me.slot)
            raise
        return me.slot

    async def _ask_for_slots(self, provider: str, pool: SlotPool, me: _Waiter) -> None:
        """Take free slots for every waiter in one statement, until ``me`` has one;
        between tries, a growing pause (cut short when a job here hands ``me`` one)."""
        pause, longest = SLOT_WAIT
        while me.slot is None:
            if pool.held >= pool.share:  # then only our own jobs hand slots on, unless
                self._reshare(provider, pool)  # runners that wanted them have gone
            wanted = min(len(pool.waiting), pool.share - pool.held)
            taken = self.runners.take_slots(provider, wanted) if wanted > 0 else []
            pool.held += len(taken)
            for slot in taken:
                pool.hand(slot)
            if me.slot is not None:
                return
            if taken:
                pause = SLOT_WAIT[0]
                continue
            with anyio.move_on_after(_jittered(pause)):
                await me.woken.wait()
            me.woken = anyio.Event()
            pause = min(pause * 2, longest)

    def _reshare(self, provider: str, pool: SlotPool) -> None:
        """This runner's share of the slots, among the runners holding jobs of
        ``provider`` now; the idle slots above it go back."""
        pool.reshared_at = time.monotonic()
        with contextlib.suppress(ManifestError):  # the share stays as it was
            pool.share = math.ceil(pool.limit / self.runners.sharing(provider, WORKING))
        self._return_idle(provider, pool)

    def _give_slot(self, provider: str, pool: SlotPool, slot: int) -> None:
        """The next job here takes the slot, unless this runner holds more than its
        share (counted again every ``RESHARE`` seconds: jobs may last long) or has no
        job to take it: then it goes back for any runner to take."""
        if time.monotonic() - pool.reshared_at >= RESHARE:
            self._reshare(provider, pool)
        if pool.held <= pool.share and (pool.feeding or pool.waiting):
            pool.hand(slot)
            return
        pool.held -= 1
        with contextlib.suppress(ManifestError):  # else it is freed when we leave
            self.runners.give_slot(provider, slot)

    def _return_idle(self, provider: str, pool: SlotPool) -> None:
        """Give back the slots no job here uses, above the share or all when not feeding."""
        keep = pool.share if pool.feeding else 0
        while pool.idle and pool.held > keep:
            pool.held -= 1
            with contextlib.suppress(ManifestError):  # else it is freed when we leave
                self.runners.give_slot(provider, pool.idle.pop())

    async def pace(self, lane: Lane) -> None:
        rate = lane.settings.rate
        if rate is None:
            return
        burst = max(1, min(rate.count, math.ceil(rate.per_second)))  # as the lane's limiter
        delay = self.runners.take_rate(lane.name, 1.0 / rate.per_second, burst)
        if delay > 0:
            await anyio.sleep(delay)

    def take_back(self, job_id: str) -> bool:
        try:
            return self.runners.take_back(job_id)
        except ManifestError:
            return False

    def hand_back(self, job_id: str) -> None:
        with contextlib.suppress(ManifestError):  # else it is freed when we leave
            self.runners.hand_back(job_id)

    def run_counts(self) -> RunCounts | None:
        return self.runners.progress()

    def settle(self) -> str | None:
        runner_id = self.runners.manifest.runner_id
        try:
            held = self.runners.leave()
        except ManifestError:  # the lease expires and another runner reaps
            return None
        if held:
            return None
        return f"runner {runner_id} was reaped (its lease expired): its jobs went to the others"


class SlotPool:
    """The task slots of one provider that this runner holds in the database.

    A job's slot goes to the next job here, without a round trip, while the runner
    holds no more than its ``share``: the provider's concurrency divided among the
    runners that hold its jobs (counted at each claim, at a release once a second, and
    while waiting at the share).
    Above it, or with nothing to feed, a slot goes back for any runner to take, and no
    runner takes more than its share. Workers without one wait in line; the first asks
    the database for the whole line, the others wait to be handed one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.share = limit
        self.held = 0  # held in the database: in use here, or idle
        self.idle: list[int] = []
        self.waiting: deque[_Waiter] = deque()
        self.asking = False  # a waiter is asking the database
        self.feeding = False  # this runner has jobs of the provider to work on
        self.reshared_at = -math.inf  # when the share was last counted (monotonic)

    def hand(self, slot: int) -> None:
        """``slot`` to the first in line, or idle until the next job here."""
        if self.waiting:
            waiter = self.waiting.popleft()
            waiter.slot = slot
            waiter.woken.set()
        else:
            self.idle.append(slot)


class _Waiter:
    """A worker waiting for a slot: handed one, or woken to ask the database."""

    def __init__(self) -> None:
        self.slot: int | None = None
        self.woken = anyio.Event()


RUN_KEY = "run"


def _key(provider: str) -> str:
    return f"provider:{provider}"


class SharedBudget:
    """``BudgetGate`` with its counters in the database: what every runner spent or has
    in flight, reserved all-or-none, so no cap is passed however many runners submit."""

    def __init__(self, costs: Costs, runners: Runners) -> None:
        self.costs = costs
        self.runners = runners

    def reserve(self, job: Job) -> Refusal | None:
        cost = self.costs.of(job)
        if cost is None:
            return None
        provider, run_cap = job.provider, self.costs.run_budget
        refused = self.runners.reserve(
            [(_key(provider), cost, self.costs.budgets.get(provider)), (RUN_KEY, cost, run_cap)]
        )
        if refused is None:
            return None
        counter, spent = refused
        if counter == RUN_KEY:
            assert run_cap is not None
            return Refusal(RUN_BUDGET, refusal_text(self.costs, RUN_BUDGET, run_cap, spent, cost))
        key = f"providers.{provider}.budget"
        cap = self.costs.budgets[provider]
        return Refusal(key, refusal_text(self.costs, key, cap, spent, cost))

    def release(self, job: Job) -> None:
        cost = self.costs.of(job)
        if cost is not None:
            self.runners.release([(_key(job.provider), cost), (RUN_KEY, cost)])

    @property
    def spent(self) -> dict[str, Decimal]:
        prefix = _key("")
        return {
            key[len(prefix) :]: value
            for key, value in self.runners.budgets().items()
            if key.startswith(prefix) and value
        }


def _jittered(seconds: float) -> float:
    """``seconds`` give or take a fifth, so runners started together drift apart."""
    return seconds * random.uniform(0.8, 1.2)
