"""Group commit for the manifest while a run is on (see ``Manifest.defer_commits``).

Every job that moves during one turn of the event loop shares one SQLite commit: a
background task commits as soon as the turn that made writes has ended: a transition
in a commit of its own (``BEGIN IMMEDIATE`` … ``COMMIT``, each commit appending the
touched pages to the WAL) costs several times one inside a shared transaction, and a job
makes four (benchmarks/RESULTS.md, section "manifest/group_commit.py").

Durability is unchanged where it matters: ``durable()`` waits for the commit that holds
everything written so far, fsynced to the disk, and the scheduler awaits it before a
submit leaves (contract 2: a power cut cannot undo a submit's intent). Other moves are
committed within the same turn; a crash before that loses only moves whose outcome the
next run reconciles anyway (a remote id not yet recorded is the same as a crash just
before the answer arrived).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from pipeline.errors import ManifestError
from pipeline.manifest.store import Manifest

__all__ = ["GroupCommit", "group_commits"]


class _Round:
    """One commit: the writes made before it started, and how it ended."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: ManifestError | None = None
        self.synced = False  # a submit waits for it: fsync, not only commit


class GroupCommit:
    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._wanted = anyio.Event()
        self._round = _Round()
        self._stopped = False

    def pending(self) -> None:
        """Called by the manifest after each deferred write: commit after this turn."""
        self._wanted.set()

    async def durable(self) -> None:
        """Return once everything written so far is committed and synced to the disk
        (``Manifest.commit(synced=True)``); raise ``ManifestError``
        if that commit failed. Once the background task has stopped (the run is being
        cancelled), it commits at once itself."""
        if self._stopped:
            self.manifest.commit(synced=True)
            return
        round_ = self._round
        round_.synced = True
        self._wanted.set()
        await round_.done.wait()
        if round_.error is not None:
            raise round_.error

    async def run(self) -> None:
        try:
            while True:
                await self._wanted.wait()
                await anyio.lowlevel.checkpoint()  # let the rest of this turn write too
                self._wanted = anyio.Event()
                self._commit_round()
        finally:
            # Cancelled (Ctrl-C): submits waiting inside their shields must not wait for
            # a round that would never come.
            self._stopped = True
            self._commit_round()

    def _commit_round(self) -> None:
        round_, self._round = self._round, _Round()
        try:
            self.manifest.commit(synced=round_.synced)
        except ManifestError as exc:
            round_.error = exc
        finally:
            round_.done.set()


@asynccontextmanager
async def group_commits(manifest: Manifest) -> AsyncIterator[GroupCommit]:
    """Defer the manifest's commits to a background task for the body's duration; on
    the way out, whatever is pending is committed and writes commit one by one again."""
    commits = GroupCommit(manifest)
    async with anyio.create_task_group() as group:
        manifest.defer_commits(commits.pending)
        try:
            group.start_soon(commits.run)
            yield commits
        finally:
            group.cancel_scope.cancel()
            manifest.defer_commits(None)
