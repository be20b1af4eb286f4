"""limits: rate, pauses, server hints, backoff and retries, all on virtual time
(``tests/virtual_time.py``: ``drive`` jumps the clock whenever every task is blocked, so
nothing here really waits)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from anyio.lowlevel import checkpoint

from pipeline import retry
from pipeline.limits import ProviderLimiter, TokenBucket
from pipeline.models import Rate

from .virtual_time import EPOCH, VirtualTime


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def real_delays() -> Iterator[None]:
    retry.set_testing(False)
    yield
    retry.set_testing(True)


def bucket(vt: VirtualTime, rate: Rate | None, **kwargs: int) -> TokenBucket:
    return TokenBucket(rate, clock=vt.clock, sleep=vt.sleep, wall=vt.wall, **kwargs)


async def acquire_times(vt: VirtualTime, tb: TokenBucket, count: int) -> list[tuple[int, float]]:
    """Start ``count`` acquirers in order; return (who, when) in the order they got through."""
    got: list[tuple[int, float]] = []

    async def one(who: int) -> None:
        await tb.acquire()
        got.append((who, vt.now))

    async with anyio.create_task_group() as group:
        for who in range(count):
            group.start_soon(one, who)
            await checkpoint()
    return got


# --- TokenBucket -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_rate_is_respected_in_fifo_order(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(10, 1.0), burst=1)
    got = await vt.drive(lambda: acquire_times(vt, tb, 20))
    assert [who for who, _ in got] == list(range(20))
    assert [when for _, when in got] == pytest.approx([i * 0.1 for i in range(20)])


@pytest.mark.anyio
async def test_burst_then_steady_rate(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(10, 1.0), burst=5)
    got = await vt.drive(lambda: acquire_times(vt, tb, 8))
    assert [when for _, when in got] == pytest.approx([0, 0, 0, 0, 0, 0.1, 0.2, 0.3])


@pytest.mark.anyio
async def test_default_burst_is_one_second_of_requests(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(60, 60.0))  # 60/min: one per second, not 60 at once
    got = await vt.drive(lambda: acquire_times(vt, tb, 3))
    assert [when for _, when in got] == pytest.approx([0, 1, 2])


@pytest.mark.anyio
async def test_no_rate_means_no_waiting(vt: VirtualTime) -> None:
    tb = bucket(vt, None)
    got = await vt.drive(lambda: acquire_times(vt, tb, 50))
    assert {when for _, when in got} == {0.0}


@pytest.mark.anyio
async def test_pause_for_delays_every_acquirer_including_waiting_ones(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(1, 1.0))

    async def scenario() -> list[tuple[int, float]]:
        async with anyio.create_task_group() as group:
            group.start_soon(refuse_at, 2.5)
            got = await acquire_times(vt, tb, 6)
        return got

    async def refuse_at(moment: float) -> None:
        await vt.sleep(moment)
        tb.pause_for(10)  # a 429 with Retry-After: 10

    got = await vt.drive(scenario)
    # 0, 1, 2 went out before the 429; the rest wait it out, then resume at the steady rate
    assert [when for _, when in got] == pytest.approx([0, 1, 2, 12.5, 13.5, 14.5])
    assert [who for who, _ in got] == list(range(6))


@pytest.mark.anyio
async def test_pause_until_never_shortens_a_pause(vt: VirtualTime) -> None:
    tb = bucket(vt, None)
    tb.pause_until(20)
    tb.pause_until(5)
    got = await vt.drive(lambda: acquire_times(vt, tb, 1))
    assert got == [(0, 20.0)]


@pytest.mark.anyio
async def test_low_remaining_spreads_budget_before_refusal(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(100, 1.0), burst=100)
    tb.observe_headers(remaining=4, reset_at_epoch=EPOCH + 8, limit=100)
    got = await vt.drive(lambda: acquire_times(vt, tb, 5))
    assert [when for _, when in got] == pytest.approx([0, 2, 4, 6, 8])


@pytest.mark.anyio
async def test_plenty_remaining_does_not_slow_down(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(100, 1.0), burst=100)
    tb.observe_headers(remaining=90, reset_at_epoch=EPOCH + 60, limit=100)
    got = await vt.drive(lambda: acquire_times(vt, tb, 10))
    assert {when for _, when in got} == {0.0}


@pytest.mark.anyio
async def test_hint_expires_at_reset(vt: VirtualTime) -> None:
    tb = bucket(vt, Rate(10, 1.0), burst=1)
    tb.observe_headers(remaining=1, reset_at_epoch=EPOCH + 3, limit=10)
    got = await vt.drive(lambda: acquire_times(vt, tb, 4))
    assert [when for _, when in got] == pytest.approx([0, 3, 3.1, 3.2])


@pytest.mark.anyio
async def test_zero_remaining_pauses_until_reset(vt: VirtualTime) -> None:
    tb = bucket(vt, None)
    tb.observe_headers(remaining=0, reset_at_epoch=EPOCH + 42, limit=100)
    got = await vt.drive(lambda: acquire_times(vt, tb, 2))
    assert [when for _, when in got] == pytest.approx([42, 42])


def test_burst_must_be_positive() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(Rate(1, 1.0), burst=0)


# --- ProviderLimiter -------------------------------------------------------------------


def limiter(vt: VirtualTime, concurrency: int = 2, rate: Rate | None = None) -> ProviderLimiter:
    return ProviderLimiter(concurrency, rate, clock=vt.clock, sleep=vt.sleep, wall=vt.wall)


@pytest.mark.parametrize(
    ("headers", "paused_until"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(EPOCH + 15)}, 15.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str((EPOCH + 15) * 1000)}, 15.0),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "9"}, 9.0),  # delta seconds
        ({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "9"}, float("-inf")),
        ({"Retry-After": "soon"}, float("-inf")),
        ({}, float("-inf")),
    ],
)
def test_observe_response_reads_server_hints(
    vt: VirtualTime, headers: dict[str, str], paused_until: float
) -> None:
    pl = limiter(vt)
    pl.observe_response(headers)
    assert pl.bucket.paused_until == paused_until


@pytest.mark.anyio
async def test_observe_response_low_remaining_slows_requests(vt: VirtualTime) -> None:
    pl = limiter(vt, rate=Rate(50, 1.0))
    pl.observe_response(
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "10"}
    )

    async def two() -> list[float]:
        times = []
        for _ in range(2):
            await pl.request()
            times.append(vt.now)
        return times

    assert await vt.drive(two) == pytest.approx([0, 5])


def test_penalize_pauses_with_default_when_no_retry_after(vt: VirtualTime) -> None:
    pl = limiter(vt)
    pl.penalize(None)
    assert pl.bucket.paused_until == 1.0
    pl.penalize(12)
    assert pl.bucket.paused_until == 12.0


# --- a server's waits: capped, said once, and a submit's 429 never stops polls ----------


def capped_limiter(vt: VirtualTime, max_wait: float = 60.0) -> tuple[ProviderLimiter, list]:
    pl = ProviderLimiter(2, None, max_wait=max_wait, clock=vt.clock, sleep=vt.sleep, wall=vt.wall)
    said: list[tuple[float, float]] = []
    pl.on_capped = lambda asked, cap: said.append((asked, cap))
    return pl, said


@pytest.mark.anyio
async def test_a_huge_retry_after_on_a_submit_pauses_submits_only_and_is_capped(
    vt: VirtualTime,
) -> None:
    pl, said = capped_limiter(vt)
    pl.observe_response({"Retry-After": "86400"}, submit=True)

    async def poll_then_submit() -> tuple[float, float]:
        await pl.request()  # a status query of a paid task: not held back
        polled = vt.now
        await pl.request(submit=True)
        return polled, vt.now

    assert await vt.drive(poll_then_submit) == (0.0, 60.0)
    assert said == [(86400.0, 60.0)]


@pytest.mark.anyio
async def test_a_huge_retry_after_on_a_poll_pauses_everything_up_to_the_cap_said_once(
    vt: VirtualTime,
) -> None:
    pl, said = capped_limiter(vt, max_wait=30.0)
    pl.observe_response({"Retry-After": "86400"})
    pl.penalize(7200)
    pl.observe_response({"Retry-After": "100000"})

    async def one() -> float:
        await pl.request()
        return vt.now

    assert await vt.drive(one) == 30.0
    assert said == [(86400.0, 30.0)]  # said once, however often it happens
    assert pl.capped == 100000.0


def test_a_far_rate_limit_reset_is_capped(vt: VirtualTime) -> None:
    pl, said = capped_limiter(vt, max_wait=120.0)
    reset = EPOCH + 86400
    pl.observe_response({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(reset))})
    assert pl.bucket.paused_until == 120.0
    assert said == [(86400.0, 120.0)]
