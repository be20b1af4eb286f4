"""PollFollower spacing, with a fake provider, a virtual clock and no real waiting."""

from __future__ import annotations

import pytest

from pipeline.errors import FinalError, TransientError
from pipeline.models import RemoteStatus, RemoteTask, RunSettings
from pipeline.notify import PollFollower, ProgressPace


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


class LinearTask:
    """Queued for ``queued`` seconds, then progress rises linearly until ``total``."""

    def __init__(self, time: VirtualTime, *, queued: float, total: float) -> None:
        self.time, self.queued, self.total = time, queued, total
        self.polls: list[float] = []
        self.failures: list[Exception] = []

    async def status(self, remote_id: str) -> RemoteTask:
        self.polls.append(self.time.now)
        if self.failures:
            raise self.failures.pop(0)
        t = self.time.now
        if t >= self.total:
            return RemoteTask(remote_id, RemoteStatus.SUCCEEDED, progress=100.0)
        if t < self.queued:
            return RemoteTask(remote_id, RemoteStatus.QUEUED, progress=0.0)
        share = (t - self.queued) / (self.total - self.queued)
        return RemoteTask(remote_id, RemoteStatus.RUNNING, progress=100 * share)


def follower(provider: LinearTask, time: VirtualTime, **run: float) -> PollFollower:
    settings = RunSettings(**{"poll_initial": 1.0, "poll_max": 30.0, "poll_factor": 1.5, **run})
    return PollFollower(provider, settings, sleep=time.sleep, clock=time.clock)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_progress_aims_the_next_poll_at_the_finish() -> None:
    time = VirtualTime()
    task = LinearTask(time, queued=6, total=30)
    updates: list[RemoteStatus] = []
    final = await follower(task, time).follow("t", on_update=lambda t: updates.append(t.status))
    assert final.status is RemoteStatus.SUCCEEDED
    assert len(task.polls) <= 6, task.polls  # issue 4: <= 6 polls for a 30-second task
    assert task.polls[-1] - 30 < 2.5, "finish seen soon after it happened"
    assert RemoteStatus.RUNNING in updates


@pytest.mark.anyio
async def test_without_progress_spacing_grows_to_the_maximum() -> None:
    time = VirtualTime()

    class NoProgress(LinearTask):
        async def status(self, remote_id: str) -> RemoteTask:
            task = await super().status(remote_id)
            return RemoteTask(remote_id, task.status)

    task = NoProgress(time, queued=0, total=200)
    await follower(task, time, poll_max=20).follow("t", on_update=lambda _: None)
    gaps = [b - a for a, b in zip(task.polls, task.polls[1:], strict=False)]
    assert gaps == sorted(gaps) and max(gaps) == 20


@pytest.mark.anyio
async def test_transient_errors_are_retried_and_final_ones_raised() -> None:
    time = VirtualTime()
    task = LinearTask(time, queued=0, total=3)
    task.failures = [TransientError("blip", status=503)] * 2
    final = await follower(task, time).follow("t", on_update=lambda _: None)
    assert final.status is RemoteStatus.SUCCEEDED

    gone = LinearTask(time, queued=0, total=3)
    gone.failures = [FinalError("no such task", status=404)]
    with pytest.raises(FinalError):
        await follower(gone, time).follow("t", on_update=lambda _: None)


def test_progress_pace_needs_two_rising_points() -> None:
    pace = ProgressPace()
    assert pace.observe(1.0, 10.0) is None
    assert pace.observe(2.0, 10.0) is None  # no rise
    assert pace.observe(3.0, 30.0) == pytest.approx(3.5)  # 20 %/s, 70 % left
    assert pace.observe(4.0, None) is None
