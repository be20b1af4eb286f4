"""A manifest → its contact sheet, written atomically: the layout is learnt in a first
pass over the jobs, then the page streams them again, outputs included."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import IO

from pipeline.fsio import write_atomic_text
from pipeline.manifest import Manifest
from pipeline.models import JobState
from pipeline.review.layout import Layout
from pipeline.review.page import Links, write_page

__all__ = ["DEFAULT_NAME", "write_sheet"]

DEFAULT_NAME = "report.html"


def write_sheet(
    manifest: Manifest,
    dest: Path | None = None,
    *,
    rows: str = "prompt",
    cols: str = "provider",
    states: Collection[JobState] | None = None,
) -> Path:
    """Write the contact sheet of ``manifest``'s jobs (those in ``states``; default all)
    to ``dest`` (default ``<root>/report.html``); return its path."""
    dest = manifest.root / DEFAULT_NAME if dest is None else dest
    chosen = list(JobState) if states is None else sorted(set(states), key=list(JobState).index)
    layout = Layout.scan(manifest.iter_records(states=states), rows, cols)
    title = manifest.meta().get("spec_name") or manifest.root.name

    def write(out: IO[str]) -> None:
        records = manifest.iter_records(states=states, with_outputs=True)
        write_page(out, records, layout, Links(manifest.root, dest), title=title, states=chosen)

    return write_atomic_text(dest, write)
