"""Spec generations in the manifest: which jobs the current spec lists, and pruning the
rest. Private to ``manifest``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import PurePath

from pipeline.models import JobState

__all__ = ["GENERATION_KEY", "PAID_OPEN_STATES", "Pruned", "prune_rows", "read_generation"]

GENERATION_KEY = "generation"
"""Manifest meta key: the number of the current spec expansion (0 before the first)."""

PAID_OPEN_STATES = frozenset(
    {
        JobState.SUBMITTING,
        JobState.SUBMITTED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
        JobState.DOWNLOADING,
        JobState.UNKNOWN,
        JobState.TIMED_OUT,
    }
)
"""States of a job whose paid remote task may exist and still deliver: pruned only on
explicit request, since its row is where that task is recorded."""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``Manifest.prune`` did."""

    removed: int
    kept_paid: int  # jobs not in the spec left in place: their paid task may still deliver
    remote_ids: tuple[str, ...]  # the remote tasks of the removed jobs
    output_paths: tuple[str, ...]  # their recorded outputs, relative to the output root
    elsewhere: tuple[str, ...] = ()  # their outputs under other output roots (absolute)


def read_generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (GENERATION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def prune_rows(
    conn: sqlite3.Connection, generation: int, now: float, own_root: str, *, include_paid: bool
) -> Pruned:
    """Delete the jobs not of ``generation`` (inside the caller's write transaction).
    Their outputs are told apart: under ``own_root`` (NULL or equal) or another root."""
    paid = sorted(s.value for s in PAID_OPEN_STATES)
    marks = ", ".join("?" * len(paid))
    keep = "" if include_paid else f" AND state NOT IN ({marks})"
    args: list[object] = [generation, *([] if include_paid else paid)]
    selected = f"SELECT id FROM jobs WHERE generation != ?{keep}"
    kept = 0
    if not include_paid:
        kept = conn.execute(
            f"SELECT count(*) FROM jobs WHERE generation != ? AND state IN ({marks})",
            [generation, *paid],
        ).fetchone()[0]
    remote_ids = tuple(
        row[0]
        for row in conn.execute(
            f"SELECT remote_id FROM jobs WHERE id IN ({selected}) AND remote_id IS NOT NULL "
            "ORDER BY rowid",
            args,
        )
    )
    paths: list[str] = []
    elsewhere: list[str] = []
    for path, root in conn.execute(
        f"SELECT path, root FROM outputs WHERE job_id IN ({selected}) ORDER BY job_id, idx", args
    ):
        if root is None or root == own_root:
            paths.append(path)
        else:
            elsewhere.append(str(PurePath(root) / path))
    conn.execute(
        "INSERT INTO events (job_id, at, kind, from_state, to_state, detail) "
        "SELECT id, ?, 'pruned', state, NULL, 'not in the spec; remote_id ' || "
        f"coalesce(remote_id, 'none') FROM jobs WHERE id IN ({selected}) ORDER BY rowid",
        [now, *args],
    )
    conn.execute(f"DELETE FROM outputs WHERE job_id IN ({selected})", args)
    removed = conn.execute(f"DELETE FROM jobs WHERE id IN ({selected})", args).rowcount
    return Pruned(removed, int(kept), remote_ids, tuple(paths), tuple(elsewhere))
