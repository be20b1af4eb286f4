"""``pipeline recover``: rebuild a damaged manifest from ``manifest.jsonl``.

The damaged database is moved aside (never deleted) and a new one is built from the
snapshot every run writes at its end, keeping each job's state, remote id, error and
outputs, so nothing already paid for is submitted again. A job the snapshot shows as
``submitting`` may have reached the provider: it becomes ``unknown``, as a crash would
leave it. The new database is built under another name and renamed into place, so an
interrupted recovery leaves no half-built manifest.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestDamaged, ManifestError
from pipeline.fsio import fsync_dir, replace_durably
from pipeline.manifest.schema import DB_NAME, check_existing, translated
from pipeline.manifest.store import SNAPSHOT_NAME, Manifest
from pipeline.models import FAILURES, JobState

__all__ = ["Recovered", "recover"]

_RECOVERED_STATE = {JobState.SUBMITTING.value: JobState.UNKNOWN.value}
_SIDE = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Recovered:
    jobs: int
    states: Counter[str]
    moved_to: Path | None  # where the damaged database went (None: there was none)
    snapshot_at: float  # the snapshot's modification time


def recover(root: Path, *, force: bool = False) -> Recovered:
    """Rebuild ``root``'s manifest from its snapshot. Refuses a healthy manifest unless
    ``force``. The caller holds the run lock."""
    root = Path(root)
    path, snapshot = root / DB_NAME, root / SNAPSHOT_NAME
    if path.exists() and not force:
        try:
            check_existing(path)
        except ManifestDamaged:
            pass
        else:
            raise ManifestError(
                f"{path} is healthy; nothing to recover (pass --force to rebuild it from "
                f"{snapshot} anyway: whatever happened after that snapshot is lost)"
            )
    if not snapshot.is_file():
        raise ManifestError(
            f"no {snapshot} to recover from (it is written at the end of each run); "
            f"the damaged manifest is left as it is"
        )
    rows = list(_read_snapshot(snapshot))  # all of it checked before anything moves
    building = root / ".recover"
    shutil.rmtree(building, ignore_errors=True)
    Manifest.open(building).close()  # the schema, created as for a new run
    _insert(building / DB_NAME, rows, snapshot)
    moved_to = _move_aside(path) if path.exists() else None
    replace_durably(building / DB_NAME, path)
    shutil.rmtree(building, ignore_errors=True)
    return Recovered(
        jobs=len(rows),
        states=Counter(row["state"] for row in rows),
        moved_to=moved_to,
        snapshot_at=snapshot.stat().st_mtime,
    )


def _read_snapshot(snapshot: Path) -> Iterator[dict[str, Any]]:
    with snapshot.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                yield _snapshot_row(line)
            except (ValueError, KeyError, TypeError) as exc:
                raise ManifestError(
                    f"{snapshot}:{number}: not a manifest snapshot line ({exc}); "
                    "nothing was changed"
                ) from exc


def _snapshot_row(line: str) -> dict[str, Any]:
    obj = json.loads(line)
    if not isinstance(obj, dict) or not isinstance(obj["params"], dict):
        raise TypeError("not a job object with params")
    if not isinstance(obj.get("meta") or {}, dict):
        raise TypeError("meta must be an object")
    state = JobState(obj["state"]).value  # ValueError for a state we do not know
    obj["state"] = _RECOVERED_STATE.get(state, state)
    if not isinstance(obj["id"], str) or not isinstance(obj["provider"], str):
        raise TypeError("id and provider must be strings")
    return obj


_INSERT_JOB = (
    "INSERT INTO jobs (id, provider, model, params, replicate, prompt_slug, state, "
    "remote_id, attempts, error, created_at, updated_at, submitted_at, finished_at, failure, "
    "meta) VALUES (:id, :provider, :model, :params, :replicate, :prompt_slug, :state, "
    ":remote_id, :attempts, :error, :created_at, :updated_at, :submitted_at, :finished_at, "
    ":failure, :meta)"
)
_INSERT_OUTPUT = (
    "INSERT INTO outputs (job_id, idx, path, size, sha256, url, content_type, root) "
    "VALUES (:job_id, :index, :path, :size, :sha256, :url, :content_type, :root)"
)


def _insert(path: Path, rows: list[dict[str, Any]], snapshot: Path) -> None:
    now = time.time()
    note = f"rebuilt from {snapshot.name}"
    with translated("recover", path):
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_JOB, (_job_params(row, now) for row in rows))
            conn.executemany(
                _INSERT_OUTPUT,
                (  # ``root``: a file under another output root than the folder's
                    {"job_id": row["id"], "root": None, **o}
                    for row in rows
                    for o in row.get("outputs") or []
                ),
            )
            conn.executemany(
                "INSERT INTO events (job_id, at, kind, detail) VALUES (?, ?, 'recovered', ?)",
                ((row["id"], now, note) for row in rows),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()


def _job_params(row: dict[str, Any], now: float) -> dict[str, Any]:
    error = row.get("error")
    if row["state"] == JobState.UNKNOWN.value and not error:
        error = "submit outcome unknown (it was in flight when the snapshot was written)"
    return {
        "id": row["id"],
        "provider": row["provider"],
        "model": row.get("model"),
        "params": json.dumps(
            row["params"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        "replicate": row.get("replicate") or 0,
        "prompt_slug": row.get("prompt_slug") or "",  # empty: paths slug the prompt
        "state": row["state"],
        "remote_id": row.get("remote_id"),
        "attempts": row.get("attempts") or 0,
        "error": error,
        "created_at": row.get("created_at") or now,
        "updated_at": row.get("updated_at") or now,
        "submitted_at": row.get("submitted_at"),
        "finished_at": row.get("finished_at"),
        "failure": row.get("failure") if row.get("failure") in FAILURES else None,
        "meta": json.dumps(row.get("meta") or {}, separators=(",", ":"), ensure_ascii=False),
    }


def _move_aside(path: Path) -> Path:
    """Rename the damaged database (and its WAL, which may hold data) out of the way."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for side in _SIDE:
        extra = path.with_name(path.name + side)
        if extra.exists():
            extra.rename(aside.with_name(aside.name + side))
    path.rename(aside)
    fsync_dir(path.parent)
    return aside
