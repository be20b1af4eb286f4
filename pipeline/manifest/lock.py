"""One writer per output root: an OS lock on ``<root>/.pipeline.lock``.

The kernel releases the lock when the holding process dies, however it dies (SIGKILL,
power loss aside), so a stale lock never needs cleaning up: the next run simply gets
it. The file itself is never deleted (deleting it would let two processes lock two
different inodes); it holds the holder's pid, host and start time, for the message a
refused run prints. Readers (``status``, ``export``) never take it.

    with hold_run_lock(root):
        ...  # open the manifest for writing, run, write the snapshot
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import ManifestError, RunLocked

__all__ = ["LOCK_NAME", "RunLocked", "hold_run_lock"]

LOCK_NAME = ".pipeline.lock"


@contextmanager
def hold_run_lock(root: Path, *, what: str = "pipeline run") -> Iterator[None]:
    """Hold ``root``'s run lock for the body; raise ``RunLocked`` at once if another
    process has it."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise ManifestError(f"cannot create the run lock in {root}: {exc}") from exc
    try:
        if not _try_lock(fd):
            raise RunLocked(
                f"{root} is in use by another {_holder(fd)}; one run per output "
                "directory (`pipeline status` works beside it). Wait for it to finish, "
                "or stop it, then run again."
            )
        _write_holder(fd, what)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int, what: str) -> None:
    """Record who holds the lock (best effort: the lock itself is what protects)."""
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": what,
    }
    data = (json.dumps(holder) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
    except OSError:
        pass


def _holder(fd: int) -> str:
    """``pipeline run (pid 123 on host x, started …)`` from the lock file, as far as known."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "pipeline process (pid unknown: it has not written the lock file yet)"
    return (
        f"{holder.get('command', 'pipeline run')} (pid {holder['pid']} on host "
        f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
    )
