"""The runners of a shared run (PostgreSQL only): leases, claims, takeover, and the limits
every runner shares.

A runner joins with a lease that it renews; a job it works on is *held* by it
(``jobs.holder``), and a runner moves only the jobs it holds (``PgManifest._step``).
A runner that stops renewing is reaped by any other: its submits cut short become
``unknown`` (never resubmitted), its downloads go back to ``succeeded``, and its jobs and
task slots come free for the others to claim. Lease times are the database's clock, never
a host's: hosts' clocks differ.

The limits of a provider's account hold across all runners: task slots (concurrency), a
submit rate (one GCRA schedule in the database) and budget counters, each changed in one
short transaction.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.errors import ManifestError
from pipeline.manifest.postgres import PgConnection, PgManifest
from pipeline.manifest.rows import JOB_COLUMNS, record_from_row
from pipeline.manifest.sql import update_sql
from pipeline.models import JobRecord, JobState

__all__ = ["BudgetItem", "LeaseLost", "Reaped", "Runners"]

S = JobState
NOW = "extract(epoch from clock_timestamp())::float8"
"""The database's clock, in seconds since the epoch: the one clock of every lease."""

_REGISTERED = "EXISTS (SELECT 1 FROM runners WHERE id = ?)"
"""Only a runner with a lease takes jobs or slots (one reaped takes none, even before it
knows)."""

BudgetItem = tuple[str, Decimal, Decimal | None]
"""A budget counter's key, what the job adds to it, and its cap (None: counted only)."""


class LeaseLost(ManifestError):
    """This runner stopped renewing its lease long enough to be reaped: its jobs went
    to the others, and it may move none of them any more."""


@dataclass(frozen=True)
class Reaped:
    """What a reap did: the runners found dead, and what became of their jobs."""

    runners: tuple[str, ...] = ()
    unknown: int = 0  # submits cut short
    succeeded: int = 0  # downloads cut short, to fetch again
    freed: int = 0  # jobs of theirs now free to claim

    def __bool__(self) -> bool:
        return bool(self.runners)


