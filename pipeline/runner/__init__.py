"""Room: a run: the scheduler that joins manifest, lanes, followers and downloads; the
session that holds every lane open; the progress display (tqdm lives only here)."""

from pipeline.runner.cancel import Cancelled, cancel_jobs
from pipeline.runner.progress import ProgressOptions, make_progress
from pipeline.runner.scheduler import BUDGET_STOPPED, RunOptions, RunSummary, Scheduler
from pipeline.runner.session import (
    HintReader,
    HintRelay,
    Lane,
    Session,
    completion_mode,
    emulators,
    open_adapters,
    open_session,
)

__all__ = [
    "BUDGET_STOPPED",
    "Cancelled",
    "HintReader",
    "HintRelay",
    "Lane",
    "ProgressOptions",
    "RunOptions",
    "RunSummary",
    "Scheduler",
    "Session",
    "cancel_jobs",
    "completion_mode",
    "emulators",
    "make_progress",
    "open_adapters",
    "open_session",
]
