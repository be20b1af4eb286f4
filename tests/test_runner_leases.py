"""The runners of a shared run (``pipeline/manifest/runners.py``) on a real PostgreSQL:
claims, leases, reaping and takeover, fencing, and the limits all runners share. Each
``PgManifest`` is its own connection, so each stands for a separate runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pipeline.manifest.postgres import _V1, PG_SCHEMA_VERSION, PgManifest, schema_name
from pipeline.manifest.runners import LeaseLost, Runners
from pipeline.models import Job, JobState

S = JobState
RUN = "leases"
IN_FLIGHT = (S.SUBMITTED, S.RUNNING, S.SUCCEEDED, S.DOWNLOADING)


def make_job(i: int, provider: str = "p") -> Job:
    return Job(id=f"job-{i:04d}", provider=provider, model=None, params={"prompt": str(i)})


@pytest.fixture
def opened(pg_url: str, tmp_path: Path) -> Iterator[list[PgManifest]]:
    """Open manifests of the run, closed at the end (``open_runner`` adds to it)."""
    stores: list[PgManifest] = []
    yield stores
    for store in stores:
        store.close()


def open_runner(
    pg_url: str, tmp_path: Path, opened: list[PgManifest], ttl: float = 30
) -> tuple[PgManifest, Runners]:
    store = PgManifest.open_url(pg_url, run=RUN, root=tmp_path)
    opened.append(store)
    runners = Runners(store)
    runners.join(ttl)
    return store, runners


def seed(pg_url: str, tmp_path: Path, n: int) -> None:
    with PgManifest.open_url(pg_url, run=RUN, root=tmp_path) as m:
        m.add_jobs(make_job(i) for i in range(n))


def expire(runners: Runners) -> None:
    """The runner's lease ended a second ago (by the database's clock)."""
    runners.renew(-1)


def test_a_v1_schema_is_migrated_to_v2(pg_url: str, tmp_path: Path) -> None:
    schema = schema_name("old")
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute(f"CREATE SCHEMA {schema}")
        raw.execute(f"SET search_path TO {schema}")
        for statement in _V1.split(";"):
            if statement.strip():
                raw.execute(statement)  # type: ignore[arg-type]
        raw.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        raw.execute(
            "INSERT INTO jobs (id, provider, params, state, created_at, updated_at) "
            "VALUES ('j1', 'p', '{}', 'submitting', 1, 1)"
        )
        raw.execute("INSERT INTO hints (provider, key, at) VALUES ('p', 'before', 1)")
    with PgManifest.open_url(pg_url, run="old", root=tmp_path) as m:
        assert m.meta()["schema_version"] == str(PG_SCHEMA_VERSION) == "3"
        reader = m.hint_reader()  # v3: hints record their transaction
        assert reader.read() == []
        m.relay_hint("p", "after")
        assert reader.read() == [("p", "after")]
        reader.close()
        record = m.get("j1")
        assert record is not None and record.state is S.SUBMITTING
        runners = Runners(m)
        runners.join(30)
        assert [r.job.id for r in runners.claim("p", [S.SUBMITTING], 5)] == ["j1"]
        runners.ensure_slots("p", 2)
        assert runners.take_slot("p") == 0
        assert runners.take_rate("p", 1.0, 1) == 0.0
        assert runners.reserve([("p", Decimal(1), Decimal(2))]) is None
        runners.leave()
        record = m.get("j1")
        assert record is not None and record.state is S.UNKNOWN


def test_two_runners_claim_disjoint_jobs(pg_url: str, tmp_path: Path, opened) -> None:
    seed(pg_url, tmp_path, 300)
    runners = [open_runner(pg_url, tmp_path, opened)[1] for _ in range(3)]
    claimed: list[list[str]] = [[] for _ in runners]
    barrier = threading.Barrier(len(runners))

    def claim_all(n: int) -> None:
        barrier.wait()
        while batch := runners[n].claim("p", [S.PENDING], 7):
            ids = [r.job.id for r in batch]
            assert ids == sorted(ids)  # oldest first
            claimed[n] += ids

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(len(runners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job for ids in claimed for job in ids]
    assert sorted(every) == [f"job-{i:04d}" for i in range(300)]  # each once
    assert all(claimed), "a runner got nothing: the claims did not interleave"


def move_to(store: PgManifest, job_id: str, states: list[JobState]) -> None:
    current = S.PENDING
    for state in states:
        remote = "remote-" + job_id if state is S.SUBMITTED else None
        assert store.transition(job_id, state, expect=current, remote_id=remote)
        current = state


def test_a_dead_runners_jobs_are_settled_and_taken_over(
    pg_url: str, tmp_path: Path, opened
) -> None:
    seed(pg_url, tmp_path, 4)
    a_store, a = open_runner(pg_url, tmp_path, opened)
    assert len(a.claim("p", [S.PENDING], 4)) == 4
    move_to(a_store, "job-0001", [S.SUBMITTING])
    move_to(a_store, "job-0002", [S.SUBMITTING, S.SUBMITTED])
    move_to(a_store, "job-0003", [S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.DOWNLOADING])
    a.ensure_slots("p", 2)
    assert a.take_slot("p") == 0 and a.take_slot("p") == 1
    dead = a.id

    b_store, b = open_runner(pg_url, tmp_path, opened)
    assert not b.reap(), "a live runner was reaped"
    assert b.others_working("p", [S.PENDING, S.SUBMITTING, *IN_FLIGHT])
    assert b.claim("p", [S.PENDING, *IN_FLIGHT], 10) == []  # all held by a live runner
    assert b.take_slot("p") is None

    expire(a)
    reaped = b.reap()
    assert reaped.runners == (dead,)
    assert (reaped.unknown, reaped.succeeded, reaped.freed) == (1, 1, 4)
    states = {r.job.id: r.state for r in b_store.iter_records()}
    assert states == {
        "job-0000": S.PENDING,
        "job-0001": S.UNKNOWN,  # the submit may have created a task: never pending
        "job-0002": S.SUBMITTED,
        "job-0003": S.SUCCEEDED,
    }
    cut = b_store.get("job-0001")
    assert cut is not None and f"runner {dead} stopped renewing mid-submit" in (cut.error or "")
    last = b_store.events("job-0001")[-1]
    assert (last.from_state, last.to_state) == (S.SUBMITTING, S.UNKNOWN)
    assert dead in (last.detail or "")
    assert not b.others_working("p", [S.PENDING, S.SUBMITTING, *IN_FLIGHT])

    taken = b.claim("p", IN_FLIGHT, 10)
    assert [(r.job.id, r.state, r.remote_id) for r in taken] == [
        ("job-0002", S.SUBMITTED, "remote-job-0002"),
        ("job-0003", S.SUCCEEDED, "remote-job-0003"),
    ]
    assert [r.job.id for r in b.claim("p", [S.PENDING], 10)] == ["job-0000"]
    assert b.take_slot("p") is not None and b.take_slot("p") is not None  # freed


def test_a_reaped_runner_can_neither_renew_nor_move_a_job(
    pg_url: str, tmp_path: Path, opened
) -> None:
    seed(pg_url, tmp_path, 3)
    a_store, a = open_runner(pg_url, tmp_path, opened)
    a.claim("p", [S.PENDING], 3)
    move_to(a_store, "job-0001", [S.SUBMITTING, S.SUBMITTED])
    expire(a)
    b_store, b = open_runner(pg_url, tmp_path, opened)
    b.reap()
    with pytest.raises(LeaseLost, match="was reaped"):
        a.renew(30)
    # Its late moves are refused, whether or not another runner took the job yet.
    assert not a_store.transition("job-0001", S.RUNNING, expect=S.SUBMITTED)
    assert not a_store.transition("job-0000", S.SUBMITTING, expect=S.PENDING)
    assert b.claim("p", [S.SUBMITTED], 5)[0].job.id == "job-0001"
    assert not a_store.transition("job-0001", S.RUNNING, expect=S.SUBMITTED)
    assert b_store.transition("job-0001", S.RUNNING, expect=S.SUBMITTED)
    # and a job nobody holds is moved by no runner either
    assert not b_store.transition("job-0002", S.SUBMITTING, expect=S.PENDING)


def test_bulk_resets_leave_a_live_runners_jobs_alone(pg_url: str, tmp_path: Path, opened) -> None:
    seed(pg_url, tmp_path, 2)
    a_store, a = open_runner(pg_url, tmp_path, opened)
    a.claim("p", [S.PENDING], 1)
    move_to(a_store, "job-0000", [S.SUBMITTING])
    with PgManifest.open_url(pg_url, run=RUN, root=tmp_path) as other:
        other.reset([S.SUBMITTING], S.UNKNOWN)  # a starting run's settling of a crash
        other.reset([S.PENDING], S.CANCELLED)
        assert other.get("job-0000").state is S.SUBMITTING  # type: ignore[union-attr]
        assert other.get("job-0001").state is S.CANCELLED  # type: ignore[union-attr]
    _, b = open_runner(pg_url, tmp_path, opened)
    b_store = opened[-1]
    b_store.reset([S.SUBMITTING], S.UNKNOWN)
    assert b_store.get("job-0000").state is S.SUBMITTING  # type: ignore[union-attr]
    a.leave()
    record = a_store.get("job-0000")
    assert record is not None and record.state is S.UNKNOWN
    assert not b.others_working("p", [S.PENDING, S.SUBMITTING, *IN_FLIGHT])


def test_task_slots_never_exceed_their_number(pg_url: str, tmp_path: Path, opened) -> None:
    seed(pg_url, tmp_path, 0)
    runners = [open_runner(pg_url, tmp_path, opened)[1] for _ in range(8)]
    runners[0].ensure_slots("p", 5)
    runners[0].ensure_slots("p", 3)  # the newest spec wins
    held = peak = taken = 0
    lock = threading.Lock()
    barrier = threading.Barrier(len(runners))

    def work(runner: Runners) -> None:
        nonlocal held, peak, taken
        barrier.wait()
        for _ in range(25):
            slot = runner.take_slot("p")
            if slot is None:
                time.sleep(0.001)
                continue
            assert 0 <= slot < 3
            with lock:
                held += 1
                peak = max(peak, held)
                taken += 1
            time.sleep(0.002)
            with lock:
                held -= 1
            runner.give_slot("p", slot)

    threads = [threading.Thread(target=work, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken > 3 and peak <= 3


def test_the_shared_submit_rate_is_one_schedule(pg_url: str, tmp_path: Path, opened) -> None:
    seed(pg_url, tmp_path, 0)
    (_, a), (_, b) = open_runner(pg_url, tmp_path, opened), open_runner(pg_url, tmp_path, opened)
    interval, burst = 100.0, 2  # long enough that the seconds between calls do not matter
    delays = [a.take_rate("p", interval, burst), b.take_rate("p", interval, burst)]
    delays += [a.take_rate("p", interval, burst), b.take_rate("p", interval, burst)]
    assert delays[:2] == [0.0, 0.0]  # the burst
    assert 90 < delays[2] <= 100 and 190 < delays[3] <= 200  # then one per interval
    assert b.take_rate("q", interval, burst) == 0.0  # each provider its own


def test_budget_reservations_never_pass_a_cap(pg_url: str, tmp_path: Path, opened) -> None:
    seed(pg_url, tmp_path, 0)
    runners = [open_runner(pg_url, tmp_path, opened)[1] for _ in range(8)]
    reserved: list[int] = [0] * len(runners)
    refusals: set[tuple[str, Decimal]] = set()
    barrier = threading.Barrier(len(runners))
    cost, cap = Decimal("0.10"), Decimal("3.70")  # room for exactly 37 jobs

    def spend(n: int) -> None:
        barrier.wait()
        while True:
            refused = runners[n].reserve([("provider:p", cost, cap), ("run", cost, None)])
            if refused is not None:
                refusals.add(refused)
                return
            reserved[n] += 1

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(len(runners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(reserved) == 37
    assert refusals == {("provider:p", cap)}
    assert runners[0].budgets() == {"provider:p": cap, "run": cap}
    runners[1].release([("provider:p", cost), ("run", cost)])
    assert runners[2].budgets() == {"provider:p": cap - cost, "run": cap - cost}


def test_the_first_runner_counts_the_budget_from_the_manifest(
    pg_url: str, tmp_path: Path, opened
) -> None:
    seed(pg_url, tmp_path, 0)
    first = PgManifest.open_url(pg_url, run=RUN, root=tmp_path)
    opened.append(first)
    a = Runners(first)
    a.join(30, lambda: {"provider:p": Decimal(5), "run": Decimal(5)})
    assert a.reserve([("provider:p", Decimal(1), None)]) is None
    second = PgManifest.open_url(pg_url, run=RUN, root=tmp_path)
    opened.append(second)
    b = Runners(second)
    b.join(30, lambda: {"provider:p": Decimal(0), "run": Decimal(0)})  # a is live: kept
    assert b.budgets() == {"provider:p": Decimal(6), "run": Decimal(5)}
    a.leave()
    b.leave()
    third = PgManifest.open_url(pg_url, run=RUN, root=tmp_path)
    opened.append(third)
    c = Runners(third)
    c.join(30, lambda: {"provider:p": Decimal(2)})  # alone again: counted afresh
    assert c.budgets() == {"provider:p": Decimal(2)}


def test_a_reaped_runner_takes_nothing_and_orphaned_jobs_come_free(
    pg_url: str, tmp_path: Path, opened
) -> None:
    seed(pg_url, tmp_path, 3)
    a_store, a = open_runner(pg_url, tmp_path, opened)
    a.ensure_slots("p", 2)
    expire(a)
    _, b = open_runner(pg_url, tmp_path, opened)
    b.reap()
    assert a.claim("p", [S.PENDING], 3) == []  # reaped, though it does not know yet
    assert a.take_slot("p") is None
    # A job held by a runner with no lease (one that claimed as it was reaped, then died).
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute(
            f"UPDATE {schema_name(RUN)}.jobs SET holder = 'ghost', state = 'submitting' "
            "WHERE id = 'job-0002'"
        )
        raw.execute(f"UPDATE {schema_name(RUN)}.slots SET holder = 'ghost' WHERE n = 0")
    assert b.others_working("p", [S.SUBMITTING])
    reaped = b.reap()
    assert (reaped.runners, reaped.unknown, reaped.freed) == (("ghost",), 1, 1)
    assert not b.others_working("p", [S.SUBMITTING])
    assert b.take_slot("p") is not None and b.take_slot("p") is not None
    # A submit's late answer: the job is taken back, recorded, and handed back.
    assert a.take_back("job-0002")
    assert a_store.transition(
        "job-0002", S.SUBMITTED, expect=(S.SUBMITTING, S.UNKNOWN), remote_id="r2"
    )
    a.hand_back("job-0002")
    assert [r.remote_id for r in b.claim("p", IN_FLIGHT, 5)] == ["r2"]
    assert not a.leave()  # its lease was lost
