"""The manifest: idempotent streaming inserts, guarded transitions, WAL readers, exports."""

from __future__ import annotations

import dataclasses
import io
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest.postgres import PgManifest
from pipeline.manifest.recover import recover
from pipeline.manifest.schema import SCHEMA_VERSION
from pipeline.manifest.store import DB_NAME, SNAPSHOT_NAME, Manifest, find_manifest
from pipeline.models import Job, JobState, Output

S = JobState


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_job(i: int, provider: str = "pixai") -> Job:
    return Job(
        id=f"{provider}-{i:07d}",
        provider=provider,
        model="m1",
        params={"prompt": f"a cat {i}", "seed": i, "note": "ünïcode"},
        replicate=i % 2,
        prompt_slug="a-cat",
    )


def make_jobs(n: int, provider: str = "pixai") -> Iterator[Job]:
    return (make_job(i, provider) for i in range(n))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
def manifest(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Manifest]:
    """Every contract below holds for both stores."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        with PgManifest.open_url(url, run="cats", root=tmp_path / "out", spec_name="cats",
                                 clock=clock) as m:  # fmt: skip
            yield m
        return
    with Manifest.open(tmp_path / "out", spec_name="cats", clock=clock) as m:
        yield m


def walk(m: Manifest, job_id: str, *states: JobState) -> None:
    """Drive ``job_id`` through ``states``, each guarded by the one before."""
    current = m.get(job_id)
    assert current is not None
    before = current.state
    for to in states:
        assert m.transition(job_id, to, expect=before)
        before = to


# -- opening -------------------------------------------------------------------------


def test_open_creates_root_db_and_meta(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    with Manifest.open(root, spec_name="cats", spec_path="specs/cats.yaml") as m:
        assert m.path == root / DB_NAME
        assert m.root == root
        meta = m.meta()
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["spec_name"] == "cats"
    assert meta["spec_path"] == "specs/cats.yaml"
    assert meta["created_at"]
    with sqlite3.connect(root / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert find_manifest(root) == root / DB_NAME
    assert find_manifest(root / DB_NAME) == root / DB_NAME
    assert find_manifest(tmp_path) is None


def test_reopen_keeps_jobs_and_created_at(tmp_path: Path) -> None:
    with Manifest.open(tmp_path) as m:
        m.add_jobs(make_jobs(3))
        created = m.meta()["created_at"]
    with Manifest.open(tmp_path, spec_name="renamed") as m:
        assert m.total() == 3
        assert m.meta()["created_at"] == created
        assert m.meta()["spec_name"] == "renamed"


def test_non_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, just some text\n" * 100)
    with pytest.raises(ManifestError, match="not a usable pipeline manifest"):
        Manifest.open(tmp_path)
    with pytest.raises(ManifestError, match="not a usable pipeline manifest"):
        Manifest.open(tmp_path, readonly=True)


def test_foreign_sqlite_db_is_a_clear_error(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.close()
    with pytest.raises(ManifestError, match="not a pipeline manifest"):
        Manifest.open(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Manifest.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(ManifestError, match=r"version 99 is newer.*upgrade pipeline"):
            Manifest.open(tmp_path, readonly=readonly)


V4_OUTPUTS = """CREATE TABLE outputs (
    job_id       TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    path         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    url          TEXT NOT NULL,
    content_type TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID"""


def done_job(manifest: Manifest, i: int, path: str) -> Output:
    """Job ``i`` taken to ``done`` with one output at ``path``."""
    job = make_job(i)
    manifest.add_jobs([job])
    expect = S.PENDING
    for step in (S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.DOWNLOADING):
        assert manifest.transition(job.id, step, expect=expect)
        expect = step
    output = Output(job.id, 0, path, 3, "0" * 64, "https://h/x", "image/png")
    assert manifest.finish(job.id, [output])
    return output


def test_a_schema_4_manifest_opens_and_gains_output_roots(tmp_path: Path) -> None:
    """A manifest from before outputs recorded their root (its outputs table as version 4
    made it): read-only it is refused with the way out, a writer migrates it, and its
    outputs are the folder's own."""
    with Manifest.open(tmp_path) as manifest:
        old = done_job(manifest, 0, "pixai/a.png")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:  # the outputs table of version 4
        conn.execute("ALTER TABLE outputs RENAME TO outputs_v5")
        conn.execute(V4_OUTPUTS)
        conn.execute("INSERT INTO outputs SELECT job_id, idx, path, size, sha256, url, "
                     "content_type FROM outputs_v5")  # fmt: skip
        conn.execute("DROP TABLE outputs_v5")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(ManifestError, match=r"version 4 is older than 5.*`pipeline run`"):
        Manifest.open(tmp_path, readonly=True)

    with Manifest.open(tmp_path) as manifest:
        assert manifest.meta()["schema_version"] == str(SCHEMA_VERSION) == "5"
        assert manifest.get(old.job_id).outputs == (old,)  # type: ignore[union-attr]
        new = done_job(manifest, 1, "pixai/b.png")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(outputs)")]
        roots = conn.execute("SELECT root FROM outputs ORDER BY job_id").fetchall()
    conn.close()
    assert columns[-1] == "root" and roots == [(None,), (None,)]
    with Manifest.open(tmp_path, readonly=True) as manifest:
        assert [r.outputs for r in manifest.iter_records(with_outputs=True)] == [(old,), (new,)]


def test_outputs_under_another_root_keep_it_through_snapshot_and_recover(tmp_path: Path) -> None:
    """A folder's outputs that lie under another output root (a copied shared run) name
    it everywhere: records, the JSONL export, and a manifest rebuilt from the snapshot."""
    elsewhere = str((tmp_path / "runner-b").resolve())
    with Manifest.open(tmp_path / "out") as manifest:
        own = done_job(manifest, 0, "pixai/a.png")
        other = done_job(manifest, 1, "pixai/b.png")
        with manifest._write("test") as conn:
            conn.execute("UPDATE outputs SET root = ? WHERE job_id = ?", (elsewhere, other.job_id))
    other = dataclasses.replace(other, root=elsewhere)
    with Manifest.open(tmp_path / "out") as manifest:
        assert [r.outputs for r in manifest.iter_records(with_outputs=True)] == [(own,), (other,)]
        out = io.StringIO()
        manifest.export_jsonl(out)
        lines = [json.loads(line)["outputs"][0] for line in out.getvalue().splitlines()]
        assert "root" not in lines[0] and lines[1]["root"] == elsewhere
        manifest.write_snapshot()
    recover(tmp_path / "out", force=True)
    with Manifest.open(tmp_path / "out", readonly=True) as manifest:
        assert [r.outputs for r in manifest.iter_records(with_outputs=True)] == [(own,), (other,)]


def test_readonly_requires_existing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest at"):
        Manifest.open(tmp_path / "nowhere", readonly=True)
    assert not (tmp_path / "nowhere").exists()


def test_readonly_reads_but_refuses_writes(tmp_path: Path) -> None:
    with Manifest.open(tmp_path) as m:
        m.add_jobs(make_jobs(5))
    # the writer is gone (its -wal/-shm files with it): a reader still opens
    with Manifest.open(tmp_path, readonly=True) as ro:
        assert ro.total() == 5
        with pytest.raises(ManifestError, match="read-only"):
            ro.add_jobs(make_jobs(1, "other"))
        with pytest.raises(ManifestError, match="read-only"):
            ro.transition("pixai-0000000", S.SUBMITTING, expect=S.PENDING)


def test_closed_manifest_raises(tmp_path: Path) -> None:
    m = Manifest.open(tmp_path)
    m.close()
    m.close()  # idempotent
    with pytest.raises(ManifestError, match="closed"):
        m.total()


# -- adding jobs ---------------------------------------------------------------------


def test_add_jobs_is_idempotent(manifest: Manifest) -> None:
    assert manifest.add_jobs(make_jobs(10), chunk=3) == 10
    assert manifest.add_jobs(make_jobs(10), chunk=3) == 0
    assert manifest.add_jobs(make_jobs(12), chunk=5) == 2  # only the new cells
    assert manifest.total() == 12
    record = manifest.get("pixai-0000004")
    assert record is not None
    assert record.job == make_job(4)
    assert record.state is S.PENDING
    assert record.attempts == 0
    assert record.created_at == record.updated_at == 1000.0


def test_add_jobs_streams_in_committed_chunks(tmp_path: Path) -> None:
    """200k jobs go in fast, chunk by chunk: a reader sees earlier chunks committed while
    the generator is still producing later ones (so the iterable is never a list)."""
    n, chunk = 200_000, 5000
    seen_midway: list[int] = []

    with Manifest.open(tmp_path) as writer, Manifest.open(tmp_path, readonly=True) as reader:

        def produce() -> Iterator[Job]:
            for i in range(n):
                if i == n // 2:
                    seen_midway.append(reader.total())
                yield make_job(i)

        started = time.perf_counter()
        assert writer.add_jobs(produce(), chunk=chunk) == n
        elapsed = time.perf_counter() - started
        assert reader.total() == n
    assert n // 2 - chunk <= seen_midway[0] <= n // 2
    assert elapsed < 30, f"200k inserts took {elapsed:.1f}s"


# -- transitions ---------------------------------------------------------------------


def test_transition_bookkeeping(manifest: Manifest, clock: FakeClock) -> None:
    manifest.add_jobs([make_job(1)])
    jid = "pixai-0000001"

    clock.now = 1001.0
    assert manifest.transition(jid, S.SUBMITTING, expect=S.PENDING, client_ref="ref-1")
    rec = manifest.get(jid)
    assert rec is not None
    assert (rec.state, rec.attempts, rec.client_ref, rec.updated_at) == (
        S.SUBMITTING,
        1,
        "ref-1",
        1001.0,
    )
    assert rec.submitted_at is None

    clock.now = 1002.0
    assert manifest.transition(jid, S.SUBMITTED, expect=S.SUBMITTING, remote_id="task-9")
    clock.now = 1003.0
    assert manifest.transition(jid, S.RUNNING, expect=(S.SUBMITTED,))
    rec = manifest.get(jid)
    assert rec is not None
    assert rec.remote_id == "task-9"  # kept when not given
    assert rec.client_ref == "ref-1"
    assert rec.submitted_at == 1002.0
    assert rec.finished_at is None

    clock.now = 1010.0
    assert manifest.transition(jid, S.FAILED, expect={S.SUBMITTED, S.RUNNING}, error="nsfw filter")
    rec = manifest.get(jid)
    assert rec is not None
    assert (rec.state, rec.error, rec.finished_at, rec.attempts) == (
        S.FAILED,
        "nsfw filter",
        1010.0,
        1,
    )

    clock.now = 1020.0
    assert manifest.transition(jid, S.PENDING, expect=S.FAILED)
    rec = manifest.get(jid)
    assert rec is not None
    assert rec.state is S.PENDING
    assert rec.error is None and rec.finished_at is None and rec.submitted_at is None
    assert rec.remote_id is None  # a retry is a new remote task
    assert manifest.transition(jid, S.SUBMITTING, expect=S.PENDING)
    assert manifest.get(jid).attempts == 2  # type: ignore[union-attr]

    kinds = [(e.kind, e.from_state, e.to_state, e.detail) for e in manifest.events(jid)]
    assert kinds == [
        ("transition", S.PENDING, S.SUBMITTING, None),
        ("transition", S.SUBMITTING, S.SUBMITTED, None),
        ("transition", S.SUBMITTED, S.RUNNING, None),
        ("transition", S.RUNNING, S.FAILED, "nsfw filter"),
        ("transition", S.FAILED, S.PENDING, "was remote_id task-9"),
        ("transition", S.PENDING, S.SUBMITTING, None),
    ]
    assert [e.at for e in manifest.events(jid)] == [1001, 1002, 1003, 1010, 1020, 1020]


def test_wrong_expected_state_changes_nothing(manifest: Manifest) -> None:
    manifest.add_jobs([make_job(1)])
    jid = "pixai-0000001"
    walk(manifest, jid, S.SUBMITTING, S.SUBMITTED)
    before = manifest.get(jid)
    events_before = manifest.events(jid)

    # a stale worker thinks the job is still pending
    assert not manifest.transition(jid, S.SUBMITTING, expect=S.PENDING, client_ref="x")
    assert not manifest.transition(jid, S.FAILED, expect={S.RUNNING, S.SUCCEEDED}, error="e")
    assert manifest.get(jid) == before
    assert manifest.events(jid) == events_before


def test_illegal_transition_is_a_programming_error(manifest: Manifest) -> None:
    manifest.add_jobs([make_job(1)])
    with pytest.raises(ManifestError, match=r"illegal transition pending → done"):
        manifest.transition("pixai-0000001", S.DONE, expect=S.PENDING)
    # one illegal source in the set is enough to refuse
    with pytest.raises(ManifestError, match="illegal transition done → pending"):
        manifest.transition("pixai-0000001", S.PENDING, expect=[S.FAILED, S.DONE])
    assert manifest.get("pixai-0000001").state is S.PENDING  # type: ignore[union-attr]


def test_transition_of_unknown_job_raises(manifest: Manifest) -> None:
    with pytest.raises(ManifestError, match="no job 'nope'"):
        manifest.transition("nope", S.SUBMITTING, expect=S.PENDING)


def test_full_life_and_outputs(manifest: Manifest, clock: FakeClock) -> None:
    manifest.add_jobs(make_jobs(3))
    jid = "pixai-0000002"
    walk(manifest, jid, S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.DOWNLOADING)
    outputs = [
        Output(jid, 1, "pixai/a-cat/x-1.png", 20, "b" * 64, "http://h/1", "image/png"),
        Output(jid, 0, "pixai/a-cat/x-0.png", 10, "a" * 64, "http://h/0", "image/png"),
    ]
    manifest.record_outputs(outputs)
    manifest.record_outputs([Output(jid, 1, "pixai/a-cat/x-1.png", 21, "c" * 64, "http://h/1")])
    clock.now = 2000.0
    assert manifest.transition(jid, S.DONE, expect=S.DOWNLOADING)

    rec = manifest.get(jid)
    assert rec is not None
    assert rec.state is S.DONE and rec.finished_at == 2000.0
    assert [(o.index, o.size, o.sha256, o.content_type) for o in rec.outputs] == [
        (0, 10, "a" * 64, "image/png"),
        (1, 21, "c" * 64, None),
    ]
    assert manifest.get("missing") is None

    manifest.log_event(jid, "poll", "progress 50%")
    assert manifest.events(jid)[-1].kind == "poll"
    assert manifest.events(jid)[-1].from_state is None


def test_transition_via_is_two_logged_steps_in_one(manifest: Manifest, clock: FakeClock) -> None:
    manifest.add_jobs([make_job(1)])
    jid = "pixai-0000001"
    walk(manifest, jid, S.SUBMITTING, S.SUBMITTED, S.RUNNING)
    clock.now = 1500.0
    assert manifest.transition(jid, S.DOWNLOADING, via=S.SUCCEEDED, expect=(S.SUBMITTED, S.RUNNING))
    rec = manifest.get(jid)
    assert rec is not None and rec.state is S.DOWNLOADING and rec.updated_at == 1500.0
    kinds = [(e.from_state, e.to_state, e.at) for e in manifest.events(jid)][-2:]
    assert kinds == [(S.RUNNING, S.SUCCEEDED, 1500.0), (S.SUCCEEDED, S.DOWNLOADING, 1500.0)]

    # guarded by the state it leaves: a stale caller changes nothing, logs nothing
    events_before = manifest.events(jid)
    assert not manifest.transition(jid, S.DOWNLOADING, via=S.SUCCEEDED, expect=S.RUNNING)
    assert manifest.get(jid) == rec
    assert manifest.events(jid) == events_before
    # each step must be legal
    with pytest.raises(ManifestError, match="illegal transition succeeded → done"):
        manifest.transition(jid, S.DONE, via=S.SUCCEEDED, expect=S.RUNNING)
    with pytest.raises(ManifestError, match="no job 'nope'"):
        manifest.transition("nope", S.DOWNLOADING, via=S.SUCCEEDED, expect=S.RUNNING)


def test_transition_at_returns_the_recorded_time(manifest: Manifest, clock: FakeClock) -> None:
    manifest.add_jobs([make_job(1)])
    jid = "pixai-0000001"
    walk(manifest, jid, S.SUBMITTING)
    clock.now = 1234.5
    assert manifest.transition_at(jid, S.SUBMITTED, expect=S.SUBMITTING, remote_id="t") == 1234.5
    assert manifest.get(jid).submitted_at == 1234.5  # type: ignore[union-attr]
    clock.now = 1300.0
    assert manifest.transition_at(jid, S.SUBMITTED, expect=S.SUBMITTING) is None
    assert manifest.get(jid).submitted_at == 1234.5  # type: ignore[union-attr]


def test_guard_over_several_states_logs_the_one_left(manifest: Manifest) -> None:
    manifest.add_jobs(make_jobs(2))
    walk(manifest, "pixai-0000000", S.SUBMITTING, S.SUBMITTED)
    walk(manifest, "pixai-0000001", S.SUBMITTING, S.SUBMITTED, S.RUNNING)
    for jid in ("pixai-0000000", "pixai-0000001"):
        assert manifest.transition(jid, S.FAILED, expect=(S.SUBMITTED, S.RUNNING), error="x")
    assert manifest.events("pixai-0000000")[-1].from_state is S.SUBMITTED
    assert manifest.events("pixai-0000001")[-1].from_state is S.RUNNING
    assert manifest.events("pixai-0000001")[-1].detail == "x"


def test_finish_records_outputs_and_done_in_one(manifest: Manifest, clock: FakeClock) -> None:
    manifest.add_jobs(make_jobs(2))
    jid = "pixai-0000001"
    walk(manifest, jid, S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.DOWNLOADING)
    outputs = [Output(jid, 0, "pixai/a-cat/x-0.png", 10, "a" * 64, "http://h/0", "image/png")]
    clock.now = 3000.0
    assert manifest.finish(jid, outputs)
    rec = manifest.get(jid)
    assert rec is not None
    assert (rec.state, rec.finished_at, rec.outputs) == (S.DONE, 3000.0, tuple(outputs))
    last = manifest.events(jid)[-1]
    assert (last.from_state, last.to_state, last.at) == (S.DOWNLOADING, S.DONE, 3000.0)

    # not downloading: the outputs are still recorded (they are on disk), the state stays
    other = "pixai-0000000"
    walk(manifest, other, S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED)
    mine = [Output(other, 0, "p.png", 5, "b" * 64, "http://h/1")]
    assert not manifest.finish(other, mine)
    rec = manifest.get(other)
    assert rec is not None and rec.state is S.SUCCEEDED and rec.outputs == tuple(mine)
    with pytest.raises(ManifestError, match="no job 'nope'"):
        manifest.finish("nope", [])


# -- queries -------------------------------------------------------------------------


def test_iter_records_pages_and_filters(manifest: Manifest) -> None:
    manifest.add_jobs(make_jobs(25, "pixai"))
    manifest.add_jobs(make_jobs(5, "apixo"))
    for i in range(0, 25, 5):
        walk(manifest, f"pixai-{i:07d}", S.SUBMITTING, S.SUBMITTED, S.FAILED)

    ids = [r.job.id for r in manifest.iter_records(batch=4)]
    assert ids == [f"pixai-{i:07d}" for i in range(25)] + [f"apixo-{i:07d}" for i in range(5)]
    failed = [r.job.id for r in manifest.iter_records(states=[S.FAILED], batch=2)]
    assert failed == [f"pixai-{i:07d}" for i in range(0, 25, 5)]
    assert len(list(manifest.iter_records(provider="apixo", states={S.PENDING}))) == 5
    assert list(manifest.iter_records(states=[])) == []

    # writing while iterating is safe: each page is its own short read
    moved = 0
    for rec in manifest.iter_records(states=[S.PENDING], batch=3):
        moved += manifest.transition(rec.job.id, S.SUBMITTING, expect=S.PENDING)
    assert moved == 25

    assert manifest.counts() == {
        "pixai": {"failed": 5, "submitting": 20},
        "apixo": {"submitting": 5},
    }
    assert manifest.total() == 30


def test_iter_records_over_several_states_yields_each_job_once(manifest: Manifest) -> None:
    manifest.add_jobs(make_jobs(12))
    manifest.add_jobs(make_jobs(3, "apixo"))
    walk(manifest, "pixai-0000005", S.SUBMITTING)
    seen = []
    for rec in manifest.iter_records(states=[S.PENDING, S.SUBMITTING], batch=2):
        seen.append(rec.job.id)
        # moving a job into a state another stream has yet to reach must not repeat it
        manifest.transition(rec.job.id, S.SUBMITTING, expect=S.PENDING)
    assert seen == [f"pixai-{i:07d}" for i in range(12)] + [f"apixo-{i:07d}" for i in range(3)]
    by_provider = [r.job.id for r in manifest.iter_records(provider="apixo", batch=1)]
    assert by_provider == [f"apixo-{i:07d}" for i in range(3)]


def test_iter_records_with_outputs(manifest: Manifest) -> None:
    manifest.add_jobs(make_jobs(5))
    manifest.record_outputs([Output("pixai-0000003", 0, "p", 1, "s", "u")])
    records = {r.job.id: r for r in manifest.iter_records(batch=2, with_outputs=True)}
    assert [o.path for o in records["pixai-0000003"].outputs] == ["p"]
    assert records["pixai-0000002"].outputs == ()
    assert all(r.outputs == () for r in manifest.iter_records())


def test_failures_and_reset_for_retry_failed(manifest: Manifest) -> None:
    manifest.add_jobs(make_jobs(4, "pixai"))
    manifest.add_jobs(make_jobs(2, "apixo"))
    walk(manifest, "pixai-0000000", S.SUBMITTING, S.SUBMITTED, S.FAILED)
    manifest.transition("pixai-0000001", S.SUBMITTING, expect=S.PENDING)
    manifest.transition("pixai-0000001", S.UNKNOWN, expect=S.SUBMITTING, error="timeout")
    walk(manifest, "pixai-0000002", S.SUBMITTING, S.SUBMITTED, S.TIMED_OUT)
    walk(manifest, "apixo-0000000", S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.FAILED)
    failures = manifest.failures()
    assert [(r.job.id, r.state, r.error) for r in failures] == [
        ("pixai-0000000", S.FAILED, None),
        ("pixai-0000001", S.UNKNOWN, "timeout"),
        ("pixai-0000002", S.TIMED_OUT, None),
        ("apixo-0000000", S.FAILED, None),
    ]
    assert len(manifest.failures(limit=2)) == 2

    with pytest.raises(ManifestError, match="illegal transition done → pending"):
        manifest.reset([S.FAILED, S.DONE], S.PENDING)

    assert manifest.reset([S.FAILED, S.TIMED_OUT], S.PENDING, provider="pixai") == 2
    rec = manifest.get("pixai-0000000")
    assert rec is not None
    assert (rec.state, rec.remote_id, rec.finished_at, rec.attempts) == (S.PENDING, None, None, 1)
    last = manifest.events("pixai-0000000")[-1]
    assert (last.from_state, last.to_state, last.detail) == (S.FAILED, S.PENDING, "reset")
    assert manifest.get("apixo-0000000").state is S.FAILED  # type: ignore[union-attr]
    assert manifest.get("pixai-0000001").state is S.UNKNOWN  # type: ignore[union-attr]

    assert manifest.reset([S.UNKNOWN], S.PENDING) == 1  # --resubmit-unknown
    rec = manifest.get("pixai-0000001")
    assert rec is not None and rec.error is None and rec.state is S.PENDING
    assert manifest.reset([S.FAILED], S.PENDING) == 1
    assert manifest.failures() == []


# -- concurrent reader ---------------------------------------------------------------

READER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.manifest.store import Manifest
    with Manifest.open(Path(sys.argv[1]), readonly=True) as m:
        print("ready", m.total(), flush=True)
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            done = m.counts().get("pixai", {}).get("done", 0)
            if done != last:
                print("done", done, flush=True)
                last = done
            if done == int(sys.argv[2]):
                break
            time.sleep(0.005)
    """
)


def test_readonly_reader_in_another_process_while_writing(tmp_path: Path) -> None:
    n = 200
    with Manifest.open(tmp_path) as writer:
        writer.add_jobs(make_jobs(n))
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(tmp_path), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().split() == ["ready", str(n)]
            for i in range(n):
                steps = (S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.DOWNLOADING, S.DONE)
                walk(writer, f"pixai-{i:07d}", *steps)
                if i % 50 == 0:
                    time.sleep(0.02)  # let the reader see intermediate states
            out, err = reader.communicate(timeout=60)
        finally:
            if reader.poll() is None:
                reader.kill()
        # the writer is still open here
        assert reader.returncode == 0, err
    seen = [int(line.split()[1]) for line in out.splitlines()]
    assert seen[-1] == n
    assert seen == sorted(seen)
    assert len(seen) >= 2  # it read while the writer was writing, not only at the end


# -- exports -------------------------------------------------------------------------


def test_export_jsonl(manifest: Manifest, clock: FakeClock) -> None:
    manifest.add_jobs(make_jobs(3))
    jid = "pixai-0000001"
    walk(manifest, jid, S.SUBMITTING)
    manifest.transition(jid, S.SUBMITTED, expect=S.SUBMITTING, remote_id="r1")
    walk(manifest, jid, S.SUCCEEDED, S.DOWNLOADING)
    manifest.record_outputs(
        [
            Output(jid, 1, "b.png", 2, "s2", "u2", "image/png"),
            Output(jid, 0, "a.png", 1, "s1", "u1", None),
        ]
    )
    walk(manifest, jid, S.DONE)

    buf = io.StringIO()
    assert manifest.export_jsonl(buf) == 3
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [line["id"] for line in lines] == [f"pixai-{i:07d}" for i in range(3)]
    assert lines[1] == {
        "id": jid,
        "provider": "pixai",
        "model": "m1",
        "params": {"prompt": "a cat 1", "seed": 1, "note": "ünïcode"},
        "replicate": 1,
        "prompt_slug": "a-cat",
        "state": "done",
        "remote_id": "r1",
        "attempts": 1,
        "error": None,
        "failure": None,
        "created_at": 1000.0,
        "updated_at": 1000.0,
        "submitted_at": 1000.0,
        "finished_at": 1000.0,
        "meta": {},
        "outputs": [
            {"index": 0, "path": "a.png", "size": 1, "sha256": "s1", "url": "u1",
             "content_type": None},
            {"index": 1, "path": "b.png", "size": 2, "sha256": "s2", "url": "u2",
             "content_type": "image/png"},
        ],
    }  # fmt: skip
    assert lines[0]["outputs"] == [] and lines[0]["state"] == "pending"
    assert "ünïcode" in buf.getvalue()  # not \u-escaped


def test_write_snapshot_replaces_atomically(manifest: Manifest) -> None:
    manifest.add_jobs(make_jobs(2))
    first = manifest.write_snapshot()
    assert first == manifest.root / SNAPSHOT_NAME
    old_inode = first.stat().st_ino

    with first.open(encoding="utf-8") as old:  # a reader holding the old snapshot
        manifest.add_jobs(make_jobs(5))
        second = manifest.write_snapshot()
        assert old.read().count("\n") == 2  # untouched: replaced, not truncated in place

    assert second == first
    assert second.stat().st_ino != old_inode
    buf = io.StringIO()
    manifest.export_jsonl(buf)
    assert second.read_text(encoding="utf-8") == buf.getvalue()
    assert sorted(p.name for p in manifest.root.iterdir() if "jsonl" in p.name) == [SNAPSHOT_NAME]
    assert not any(p.name.endswith(".tmp") for p in manifest.root.iterdir())


def test_export_is_one_consistent_read_while_writing(manifest: Manifest) -> None:
    """The export streams from its own connection: writes made while it runs (here, from
    the output sink itself) neither block nor show up half-way through."""
    manifest.add_jobs(make_jobs(10))

    class WritingSink(io.StringIO):
        def write(self, text: str) -> int:
            if text.startswith('{"id": "pixai-0000000"'):
                manifest.add_jobs(make_jobs(20))
                manifest.transition("pixai-0000009", S.SUBMITTING, expect=S.PENDING)
            return super().write(text)

    sink = WritingSink()
    assert manifest.export_jsonl(sink) == 10
    assert '"submitting"' not in sink.getvalue()
    assert manifest.total() == 20


def test_readers_keep_a_small_page_cache(tmp_path: Path) -> None:
    """The writer's cache is big (1M-job inserts); the snapshot and export readers scan
    once and keep 2 MiB, so the end of a big run does not add 32 MiB of RSS."""
    from pipeline.manifest.schema import connect

    with Manifest.open(tmp_path, spec_name="t"):
        pass
    path = tmp_path / DB_NAME
    for readonly, expected in ((False, -32768), (True, -2048)):
        conn = connect(path, readonly=readonly)
        try:
            assert conn.execute("PRAGMA cache_size").fetchone()[0] == expected
        finally:
            conn.close()
