"""The manifest's SQLite schema: connecting, creating, checking and migrating it.

Private to ``manifest``: sqlite3 lives only in the ``manifest`` package, and every
sqlite3 error leaves it as a ``ManifestError``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import ManifestDamaged, ManifestError
from pipeline.fsio import replace_durably

__all__ = [
    "BUSY_TIMEOUT",
    "DB_NAME",
    "SCHEMA_VERSION",
    "check_existing",
    "connect",
    "create_new",
    "damaged",
    "prepare",
    "translated",
]

DB_NAME = "manifest.sqlite"
SCHEMA_VERSION = 5
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another writer's transaction

_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    rowid        INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    provider     TEXT NOT NULL,
    model        TEXT,
    params       TEXT NOT NULL,
    replicate    INTEGER NOT NULL DEFAULT 0,
    prompt_slug  TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL,
    remote_id    TEXT,
    client_ref   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    submitted_at REAL,
    finished_at  REAL,
    generation   INTEGER NOT NULL DEFAULT 0,
    failure      TEXT,
    meta         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_provider_state ON jobs (provider, state, generation);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS outputs (
    job_id       TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    path         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    url          TEXT NOT NULL,
    content_type TEXT,
    root         TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    at         REAL NOT NULL,
    kind       TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    detail     TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
"""

Migration = Callable[[sqlite3.Connection], None]


def _add_generation(conn: sqlite3.Connection) -> None:
    """1 → 2: ``jobs.generation`` (the spec expansion that last listed the job). The
    stored expansion fingerprint is dropped, so the next run lists its jobs once."""
    conn.execute("ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS jobs_provider_state")
    conn.execute("CREATE INDEX jobs_provider_state ON jobs (provider, state, generation)")
    conn.execute("DELETE FROM meta WHERE key = 'expansion'")


def _add_failure(conn: sqlite3.Connection) -> None:
    """2 → 3: ``jobs.failure`` (models.FAILURES), told from the state and the error
    prefixes the scheduler has always written (``submit:``, ``download:``)."""
    conn.execute("ALTER TABLE jobs ADD COLUMN failure TEXT")
    conn.execute(
        "UPDATE jobs SET failure = CASE "
        "WHEN error LIKE 'submit:%' THEN 'submit' "
        "WHEN error LIKE 'download:%' THEN 'download' "
        "WHEN state = 'timed_out' AND error LIKE '%remote task cancelled%' THEN 'remote' "
        "WHEN state = 'timed_out' THEN 'deadline' "
        "ELSE 'remote' END "
        "WHERE state IN ('failed', 'cancelled', 'timed_out')"
    )


def _add_meta(conn: sqlite3.Connection) -> None:
    """3 → 4: ``jobs.meta``, the prompt's metadata as a JSON object (empty for the jobs
    listed before metadata existed; the next spec expansion fills it in)."""
    conn.execute("ALTER TABLE jobs ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")


def _add_output_root(conn: sqlite3.Connection) -> None:
    """4 → 5: ``outputs.root``, the output root a file lies under when it is not this
    folder's (a copied shared run); NULL, as every existing row, is the folder's own."""
    conn.execute("ALTER TABLE outputs ADD COLUMN root TEXT")


MIGRATIONS: Mapping[int, Migration] = {
    1: _add_generation,
    2: _add_failure,
    3: _add_meta,
    4: _add_output_root,
}
"""``MIGRATIONS[n]`` upgrades a version-``n`` database to ``n + 1`` inside the opening
write transaction. Add one here with every bump of ``SCHEMA_VERSION``."""


