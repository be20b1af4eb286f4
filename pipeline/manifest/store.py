"""The manifest: the one true record of every job of a run (contract 4 in
docs/architecture.md).

An SQLite database at ``<output root>/manifest.sqlite`` in WAL mode: one process writes
(``pipeline run``), any number read at the same time (``pipeline status``). Every write
is a short ``BEGIN IMMEDIATE`` transaction; every state change is guarded by the state it
leaves (``transition``), so a stale worker can never move a job backwards.

    with Manifest.open(root, spec_name="faces") as manifest:
        manifest.add_jobs(jobs)                      # idempotent, streamed
        if manifest.transition(job.id, JobState.SUBMITTING, expect=JobState.PENDING,
                               client_ref=ref):
            ...                                      # only now may the submit leave
        manifest.transition(job.id, JobState.DOWNLOADING, via=JobState.SUCCEEDED,
                            expect=JobState.RUNNING)  # two logged steps, one transaction
        manifest.finish(job.id, outputs)             # outputs + `done`, one transaction

Tables: ``meta`` (schema_version, created_at, spec_name, spec_path, generation…),
``jobs``, ``outputs`` and ``events`` (the log of transitions, retries and errors).

Spec generations: ``meta.generation`` numbers the spec expansions written into the
manifest, and each job row holds the generation that last listed it (``add_jobs``). A job
is *in the spec* when its generation is the current one; ``limit_to_spec`` makes the bulk
reads see only those, and ``prune`` removes the others.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from pipeline.errors import ManifestError
from pipeline.manifest.rows import (
    JOB_COLUMNS,
    OUTPUT_COLUMNS,
    export_lines,
    job_row,
    output_from_row,
    output_row,
    record_from_row,
    write_atomically,
)
from pipeline.manifest.schema import (
    DB_NAME,
    check_existing,
    connect,
    create_new,
    prepare,
    translated,
)
from pipeline.manifest.scope import (
    GENERATION_KEY,
    PAID_OPEN_STATES,
    Pruned,
    prune_rows,
    read_generation,
)
from pipeline.manifest.sql import (
    INSERT_EVENT,
    INSERT_JOB,
    RETRY_ASK,
    RETRY_FETCH,
    RETRY_SUBMIT,
    RETRYABLE,
    UPSERT_OUTPUT,
    guarded_event_sql,
    join_notes,
    legal_sources,
    opt_state,
    reset_sql,
    state_set,
    transition_steps,
    update_sql,
)
from pipeline.manifest.unrecorded import WriteFailures, provider_lookup
from pipeline.models import Job, JobRecord, JobState, Output
from pipeline.redact import scrub

__all__ = ["DB_NAME", "PAID_OPEN_STATES", "SNAPSHOT_NAME", "Event", "Manifest", "Pruned",
           "find_manifest"]  # fmt: skip

SNAPSHOT_NAME = "manifest.jsonl"

FAILURE_STATES = frozenset(
    {JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.UNKNOWN}
)


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the event log. ``from_state``/``to_state`` are set for transitions."""

    id: int
    job_id: str
    at: float
    kind: str
    from_state: JobState | None
    to_state: JobState | None
    detail: str | None
    provider: str | None = None


def find_manifest(path: Path) -> Path | None:
    """The manifest database for ``path`` (an output directory or the file itself)."""
    path = Path(path)
    if path.is_file() and path.name == DB_NAME:
        return path
    candidate = path / DB_NAME
    return candidate if candidate.is_file() else None


_EVENT_JOIN = (
    "SELECT e.id, e.job_id, e.at, e.kind, e.from_state, e.to_state, e.detail, j.provider "
    "FROM events e LEFT JOIN jobs j ON j.id = e.job_id"
)


