"""Task slots of a shared run, as runners pass them on (``runner.coordination.Shared``)
on a real PostgreSQL: a runner hands a slot from job to job without asking the
database, but never holds more than its share while other runners have jobs, and the
slots in use across all runners never pass the account's concurrency."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.cost import Costs
from pipeline.manifest.postgres import PgManifest
from pipeline.manifest.runners import Runners
from pipeline.models import Job, JobRecord, JobState
from pipeline.runner.coordination import RESHARE, Shared
from pipeline.runner.session import Lane

S = JobState
RUN = "slots"
NO_COSTS = Costs(prices={}, budgets={}, run_budget=None, currency="USD")
WAIT = 60  # seconds: generous, for a slow shared machine


def make_job(i: int) -> Job:
    return Job(id=f"job-{i:04d}", provider="p", model=None, params={"prompt": str(i)})


@pytest.fixture
def opened() -> Iterator[list[PgManifest]]:
    stores: list[PgManifest] = []
    yield stores
    for store in stores:
        store.close()


def seed(pg_url: str, tmp_path: Path, n: int) -> None:
    with PgManifest.open_url(pg_url, run=RUN, root=tmp_path) as m:
        m.add_jobs(make_job(i) for i in range(n))


def runner(pg_url: str, tmp_path: Path, opened: list[PgManifest], limit: int) -> Shared:
    """One runner of the run, joined, with provider ``p`` at concurrency ``limit``."""
    store = PgManifest.open_url(pg_url, run=RUN, root=tmp_path)
    opened.append(store)
    shared = Shared(Runners(store))
    lane = SimpleNamespace(settings=SimpleNamespace(concurrency=limit))
    shared.start({"p": cast(Lane, lane)}, NO_COSTS, lambda text: None)
    return shared


def held_in_database(shared: Shared) -> int:
    runners = shared.runners
    with runners.manifest.coordinating("count", transaction=False) as conn:
        row = conn.execute("SELECT count(*) FROM slots WHERE holder = ?", (runners.id,))
        return int(row.fetchone()[0])


def records(shared: Shared) -> Any:
    return shared.records("p", page=2, stopped=lambda: False)


@pytest.mark.parametrize("learns", ["at its next claim", "as its long jobs end"])
def test_a_runner_keeps_no_more_than_its_share_once_another_has_jobs(
    pg_url: str, tmp_path: Path, opened: list[PgManifest], learns: str
) -> None:
    """Runner a holds both slots; then b claims jobs and waits for one. When a's jobs
    end, one slot goes back (a is above its share: one of two runners with jobs) and b
    takes it. Runner a learns of b at its next claim (then the other slot passes to a's
    waiting job, not to the database), or, when its jobs outlast a claim and none of its
    own waits, as they end."""
    seed(pg_url, tmp_path, 8)
    a = runner(pg_url, tmp_path, opened, limit=2)
    b = runner(pg_url, tmp_path, opened, limit=2)

    async def main() -> None:
        a_jobs, b_jobs = records(a), records(b)
        await a_jobs.__anext__()  # a claims two jobs; its share: both slots
        async with contextlib.AsyncExitStack() as a_working:
            for _ in range(2):
                await a_working.enter_async_context(a.slot("p"))
            assert held_in_database(a) == 2
            await b_jobs.__anext__()  # b claims jobs too
            a_waits = learns == "at its next claim"
            if a_waits:  # a's second job, then a claim
                for _ in range(2):
                    await a_jobs.__anext__()
            else:
                await anyio.sleep(RESHARE)
            a_got, b_got = anyio.Event(), anyio.Event()
            done = anyio.Event()

            async def work(shared: Shared, got: anyio.Event) -> None:
                async with shared.slot("p"):
                    got.set()
                    await done.wait()

            async with anyio.create_task_group() as group:
                if a_waits:
                    group.start_soon(work, a, a_got)
                group.start_soon(work, b, b_got)
                await anyio.sleep(0.2)  # every slot is a's
                assert not a_got.is_set() and not b_got.is_set()
                await a_working.aclose()  # a's two jobs end
                with anyio.fail_after(WAIT):
                    await b_got.wait()
                    if a_waits:
                        await a_got.wait()
                assert (held_in_database(a), held_in_database(b)) == (1, 1)
                done.set()
        await a_jobs.aclose()
        await b_jobs.aclose()

    anyio.run(main)


def test_slots_passed_on_never_pass_the_limit_across_runners(
    pg_url: str, tmp_path: Path, opened: list[PgManifest]
) -> None:
    """Three runners, five workers each, three slots: at no moment are more than three
    jobs at work, and no runner works on more jobs than it holds slots in the database."""
    jobs, limit = 45, 3
    seed(pg_url, tmp_path, jobs)
    runners = [runner(pg_url, tmp_path, opened, limit=limit) for _ in range(3)]
    at_work: dict[int, int] = {}
    peak = 0
    done = 0

    async def run(n: int, shared: Shared) -> None:
        send, receive = anyio.create_memory_object_stream[JobRecord](limit)

        async def feed() -> None:
            async with send:
                async for record in shared.records("p", page=limit, stopped=lambda: False):
                    await send.send(record)

        async def work(receive: MemoryObjectReceiveStream[JobRecord]) -> None:
            nonlocal peak, done
            async for record in receive:
                async with shared.slot("p"):
                    at_work[n] = at_work.get(n, 0) + 1
                    peak = max(peak, sum(at_work.values()))
                    assert at_work[n] <= held_in_database(shared)
                    await anyio.sleep(0.01)
                    store = shared.runners.manifest
                    assert store.transition(record.job.id, S.CANCELLED, expect=S.PENDING)
                    done += 1
                    at_work[n] -= 1

        async with anyio.create_task_group() as group:
            group.start_soon(feed)
            for _ in range(5):
                group.start_soon(work, receive.clone())
            receive.close()

    async def main() -> None:
        with anyio.fail_after(WAIT * 3):
            async with anyio.create_task_group() as group:
                for n, shared in enumerate(runners):
                    group.start_soon(run, n, shared)

    anyio.run(main)
    assert done == jobs
    assert 1 <= peak <= limit
    for shared in runners:
        assert shared.settle() is None  # left: every slot free again
    free = Runners(opened[0])
    free.join(30)
    assert len(free.take_slots("p", limit + 1)) == limit


def test_a_runner_with_nothing_left_leaves_soon_after_the_others_last_job(
    pg_url: str, tmp_path: Path, opened: list[PgManifest]
) -> None:
    """Runner b finds nothing to claim while a still works on the last job: b waits in
    case a dies, but leaves once a's job is done, not a third of a lease later."""
    seed(pg_url, tmp_path, 1)
    a = runner(pg_url, tmp_path, opened, limit=1)
    b = runner(pg_url, tmp_path, opened, limit=1)
    b.lease = 300.0  # a third of it would outlast the test

    async def main() -> None:
        a_jobs = records(a)
        record = await a_jobs.__anext__()
        b_ended = anyio.Event()

        async def b_feeds() -> None:
            async for _ in records(b):
                raise AssertionError("a holds the only job")
            b_ended.set()

        async with anyio.create_task_group() as group:
            group.start_soon(b_feeds)
            await anyio.sleep(0.5)
            assert not b_ended.is_set()  # a still works on a job
            store = a.runners.manifest
            assert store.transition(record.job.id, S.CANCELLED, expect=S.PENDING)
            with anyio.fail_after(WAIT):
                await b_ended.wait()
        await a_jobs.aclose()

    anyio.run(main)
