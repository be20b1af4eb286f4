"""``pipeline manifest copy SRC DST``: one run's manifest copied between SQLite (an output
folder) and PostgreSQL (a URL), either way, or to another folder or run.

Everything is copied: every job row with all its columns in rowid order, the outputs,
the event log in id order (new rowids and ids, the same order), and the meta entries but
the destination's own ``schema_version`` and ``created_at``. A job caught ``submitting``
may have reached the provider: it arrives ``unknown``, with an event saying why (as
after a crash or ``pipeline recover``). Output files are not copied, nor moved: each
output keeps its path relative to the output root it lies under, and that root goes with
it (PostgreSQL records every output's; a folder records it for the outputs that are not
under the folder itself, so a copy to another folder points at the source folder).

Streamed in pages, each one transaction on the destination, from one consistent read of
the source. The source must not be written meanwhile: a folder's run lock is held
through the copy, and a PostgreSQL run with live runners is refused.

An interrupted copy never looks like a run: the destination is built under a name no run
opens (``manifest.sqlite.copying`` in the folder, or the schema ``pipeline_<run>-copying``)
and renamed into place by its last step, the one that writes the meta entries. A
destination that already holds a run is refused, never merged into.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.errors import ManifestError, UsageError
from pipeline.failpoints import failpoint
from pipeline.fsio import replace_durably
from pipeline.manifest.lock import hold_run_lock
from pipeline.manifest.rows import JOB_COLUMNS, OUTPUT_COLUMNS
from pipeline.manifest.schema import DB_NAME, check_existing, connect, prepare
from pipeline.manifest.sql import INSERT_EVENT
from pipeline.manifest.where import is_database_url, postgres_module
from pipeline.models import JobState

__all__ = ["COPY_PAGE", "Copied", "copy_manifest"]

COPY_PAGE = 5000  # rows per page: one read of the source, one transaction on the destination
_SKIPPED_META = frozenset({"schema_version", "created_at"})  # the destination's own
COPIED_FROM_KEY = "copied_from"
_JOB_COLUMNS = f"{JOB_COLUMNS}, generation"
_OUTPUT_FIELDS = OUTPUT_COLUMNS.removesuffix(", root")  # the root is read apart
_OUTPUT_WIDTH = len(OUTPUT_COLUMNS.split(","))
_STATE, _ERROR, _UPDATED_AT = 6, 10, 12  # positions in _JOB_COLUMNS
_UNKNOWN_NOTE = "manifest copy: the submit was in flight, it may have reached the provider"
_SIDE = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Copied:
    """What ``copy_manifest`` copied, and where (locations as shown: no password)."""

    source: str
    dest: str
    jobs: int
    outputs: int
    events: int
    unknown: int  # jobs caught ``submitting``, copied as ``unknown``


@dataclass
class _Source:
    conn: Any  # sqlite3.Connection or PgConnection: the same calls, SQLite's parameters
    location: str
    meta: dict[str, str]
    root: str | None = None  # an output folder: its own outputs' root (resolved)


@dataclass
class _Dest:
    conn: Any
    location: str
    finish: Callable[[dict[str, str]], None]  # writes the meta entries, moves it into place
    root: str | None = None  # an output folder: its outputs' root is recorded as NULL


def copy_manifest(
    source: str | Path,
    dest: str | Path,
    *,
    run: str | None = None,
    to_run: str | None = None,
    page: int = COPY_PAGE,
    clock: Callable[[], float] = time.time,
) -> Copied:
    """Copy the run at ``source`` to ``dest``: each an output folder or a PostgreSQL URL.

    ``run`` names the run in a URL (both, when both are URLs; ``to_run`` then names the
    destination's); without it a URL side takes the source folder's spec name."""
    if page < 1:
        raise ValueError("page must be at least 1")
    src_end, dst_end = _end(source), _end(dest)
    same = isinstance(src_end, Path) and isinstance(dst_end, Path)
    if same and Path(src_end).resolve() == Path(dst_end).resolve():
        raise UsageError(f"SRC and DST are the same folder ({src_end})")
    with _source(src_end, run) as src:
        dest_run = to_run or run or src.meta.get("spec_name")
        if src_end == dst_end and dest_run == run:
            raise UsageError("SRC and DST are the same run: name another with --to-run")
        with (
            _dest(dst_end, dest_run, src_end) as dst,
            _translated(f"copy {src.location} to {dst.location}"),
        ):
            return _copy(src, dst, page, clock)


def _source(end: Path | str, run: str | None) -> AbstractContextManager[_Source]:
    if isinstance(end, Path):
        return _sqlite_source(end)
    return _pg_source(end, _run_name(run, None, "SRC"))


def _dest(end: Path | str, run: str | None, source: Path | str) -> AbstractContextManager[_Dest]:
    if isinstance(end, Path):
        return _sqlite_dest(end)
    return _pg_dest(end, _run_name(run, source, "DST"))


def _end(text: str | Path) -> Path | str:
    """A folder (a ``manifest.sqlite`` names its folder) or a PostgreSQL URL."""
    if isinstance(text, str) and "://" in text:
        if not is_database_url(text):
            raise UsageError(f"not a PostgreSQL URL: {text.split('://')[0]}://… "
                             "(expected postgresql://… or an output folder)")  # fmt: skip
        return text
    path = Path(text)
    return path.parent if path.name == DB_NAME else path


def _run_name(name: str | None, sqlite_side: Path | str | None, side: str) -> str:
    if name:
        return name
    hint = "" if sqlite_side is None else f" (the source folder {sqlite_side} records no spec name)"
    raise UsageError(f"name the run in the database of {side} with --run NAME{hint}")


def _copy(src: _Source, dst: _Dest, page: int, clock: Callable[[], float]) -> Copied:
    now = clock()
    jobs = _copy_table(
        src,
        dst,
        f"SELECT rowid, {_JOB_COLUMNS} FROM jobs WHERE rowid > ? ORDER BY rowid LIMIT ?",
        f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 18)})",
        page,
        convert=lambda row: _settled(row[1:], now),
        key=lambda row: (row[0],),
        start=(0,),
    )
    # Every output is read with the root it lies under (a folder's NULL is the folder);
    # a folder destination records NULL for its own, the rest as they are.
    root = "root" if src.root is None else "coalesce(root, ?)"
    outputs = _copy_table(
        src,
        dst,
        f"SELECT {_OUTPUT_FIELDS}, {root} FROM outputs WHERE (job_id, idx) > (?, ?) "
        "ORDER BY job_id, idx LIMIT ?",
        f"INSERT INTO outputs ({OUTPUT_COLUMNS}) VALUES ({', '.join('?' * _OUTPUT_WIDTH)})",
        page,
        convert=lambda row: row if row[-1] != dst.root else (*row[:-1], None),
        key=lambda row: (row[0], row[1]),
        start=("", -1),
        leading=() if src.root is None else (src.root,),
    )
    events = _copy_table(
        src,
        dst,
        "SELECT id, job_id, at, kind, from_state, to_state, detail FROM events "
        "WHERE id > ? ORDER BY id LIMIT ?",
        INSERT_EVENT,
        page,
        convert=lambda row: row[1:],
        key=lambda row: (row[0],),
        start=(0,),
    )
    submitting = (JobState.SUBMITTING.value, JobState.UNKNOWN.value, _UNKNOWN_NOTE)
    unknown = _copy_table(  # each settled job's last event says why it is unknown
        src,
        dst,
        "SELECT rowid, id FROM jobs WHERE state = 'submitting' AND rowid > ? "
        "ORDER BY rowid LIMIT ?",
        INSERT_EVENT,
        page,
        convert=lambda row: (row[1], now, "transition", *submitting),
        key=lambda row: (row[0],),
        start=(0,),
    )
    meta = {k: v for k, v in src.meta.items() if k not in _SKIPPED_META}
    dst.finish(meta | {COPIED_FROM_KEY: src.location})
    return Copied(src.location, dst.location, jobs, outputs, events + unknown, unknown)


def _settled(row: Sequence[Any], now: float) -> Sequence[Any]:
    """A job row as copied: one caught ``submitting`` becomes ``unknown``."""
    if row[_STATE] != JobState.SUBMITTING.value:
        return row
    settled = list(row)
    settled[_STATE] = JobState.UNKNOWN.value
    settled[_ERROR] = (
        row[_ERROR] or "submit outcome unknown (in flight when the manifest was copied)"
    )
    settled[_UPDATED_AT] = now
    return settled


def _copy_table(
    src: _Source,
    dst: _Dest,
    select: str,
    insert: str,
    page: int,
    *,
    key: Callable[[Sequence[Any]], tuple[Any, ...]],
    start: tuple[Any, ...],
    convert: Callable[[Sequence[Any]], Sequence[Any]] = lambda row: row,
    leading: tuple[Any, ...] = (),
) -> int:
    """Keyset-paged: read a page of the source after ``key`` of the last row, write it
    to the destination in one transaction; the number of rows copied. ``leading``: the
    values of parameters the SELECT takes before the key's."""
    copied, after = 0, start
    while True:
        rows = src.conn.execute(select, (*leading, *after, page)).fetchall()
        if rows:
            dst.conn.execute("BEGIN IMMEDIATE")
            try:
                dst.conn.executemany(insert, [convert(row) for row in rows])
                dst.conn.execute("COMMIT")
            except BaseException:
                if dst.conn.in_transaction:
                    dst.conn.execute("ROLLBACK")
                raise
            failpoint("copy.after_page")
            copied += len(rows)
            after = key(rows[-1])
        if len(rows) < page:
            return copied


# -- SQLite --------------------------------------------------------------------------------


@contextmanager
def _sqlite_source(root: Path) -> Iterator[_Source]:
    """The folder's manifest, read in one snapshot under its run lock."""
    path = root / DB_NAME
    if not path.is_file():
        raise UsageError(f"no manifest at {path}")
    with hold_run_lock(root, what="pipeline manifest copy"), _translated(f"read {path}"):
        check_existing(path)
        conn = connect(path, readonly=True)
        try:
            prepare(conn, path, readonly=True, meta={})
            conn.execute("BEGIN")  # one snapshot for the whole copy
            yield _Source(conn, str(path.resolve()), _meta(conn), root=str(root.resolve()))
        finally:
            conn.close()


@contextmanager
def _sqlite_dest(root: Path) -> Iterator[_Dest]:
    """A new manifest built as ``manifest.sqlite.copying`` under the folder's run lock,
    renamed into place by ``finish``."""
    path = root / DB_NAME
    with hold_run_lock(root, what="pipeline manifest copy"):
        if path.exists():
            raise UsageError(
                f"{path} already holds a run; copy into another folder (nothing is merged)"
            )
        building = path.with_name(f"{DB_NAME}.copying")
        _remove(building)
        with _translated(f"create {building}"):
            conn = connect(building, readonly=False)
            try:
                prepare(conn, building, readonly=False, meta={})
            except BaseException:
                conn.close()
                raise

        def finish(meta: dict[str, str]) -> None:
            _set_meta(conn, meta)
            conn.close()  # checkpoints the WAL into the file and removes it
            if path.exists():  # only a process ignoring the run lock gets here
                raise ManifestError(f"{path} appeared during the copy; the copy is dropped")
            replace_durably(building, path)

        try:
            yield _Dest(conn, str(path), finish, root=str(root.resolve()))
        except BaseException:
            conn.close()
            _remove(building)
            raise


def _remove(building: Path) -> None:
    for leftover in (building, *(building.with_name(building.name + s) for s in _SIDE)):
        leftover.unlink(missing_ok=True)


# -- PostgreSQL ----------------------------------------------------------------------------


def _postgres() -> ModuleType:
    """``manifest.postgres``; without psycopg, a usage error (exit 2) naming the extra."""
    try:
        return postgres_module()
    except ManifestError as exc:
        raise UsageError(str(exc)) from exc


def _pg_connect(location: Any, *, readonly: bool) -> Any:
    try:
        return _postgres().connect(location, readonly=readonly)
    except ManifestError as exc:  # unreachable, refused: the URL is what to fix
        raise UsageError(str(exc)) from exc


@contextmanager
def _pg_source(url: str, run: str) -> Iterator[_Source]:
    """Run ``run`` in the database ``url``, read in one snapshot; refused while runners
    are live."""
    pg = _postgres()
    location = pg.pg_location(url, run)
    conn = _pg_connect(location, readonly=True)
    try:
        with _translated(f"read {location}"):
            version = pg._read_version(conn, location)
            if version is None:
                raise UsageError(f"no manifest at {location}: nothing was run there")
            pg._check_version(version, str(location), readonly=True)
            _refuse_live_runners(conn, location)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _Source(conn, str(location), _meta(conn))
    finally:
        conn.close()


def _refuse_live_runners(conn: Any, location: Any) -> None:
    """Refuse a run that runners are writing: those whose lease (by the database's clock,
    as the runners count it) has not run out."""
    found = conn.execute("SELECT to_regclass(?)", (f'"{location.schema}".runners',)).fetchone()
    if found is None or found[0] is None:  # a schema from before runners had leases
        return
    rows = conn.execute(
        "SELECT host, pid, root FROM runners "
        "WHERE expires_at > extract(epoch FROM clock_timestamp()) ORDER BY started_at LIMIT 5"
    ).fetchall()
    if rows:
        names = [f"pid {pid} on {host} (output root {root})" for host, pid, root in rows]
        raise ManifestError(
            f"{location} is being written by {len(rows)}{'+' if len(rows) == 5 else ''} live "
            f"runner(s): {'; '.join(names)}; stop them (or wait for their leases to run out), "
            "then copy"
        )


@contextmanager
def _pg_dest(url: str, run: str) -> Iterator[_Dest]:
    """A new schema built as ``pipeline_<run>-copying`` (a name no run opens), renamed to
    the run's schema by ``finish``, in the transaction that writes the meta entries."""
    pg = _postgres()
    location = pg.pg_location(url, run)
    staging = pg.PgLocation(location.conninfo, f"{location.schema[:55]}-copying",
                            location.display)  # fmt: skip
    conn = _pg_connect(staging, readonly=False)
    built = False
    try:
        with _translated(f"create {location}"):
            _refuse_existing(conn, location)
            _take_staging(conn, staging, location)
    except BaseException:
        conn.close()
        raise

    def finish(meta: dict[str, str]) -> None:
        nonlocal built
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (location.schema,))
        _refuse_existing(conn, location)  # a run started there meanwhile
        _set_meta(conn, meta, begun=True)
        conn.raw.execute(_sql(pg, "ALTER SCHEMA {} RENAME TO {}", staging.schema,
                              location.schema))  # fmt: skip
        conn.execute("COMMIT")
        built = True

    try:
        yield _Dest(conn, str(location), finish)
    finally:
        with suppress(pg.psycopg.Error):  # best effort: the next copy drops it anyway
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not built:
                conn.raw.execute(_sql(pg, "DROP SCHEMA IF EXISTS {} CASCADE", staging.schema))
        conn.close()


