"""An emulator's world on disk, so that it remembers across a restart as a real API does.

One SQLite file per emulator (``<dir>/state.sqlite``): tasks, media specs, aliases,
the URL-signing secret, the emulator's own records (PixAI's media ids) and the charge
ledger. WAL with ``synchronous=FULL``: every change is one transaction, durable before
the answer that reveals it leaves, and a SIGKILL at any moment leaves a file that
opens with every task a client was told about. A lock file keeps a second process off
the same directory (it would fork the world).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pipeline.emulators.codec import charge_doc, charge_from_doc
from pipeline.emulators.ledger import Charge
from pipeline.errors import PipelineError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock, one process is trusted
    fcntl = None  # type: ignore[assignment]

__all__ = ["DB_NAME", "Row", "StateFile", "stored_charges"]

DB_NAME = "state.sqlite"
LOCK_NAME = "state.lock"
BUSY_MS = 5000

Row = tuple[str, str, Any]
"""(kind, id, JSON-ready document): one object of the world, e.g. ("task", id, doc)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS charges (seq INTEGER PRIMARY KEY, doc TEXT NOT NULL);
"""
_KEPT_ON_RESET = "meta"


class StateFile:
    """The state directory of one emulator, open and locked for this process."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock: IO[str] | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = _take_lock(self.directory / LOCK_NAME)
            self._conn = _connect(self.directory / DB_NAME)
        except OSError as exc:
            self._release()
            raise PipelineError(f"emulator state in {self.directory}: {exc}") from exc
        except sqlite3.Error as exc:
            self._release()
            raise self.unusable(str(exc)) from exc

    def unusable(self, why: str) -> PipelineError:
        """The error for a state file this emulator cannot take over, with the way out."""
        return PipelineError(
            f"emulator state in {self.directory}: {why} (remove that directory to start "
            "the emulator afresh: it forgets its tasks and charges)"
        )

    def close(self) -> None:
        self._conn.close()
        self._release()

    def rows(self, kind: str) -> Iterator[tuple[str, Any]]:
        """(id, document) of every object of ``kind``, oldest first."""
        query = "SELECT id, doc FROM objects WHERE kind = ? ORDER BY rowid"
        for object_id, doc in self._conn.execute(query, (kind,)):
            yield object_id, json.loads(doc)

    def charges(self) -> list[Charge]:
        return _charges(self._conn)

    def write(self, rows: Iterable[Row], charges: Iterable[Charge] = ()) -> None:
        """Store ``rows`` (replacing same kind and id) and append ``charges``, atomically."""
        objects = [(kind, oid, _dumps(doc)) for kind, oid, doc in rows]
        paid = [(_dumps(charge_doc(charge)),) for charge in charges]
        with self._transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", objects)
            conn.executemany("INSERT INTO charges (doc) VALUES (?)", paid)

    def clear(self) -> None:
        """Forget everything but the settings kept across a reset (the signing secret)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM objects WHERE kind != ?", (_KEPT_ON_RESET,))
            conn.execute("DELETE FROM charges")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise PipelineError(f"emulator state in {self.directory}: {exc}") from exc

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the lock
            self._lock = None


def stored_charges(directory: Path) -> list[Charge]:
    """The charge ledger kept in ``directory``, read beside (or after) its emulator."""
    path = Path(directory) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no emulator state at {path}")
    conn = sqlite3.connect(path)
    try:
        return _charges(conn)
    finally:
        conn.close()


def _charges(conn: sqlite3.Connection) -> list[Charge]:
    query = "SELECT doc FROM charges ORDER BY seq"
    return [charge_from_doc(json.loads(doc)) for (doc,) in conn.execute(query)]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _take_lock(path: Path) -> IO[str]:
    handle = path.open("a+", encoding="utf-8")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OSError(f"in use by {holder}; one emulator per state directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
