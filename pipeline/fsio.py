"""Durable file writes: atomic replace and directory fsync, shared by downloads,
sidecars, exports and the manifest snapshot (contract 3: never a half-written file in
place of a good one)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["fsync_dir", "replace_durably", "write_atomic_text"]


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a crash (a no-op where unsupported)."""
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """``os.replace`` then fsync the directory, so the rename survives a crash."""
    os.replace(source, target)
    fsync_dir(target.parent)


def write_atomic_text(path: Path, write: Callable[[IO[str]], object]) -> Path:
    """Create or replace text file ``path`` atomically: ``write(file)`` fills a temporary
    file in the same directory, which is fsynced and renamed over ``path``. Readers see
    the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        replace_durably(Path(tmp_name), path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