def _take_staging(conn: Any, staging: Any, location: Any) -> None:
    """Hold the staging schema's lock for the session (another copy into the same run is
    refused, and its schema never dropped), then create the schema afresh."""
    pg = _postgres()
    taken = conn.execute("SELECT pg_try_advisory_lock(hashtext(?))", (staging.schema,))
    if not taken.fetchone()[0]:
        raise UsageError(f"another copy into {location} is under way")
    conn.raw.execute(_sql(pg, "DROP SCHEMA IF EXISTS {} CASCADE", staging.schema))
    pg._prepare(conn, staging, str(location), readonly=False, meta={})


def _sql(pg: ModuleType, template: str, *names: str) -> Any:
    return pg.psycopg.sql.SQL(template).format(*map(pg.psycopg.sql.Identifier, names))


def _refuse_existing(conn: Any, location: Any) -> None:
    found = conn.execute("SELECT to_regnamespace(?)", (f'"{location.schema}"',)).fetchone()
    if found is None or found[0] is None:
        return
    jobs = conn.execute("SELECT to_regclass(?)", (f'"{location.schema}".jobs',)).fetchone()[0]
    count = ""
    if jobs is not None:
        total = conn.execute(
            _sql(_postgres(), "SELECT count(*) FROM {}.jobs", location.schema)
        ).fetchone()[0]
        count = f" ({total} jobs)"
    raise UsageError(
        f"{location} already holds a run{count}; copy into another one (--run NAME, or "
        "--to-run NAME when both sides are URLs; nothing is merged)"
    )


# -- both ----------------------------------------------------------------------------------


def _meta(conn: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}


def _set_meta(conn: Any, meta: dict[str, str], *, begun: bool = False) -> None:
    """The meta entries, in one transaction (the caller's, when ``begun``)."""
    if not begun:
        conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        list(meta.items()),
    )
    if not begun:
        conn.execute("COMMIT")


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """The drivers' errors leave as ``ManifestError`` naming the step."""
    try:
        yield
    except sqlite3.Error as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    except Exception as exc:
        psycopg = sys.modules.get("psycopg")
        if psycopg is not None and isinstance(exc, psycopg.Error):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ManifestError(f"{what}: {first}") from exc
        raise
