"""The batch follower against an in-memory provider: one status_many per round for every
task in flight, dispatch to waiters, spacing, hints and error isolation. All on virtual
time (``tests/virtual_time.py``): nothing here really waits."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest

from pipeline.completion import FollowContext, make_follower
from pipeline.completion.batch import BatchFollower
from pipeline.completion.receiver import HintSubscription
from pipeline.errors import AccountError, FinalError, TransientError
from pipeline.models import Job, ProviderSettings, RemoteStatus, RemoteTask, RunSettings
from pipeline.providers.base import BatchStatusCapable, PreparedRequest

from .virtual_time import VirtualTime

pytestmark = pytest.mark.anyio

FAST = RunSettings(poll_initial=0.01, poll_max=0.05, poll_factor=2.0, retries=3)
S = RemoteStatus


class FakeProvider(BatchStatusCapable):
    """Tasks whose status the test sets; every status_many call is recorded."""

    type = "fake"
    title = "fake"
    default_base_url = "http://fake.test"

    def __init__(self) -> None:
        super().__init__(ProviderSettings(name="fake", type="fake"))
        self.states: dict[str, RemoteStatus] = {}
        self.calls: list[list[str]] = []
        self.singles: list[str] = []
        self.errors: list[Exception] = []  # raised by the next status_many calls, in order
        self.bad: set[str] = set()  # ids a single status refuses with a final error

    def build_submit(self, job: Job) -> PreparedRequest:
        raise NotImplementedError

    async def submit(self, job: Job) -> str:
        raise NotImplementedError

    async def status(self, remote_id: str) -> RemoteTask:
        self.singles.append(remote_id)
        if remote_id in self.bad:
            raise FinalError("no such task", status=404, code="not_found")
        return self._task(remote_id)

    async def status_many(self, remote_ids: Sequence[str]) -> list[RemoteTask]:
        self.calls.append(list(remote_ids))
        if self.errors:
            raise self.errors.pop(0)
        return [self._task(remote_id) for remote_id in remote_ids]

    def _task(self, remote_id: str) -> RemoteTask:
        status = self.states.get(remote_id, S.RUNNING)
        return RemoteTask(remote_id, status, error="boom" if status is S.FAILED else None)


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


def on(vt: VirtualTime, scenario: Callable[[], Awaitable[None]]) -> Awaitable[None]:
    """Run ``scenario`` with the clock jumping whenever everything waits (a real-time
    guard catches a hang)."""

    async def guarded() -> None:
        with anyio.fail_after(10):
            await scenario()

    return vt.drive(guarded)


def batch_follower(
    provider: FakeProvider, vt: VirtualTime, run: RunSettings, group: anyio.abc.TaskGroup, **kw: Any
) -> BatchFollower:
    return BatchFollower(provider, run, group, clock=vt.clock, sleep=vt.sleep, **kw)


@asynccontextmanager
async def follower(
    provider: FakeProvider, vt: VirtualTime, run: RunSettings = FAST
) -> AsyncIterator[BatchFollower]:
    async with anyio.create_task_group() as group:
        yield batch_follower(provider, vt, run, group)
        group.cancel_scope.cancel()


async def finish_after(
    provider: FakeProvider, vt: VirtualTime, rounds: int, states: dict[str, RemoteStatus]
) -> None:
    """Set ``states`` once ``rounds`` status rounds have been answered."""
    while len(provider.calls) < rounds:
        await vt.sleep(0.005)
    provider.states.update(states)


async def test_the_batch_mode_makes_a_batch_follower() -> None:
    provider = FakeProvider()
    async with anyio.create_task_group() as group:
        made = make_follower("batch", FollowContext(provider, provider.settings, FAST, group))
    assert isinstance(made, BatchFollower)


async def test_fifty_tasks_cost_one_request_per_round(vt: VirtualTime) -> None:
    provider = FakeProvider()
    ids = [f"t{n}" for n in range(50)]
    results: dict[str, RemoteTask] = {}
    updates: list[RemoteTask] = []

    async def scenario() -> None:
        async with follower(provider, vt) as batch, anyio.create_task_group() as jobs:

            async def follow(remote_id: str) -> None:
                results[remote_id] = await batch.follow(remote_id, on_update=updates.append)

            for remote_id in ids:
                jobs.start_soon(follow, remote_id)
            jobs.start_soon(finish_after, provider, vt, 2, dict.fromkeys(ids, S.SUCCEEDED))
        assert batch.following == 0
        assert len(provider.calls) == batch.rounds >= 2

    await on(vt, scenario)
    assert {task.status for task in results.values()} == {S.SUCCEEDED}
    assert all(sorted(call) == sorted(ids) for call in provider.calls)
    assert provider.singles == []
    assert {task.status for task in updates} == {S.RUNNING, S.SUCCEEDED}


async def test_finished_tasks_leave_the_round(vt: VirtualTime) -> None:
    provider = FakeProvider()
    provider.states["quick"] = S.SUCCEEDED

    async def scenario() -> None:
        async with follower(provider, vt) as batch, anyio.create_task_group() as jobs:
            jobs.start_soon(lambda: batch.follow("slow", on_update=lambda task: None))
            done = await batch.follow("quick", on_update=lambda task: None)
            assert done.status is S.SUCCEEDED
            rounds = len(provider.calls) + 1
            jobs.start_soon(finish_after, provider, vt, rounds, {"slow": S.FAILED})

    await on(vt, scenario)
    assert provider.calls[-1] == ["slow"]


async def round_gaps(provider: FakeProvider, vt: VirtualTime) -> list[float]:
    """Seconds between the rounds that check task "t" until it succeeds on the 6th."""
    run = RunSettings(poll_initial=0.02, poll_max=0.32, poll_factor=2.0)
    stamps: list[float] = []

    def stamp(task: RemoteTask) -> None:
        stamps.append(vt.now)
        if len(stamps) == 6:
            provider.states["t"] = S.SUCCEEDED

    async def scenario() -> None:
        async with follower(provider, vt, run) as batch:
            await batch.follow("t", on_update=stamp)

    await on(vt, scenario)
    return [later - earlier for earlier, later in itertools.pairwise(stamps)]


async def test_spacing_grows_while_nothing_changes(vt: VirtualTime) -> None:
    provider = FakeProvider()
    gaps = await round_gaps(provider, vt)
    assert gaps[-1] > 0.15 > gaps[0]


async def test_a_hint_starts_a_round_at_once(vt: VirtualTime) -> None:
    provider = FakeProvider()
    slow = RunSettings(poll_initial=30.0, poll_max=30.0)
    with anyio.fail_after(5):
        async with follower(provider, vt, slow) as batch, anyio.create_task_group() as jobs:
            results: list[RemoteTask] = []

            async def follow() -> None:
                results.append(await batch.follow("t", on_update=lambda task: None))

            jobs.start_soon(follow)
            await vt.settle()
            assert provider.calls == []
            batch.hint("someone-else")  # not followed here: ignored
            await vt.settle()
            assert provider.calls == []
            provider.states["t"] = S.SUCCEEDED
            batch.hint("t")
    assert results[0].status is S.SUCCEEDED
    assert provider.calls == [["t"]]


async def test_transient_errors_retry_the_round(vt: VirtualTime) -> None:
    provider = FakeProvider()
    provider.errors = [TransientError("503"), TransientError("503")]
    provider.states["t"] = S.SUCCEEDED

    async def scenario() -> None:
        async with follower(provider, vt) as batch:
            task = await batch.follow("t", on_update=lambda task: None)
        assert task.status is S.SUCCEEDED
        assert len(provider.calls) == 3 and batch.rounds == 1

    await on(vt, scenario)


async def test_transient_errors_past_the_retries_reach_the_waiters(vt: VirtualTime) -> None:
    provider = FakeProvider()
    provider.errors = [TransientError("down")] * (FAST.retries + 1)

    async def scenario() -> None:
        async with follower(provider, vt) as batch:
            with pytest.raises(TransientError, match="down"):
                await batch.follow("t", on_update=lambda task: None)
            assert batch.following == 0

    await on(vt, scenario)


async def test_a_final_error_fails_only_the_task_it_concerns(vt: VirtualTime) -> None:
    provider = FakeProvider()
    provider.errors = [FinalError("bad request", status=400)]
    provider.bad = {"bad"}
    provider.states["good"] = S.SUCCEEDED
    outcomes: dict[str, object] = {}

    async def scenario() -> None:
        async with follower(provider, vt) as batch, anyio.create_task_group() as jobs:

            async def follow(remote_id: str) -> None:
                try:
                    outcomes[remote_id] = await batch.follow(remote_id, on_update=lambda t: None)
                except FinalError as exc:
                    outcomes[remote_id] = exc

            jobs.start_soon(follow, "good")
            jobs.start_soon(follow, "bad")

    await on(vt, scenario)
    assert isinstance(outcomes["bad"], FinalError)
    good = outcomes["good"]
    assert isinstance(good, RemoteTask) and good.status is S.SUCCEEDED
    assert sorted(provider.singles) == ["bad", "good"]


async def test_an_account_error_fails_every_task(vt: VirtualTime) -> None:
    provider = FakeProvider()
    provider.errors = [AccountError("invalid_token", status=401)]
    failures: list[BaseException] = []

    async def scenario() -> None:
        async with follower(provider, vt) as batch, anyio.create_task_group() as jobs:

            async def follow(remote_id: str) -> None:
                try:
                    await batch.follow(remote_id, on_update=lambda t: None)
                except AccountError as exc:
                    failures.append(exc)

            for remote_id in ("a", "b"):
                jobs.start_soon(follow, remote_id)

    await on(vt, scenario)
    assert len(failures) == 2 and provider.singles == []


async def test_a_failing_update_callback_fails_only_its_follow(vt: VirtualTime) -> None:
    provider = FakeProvider()
    provider.states.update({"a": S.SUCCEEDED, "b": S.SUCCEEDED})

    def broken(task: RemoteTask) -> None:
        raise RuntimeError("manifest is gone")

    results: list[RemoteTask] = []

    async def scenario() -> None:
        async with follower(provider, vt) as batch, anyio.create_task_group() as jobs:

            async def follow_b() -> None:
                results.append(await batch.follow("b", on_update=lambda t: None))

            jobs.start_soon(follow_b)
            with pytest.raises(RuntimeError, match="manifest"):
                await batch.follow("a", on_update=broken)

    await on(vt, scenario)
    assert results[0].status is S.SUCCEEDED


async def test_a_cancelled_follow_leaves_the_rounds(vt: VirtualTime) -> None:
    provider = FakeProvider()
    with anyio.fail_after(10):
        async with follower(provider, vt) as batch:
            async with anyio.create_task_group() as jobs:
                jobs.start_soon(lambda: batch.follow("t", on_update=lambda task: None))
                await vt.advance(0.05)
                assert provider.calls  # it was asked about before being cancelled
                jobs.cancel_scope.cancel()
            assert batch.following == 0
            asked = len(provider.calls)
            await vt.advance(0.1)
            assert len(provider.calls) == asked  # idle: no requests without tasks


async def test_callback_hints_from_the_receiver_wake_the_round(vt: VirtualTime) -> None:
    provider = FakeProvider()
    subscription = HintSubscription()

    @contextmanager
    def hints() -> Iterator[HintSubscription]:
        yield subscription

    slow = RunSettings(poll_initial=30.0, poll_max=30.0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            batch = batch_follower(provider, vt, slow, group, hints=hints)
            results: list[RemoteTask] = []

            async def follow() -> None:
                results.append(await batch.follow("t", on_update=lambda task: None))
                group.cancel_scope.cancel()

            group.start_soon(follow)
            await vt.settle()
            provider.states["t"] = S.SUCCEEDED
            subscription.add("t")
    assert results[0].status is S.SUCCEEDED
    assert provider.calls == [["t"]]


@contextmanager
def hint_source(subscription: HintSubscription) -> Iterator[HintSubscription]:
    yield subscription


async def test_a_change_resets_nobodys_spacing(vt: VirtualTime) -> None:
    """A task whose progress moves every round still has its checks spaced out."""

    class Moving(FakeProvider):
        def _task(self, remote_id: str) -> RemoteTask:
            task = super()._task(remote_id)
            return RemoteTask(remote_id, task.status, progress=float(len(self.calls)))

    provider = Moving()
    gaps = await round_gaps(provider, vt)
    assert gaps[-1] > 0.15 > gaps[0]


async def test_a_new_task_brings_a_round_forward_only_when_its_first_check_is_due(
    vt: VirtualTime,
) -> None:
    provider = FakeProvider()
    run = RunSettings(poll_initial=0.5, poll_max=0.5, poll_factor=1.0)
    with anyio.fail_after(10):
        async with follower(provider, vt, run) as batch, anyio.create_task_group() as jobs:
            jobs.start_soon(lambda: batch.follow("old", on_update=lambda t: None))
            await vt.advance(0.15)
            jobs.start_soon(lambda: batch.follow("new", on_update=lambda t: None))
            await vt.advance(0.15)
            assert provider.calls == []  # neither check is due yet
            await vt.advance(0.4)
            assert provider.calls == [["old", "new"]]  # the new one rode along
            provider.states.update(old=S.SUCCEEDED, new=S.SUCCEEDED)
            await vt.advance(0.5)


async def test_with_callbacks_the_checks_are_only_a_safety_net(vt: VirtualTime) -> None:
    provider = FakeProvider()
    subscription = HintSubscription()
    run = RunSettings(poll_initial=0.01, poll_max=0.3, poll_factor=2.0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            batch = batch_follower(
                provider, vt, run, group, hints=partial(hint_source, subscription)
            )
            group.start_soon(lambda: batch.follow("t", on_update=lambda task: None))
            await vt.advance(0.15)
            assert provider.calls == []  # not poll_initial: the first check waits poll_max
            await vt.advance(0.3)
            assert provider.calls == [["t"]]
            group.cancel_scope.cancel()


async def test_one_round_confirms_a_burst_of_callbacks(vt: VirtualTime) -> None:
    provider = FakeProvider()
    subscription = HintSubscription()
    ids = [f"t{n}" for n in range(50)]
    slow = RunSettings(poll_initial=30.0, poll_max=30.0)
    results: list[RemoteTask] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            batch = batch_follower(
                provider, vt, slow, group, hints=partial(hint_source, subscription)
            )

            async def follow(remote_id: str) -> None:
                results.append(await batch.follow(remote_id, on_update=lambda task: None))
                if len(results) == len(ids):
                    group.cancel_scope.cancel()

            for remote_id in ids:
                group.start_soon(follow, remote_id)
            await vt.settle()
            provider.states.update(dict.fromkeys(ids, S.SUCCEEDED))
            for remote_id in ids:
                subscription.add(remote_id)
    assert len(results) == 50
    assert len(provider.calls) == batch.rounds == 1


async def test_a_few_callbacks_wait_a_little_for_others(vt: VirtualTime) -> None:
    """Callbacks for under a fifth of the most tasks in flight wait a share of their
    task's age, so that one round confirms several; for a fifth the round starts at once."""
    provider = FakeProvider()
    subscription = HintSubscription()
    ids = [f"t{n}" for n in range(20)]  # a fifth: 4
    slow = RunSettings(poll_initial=30.0, poll_max=30.0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            batch = batch_follower(
                provider, vt, slow, group, hints=partial(hint_source, subscription)
            )
            for remote_id in ids:
                group.start_soon(lambda r=remote_id: batch.follow(r, on_update=lambda t: None))
            await vt.advance(2.0)  # the tasks' age: a callback now waits 0.15 × 2 s
            provider.states["t0"] = S.SUCCEEDED
            subscription.add("t0")
            await vt.advance(0.1)
            assert provider.calls == []
            await vt.advance(0.6)
            assert len(provider.calls) == 1 and batch.following == 19
            provider.states.update(dict.fromkeys(ids[1:5], S.SUCCEEDED))
            for remote_id in ids[1:5]:
                subscription.add(remote_id)
            await vt.settle()  # four, a fifth of the peak (20): at once
            assert len(provider.calls) == 2 and batch.following == 15
            provider.states["t5"] = S.SUCCEEDED
            subscription.add("t5")
            await vt.settle()
            assert len(provider.calls) == 2  # the tail waits too: one is not a fifth of 20
            await vt.advance(0.8)
            assert len(provider.calls) == 3 and batch.following == 14
            group.cancel_scope.cancel()


async def test_a_callback_that_beats_its_follow_is_not_lost(vt: VirtualTime) -> None:
    provider = FakeProvider()
    subscription = HintSubscription()
    slow = RunSettings(poll_initial=30.0, poll_max=30.0)
    provider.states["fast"] = S.SUCCEEDED
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            batch = batch_follower(
                provider, vt, slow, group, hints=partial(hint_source, subscription)
            )
            group.start_soon(lambda: batch.follow("other", on_update=lambda task: None))
            await vt.settle()
            subscription.add("fast")  # before anyone follows it
            await vt.settle()
            done = await batch.follow("fast", on_update=lambda task: None)
            group.cancel_scope.cancel()
    assert done.status is S.SUCCEEDED
    assert provider.calls == [["other", "fast"]]


async def test_an_estimate_from_the_submit_sets_the_first_check(vt: VirtualTime) -> None:
    class Estimating(FakeProvider):
        def first_check_in(self, remote_id: str) -> float | None:
            return 0.05

    provider = Estimating()
    provider.states["t"] = S.SUCCEEDED
    slow = RunSettings(poll_initial=30.0, poll_max=30.0)

    async def scenario() -> None:
        async with follower(provider, vt, slow) as batch:
            task = await batch.follow("t", on_update=lambda task: None)
        assert task.status is S.SUCCEEDED and provider.calls == [["t"]]

    await on(vt, scenario)
