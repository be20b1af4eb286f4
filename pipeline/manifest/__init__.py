"""Room: the manifest, the one true record of a run (SQLite, or PostgreSQL for a shared
run): the stores, their schemas and SQL, the group commit, the run lock, recovery and the
fallback for unrecorded tasks. sqlite3 and psycopg live only here; psycopg (the
``postgres`` extra) is imported only when a run's manifest is in PostgreSQL."""

from typing import TYPE_CHECKING, Any

from pipeline.manifest.group_commit import GroupCommit, group_commits
from pipeline.manifest.lock import RunLocked, hold_run_lock
from pipeline.manifest.recover import Recovered, recover
from pipeline.manifest.store import Event, Manifest, Pruned, find_manifest
from pipeline.manifest.unrecorded import adopt_unrecorded
from pipeline.manifest.where import (
    POINTER_NAME,
    has_manifest,
    is_database_url,
    open_folder,
    open_run,
)

__all__ = [
    "POINTER_NAME",
    "Event",
    "GroupCommit",
    "LeaseLost",
    "Manifest",
    "PgManifest",
    "Pruned",
    "Reaped",
    "Recovered",
    "RunLocked",
    "Runners",
    "adopt_unrecorded",
    "find_manifest",
    "group_commits",
    "has_manifest",
    "hold_run_lock",
    "is_database_url",
    "open_folder",
    "open_run",
    "recover",
]

if TYPE_CHECKING:
    from pipeline.manifest.postgres import PgManifest
    from pipeline.manifest.runners import LeaseLost, Reaped, Runners

_SHARED = {"PgManifest": "postgres", "LeaseLost": "runners", "Reaped": "runners",
           "Runners": "runners"}  # fmt: skip


def __getattr__(name: str) -> Any:
    """The PostgreSQL names, imported on first use (psycopg is an optional extra)."""
    if name in _SHARED:
        import importlib

        return getattr(importlib.import_module(f"pipeline.manifest.{_SHARED[name]}"), name)
    raise AttributeError(f"module 'pipeline.manifest' has no attribute {name!r}")
