"""The SQL of the manifest's writes, and the legality check of state changes.

Private to ``manifest``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

from .errors import ManifestError
from .manifest_rows import OUTPUT_COLUMNS
from .models import TERMINAL_STATES, TRANSITIONS, JobState

__all__ = [
    "INSERT_EVENT",
    "INSERT_JOB",
    "UPSERT_OUTPUT",
    "guarded_event_sql",
    "join_notes",
    "legal_sources",
    "state_set",
    "update_sql",
]

INSERT_JOB = (  # a known job keeps its row; only its generation (see Manifest) moves on
    "INSERT INTO jobs (id, provider, model, params, replicate, prompt_slug, "
    "state, created_at, updated_at, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET generation = excluded.generation "
    "WHERE generation != excluded.generation"
)
INSERT_EVENT = (
    "INSERT INTO events (job_id, at, kind, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?, ?)"
)
UPSERT_OUTPUT = (
    f"INSERT INTO outputs ({OUTPUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (job_id, idx) DO UPDATE SET path = excluded.path, size = excluded.size, "
    "sha256 = excluded.sha256, url = excluded.url, content_type = excluded.content_type"
)


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

    Named parameters: ``to``, ``now``, ``remote_id``, ``client_ref``, ``error`` and
    whatever ``where`` names.
    """
    sets = ["state = :to", "updated_at = :now"]
    if to is JobState.SUBMITTING:
        sets.append("attempts = attempts + 1")
    if to is JobState.SUBMITTED:
        sets.append("submitted_at = :now")
    sets.append("finished_at = :now" if to in TERMINAL_STATES else "finished_at = NULL")
    if to is JobState.PENDING:  # a fresh start: forget the previous attempt's traces
        sets += ["remote_id = :remote_id", "client_ref = :client_ref", "error = :error"]
        sets.append("submitted_at = NULL")
    else:
        sets += [f"{c} = COALESCE(:{c}, {c})" for c in ("remote_id", "client_ref", "error")]
    return f"UPDATE jobs SET {', '.join(sets)} WHERE {where}"


def join_notes(first: str | None, second: str) -> str:
    return second if not first else f"{first}; {second}"
