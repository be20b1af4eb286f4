"""Remote tasks whose state is computed from the clock on every read.

No task has a background loop: a task is a timeline fixed at submit (when it starts
running, when it ends, whether it fails), and its phase is read off that timeline.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.emulators.faults import Dice
from pipeline.emulators.knobs import Knobs

__all__ = ["Phase", "Task", "TaskStore", "Timeline", "extra_of", "overlap", "unique_id"]

_Extra = TypeVar("_Extra")

QUEUED_SHARE = 0.2
"""The share of a task's duration spent queued before it starts running."""


class Phase(enum.Enum):
    """Common task states; each emulator maps them to its API's words."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Timeline:
    """When a task starts and ends, and whether it ends failed."""

    created_at: float
    started_at: float
    finished_at: float
    run_seconds: float
    """How long running would take to succeed; progress is measured against it."""
    fails: bool

    @classmethod
    def draw(cls, knobs: Knobs, dice: Dice, now: float) -> Timeline:
        """A fresh timeline following the current knobs."""
        duration = knobs.task_seconds
        if duration > 0 and knobs.task_jitter > 0:
            duration *= 1.0 + dice.uniform(-knobs.task_jitter, knobs.task_jitter)
        queued = duration * QUEUED_SHARE
        run = duration - queued
        fails = dice.roll(knobs.failure_rate)
        ran = run * dice.uniform(0.1, 0.9) if fails else run
        return cls(now, now + queued, now + queued + ran, run, fails)


@dataclass(slots=True)
class Task:
    """One remote task. ``params`` and ``extra`` belong to the emulator that made it."""

    id: str
    owner: str
    """Fingerprint of the API key that created it; other keys cannot see it."""
    timeline: Timeline
    params: dict[str, Any]
    media: str
    """Media-store token of the task's output."""
    failure: tuple[str, str] | None = None
    """(code, message) in the API's words, when the timeline fails."""
    extra: Any = None

    def phase(self, now: float) -> Phase:
        line = self.timeline
        if now >= line.finished_at:
            return Phase.FAILED if line.fails else Phase.SUCCEEDED
        if now >= line.started_at:
            return Phase.RUNNING
        return Phase.QUEUED

    def progress(self, now: float) -> float:
        """0.0 to 1.0; below 1.0 until success, frozen where a failure struck."""
        line = self.timeline
        if not line.fails and now >= line.finished_at:
            return 1.0
        if now <= line.started_at or line.run_seconds <= 0:
            return 0.0
        ran = min(now, line.finished_at) - line.started_at
        return min(0.99, ran / line.run_seconds)


def extra_of(task: Task, kind: type[_Extra]) -> _Extra:
    """``task.extra``, checked to be the ``kind`` of record its emulator keeps there."""
    extra = task.extra
    assert isinstance(extra, kind)
    return extra


def unique_id(make_id: Callable[[], str], taken: Container[str]) -> str:
    """A fresh ``make_id()`` that is not in ``taken`` (drawn again on a collision)."""
    while True:
        candidate = make_id()
        if candidate not in taken:
            return candidate


class TaskStore:
    """Tasks by id."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def add(self, task: Task) -> None:
        self._tasks[task.id] = task

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def discard(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def clear(self) -> None:
        self._tasks.clear()

    def overlap(self, now: float, ended_at: Callable[[Task], float]) -> tuple[int, int]:
        """(tasks in progress at ``now``, the most ever in progress at once): each task
        counts from its creation until ``ended_at(task)``."""
        return overlap([(task.timeline.created_at, ended_at(task)) for task in self], now)


def overlap(spans: Iterable[tuple[float, float]], now: float) -> tuple[int, int]:
    """(spans holding ``now``, the most spans holding one moment); a span is half-open,
    ``[start, end)``, so one ending as another starts never overlaps it."""
    events: list[tuple[float, int]] = []
    current = 0
    for start, end in spans:
        if end <= start:
            continue
        events += ((start, 1), (end, -1))
        current += start <= now < end
    events.sort()  # at one moment, ends (-1) before starts (+1)
    peak = depth = 0
    for _, step in events:
        depth += step
        peak = max(peak, depth)
    return current, peak