class Runners:
    """This process as one runner of ``manifest``'s shared run."""

    def __init__(self, manifest: PgManifest) -> None:
        self.manifest = manifest

    @property
    def id(self) -> str:
        runner_id = self.manifest.runner_id
        if runner_id is None:
            raise ManifestError(f"{self.manifest.location}: this process has not joined the run")
        return runner_id

    # -- the lease ------------------------------------------------------------------

    def join(
        self, ttl: float, count_spent: Callable[[], Mapping[str, Decimal]] | None = None
    ) -> str:
        """Register as a runner with a lease of ``ttl`` seconds; return the runner id.

        The first live runner (checked under the run's advisory lock, so runners starting
        together agree) sets the budget counters to ``count_spent()``, what the manifest
        says was spent; a later one keeps the counters the others are using."""
        runner_id = uuid.uuid4().hex
        lock = self.manifest.pg_location.schema + ":runners"
        with self.manifest.coordinating("join", transaction=False) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(?))", (lock,))
        try:
            with self.manifest.coordinating("join") as conn:
                live = _one(conn, f"SELECT count(*) FROM runners WHERE expires_at > {NOW}")
                alone = live[0] == 0
            if alone and count_spent is not None:
                counted = count_spent()  # reads the manifest: outside any open transaction
                with self.manifest.coordinating("join") as conn:
                    conn.execute("DELETE FROM budgets")
                    for key, spent in sorted(counted.items()):
                        conn.execute("INSERT INTO budgets VALUES (?, ?)", (key, spent))
            with self.manifest.coordinating("join") as conn:
                conn.execute(
                    f"INSERT INTO runners VALUES (?, ?, ?, {NOW}, {NOW} + ?, ?)",
                    (runner_id, socket.gethostname(), os.getpid(), ttl,
                     str(self.manifest.root)),
                )  # fmt: skip
        finally:
            with self.manifest.coordinating("join", transaction=False) as conn:
                conn.execute("SELECT pg_advisory_unlock(hashtext(?))", (lock,))
        self.manifest.runner_id = runner_id
        return runner_id

    def renew(self, ttl: float) -> None:
        """Extend the lease to ``ttl`` seconds from now; ``LeaseLost`` if it was reaped."""
        with self.manifest.coordinating("renew lease", transaction=False) as conn:
            renewed = conn.execute(
                f"UPDATE runners SET expires_at = {NOW} + ? WHERE id = ?", (ttl, self.id)
            ).rowcount
        if renewed != 1:
            raise LeaseLost(
                f"{self.manifest.location}: runner {self.id} was reaped (its lease expired): "
                "its jobs went to the other runners"
            )

    def reap(self) -> Reaped:
        """Remove the runners whose lease expired and settle their jobs, in one
        transaction: a submit cut short becomes ``unknown``, a download ``succeeded``;
        their jobs and slots come free."""
        now = self.manifest.clock()
        totals = [0, 0, 0]
        with self.manifest.coordinating("reap") as conn:
            expired = conn.execute(f"DELETE FROM runners WHERE expires_at < {NOW} RETURNING id")
            dead = {row[0] for row in expired.fetchall()}
            orphaned = conn.execute(  # held by no runner: one that claimed as it was reaped
                "SELECT DISTINCT holder FROM jobs WHERE holder IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM runners r WHERE r.id = jobs.holder)"
            )
            dead |= {row[0] for row in orphaned.fetchall()}
            for runner_id in sorted(dead):
                moved = _settle(
                    conn, runner_id, now,
                    mid_submit=f"runner {runner_id} stopped renewing mid-submit; "
                    "the submit may have created a task",
                    mid_download=f"runner {runner_id} stopped renewing mid-download",
                )  # fmt: skip
                totals = [a + b for a, b in zip(totals, moved, strict=True)]
            conn.execute(
                "UPDATE slots SET holder = NULL WHERE holder IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM runners r WHERE r.id = slots.holder)"
            )
        return Reaped(tuple(sorted(dead)), *totals)

    def leave(self) -> bool:
        """Settle this runner's jobs as a run's end does (a submit cut short: ``unknown``;
        a download: ``succeeded``), release them and its slots, and end the lease.
        False if the lease had already been lost (the runner was reaped)."""
        runner_id = self.manifest.runner_id
        if runner_id is None:
            return True
        with self.manifest.coordinating("leave") as conn:
            _settle(conn, runner_id, self.manifest.clock(), mid_submit="run ended mid-submit",
                    mid_download="run ended mid-download", error=False)  # fmt: skip
            held = conn.execute("DELETE FROM runners WHERE id = ?", (runner_id,)).rowcount
        self.manifest.runner_id = None
        return held == 1

    # -- jobs -----------------------------------------------------------------------

    def claim(self, provider: str, states: Collection[JobState], limit: int) -> list[JobRecord]:
        """Hold up to ``limit`` free jobs of ``provider`` in ``states``, oldest first.
        Rows another runner is claiming at the same moment are skipped, not waited for."""
        marks = ", ".join("?" * len(states))
        sql = (
            "UPDATE jobs SET holder = ? WHERE rowid IN (SELECT rowid FROM jobs "
            f"WHERE provider = ? AND state IN ({marks}) AND holder IS NULL{self.manifest.scope} "
            f"AND {_REGISTERED} ORDER BY rowid LIMIT ? FOR UPDATE SKIP LOCKED) "
            f"RETURNING rowid, {JOB_COLUMNS}"
        )
        values = sorted(JobState(s).value for s in states)
        params = (self.id, provider, *values, self.id, limit)
        with self.manifest.coordinating("claim jobs", transaction=False) as conn:
            rows = conn.execute(sql, params).fetchall()
        return [record_from_row(row[1:]) for row in sorted(rows, key=lambda row: row[0])]

    def others_working(self, provider: str, states: Collection[JobState]) -> bool:
        """Whether another runner holds a job of ``provider`` in ``states``: if it dies,
        the job comes free, so a runner with nothing to claim waits instead of ending."""
        marks = ", ".join("?" * len(states))
        sql = (
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE provider = ? "
            f"AND state IN ({marks}) AND holder IS NOT NULL AND holder <> ?{self.manifest.scope})"
        )
        values = sorted(JobState(s).value for s in states)
        with self.manifest.coordinating("look at runners", transaction=False) as conn:
            return bool(_one(conn, sql, (provider, *values, self.id))[0])

    def progress(self) -> tuple[dict[str, dict[str, int]], int]:
        """The run's jobs by provider and state, and how many runners' leases hold: what
        a runner shows of the whole run."""
        return self.manifest.counts(), len(self.manifest.runners_at_work())

    def release_pending(self, provider: str) -> int:
        """Give up the held, not yet submitted jobs of ``provider`` (this runner submits
        no more of them); a worker still about to submit one is then refused its move."""
        with self.manifest.coordinating("release jobs", transaction=False) as conn:
            return int(
                conn.execute(
                    "UPDATE jobs SET holder = NULL WHERE holder = ? AND provider = ? "
                    "AND state = 'pending'",
                    (self.id, provider),
                ).rowcount
            )

    def take_back(self, job_id: str) -> bool:
        """Hold again a job of ours that was reaped while its submit was out, so that
        the remote id its answer brought can still be recorded (then ``hand_back``);
        allowed even to a runner that was reaped itself."""
        with self.manifest.coordinating("take a job back", transaction=False) as conn:
            return (
                conn.execute(
                    "UPDATE jobs SET holder = ? WHERE id = ? AND holder IS NULL "
                    "AND state IN ('submitting', 'unknown')",
                    (self.id, job_id),
                ).rowcount
                == 1
            )

    def hand_back(self, job_id: str) -> None:
        """Release one held job, for any runner to take further."""
        with self.manifest.coordinating("hand a job back", transaction=False) as conn:
            conn.execute("UPDATE jobs SET holder = NULL WHERE id = ? AND holder = ?",
                         (job_id, self.id))  # fmt: skip

    # -- shared limits --------------------------------------------------------------

    def ensure_slots(self, provider: str, n: int) -> None:
        """``provider`` has ``n`` task slots (the newest runner's spec wins); slots above
        ``n`` that are held go when they are given back and the next runner joins."""
        with self.manifest.coordinating("task slots") as conn:
            conn.execute(
                "INSERT INTO slots (provider, n) SELECT ?, g FROM generate_series(0, ?) g "
                "ON CONFLICT DO NOTHING",
                (provider, n - 1),
            )
            conn.execute(
                "DELETE FROM slots WHERE provider = ? AND n >= ? AND holder IS NULL", (provider, n)
            )

    def take_slot(self, provider: str) -> int | None:
        """One free task slot of ``provider``, now held by this runner; None if none is."""
        taken = self.take_slots(provider, 1)
        return taken[0] if taken else None

    def take_slots(self, provider: str, limit: int) -> list[int]:
        """Up to ``limit`` free task slots of ``provider``, now held by this runner, in
        one statement; none for a runner without a lease."""
        with self.manifest.coordinating("take task slots", transaction=False) as conn:
            rows = conn.execute(
                "UPDATE slots SET holder = ? WHERE provider = ? AND n IN (SELECT n FROM slots "
                f"WHERE provider = ? AND holder IS NULL AND {_REGISTERED} ORDER BY n LIMIT ? "
                "FOR UPDATE SKIP LOCKED) RETURNING n",
                (self.id, provider, provider, self.id, limit),
            ).fetchall()
        return sorted(int(row[0]) for row in rows)

    def sharing(self, provider: str, states: Collection[JobState]) -> int:
        """How many runners hold jobs of ``provider`` in ``states``, this one counted
        whether it does or not: those that want its task slots."""
        marks = ", ".join("?" * len(states))
        values = sorted(JobState(s).value for s in states)
        with self.manifest.coordinating("look at runners", transaction=False) as conn:
            row = _one(
                conn,
                "SELECT count(DISTINCT holder) FROM jobs WHERE holder IS NOT NULL "
                f"AND holder <> ? AND provider = ? AND state IN ({marks})",
                (self.id, provider, *values),
            )
        return int(row[0]) + 1

    def give_slot(self, provider: str, n: int) -> None:
        with self.manifest.coordinating("give a task slot back", transaction=False) as conn:
            conn.execute(
                "UPDATE slots SET holder = NULL WHERE provider = ? AND n = ? AND holder = ?",
                (provider, n, self.id),
            )

    def take_rate(self, provider: str, interval: float, burst: int) -> float:
        """Reserve the next submit of ``provider`` on the run's one schedule (GCRA):
        the seconds to wait before sending it."""
        sql = (
            f"WITH c AS (SELECT {NOW} AS now) "
            "INSERT INTO rates AS r (provider, tat) SELECT ?, c.now + ? FROM c "
            "ON CONFLICT (provider) DO UPDATE SET tat = greatest(r.tat, (SELECT now FROM c)) + ? "
            "RETURNING r.tat, (SELECT now FROM c)"
        )
        with self.manifest.coordinating("submit rate", transaction=False) as conn:
            tat, now = _one(conn, sql, (provider, interval, interval))
        return max(0.0, float(tat) - burst * interval - float(now))

    def reserve(self, items: Sequence[BudgetItem]) -> tuple[str, Decimal] | None:
        """Add each item's cost to its counter, all or none: None, or the first counter
        whose cap it would pass, with what that counter holds."""
        keys = sorted({key for key, _, _ in items})
        with self.manifest.coordinating("reserve budget") as conn:
            conn.execute(
                "INSERT INTO budgets SELECT unnest(?::text[]), 0 ON CONFLICT DO NOTHING", (keys,)
            )
            spent: dict[str, Decimal] = dict(
                conn.execute(
                    "SELECT key, spent FROM budgets WHERE key = ANY(?) ORDER BY key FOR UPDATE",
                    (keys,),
                ).fetchall()
            )
            for key, cost, cap in items:
                if cap is not None and spent[key] + cost > cap:
                    return key, spent[key]
            for key, cost, _ in items:
                conn.execute("UPDATE budgets SET spent = spent + ? WHERE key = ?", (cost, key))
        return None

    def release(self, items: Sequence[tuple[str, Decimal]]) -> None:
        """Take back a reservation (its submit provably created nothing)."""
        with self.manifest.coordinating("release budget") as conn:
            for key, cost in sorted(items):
                conn.execute("UPDATE budgets SET spent = spent - ? WHERE key = ?", (cost, key))

    def budgets(self) -> dict[str, Decimal]:
        with self.manifest.coordinating("read budgets", transaction=False) as conn:
            return {str(k): Decimal(v) for k, v in conn.execute("SELECT key, spent FROM budgets")}


