"""The PostgreSQL manifest: what only a store with many writers must add to the SQLite
contracts (those run against both stores in tests/test_manifest.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.errors import ManifestError
from pipeline.manifest.postgres import PgManifest, is_database_url, pg_location, schema_name
from pipeline.models import Job, JobState, Output

S = JobState


def make_job(i: int) -> Job:
    return Job(id=f"job-{i:04d}", provider="p", model=None, params={"prompt": str(i)})


def test_racing_writers_move_a_job_once(pg_url: str, tmp_path: Path) -> None:
    """Eight connections try to take the same pending job at once: exactly one does,
    and the event log has one transition (the row lock orders them)."""
    with PgManifest.open_url(pg_url, run="race", root=tmp_path) as m:
        m.add_jobs(make_job(i) for i in range(20))
    stores = [PgManifest.open_url(pg_url, run="race", root=tmp_path) for _ in range(8)]
    wins: list[tuple[int, str]] = []
    barrier = threading.Barrier(len(stores))

    def take(n: int, store: PgManifest) -> None:
        barrier.wait()
        for i in range(20):
            if store.transition(f"job-{i:04d}", S.SUBMITTING, expect=S.PENDING, client_ref=str(n)):
                wins.append((n, f"job-{i:04d}"))

    threads = [threading.Thread(target=take, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(job for _, job in wins) == [f"job-{i:04d}" for i in range(20)]
        for i in range(20):
            events = [e for e in stores[0].events(f"job-{i:04d}") if e.kind == "transition"]
            assert [(e.from_state, e.to_state) for e in events] == [(S.PENDING, S.SUBMITTING)]
            record = stores[0].get(f"job-{i:04d}")
            assert record is not None and record.attempts == 1
    finally:
        for store in stores:
            store.close()


def test_two_runs_in_one_database_are_apart(pg_url: str, tmp_path: Path) -> None:
    with PgManifest.open_url(pg_url, run="cats", root=tmp_path) as cats:
        cats.add_jobs(make_job(i) for i in range(3))
    with PgManifest.open_url(pg_url, run="Dogs & more", root=tmp_path) as dogs:
        assert dogs.total() == 0
        assert "pipeline_dogs_more" in dogs.location
    with PgManifest.open_url(pg_url, run="cats", root=tmp_path, readonly=True) as cats:
        assert cats.total() == 3


def test_reading_a_run_that_does_not_exist_is_a_clear_error(pg_url: str, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest at .*pipeline_nothing"):
        PgManifest.open_url(pg_url, run="nothing", root=tmp_path, readonly=True)


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://me:s3cret-pw@127.0.0.1:1/db"
    with pytest.raises(ManifestError) as caught:
        PgManifest.open_url(url, run="x", root=tmp_path)
    assert "cannot reach the manifest database postgresql://me:***@127.0.0.1:1/db" in str(
        caught.value
    )
    assert "s3cret-pw" not in str(caught.value)


def test_urls_and_schema_names() -> None:
    assert is_database_url("postgresql://h/db") and is_database_url("postgres://h/db")
    assert not is_database_url("out/manifest") and not is_database_url(None)
    assert schema_name("Faces v2") == "pipeline_faces_v2"
    assert pg_location("postgresql://u:pw@h:5/db", "r").display == "postgresql://u:***@h:5/db"


def test_relayed_callbacks_are_read_once_in_order_and_old_ones_dropped(
    pg_url: str, tmp_path: Path
) -> None:
    now = [1_000_000.0]
    with (
        PgManifest.open_url(pg_url, run="hints", root=tmp_path, clock=lambda: now[0]) as a,
        PgManifest.open_url(pg_url, run="hints", root=tmp_path, clock=lambda: now[0]) as b,
    ):
        assert a.webhook_token() == b.webhook_token()  # one token for the run's receivers
        a.relay_hint("apixo", "old")
        now[0] += 2 * 86400
        reader = b.hint_reader()
        assert reader.read() == []  # a runner starts: only later hints count
        a.relay_hint("apixo", "t1")
        a.relay_hint("acedata", "t2")
        assert reader.read() == [("apixo", "t1"), ("acedata", "t2")]
        assert reader.read() == []
        reader.close()
        with a._read("count") as conn:  # the day-old hint is gone
            assert conn.execute("SELECT count(*) FROM hints").fetchone()[0] == 2


def test_a_hint_committed_after_a_later_one_was_read_is_still_read_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Ids are handed out when a hint is inserted, visible when it commits: T1 takes an
    id and stays open while T2 takes the next, commits, and is read. T1's hint, committed
    last, is read all the same, and each hint once."""
    with (
        PgManifest.open_url(pg_url, run="hints", root=tmp_path) as a,
        PgManifest.open_url(pg_url, run="hints", root=tmp_path) as b,
        psycopg.connect(pg_url, autocommit=True) as t1,
    ):
        reader = b.hint_reader()
        assert reader.read() == []
        t1.execute("SET search_path TO pipeline_hints")
        t1.execute("BEGIN")
        t1.execute("INSERT INTO hints (provider, key, at) VALUES ('apixo', 'slow', 0)")
        a.relay_hint("apixo", "quick")  # T2: a later id, committed first
        assert reader.read() == [("apixo", "quick")]
        t1.execute("COMMIT")
        assert reader.read() == [("apixo", "slow")]
        assert reader.read() == []
        a.relay_hint("apixo", "next")
        assert reader.read() == [("apixo", "next")]
        reader.close()