class Manifest:
    """The store of one output root. Thread-safe; open one writer per process."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        root: Path,
        *,
        readonly: bool,
        clock: Callable[[], float],
    ) -> None:
        self.root = root
        self.own_root = str(root.resolve())  # as outputs under another root record theirs
        self.path = root / DB_NAME
        self.location = str(self.path)  # names the store in messages (a URL for PostgreSQL)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        self._clock = clock
        self._lock = threading.Lock()
        self._on_pending: Callable[[], None] | None = None  # group commit: see defer_commits
        with self._translated("open"):
            self.generation = read_generation(conn)  # the current spec expansion
        self._scope = ""  # " AND generation = …" once limit_to_spec() was called
        self.write_failures = WriteFailures(root)  # the first failed write stops all writes

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        readonly: bool = False,
        spec_name: str | None = None,
        spec_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Manifest:
        """Open (and, unless ``readonly``, create) the manifest of output root ``root``.

        A read-only manifest can be opened while another process writes. ``clock`` gives
        the timestamps (seconds since the epoch); tests pass a fake one.
        """
        root = Path(root)
        path = root / DB_NAME
        if readonly and not path.is_file():
            raise ManifestError(f"no manifest at {path}")
        if not readonly:
            try:
                root.mkdir(parents=True, exist_ok=True)
                if path.exists():  # refused if unreadable: never started over
                    check_existing(path)
                else:
                    create_new(path)
            except OSError as exc:
                raise ManifestError(f"cannot create the manifest in {root}: {exc}") from exc
        meta = {"spec_name": spec_name, "spec_path": None if spec_path is None else str(spec_path)}
        with translated("open", path):
            conn = connect(path, readonly=readonly)
            try:
                prepare(
                    conn,
                    path,
                    readonly=readonly,
                    meta={k: v for k, v in meta.items() if v is not None},
                )
            except BaseException:
                conn.close()
                raise
        return cls(conn, root, readonly=readonly, clock=clock)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            self._on_pending = None
            failed_before = self.write_failures.first is not None
            try:
                with self._translated("close"):
                    if conn.in_transaction:
                        self._commit_or_lose(conn)
                    if not self.readonly:  # keep the planner's statistics fresh, cheaply
                        conn.execute("PRAGMA analysis_limit = 400")
                        conn.execute("PRAGMA optimize")
            except ManifestError:
                if not failed_before:  # else already reported, and the run says why
                    raise
            finally:
                conn.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- group commit ---------------------------------------------------------------

    def defer_commits(self, on_pending: Callable[[], None] | None) -> None:
        """Group commit: with ``on_pending`` set, writes join one open transaction and
        ``on_pending()`` is called after each, so the caller can ``commit()`` soon (a
        run commits once per event-loop turn: every job that moved in that turn shares
        one commit, instead of a ``BEGIN IMMEDIATE``/``COMMIT`` per move; see
        ``manifest.group_commit``).

        Each write is still all-or-nothing (a savepoint) and guarded as always; reads on
        this manifest see it at once, other connections at the commit. Whatever must be
        on disk before something happens outside (contract 2: a submit's intent) calls
        ``commit()`` first. ``None`` commits what is pending and returns to a
        transaction per write.
        """
        with self._lock:
            self._on_pending = on_pending
        if on_pending is None:
            self.commit()

    def commit(self, *, synced: bool = False) -> None:
        """Commit the deferred writes (a no-op when nothing is pending).

        With ``synced`` everything committed so far is on the disk itself, not only in
        the OS's cache (the WAL is fsynced): a submit's intent must survive a power cut,
        or the job would be submitted again. Other commits survive a process crash.

        If the commit fails, they are rolled back and every later write raises
        ``ManifestError``: what this process believes the jobs' states are is no longer
        what the manifest holds, so nothing more may be written on top of it."""
        with self._lock, self._translated("commit"):
            conn = self._connection()
            if conn.in_transaction:
                self._commit_or_lose(conn)
            if synced:  # SQLite cannot switch to synchronous=FULL inside a transaction
                try:
                    _fsync_file(self.path.with_name(self.path.name + "-wal"))
                except OSError as exc:  # what was committed may not be on the disk
                    self.write_failures.failed(exc)
                    raise ManifestError(f"{self.path}: fsync failed: {exc}") from exc

    def _commit_or_lose(self, conn: sqlite3.Connection) -> None:
        """COMMIT; if it fails, roll back, stop all writes and report the remote ids
        the transaction held (they are on no disk now)."""
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            self.write_failures.failed(exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.write_failures.lose_uncommitted(f"commit failed: {exc}", provider_lookup(conn))
            raise
        self.write_failures.committed()

    @property
    def write_failure(self) -> str | None:
        """Why this process stopped writing (a write or commit failed), else None."""
        return self.write_failures.first

    # -- writes --------------------------------------------------------------------

    def add_jobs(self, jobs: Iterable[Job], *, chunk: int = 5000) -> int:
        """Insert the jobs not yet known as ``pending``; return how many were new.

        Streams ``jobs`` in chunks of ``chunk``, one transaction each, so a million jobs
        never sit in memory and another writer never waits long. (Readers never wait.)
        Every job given, new or known, is tagged with the current ``generation``.
        """
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        added = 0
        iterator = iter(jobs)
        last_rowid = "SELECT coalesce(max(rowid), 0) FROM jobs"
        while batch := list(itertools.islice(iterator, chunk)):
            now, generation = self._clock(), self.generation
            with self._write("add jobs") as conn:
                before = conn.execute(last_rowid).fetchone()[0]
                conn.executemany(INSERT_JOB, (job_row(job, now, generation) for job in batch))
                added += conn.execute(last_rowid).fetchone()[0] - before  # new rows go last
        return added

    def begin_generation(self) -> int:
        """Start a new spec expansion: jobs added from now on are its jobs. Committed at
        once, so an expansion cut short never passes for a complete one."""
        with self._write("begin generation") as conn:
            self.generation = read_generation(conn) + 1
            conn.execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (GENERATION_KEY, str(self.generation)),
            )
        if self._scope:
            self.limit_to_spec()
        return self.generation

    def exclusive(self) -> AbstractContextManager[None]:
        """For the body, no other process writes this manifest's job list (a shared
        run's runners list the spec's jobs one at a time); here the run lock already
        makes this process the only writer."""
        return contextlib.nullcontext()

    def runners_at_work(self) -> list[dict[str, Any]]:
        """The processes working on this run now, for ``status``: none listed here (one
        run per output root, under its lock); a shared run lists its live runners."""
        return []

    def limit_to_spec(self) -> None:
        """From now on ``iter_records``, ``counts``, ``total``, ``failures`` and ``reset``
        see only the jobs of the current generation; calls by job id see every job."""
        self._scope = f" AND generation = {int(self.generation)}"

    def outside_spec_counts(self) -> dict[str, dict[str, int]]:
        """``{provider: {state: n}}`` of the jobs not in the current generation."""
        return self._counts("generation != :g", {"g": self.generation})

    def prune(self, *, include_paid: bool = False) -> Pruned:
        """Remove the jobs not in the current generation, with their output rows, in one
        transaction; one ``pruned`` event per job keeps its remote id. Jobs whose paid
        remote task may still deliver (``PAID_OPEN_STATES``) stay unless ``include_paid``."""
        with self._write("prune") as conn:
            return prune_rows(conn, self.generation, self._clock(), self.own_root,
                              include_paid=include_paid)  # fmt: skip

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | Collection[JobState],
        via: JobState | None = None,
        remote_id: str | None = None,
        client_ref: str | None = None,
        error: str | None = None,
        detail: str | None = None,
        failure: str | None = None,
    ) -> bool:
        """Move ``job_id`` to ``to`` if it is in one of the ``expect`` states.

        Returns False, changing nothing, if it is not. Raises ``ManifestError`` if some
        ``expect → to`` is not in ``models.TRANSITIONS`` or the job is unknown.
        ``remote_id``, ``client_ref`` and ``error`` are written only when given, except
        that entering ``pending`` starts afresh: they are cleared unless given, and so
        are ``submitted_at``/``finished_at`` (the old remote id stays in the event log).

        ``via`` makes it two transitions in one transaction, ``expect → via → to``, each
        checked legal and logged as its own event (the fields above go with the second);
        both happen or neither does.
        """
        return self.transition_at(
            job_id, to, expect=expect, via=via, remote_id=remote_id, client_ref=client_ref,
            error=error, detail=detail, failure=failure,
        ) is not None  # fmt: skip

    def transition_at(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | Collection[JobState],
        via: JobState | None = None,
        remote_id: str | None = None,
        client_ref: str | None = None,
        error: str | None = None,
        detail: str | None = None,
        failure: str | None = None,
    ) -> float | None:
        """``transition``, returning the time recorded for it (None when not made), so a
        caller can keep its copy of the job current without reading it back."""
        steps = transition_steps(expect, via, JobState(to))
        now = self._clock()
        try:
            if not self._move(
                job_id, steps, now, remote_id=remote_id, client_ref=client_ref,
                error=error, detail=detail, failure=failure,
            ):  # fmt: skip
                return None
        except Exception as exc:
            if remote_id is not None:  # a paid task: it must be named somewhere
                with self._lock:  # the provider is read on our connection
                    reason = f"not recorded: {exc}"
                    self.write_failures.lose(job_id, remote_id, reason, provider_lookup(self._conn))
            raise
        return now

    def _move(
        self,
        job_id: str,
        steps: Sequence[tuple[frozenset[str], JobState]],
        now: float,
        *,
        remote_id: str | None,
        client_ref: str | None,
        error: str | None,
        detail: str | None,
        failure: str | None,
    ) -> bool:
        """The checked ``steps`` of one transition in one write transaction; the fields
        go with the last step. False if the first step's guard refused."""
        with self._write("transition") as conn:
            *first, (sources, last) = steps
            for step_sources, step_to in first:  # `via`: guarded like any other step
                if not self._step(conn, job_id, step_to, step_sources, now):
                    return False
            if not self._step(
                conn, job_id, last, sources, now, remote_id=remote_id,
                client_ref=client_ref, error=error, detail=detail, failure=failure,
            ):  # fmt: skip
                return False  # only the first step can miss, before anything was written
            if remote_id is not None and self._on_pending is not None:
                self.write_failures.written(job_id, remote_id)  # on disk at the next commit
        return True

    def finish(
        self,
        job_id: str,
        outputs: Sequence[Output],
        *,
        expect: JobState | Collection[JobState] = JobState.DOWNLOADING,
    ) -> bool:
        """Record ``outputs`` and move ``job_id`` to ``done``, in one transaction.

        The outputs are recorded (inserted or replaced by index) whatever the job's
        state; the transition is guarded by ``expect`` like ``transition``'s.
        """
        sources = legal_sources(state_set(expect), JobState.DONE)
        now = self._clock()
        with self._write("finish") as conn:
            if outputs:
                self._write_outputs(conn, outputs)
            return self._step(conn, job_id, JobState.DONE, sources, now)

    def _step(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        to: JobState,
        sources: frozenset[str],
        now: float,
        *,
        remote_id: str | None = None,
        client_ref: str | None = None,
        error: str | None = None,
        detail: str | None = None,
        failure: str | None = None,
    ) -> bool:
        """One guarded transition inside the caller's write transaction."""
        error = None if error is None else scrub(error)  # contract 5: no key is stored
        note = scrub(detail) if detail is not None else error
        if to is JobState.PENDING:  # the event names a forgotten remote id
            row = conn.execute(
                "SELECT state, remote_id FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise ManifestError(f"{self.location}: no job {job_id!r} in the manifest")
            if row[0] not in sources:
                return False
            if to is JobState.PENDING and row[1] and remote_id is None:
                note = join_notes(note, f"was remote_id {row[1]}")
            conn.execute(INSERT_EVENT, (job_id, now, "transition", row[0], to.value, note))
        else:
            # The event is logged from the row itself, guarded by the states it may
            # leave: one statement both checks the guard and records where it came from.
            logged = conn.execute(
                guarded_event_sql(len(sources)), (now, to.value, note, job_id, *sources)
            ).rowcount
            if logged != 1:
                if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    raise ManifestError(f"{self.location}: no job {job_id!r} in the manifest")
                return False
        conn.execute(
            update_sql(to, "id = :id"),
            {"id": job_id, "to": to.value, "now": now, "remote_id": remote_id,
             "client_ref": client_ref, "error": error, "failure": failure},
        )  # fmt: skip
        return True

    def log_event(self, job_id: str, kind: str, detail: str) -> None:
        """Append to the event log (``retry``, ``error``, ``poll``…); no state change."""
        detail = scrub(detail)  # contract 5: no key is stored
        with self._write("log event") as conn:
            conn.execute(INSERT_EVENT, (job_id, self._clock(), kind, None, None, detail))

    def record_error(self, job_id: str, error: str) -> None:
        """Keep ``error`` as the job's reason and log it, without a state change."""
        error = scrub(error)  # contract 5: no key is stored
        now = self._clock()
        with self._write("record error") as conn:
            conn.execute(
                "UPDATE jobs SET error = ?, updated_at = ? WHERE id = ?", (error, now, job_id)
            )
            conn.execute(INSERT_EVENT, (job_id, now, "error", None, None, error))

    def record_outputs(self, outputs: Sequence[Output]) -> None:
        """Insert or replace outputs by (job_id, index), in one transaction."""
        if not outputs:
            return
        with self._write("record outputs") as conn:
            self._write_outputs(conn, outputs)

    def reset(
        self,
        from_states: Collection[JobState],
        to: JobState,
        *,
        provider: str | None = None,
        note: str = "reset",
        error: str | None = None,
    ) -> int:
        """Move every job in ``from_states`` (of ``provider``, if given) to ``to``, as
        ``transition`` would, in one transaction; one event per job (``note`` its
        detail; ``error``, if given, its recorded reason). Returns the count."""
        return self._reset(from_states, to, provider=provider, note=note, error=error)

    def retry_failed(self) -> int:
        """--retry-failed: a job that never got a task is submitted anew (``pending``);
        one whose task succeeded but whose download failed is fetched again from it
        (``succeeded``); any other is asked about first (``submitted``): the scheduler
        submits anew only when the provider confirms that task failed or is gone."""
        moved = self._reset(RETRYABLE, JobState.PENDING, only=RETRY_SUBMIT)
        moved += self._reset([JobState.FAILED], JobState.SUCCEEDED, only=RETRY_FETCH,
                             note="retry: fetch again from the recorded task")  # fmt: skip
        return moved + self._reset(RETRYABLE, JobState.SUBMITTED, only=RETRY_ASK,
                                   note="retry: ask the recorded task first")  # fmt: skip

    def _reset(
        self,
        from_states: Collection[JobState],
        to: JobState,
        *,
        provider: str | None = None,
        only: str | None = None,
        note: str = "reset",
        error: str | None = None,
    ) -> int:
        guard = self._free_rows
        if guard is not None:
            only = guard if only is None else f"{only} AND {guard}"
        lock, events, update, params = reset_sql(
            from_states, to, provider=provider, only=only, scope=self._scope
        )
        params |= {"now": self._clock(), "note": note, "error": error}
        with self._write("reset") as conn:
            if self.lock_rows:  # the rows cannot move between the log and the update
                conn.execute(lock, params)
            conn.execute(events, params)
            return conn.execute(update, params).rowcount

    def write_snapshot(self) -> Path:
        """Write ``<root>/manifest.jsonl`` atomically (same lines as ``export_jsonl``)."""
        target = self.root / SNAPSHOT_NAME
        with self._reader("write snapshot") as conn:
            try:
                write_atomically(target, conn, self.own_root)
            except OSError as exc:
                raise ManifestError(f"cannot write {target}: {exc}") from exc
        return target

    # -- reads ---------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """One job with its outputs, or None."""
        with self._read("get") as conn:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            outputs = conn.execute(
                f"SELECT {OUTPUT_COLUMNS} FROM outputs WHERE job_id = ? ORDER BY idx",
                (job_id,),
            ).fetchall()
        return record_from_row(row, tuple(output_from_row(o, self.own_root) for o in outputs))

    def iter_records(
        self,
        *,
        provider: str | None = None,
        states: Collection[JobState] | None = None,
        batch: int = 1000,
        with_outputs: bool = False,
    ) -> Iterator[JobRecord]:
        """Jobs in insertion (rowid) order, ``batch`` at a time.

        Every page is its own short read, keyset-paged on rowid and served by an index
        (several states: one stream per state, merged by rowid), so the table is never
        loaded and writing to the manifest while iterating is safe: a job is yielded at
        most once, as it was when its page was read.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if states is None and provider is None:
            yield from (r for _, r in self._pages("TRUE" + self._scope, {}, batch, with_outputs))
            return
        wanted = sorted(state_set(states)) if states is not None else list(JobState)
        where = "state = :state" + ("" if provider is None else " AND provider = :provider")
        where += self._scope
        streams = [
            self._pages(where, {"state": s.value, "provider": provider}, batch, with_outputs)
            for s in wanted
        ]
        yield from (r for _, r in heapq.merge(*streams, key=operator.itemgetter(0)))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{provider: {state: number of jobs}}``, for the states present."""
        return self._counts("TRUE" + self._scope, {})

    def _counts(self, where: str, params: dict[str, Any]) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        with self._read("count jobs") as conn:
            rows = conn.execute(
                f"SELECT provider, state, count(*) FROM jobs WHERE {where} "
                "GROUP BY provider, state",
                params,
            ).fetchall()
        for provider, state, n in rows:
            result.setdefault(provider, {})[state] = n
        return result

    def total(self) -> int:
        with self._read("count jobs") as conn:
            return int(
                conn.execute(f"SELECT count(*) FROM jobs WHERE TRUE{self._scope}").fetchone()[0]
            )

    def failures(self, *, limit: int | None = None) -> list[JobRecord]:
        """Failed, timed-out, cancelled and unknown jobs with their reasons, oldest first."""
        return list(itertools.islice(self.iter_records(states=FAILURE_STATES), limit))

    def events(self, job_id: str) -> list[Event]:
        """The event log of one job, oldest first."""
        with self._read("read events") as conn:
            rows = conn.execute(
                "SELECT id, job_id, at, kind, from_state, to_state, detail FROM events "
                "WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], opt_state(r[4]), opt_state(r[5]), r[6]) for r in rows]

    def events_after(self, after: int, *, limit: int = 1000) -> list[Event]:
        """Events with an id above ``after``, oldest first, with their job's provider:
        a run's log follows the event table with it."""
        return self._event_rows(f"{_EVENT_JOIN} WHERE e.id > ? ORDER BY e.id LIMIT ?", after, limit)

    def last_events(self, count: int) -> list[Event]:
        """The last ``count`` events of the manifest, oldest first, with providers."""
        rows = self._event_rows(f"{_EVENT_JOIN} ORDER BY e.id DESC LIMIT ?", count)
        return rows[::-1]

    def job_ids_starting(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Up to ``limit`` job ids starting with ``prefix`` (a prefix names a job when
        exactly one matches)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._read("find job") as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
                (pattern, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def _event_rows(self, sql: str, *params: Any) -> list[Event]:
        with self._read("read events") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            Event(r[0], r[1], r[2], r[3], opt_state(r[4]), opt_state(r[5]), r[6], r[7])
            for r in rows
        ]

    def export_jsonl(self, out: TextIO) -> int:
        """Write one JSON object per job, in rowid order, to ``out``; return how many.

        Streamed from one consistent read (a point-in-time picture even mid-run)."""
        with self._reader("export") as conn:
            return export_lines(conn, out, self.own_root)

    def output_roots(self) -> list[str]:
        """The output roots other than this store's that outputs lie under (another
        runner's, or the folder a manifest was copied from)."""
        with self._read("read output roots") as conn:
            rows = conn.execute(
                "SELECT DISTINCT root FROM outputs WHERE root IS NOT NULL ORDER BY root"
            ).fetchall()
        return [str(row[0]) for row in rows if row[0] != self.own_root]

    def meta(self) -> dict[str, str]:
        with self._read("read meta") as conn:
            return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: str) -> None:
        """Store one ``meta`` entry (e.g. the fingerprint of the expanded spec)."""
        with self._write("write meta") as conn:
            conn.execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- plumbing ------------------------------------------------------------------

    def _pages(
        self, where: str, params: dict[str, Any], batch: int, with_outputs: bool
    ) -> Iterator[tuple[int, JobRecord]]:
        """``(rowid, record)`` of the jobs matching ``where``, by rowid, page by page."""
        sql = (
            f"SELECT rowid, {JOB_COLUMNS} FROM jobs WHERE rowid > :after AND ({where}) "
            "ORDER BY rowid LIMIT :batch"
        )
        params = {**params, "after": 0, "batch": batch}
        while True:
            with self._read("iterate jobs") as conn:
                rows = conn.execute(sql, params).fetchall()
                outputs = self._outputs_of([r[1] for r in rows], conn) if with_outputs else {}
            for row in rows:
                yield row[0], record_from_row(row[1:], outputs.get(row[1], ()))
            if len(rows) < batch:
                return
            params["after"] = rows[-1][0]

    def _outputs_of(
        self, job_ids: list[str], conn: sqlite3.Connection
    ) -> dict[str, tuple[Output, ...]]:
        found: dict[str, list[Output]] = {}
        if job_ids:
            marks = ", ".join("?" * len(job_ids))
            for row in conn.execute(
                f"SELECT {OUTPUT_COLUMNS} FROM outputs WHERE job_id IN ({marks}) "
                "ORDER BY job_id, idx",
                job_ids,
            ):
                found.setdefault(row[0], []).append(output_from_row(row, self.own_root))
        return {job_id: tuple(outputs) for job_id, outputs in found.items()}

    @property
    def _written_root(self) -> str | None:
        """The root recorded with the outputs this process writes (NULL: the folder's)."""
        return None

    def _write_outputs(self, conn: sqlite3.Connection, outputs: Sequence[Output]) -> None:
        root = self._written_root
        conn.executemany(UPSERT_OUTPUT, (output_row(o, root) for o in outputs))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ManifestError(f"{self.location}: manifest is closed")
        return self._conn

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translated(what):
            yield self._connection()

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One short ``BEGIN IMMEDIATE`` transaction; rolled back if the body raises.

        With commits deferred (``defer_commits``), one savepoint inside the open
        transaction instead, committed later by ``commit()``."""
        self._check_writable(what)
        on_pending = self._on_pending
        with self._lock, self._translated(what):
            conn = self._connection()
            if on_pending is None:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
                except BaseException as exc:
                    self._failed_write(conn, exc)
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self._commit_or_lose(conn)
                return
            try:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                conn.execute("SAVEPOINT write")
                yield conn
            except BaseException as exc:
                self._failed_write(conn, exc)
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                else:  # SQLite gave up the whole transaction (disk full, I/O error)
                    reason = f"transaction lost: {exc}"
                    self.write_failures.lose_uncommitted(reason, provider_lookup(conn))
                raise
            conn.execute("RELEASE write")
        on_pending()

    def _check_writable(self, what: str) -> None:
        """Raise if this manifest may not be written: read-only, or an earlier write failed."""
        if self.readonly:
            raise ManifestError(f"{self.location}: {what}: manifest was opened read-only")
        if self.write_failures.first is not None:
            raise ManifestError(
                f"{self.location}: {what}: an earlier write failed ({self.write_failures.first}); "
                "nothing more is written in this process"
            )

    def _failed_write(self, conn: Any, exc: BaseException) -> None:
        """A database error in a write (disk full, I/O error, a lost connection…) stops
        every later write: what this process believes is no longer what the manifest holds."""
        if isinstance(exc, self.database_errors):
            self.write_failures.failed(exc)

    shared = False
    """Whether several runners may work on this manifest's run at once (PostgreSQL)."""

    lock_rows = False
    """Whether a bulk reset locks its rows before logging them (needed where several
    processes write; SQLite has one writer at a time)."""

    @property
    def _free_rows(self) -> str | None:
        """A condition bulk resets keep to (a shared run: jobs no other runner holds)."""
        return None

    database_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    """The driver's errors: in a write, they stop every later write."""

    def _translated(self, what: str) -> AbstractContextManager[None]:
        """Driver errors leave as ``ManifestError`` naming the store and the operation."""
        return translated(what, self.path)

    @contextmanager
    def _reader(self, what: str) -> Iterator[sqlite3.Connection]:
        """A separate read-only connection, for long streaming reads that must neither
        hold our lock nor block the writer (WAL lets both proceed)."""
        self._connection()
        with self._translated(what):
            conn = connect(self.path, readonly=True)
            try:
                yield conn
            finally:
                conn.close()


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (nothing to do when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
