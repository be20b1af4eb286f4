"""PollFollower spacing, with a fake provider, a virtual clock and no real waiting."""

from __future__ import annotations

import pytest

from pipeline.completion import FollowContext, make_follower
from pipeline.completion.poll import PollFollower, ProgressPace
from pipeline.errors import FinalError, TransientError
from pipeline.models import PollAdvice, ProviderSettings, RemoteStatus, RemoteTask, RunSettings
from pipeline.providers.apixo import ApixoProvider
from pipeline.providers.pixellabs import PixelLabsProvider


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


class LinearTask:
    """Queued for ``queued`` seconds, then progress rises linearly until ``total``; the
    submit answer gave no estimate."""

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

    def first_check_in(self, remote_id: str) -> float | None:
        return None


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


class EstimatedTask(LinearTask):
    """A LinearTask whose submit answer estimated it would take ``estimate`` seconds."""

    def __init__(self, time: VirtualTime, *, queued: float, total: float, estimate: float):
        super().__init__(time, queued=queued, total=total)
        self.estimate: float | None = estimate

    def first_check_in(self, remote_id: str) -> float | None:
        estimate, self.estimate = self.estimate, None
        return estimate


@pytest.mark.anyio
async def test_an_estimate_from_the_submit_aims_the_first_poll() -> None:
    time = VirtualTime()
    task = EstimatedTask(time, queued=6, total=30, estimate=30)
    await follower(task, time).follow("t", on_update=lambda _: None)
    assert task.polls == [30]  # one poll, right at the finish


@pytest.mark.anyio
async def test_a_short_estimate_restarts_the_spacing_near_the_finish() -> None:
    time = VirtualTime()
    task = EstimatedTask(time, queued=6, total=30, estimate=24)
    await follower(task, time).follow("t", on_update=lambda _: None)
    assert task.polls[:2] == [24, 25]  # then poll_initial, not 24 × 1.5
    assert len(task.polls) <= 4 and task.polls[-1] - 30 < 1.5, task.polls


@pytest.mark.anyio
async def test_an_estimate_past_poll_max_is_trusted_within_reason() -> None:
    time = VirtualTime()
    task = EstimatedTask(time, queued=0, total=45, estimate=45)
    await follower(task, time, poll_max=30).follow("t", on_update=lambda _: None)
    assert task.polls == [45]  # the API said 45 s: a check at 30 s would be wasted

    class NoProgress(EstimatedTask):
        async def status(self, remote_id: str) -> RemoteTask:
            task = await super().status(remote_id)
            return RemoteTask(remote_id, task.status)

    start = time.now
    wild = NoProgress(time, queued=0, total=start + 130, estimate=3600)
    await follower(wild, time, poll_max=30).follow("t", on_update=lambda _: None)
    polls = [poll - start for poll in wild.polls]
    assert polls[:3] == [120, 121, 122.5]  # 4 × poll_max at most, then spacing from 1 s


@pytest.mark.anyio
async def test_an_explicit_first_delay_beats_the_estimate() -> None:
    time = VirtualTime()
    task = EstimatedTask(time, queued=0, total=2, estimate=30)
    await follower(task, time).follow("t", on_update=lambda _: None, first_delay=0.0)
    assert task.polls[0] == 0.0 and task.polls[-1] < 5


def test_api_advice_fills_only_the_poll_settings_the_spec_left_out() -> None:
    advice = PollAdvice(initial=3.0, maximum=20.0)
    unset = RunSettings(poll_defaults=frozenset({"initial", "max", "factor"}))
    advised = unset.advised(advice)
    assert (advised.poll_initial, advised.poll_max, advised.poll_factor) == (3.0, 20.0, 1.5)
    explicit = RunSettings(poll_initial=0.5, poll_defaults=frozenset({"max", "factor"}))
    advised = explicit.advised(advice)
    assert (advised.poll_initial, advised.poll_max) == (0.5, 20.0)
    assert RunSettings(poll_initial=0.5).advised(advice) == RunSettings(poll_initial=0.5)
    slow = RunSettings(poll_initial=60.0, poll_max=60.0, poll_defaults=frozenset({"max"}))
    assert slow.advised(advice).poll_max == 60.0  # never below the first wait


def test_each_lane_follows_its_apis_advice() -> None:
    run = RunSettings(poll_defaults=frozenset({"initial", "max", "factor"}))
    settings = ProviderSettings(name="a", type="apixo")
    context = FollowContext(ApixoProvider(settings), settings, run, None)  # type: ignore[arg-type]
    follower_ = make_follower("poll", context)
    assert isinstance(follower_, PollFollower)
    assert follower_._run.poll_initial == 3.0  # APIXO: poll every 3-5 s
    assert context.run is run  # the run's own settings are untouched
    plain = FollowContext(PixelLabsProvider(settings), settings, run, None)  # type: ignore[arg-type]
    assert make_follower("poll", plain)._run.poll_initial == 1.0  # type: ignore[attr-defined]
