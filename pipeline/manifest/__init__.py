"""Room: the manifest, the one true record of a run (SQLite): the store, its schema and
SQL, the group commit, the run lock, recovery, copying a run between SQLite and PostgreSQL
and the fallback for unrecorded tasks. sqlite3 and psycopg live only here."""

from pipeline.manifest.copy import Copied, copy_manifest
from pipeline.manifest.group_commit import GroupCommit, group_commits
from pipeline.manifest.lock import RunLocked, hold_run_lock
from pipeline.manifest.recover import Recovered, recover
from pipeline.manifest.store import Event, Manifest, Pruned, find_manifest
from pipeline.manifest.unrecorded import adopt_unrecorded

__all__ = [
    "Copied",
    "Event",
    "GroupCommit",
    "Manifest",
    "Pruned",
    "Recovered",
    "RunLocked",
    "adopt_unrecorded",
    "copy_manifest",
    "find_manifest",
    "group_commits",
    "hold_run_lock",
    "recover",
]
