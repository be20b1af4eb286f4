"""Where each tile of a contact sheet goes: two dimensions of the jobs (rows × columns),
learnt in one pass over the manifest before any HTML is written, so that the tiles can
then be streamed in manifest order, each placed on the grid by its own coordinates."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UsageError
from pipeline.models import JobRecord

__all__ = ["MISSING", "Axis", "Layout", "dimension_value", "label_of"]

MISSING = "—"
JOB_FIELDS = ("prompt", "provider", "model", "seed", "replicate", "state")
MAX_ACROSS = 4  # tiles side by side in one cell, at most


def dimension_value(record: JobRecord, name: str) -> Any:
    """A job's value along dimension ``name`` (None when it has none): ``provider``,
    ``model``, ``replicate``, ``state``, ``meta.<key>``, or any parameter (``prompt``,
    ``seed``, ``aspect_ratio``…)."""
    job = record.job
    if name == "provider":
        return job.provider
    if name == "model":
        return job.model
    if name == "replicate":
        return job.replicate
    if name == "state":
        return record.state.value
    if name.startswith("meta."):
        return job.meta.get(name.removeprefix("meta."))
    return job.params.get(name)


def label_of(value: Any) -> str:
    """How a dimension's value reads on the page."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


Key = tuple[type, Any]


def key_of(value: Any) -> Key:
    """A value's identity along a dimension (``1`` and ``"1"`` stay apart)."""
    if value is None or isinstance(value, str | int | float):
        return type(value), value
    return list, json.dumps(value, sort_keys=True, default=str)


class Axis:
    """The values of one dimension, in the order first met (the spec's order)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.index: dict[Key, int] = {}
        self.labels: list[str] = []
        self.present = False  # some job has a value along it

    def place(self, value: Any) -> int:
        key = key_of(value)
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = len(self.labels)
            self.labels.append(label_of(value))
        self.present = self.present or value is not None
        return found

    def find(self, value: Any) -> int | None:
        return self.index.get(key_of(value))


@dataclass
class Variation:
    """Whether a field takes more than one value within one cell of the grid (its value
    in each cell is kept only until it does)."""

    first: dict[tuple[int, int], Key] = field(default_factory=dict)
    varies: bool = False

    def note(self, cell: tuple[int, int], key: Key) -> None:
        if self.varies:
            return
        if self.first.setdefault(cell, key) != key:
            self.varies = True
            self.first = {}


@dataclass
class Layout:
    """The grid: a band of grid rows per row value and of grid columns per column value,
    each as wide and tall as its fullest cell needs."""

    rows: Axis
    cols: Axis
    cells: Counter[tuple[int, int]] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    providers: Counter[str] = field(default_factory=Counter)
    fields: dict[str, Variation] = field(default_factory=dict)
    total: int = 0
    across: list[int] = field(default_factory=list)
    col_start: list[int] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    row_start: list[int] = field(default_factory=list)

    @classmethod
    def scan(cls, records: Iterable[JobRecord], rows: str, cols: str) -> Layout:
        layout = cls(Axis(rows), Axis(cols))
        for record in records:
            layout.add(record)
        layout.check()
        layout.measure()
        return layout

    def add(self, record: JobRecord) -> None:
        r = self.rows.place(dimension_value(record, self.rows.name))
        c = self.cols.place(dimension_value(record, self.cols.name))
        self.cells[r, c] += 1
        self.states[record.state.value] += 1
        self.providers[record.job.provider] += 1
        self.total += 1
        job = record.job
        seen = {"provider": job.provider, "model": job.model, "replicate": job.replicate}
        seen.update(job.params)
        seen.update({f"meta.{k}": v for k, v in job.meta.items()})
        for name, value in seen.items():
            self.fields.setdefault(name, Variation()).note((r, c), key_of(value))

    def check(self) -> None:
        """A dimension no job has is a mistake (a typo, most likely): say which exist."""
        for axis in (self.rows, self.cols):
            if self.total and not axis.present:
                names = [*JOB_FIELDS, *(n for n in self.fields if n not in JOB_FIELDS)]
                raise UsageError(
                    f"no job has {axis.name!r} to lay the sheet out by; these do: "
                    + ", ".join(names)
                )

    def measure(self) -> None:
        """Cells hold their tiles in a near-square block (at most ``MAX_ACROSS`` wide)."""
        fullest_col = [0] * len(self.cols.labels)
        for (_, c), n in self.cells.items():
            fullest_col[c] = max(fullest_col[c], n)
        self.across = [min(MAX_ACROSS, max(1, math.ceil(math.sqrt(n)))) for n in fullest_col]
        self.down = [1] * len(self.rows.labels)
        for (r, c), n in self.cells.items():
            self.down[r] = max(self.down[r], math.ceil(n / self.across[c]))
        self.col_start = starts(self.across)
        self.row_start = starts(self.down)

    def captioned(self) -> list[str]:
        """The fields that tell a cell's tiles apart: those that vary within a cell, less
        the prompt (too long for a caption; it is in the tooltip)."""
        return [n for n, v in self.fields.items() if v.varies and n != "prompt"]

    @property
    def width(self) -> int:
        """Grid columns of tiles (the row headers' column aside)."""
        return sum(self.across)


def starts(sizes: list[int]) -> list[int]:
    """Grid lines where each band begins; line 1 holds the headers."""
    found, line = [], 2
    for size in sizes:
        found.append(line)
        line += size
    return found


class Placer:
    """Hands out each cell's next free slot while the tiles stream by; a job that was not
    there when the layout was learnt (a run writing meanwhile) gets no slot."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.used: Counter[tuple[int, int]] = Counter()
        self.dropped = 0

    def slot(self, record: JobRecord) -> tuple[int, int] | None:
        layout = self.layout
        r = layout.rows.find(dimension_value(record, layout.rows.name))
        c = layout.cols.find(dimension_value(record, layout.cols.name))
        if r is None or c is None or self.used[r, c] >= layout.cells[r, c]:
            self.dropped += 1
            return None
        k = self.used[r, c]
        self.used[r, c] += 1
        across = layout.across[c]
        return layout.row_start[r] + k // across, layout.col_start[c] + k % across