@contextmanager
def translated(what: str, path: Path) -> Iterator[None]:
    """Turn sqlite3 errors into ``ManifestError`` naming the database and the operation."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise ManifestError(
                f"{path}: {what}: the manifest stayed locked by another writer for more "
                f"than {BUSY_TIMEOUT:g} s ({exc})"
            ) from exc
        raise ManifestError(f"{path}: {what}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise damaged(path, f"{what}: {exc}") from exc
    except sqlite3.Error as exc:
        raise ManifestError(f"{path}: {what}: {exc}") from exc


def damaged(path: Path, detail: str) -> ManifestDamaged:
    """The one-paragraph refusal of an existing manifest that cannot be read."""
    root = path.parent
    return ManifestDamaged(
        f"{path} is not a usable pipeline manifest ({detail}). It exists, so it is "
        "never started over (that would submit and pay for every job again), and it is "
        f"left as it is. `pipeline recover {root}` moves it aside and rebuilds the "
        f"manifest from {root / 'manifest.jsonl'}, the snapshot written at the end of "
        "each run, keeping remote ids and states."
    )


def check_existing(path: Path) -> None:
    """Raise ``ManifestDamaged`` unless the existing file ``path`` is a readable manifest:
    SQLite, every table there, a schema version, ``PRAGMA quick_check`` ok. Read-only,
    so a damaged file is never written to."""
    if path.stat().st_size == 0:
        raise damaged(path, "the file is empty")
    with translated("check", path):
        conn = connect(path, readonly=True)
        try:
            _check_readable(conn, path)
        finally:
            conn.close()


def _check_readable(conn: sqlite3.Connection, path: Path) -> None:
    version = _read_version(conn, path)
    if version is None:
        raise damaged(path, "no tables")
    missing = _TABLES - _table_names(conn)
    if missing:
        raise damaged(path, f"table(s) {', '.join(sorted(missing))} missing")
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise damaged(path, "quick_check: " + "; ".join(problems))


def create_new(path: Path) -> None:
    """Create an empty manifest at ``path`` atomically: built under another name, then
    renamed, so a crash mid-way never leaves an empty file that would later be refused
    as damaged (or, worse, taken for a fresh start)."""
    building = path.with_name(path.name + ".new")
    for leftover in (building, *(building.with_name(building.name + s) for s in _SIDE)):
        leftover.unlink(missing_ok=True)
    with translated("create", path):
        conn = connect(building, readonly=False)
        try:
            prepare(conn, building, readonly=False, meta={})
        finally:
            conn.close()  # checkpoints the WAL into the file and removes it
    replace_durably(building, path)


_SIDE = ("-wal", "-shm", "-journal")


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (we issue BEGIN IMMEDIATE/COMMIT ourselves)."""
    target = f"{path.resolve().as_uri()}?mode=ro" if readonly else str(path)
    conn = sqlite3.connect(
        target,
        uri=readonly,
        timeout=BUSY_TIMEOUT,
        isolation_level=None,
        check_same_thread=False,  # Manifest serialises access with its own lock
    )
    try:
        # 32 MiB for the writer: 1M-job inserts stay fast. Readers scan (snapshot,
        # export, status) and gain nothing from a big cache, which would only grow the
        # run's memory (benchmarks/RESULTS.md, section "manifest/schema.py").
        conn.execute(f"PRAGMA cache_size = {-2048 if readonly else -32768}")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(
    conn: sqlite3.Connection, path: Path, *, readonly: bool, meta: Mapping[str, str]
) -> None:
    """Create the schema in a new database, or check (and migrate) an existing one."""
    if readonly:
        _check_version(_read_version(conn, path), path, readonly=True)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _read_version(conn, path)
        if version is None:
            _create(conn)
            conn.execute(
                "INSERT INTO meta VALUES ('created_at', ?)",
                (datetime.now(UTC).isoformat(timespec="seconds"),),
            )
        else:
            _check_version(version, path, readonly=False)
            _migrate(conn, version)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            meta.items(),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _create(conn: sqlite3.Connection) -> None:
    # executescript() would COMMIT our transaction first; run the statements one by one.
    for statement in _DDL.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


_TABLES = frozenset({"meta", "jobs", "outputs", "events"})


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {
        str(row[0])
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not str(row[0]).startswith("sqlite_")
    }


def _read_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The schema version, or None for an empty database. Errors for a foreign one."""
    tables = _table_names(conn)
    if not tables:
        return None
    if "meta" not in tables:
        raise ManifestError(
            f"{path}: an SQLite database, but not a pipeline manifest (no meta table); "
            "move it aside or point to another output directory"
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0])
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{path}: manifest has no valid schema_version") from exc


def _check_version(version: int | None, path: Path, *, readonly: bool) -> None:
    if version is None:
        raise damaged(path, "an empty database")
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: manifest schema version {version} is newer than this pipeline "
            f"understands ({SCHEMA_VERSION}); upgrade pipeline to use it"
        )
    if version < SCHEMA_VERSION and readonly:
        raise ManifestError(
            f"{path}: manifest schema version {version} is older than {SCHEMA_VERSION}; "
            "run a writing command (e.g. `pipeline run`) once to migrate it"
        )


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    while version < SCHEMA_VERSION:
        MIGRATIONS[version](conn)
        version += 1
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