def _one(conn: PgConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The one row a statement returns."""
    row = conn.execute(sql, params).fetchone()
    if row is None:
        raise ManifestError(f"no row from {sql!r}")
    return row


def _settle(
    conn: PgConnection,
    runner_id: str,
    now: float,
    *,
    mid_submit: str,
    mid_download: str,
    error: bool = True,
) -> tuple[int, int, int]:
    """Inside the caller's transaction: ``runner_id``'s jobs mid-submit become
    ``unknown`` (``error``: with ``mid_submit`` as their reason), mid-download
    ``succeeded``; all its jobs and slots are freed. Returns the three counts."""
    conn.execute(
        "SELECT rowid FROM jobs WHERE holder = ? ORDER BY rowid FOR UPDATE", (runner_id,)
    )  # locked in one order, as every bulk move does: no deadlock with another
    counts = []
    for source, to, note in (
        (S.SUBMITTING, S.UNKNOWN, mid_submit),
        (S.DOWNLOADING, S.SUCCEEDED, mid_download),
    ):
        where = "holder = :holder AND state = :source"
        params: dict[str, Any] = {
            "holder": runner_id, "source": source.value, "to": to.value, "now": now,
            "remote_id": None, "client_ref": None, "failure": None,
            "error": note if error and to is S.UNKNOWN else None,
        }  # fmt: skip
        conn.execute(
            "INSERT INTO events (job_id, at, kind, from_state, to_state, detail) "
            f"SELECT id, :now, 'transition', state, :to, :note FROM jobs WHERE {where} "
            "ORDER BY rowid",
            {**params, "note": note},
        )
        counts.append(conn.execute(update_sql(to, where), params).rowcount)
    freed = conn.execute("UPDATE jobs SET holder = NULL WHERE holder = ?", (runner_id,)).rowcount
    conn.execute("UPDATE slots SET holder = NULL WHERE holder = ?", (runner_id,))
    return counts[0], counts[1], freed
