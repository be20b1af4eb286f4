"""The last resort for a paid task the manifest could not record.

When a write to the manifest fails (disk full, EFBIG, I/O error) after a provider has
created a task, its remote id would be known to nobody. It is printed to stderr and
appended, one JSON object per line, to ``<output root>/unrecorded-remote-ids.jsonl``,
or, if that cannot be written either, to the same file under the user's state
directory (``$XDG_STATE_HOME/pipeline``, default ``~/.local/state/pipeline``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.manifest.store import Manifest

__all__ = [
    "FALLBACK_NAME",
    "WriteFailures",
    "adopt_unrecorded",
    "provider_lookup",
    "report_unrecorded",
    "state_dir",
]

FALLBACK_NAME = "unrecorded-remote-ids.jsonl"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pipeline"


def report_unrecorded(
    root: Path, *, job_id: str, provider: str | None, remote_id: str, reason: str
) -> Path | None:
    """Name a paid task that is not in the manifest on stderr and in a fallback file;
    return the file it went to (None if no file could be written)."""
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "job_id": job_id,
        "provider": provider,
        "remote_id": remote_id,
        "reason": reason,
        "manifest": str(root),
    }
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    written = None
    for target in (root / FALLBACK_NAME, state_dir() / FALLBACK_NAME):
        if _append(target, line):
            written = target
            break
    where = f"written to {written}" if written else "NO FILE COULD BE WRITTEN: keep this line"
    print(
        f"pipeline: paid task not recorded in the manifest: job {job_id}, provider "
        f"{provider or '?'}, remote id {remote_id} ({reason}); {where}",
        file=sys.stderr,
        flush=True,
    )
    return written


def _append(target: Path, line: str) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        return False
    return True


class WriteFailures:
    """A manifest's record of failed writes: the first failure (after which nothing
    more is written) and the remote ids written but not yet committed, which a failed
    commit loses and which are then reported with ``report_unrecorded``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.first: str | None = None  # why writes stopped
        self.first_at: float | None = None  # when (seconds since the epoch)
        self.lost: list[str] = []  # remote ids reported as unrecorded
        self.fallback: Path | None = None  # where they were written
        self._uncommitted: dict[str, str] = {}  # job id → remote id

    def failed(self, exc: BaseException) -> None:
        if self.first is None:
            self.first = str(exc) or type(exc).__name__
            self.first_at = time.time()

    def written(self, job_id: str, remote_id: str) -> None:
        """A remote id is in the open transaction, not yet on disk."""
        self._uncommitted[job_id] = remote_id

    def committed(self) -> None:
        self._uncommitted.clear()

    def lose(
        self, job_id: str, remote_id: str, reason: str, provider: Callable[[str], str | None]
    ) -> None:
        """Report one remote id the manifest does not hold."""
        self._uncommitted.pop(job_id, None)
        where = report_unrecorded(
            self.root, job_id=job_id, provider=provider(job_id), remote_id=remote_id,
            reason=reason,
        )  # fmt: skip
        self.lost.append(remote_id)
        self.fallback = where or self.fallback

    def lose_uncommitted(self, reason: str, provider: Callable[[str], str | None]) -> None:
        """The open transaction is gone: report every remote id it held."""
        for job_id, remote_id in list(self._uncommitted.items()):
            self.lose(job_id, remote_id, reason, provider)


def provider_lookup(conn: sqlite3.Connection | None) -> Callable[[str], str | None]:
    """Looks up a job's provider for a report, as far as the database still answers."""

    def provider(job_id: str) -> str | None:
        try:
            row = (
                None
                if conn is None
                else conn.execute("SELECT provider FROM jobs WHERE id = ?", (job_id,)).fetchone()
            )
        except Exception:  # best effort on a failing path: SQLite or PostgreSQL errors
            return None
        return None if row is None else str(row[0])

    return provider


def adopt_unrecorded(manifest: Manifest) -> int:
    """Give back to their jobs the remote ids a failed run wrote to the output root's
    fallback file (a job still ``submitting`` or ``unknown`` with no remote id), so
    their paid tasks are followed and downloaded, never submitted again. The file is
    then renamed ``unrecorded-remote-ids.adopted-<time>.jsonl``: never read twice, never
    deleted. Returns how many were taken back."""
    from pipeline.models import JobState

    source = manifest.root / FALLBACK_NAME
    if not source.is_file():
        return 0
    adopted = 0
    for line in source.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            job_id, remote_id = str(entry["job_id"]), str(entry["remote_id"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line: the same id is on stderr
        record = manifest.get(job_id)
        if record is None or record.remote_id is not None:
            continue
        adopted += manifest.transition(
            job_id, JobState.SUBMITTED, expect=(JobState.SUBMITTING, JobState.UNKNOWN),
            remote_id=remote_id, detail=f"remote id taken back from {FALLBACK_NAME}",
        )  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    source.rename(source.with_name(f"unrecorded-remote-ids.adopted-{stamp}.jsonl"))
    return adopted