def test_a_hint_rolled_back_holds_nothing_up(pg_url: str, tmp_path: Path) -> None:
    """A hint whose transaction rolls back is never read, and the hints after it are."""
    with (
        PgManifest.open_url(pg_url, run="hints", root=tmp_path) as a,
        PgManifest.open_url(pg_url, run="hints", root=tmp_path) as b,
        psycopg.connect(pg_url, autocommit=True) as t1,
    ):
        reader = b.hint_reader()
        assert reader.read() == []
        t1.execute("SET search_path TO pipeline_hints")
        t1.execute("BEGIN")
        t1.execute("INSERT INTO hints (provider, key, at) VALUES ('apixo', 'gone', 0)")
        a.relay_hint("apixo", "one")
        assert reader.read() == [("apixo", "one")]
        t1.execute("ROLLBACK")
        a.relay_hint("apixo", "two")
        assert reader.read() == [("apixo", "two")]
        assert reader.read() == []
        reader.close()


def test_a_job_step_is_one_round_trip(pg_url: str, tmp_path: Path) -> None:
    """Each move of a job's way (a step, a step through ``via``, outputs with ``done``)
    is one statement on the wire: a runner's event loop waits for each, so a BEGIN and
    a COMMIT around it would triple the waits. Its guard and log still hold."""
    with PgManifest.open_url(pg_url, run="trips", root=tmp_path) as m:
        m.add_jobs([make_job(1)])
        jid = "job-0001"
        sent: list[str] = []
        execute = m._connection().execute  # type: ignore[attr-defined]

        def counted(sql: str, params: Any = ()) -> Any:
            sent.append(sql)
            return execute(sql, params)

        m._connection().execute = counted  # type: ignore[attr-defined]
        m._connection().executemany = lambda *a: sent.append("many")  # type: ignore[attr-defined]
        moves = [
            lambda: m.transition(jid, S.SUBMITTING, expect=S.PENDING),
            lambda: m.transition(jid, S.SUBMITTED, expect=S.SUBMITTING, remote_id="r-1"),
            lambda: m.transition(jid, S.DOWNLOADING, via=S.SUCCEEDED, expect=S.SUBMITTED),
            lambda: m.finish(jid, [Output(jid, i, f"{i}.png", 1, "a" * 64, "u") for i in range(2)]),
        ]
        for move in moves:
            sent.clear()
            assert move()
            assert len(sent) == 1, sent
        sent.clear()
        assert not m.finish(jid, [])  # done already: refused, in one statement too
        assert len(sent) == 1
        record = m.get(jid)
        assert record is not None and record.state is S.DONE and record.remote_id == "r-1"
        assert [o.index for o in record.outputs] == [0, 1]
        assert [(e.from_state, e.to_state) for e in m.events(jid) if e.kind == "transition"] == [
            (S.PENDING, S.SUBMITTING), (S.SUBMITTING, S.SUBMITTED),
            (S.SUBMITTED, S.SUCCEEDED), (S.SUCCEEDED, S.DOWNLOADING), (S.DOWNLOADING, S.DONE),
        ]  # fmt: skip
