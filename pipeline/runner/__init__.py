"""Room: a run: the scheduler that joins manifest, lanes, followers and downloads; the
session that holds every lane open; the progress display (tqdm lives only here)."""

from pipeline.runner.progress import make_progress
from pipeline.runner.scheduler import BUDGET_STOPPED, RunOptions, RunSummary, Scheduler
from pipeline.runner.session import Lane, Session, completion_mode, emulators, open_session

__all__ = [
    "BUDGET_STOPPED",
    "Lane",
    "RunOptions",
    "RunSummary",
    "Scheduler",
    "Session",
    "completion_mode",
    "emulators",
    "make_progress",
    "open_session",
]
