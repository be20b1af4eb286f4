"""Rows of the manifest's tables ↔ model objects, and the JSONL export of them.

Private to ``manifest``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO, cast

from pipeline.fsio import write_atomic_text
from pipeline.models import Job, JobRecord, JobState, Output
from pipeline.redact import scrub

__all__ = [
    "JOB_COLUMNS",
    "OUTPUT_COLUMNS",
    "export_lines",
    "job_row",
    "output_from_row",
    "output_row",
    "record_from_row",
    "write_atomically",
]

JOB_COLUMNS = (
    "id, provider, model, params, replicate, prompt_slug, state, remote_id, client_ref, "
    "attempts, error, created_at, updated_at, submitted_at, finished_at, failure, meta"
)
_JOB_WIDTH = 17
OUTPUT_COLUMNS = "job_id, idx, path, size, sha256, url, content_type, root"
"""``root``: the output root the file lies under, when it is not the store's own (SQLite:
NULL for the folder's own; PostgreSQL records every runner's root)."""

Row = Sequence[Any]


def job_row(job: Job, now: float, generation: int = 0) -> tuple[Any, ...]:
    """The INSERT parameters of a new ``pending`` job of spec expansion ``generation``."""
    return (
        job.id,
        job.provider,
        job.model,
        job.params_json(),
        job.replicate,
        job.prompt_slug,
        JobState.PENDING.value,
        now,
        now,
        generation,
        job.meta_json(),
    )


def output_row(output: Output, root: str | None) -> tuple[Any, ...]:
    """The ``OUTPUT_COLUMNS`` of ``output``, written under the output root ``root``."""
    return (
        output.job_id,
        output.index,
        output.path,
        output.size,
        output.sha256,
        output.url,
        output.content_type,
        root,
    )


def record_from_row(row: Row, outputs: tuple[Output, ...] = ()) -> JobRecord:
    """A ``JobRecord`` from the first ``_JOB_WIDTH`` columns of ``row`` (``JOB_COLUMNS``)."""
    job = Job(
        id=row[0],
        provider=row[1],
        model=row[2],
        params=json.loads(row[3]),
        replicate=row[4],
        prompt_slug=row[5],
        meta=json.loads(row[16]),
    )
    return JobRecord(
        job=job,
        state=JobState(row[6]),
        remote_id=row[7],
        client_ref=row[8],
        attempts=row[9],
        error=row[10],
        created_at=row[11],
        updated_at=row[12],
        submitted_at=row[13],
        finished_at=row[14],
        outputs=outputs,
        failure=row[15],
    )


def output_from_row(row: Row, own_root: str) -> Output:
    """An ``Output`` from an ``OUTPUT_COLUMNS`` row; its ``root`` is set only when the
    file lies under another output root than ``own_root`` (the reader's, resolved)."""
    return Output(
        job_id=row[0],
        index=row[1],
        path=row[2],
        size=row[3],
        sha256=row[4],
        url=row[5],
        content_type=row[6],
        root=None if row[7] is None or row[7] == own_root else str(row[7]),
    )


def _export_object(row: Row, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """One export line from a ``JOB_COLUMNS`` row (straight from the row: no dataclasses
    on this path, which a million-job export runs a million times)."""
    return {
        "id": row[0],
        "provider": row[1],
        "model": row[2],
        "params": json.loads(row[3]),
        "replicate": row[4],
        "prompt_slug": row[5],  # for `pipeline recover`: output paths use it
        "state": row[6],
        "remote_id": row[7],
        "attempts": row[9],
        "error": None if row[10] is None else scrub(row[10]),  # rows of older versions
        "failure": row[15],
        "created_at": row[11],
        "updated_at": row[12],
        "submitted_at": row[13],
        "finished_at": row[14],
        "meta": json.loads(row[16]),
        "outputs": outputs,
    }


def _export_output(row: Row, own_root: str) -> dict[str, Any]:
    """An ``outputs`` entry from an ``OUTPUT_COLUMNS`` row: ``root`` only for a file
    under another output root than ``own_root``."""
    keys = ("index", "path", "size", "sha256", "url", "content_type")
    entry = dict(zip(keys, row[1:7], strict=True))
    if row[7] is not None and row[7] != own_root:
        entry["root"] = row[7]
    return entry


def _export_objects(conn: sqlite3.Connection, own_root: str) -> Iterator[dict[str, Any]]:
    """Every job in rowid order with its outputs, from ONE streaming statement.

    One statement reads one consistent WAL snapshot, row by row: the export is a
    point-in-time picture even while a run keeps writing, and never loads the table.
    """
    cursor = conn.execute(
        f"SELECT j.rowid, {', '.join('j.' + c.strip() for c in JOB_COLUMNS.split(','))}, "
        f"{', '.join('o.' + c.strip() for c in OUTPUT_COLUMNS.split(','))} "
        "FROM jobs AS j LEFT JOIN outputs AS o ON o.job_id = j.id ORDER BY j.rowid, o.idx"
    )
    current: dict[str, Any] | None = None
    current_rowid: int | None = None
    outputs: list[dict[str, Any]] = []
    for row in cursor:
        if row[0] != current_rowid:
            if current is not None:
                yield current
            outputs = []
            current, current_rowid = _export_object(row[1:], outputs), row[0]
        if row[1 + _JOB_WIDTH] is not None:
            outputs.append(_export_output(row[1 + _JOB_WIDTH :], own_root))
    if current is not None:
        yield current


def export_lines(conn: sqlite3.Connection, out: TextIO, own_root: str) -> int:
    """Write one JSON line per job to ``out``; return how many. An output under another
    output root than ``own_root`` names it (``root``)."""
    lines = 0
    for obj in _export_objects(conn, own_root):
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        lines += 1
    return lines


def write_atomically(target: Path, conn: sqlite3.Connection, own_root: str) -> int:
    """Export into a temporary file next to ``target``, fsync it, rename it over ``target``
    and fsync the directory: readers see the old snapshot or the new one, never a part."""
    lines = 0

    def fill(out: IO[str]) -> None:
        nonlocal lines
        lines = export_lines(conn, cast(TextIO, out), own_root)

    write_atomic_text(target, fill)
    return lines
