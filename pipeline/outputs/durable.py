"""Making finished downloads durable in batches (see ``Committer``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from pipeline.errors import DownloadError
from pipeline.fsio import fsync_dir

__all__ = ["Committer", "Sealable"]


class Sealable(Protocol):
    """A verified body waiting in memory or in its ``.part`` (``download._PartBody``)."""

    def commit(
        self, dest: Path, provenance: Mapping[str, Any] | None = None, *, sync_dir: bool = True
    ) -> None: ...


class Committer:
    """Makes finished downloads durable in batches: one worker hop for every body that
    finished while the previous batch was being written.

    A hop per download costs the loop far more than the hop takes: with a worker thread per
    busy download (anyio's pool has 40), every fsync a worker returns from is a GIL
    hand-over with the event loop, and the loop pays for each. One thread doing the
    batches costs far less CPU and wall time (benchmarks/RESULTS.md, section
    "outputs/durable.py"). Within a batch
    each directory is fsynced once, after all its renames.

    ``run`` is a background task (the session starts it); ``commit`` waits for the
    batch holding its body, shielded from cancellation as a worker hop is: the body is
    never closed under the worker's feet. A failure is the failing body's alone.
    """

    def __init__(self) -> None:
        self._queue: list[_Commit] = []
        self._wake = anyio.Event()
        self._stopped = False

    async def commit(
        self, body: Sealable, dest: Path, provenance: Mapping[str, Any] | None
    ) -> None:
        if self._stopped:
            raise DownloadError("the session is closing; not committed", transient=True)
        item = _Commit(body, dest, provenance)
        self._queue.append(item)
        self._wake.set()
        with anyio.CancelScope(shield=True):
            await item.done.wait()
        if item.error is not None:
            raise item.error

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch, self._queue = self._queue, []
                try:  # a worker hop is not cancellable: the batch always completes
                    await anyio.to_thread.run_sync(_commit_batch, batch)
                finally:
                    for item in batch:
                        item.done.set()
        finally:
            self._stopped = True
            for item in self._queue:  # handed over after the last batch: not written
                item.error = DownloadError("the session closed; not committed", transient=True)
                item.done.set()
            self._queue.clear()


@dataclass(slots=True)
class _Commit:
    body: Sealable
    dest: Path
    provenance: Mapping[str, Any] | None
    done: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


def _commit_batch(batch: list[_Commit]) -> None:
    """In the worker: each body as ``_PartBody.commit``, then each directory fsynced once."""
    directories: dict[Path, list[_Commit]] = {}
    for item in batch:
        try:
            item.body.commit(item.dest, item.provenance, sync_dir=False)
        except Exception as exc:
            item.error = exc
        else:
            directories.setdefault(item.dest.parent, []).append(item)
    for directory, items in directories.items():
        try:
            fsync_dir(directory)
        except Exception as exc:
            for item in items:
                item.error = exc
