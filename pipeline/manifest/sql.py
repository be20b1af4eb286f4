"""The SQL of the manifest's writes, and the legality check of state changes.

Private to ``manifest``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from pipeline.errors import ManifestError
from pipeline.manifest.rows import OUTPUT_COLUMNS
from pipeline.models import TERMINAL_STATES, TRANSITIONS, JobState

__all__ = [
    "INSERT_EVENT",
    "INSERT_JOB",
    "RETRYABLE",
    "RETRY_ASK",
    "RETRY_FETCH",
    "RETRY_SUBMIT",
    "UPSERT_OUTPUT",
    "guarded_event_sql",
    "join_notes",
    "legal_sources",
    "opt_state",
    "reset_sql",
    "set_clause",
    "set_items",
    "state_set",
    "transition_steps",
    "update_sql",
]

INSERT_JOB = (  # a known job keeps its row; only its generation (see Manifest) moves on,
    # with the metadata of the expansion's first listing of it
    "INSERT INTO jobs (id, provider, model, params, replicate, prompt_slug, "
    "state, created_at, updated_at, generation, meta) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, meta = excluded.meta "
    "WHERE jobs.generation != excluded.generation"
)
INSERT_EVENT = (
    "INSERT INTO events (job_id, at, kind, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_OUTPUT = f"INSERT INTO outputs ({OUTPUT_COLUMNS})"
OUTPUT_CONFLICT = (
    "ON CONFLICT (job_id, idx) DO UPDATE SET path = excluded.path, size = excluded.size, "
    "sha256 = excluded.sha256, url = excluded.url, content_type = excluded.content_type, "
    "root = excluded.root"
)
UPSERT_OUTPUT = f"{INSERT_OUTPUT} VALUES (?, ?, ?, ?, ?, ?, ?, ?) {OUTPUT_CONFLICT}"

RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})
"""The states --retry-failed takes up; which way each job goes is one of these:"""
RETRY_SUBMIT = "remote_id IS NULL"
RETRY_FETCH = "(remote_id IS NOT NULL AND failure = 'download')"
RETRY_ASK = "(remote_id IS NOT NULL AND (failure IS NULL OR failure != 'download'))"


def state_set(states: JobState | Collection[JobState]) -> frozenset[JobState]:
    """One state or many, as a set."""
    if isinstance(states, str):  # a JobState is a str, hence also a Collection
        return frozenset({JobState(states)})
    return frozenset(JobState(s) for s in states)


@functools.lru_cache(maxsize=256)
def legal_sources(sources: frozenset[JobState], to: JobState) -> frozenset[str]:
    """``sources`` as state values, once every ``source → to`` is checked legal."""
    illegal = sorted(s.value for s in sources if to not in TRANSITIONS[s])
    if illegal:
        raise ManifestError(f"illegal transition {'/'.join(illegal)} → {to.value}")
    return frozenset(s.value for s in sources)


@functools.lru_cache(maxsize=16)
def guarded_event_sql(sources: int) -> str:
    """Log a transition of one job, only if it is in one of ``sources`` states.

    Positional parameters: at, to_state, detail, job id, then the ``sources`` states.
    The from_state is read from the row in the same statement.
    """
    marks = ", ".join("?" * sources)
    return (
        "INSERT INTO events (job_id, at, kind, from_state, to_state, detail) "
        f"SELECT id, ?, 'transition', state, ?, ? FROM jobs WHERE id = ? AND state IN ({marks})"
    )


@functools.lru_cache(maxsize=64)
def update_sql(to: JobState, where: str) -> str:
    """The UPDATE doing a transition's bookkeeping for entering ``to``.

    Named parameters: ``to``, ``now``, ``remote_id``, ``client_ref``, ``error``,
    ``failure`` and whatever ``where`` names.
    """
    return f"UPDATE jobs SET {set_clause(to)} WHERE {where}"


@functools.lru_cache(maxsize=64)
def set_clause(to: JobState) -> str:
    """The SET list of ``update_sql`` (its named parameters but ``where``'s)."""
    return ", ".join(f"{column} = {value}" for column, value in set_items(to).items())


@functools.lru_cache(maxsize=64)
def set_items(to: JobState) -> dict[str, str]:
    """What entering ``to`` sets: each column's new value, as SQL."""
    sets = {"state": ":to", "updated_at": ":now"}
    if to is JobState.SUBMITTING:
        sets["attempts"] = "attempts + 1"
    if to is JobState.SUBMITTED:
        sets["submitted_at"] = ":now"
    sets["finished_at"] = ":now" if to in TERMINAL_STATES else "NULL"
    failed = to in (JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT)
    sets["failure"] = ":failure" if failed else "NULL"
    if to is JobState.PENDING:  # a fresh start: forget the previous attempt's traces
        sets |= {"remote_id": ":remote_id", "client_ref": ":client_ref", "error": ":error"}
        sets["submitted_at"] = "NULL"
    elif to is JobState.DONE:  # an earlier trouble is no reason any more
        sets |= {"remote_id": "COALESCE(:remote_id, remote_id)", "error": "NULL"}
    else:
        sets |= {c: f"COALESCE(:{c}, {c})" for c in ("remote_id", "client_ref", "error")}
    return sets


def join_notes(first: str | None, second: str) -> str:
    return second if not first else f"{first}; {second}"


def reset_sql(
    from_states: Collection[JobState],
    to: JobState,
    *,
    provider: str | None,
    only: str | None,
    scope: str = "",
) -> tuple[str, str, str, dict[str, Any]]:
    """A SELECT locking the rows to move (where several processes write), the event
    INSERT and the UPDATE moving every job in ``from_states`` (of
    ``provider``; matching the fixed condition ``only``) to ``to``, and their parameters
    but ``now`` and ``note`` (the event detail). ``scope`` limits them to the spec's
    jobs (``Manifest.limit_to_spec``)."""
    sources = legal_sources(state_set(from_states), JobState(to))
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(sorted(sources))}
    where = f"state IN ({', '.join(':' + name for name in params)}){scope}"
    if provider is not None:
        where += " AND provider = :provider"
        params["provider"] = provider
    if only is not None:
        where += f" AND {only}"
    params |= {"to": to.value, "remote_id": None, "client_ref": None, "error": None,
               "failure": None}  # fmt: skip
    was = "'; was remote_id ' || remote_id" if to is JobState.PENDING else "NULL"
    events = (
        "INSERT INTO events (job_id, at, kind, from_state, to_state, detail) "
        f"SELECT id, :now, 'transition', state, :to, :note || COALESCE({was}, '') "
        f"FROM jobs WHERE {where} ORDER BY rowid"
    )
    lock = f"SELECT id FROM jobs WHERE {where} FOR UPDATE"
    return lock, events, update_sql(to, where), params


def transition_steps(
    expect: JobState | Collection[JobState], via: JobState | None, to: JobState
) -> tuple[tuple[frozenset[str], JobState], ...]:
    """The checked ``(sources, to)`` steps of a transition, with or without ``via``."""
    if via is None:
        return ((legal_sources(state_set(expect), to), to),)
    via = JobState(via)
    return (
        (legal_sources(state_set(expect), via), via),
        (legal_sources(frozenset({via}), to), to),
    )


def opt_state(value: str | None) -> JobState | None:
    return None if value is None else JobState(value)
