"""Backoff, the retry loop and Retry-After parsing (``pipeline.retry``)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from pipeline import retry
from pipeline.retry import Backoff, parse_retry_after, retrying

EPOCH = 1_700_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def real_delays() -> Iterator[None]:
    retry.set_testing(False)
    yield
    retry.set_testing(True)


# --- parse_retry_after -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Tue, 14 Nov 2023 22:13:40 GMT", 20.0),  # EPOCH is 22:13:20 GMT
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=EPOCH) == expected


# --- Backoff ---------------------------------------------------------------------------


@pytest.mark.usefixtures("real_delays")
def test_backoff_grows_within_jitter_bounds_and_caps() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=30.0, jitter=0.25, rng=random.Random(7))
    for attempt in range(1, 12):
        base = min(30.0, 2.0 ** (attempt - 1))
        samples = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.75 * base <= s <= base for s in samples)
        assert max(samples) - min(samples) > 0.1 * base  # there is jitter
    assert backoff.delay(10_000) <= 30.0  # no overflow


@pytest.mark.usefixtures("real_delays")
def test_backoff_without_jitter_is_exact() -> None:
    backoff = Backoff(initial=0.5, factor=3.0, maximum=100.0, jitter=0.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


@pytest.mark.usefixtures("real_delays")
def test_backoff_never_below_retry_after() -> None:
    backoff = Backoff(initial=1.0, maximum=2.0)
    assert backoff.delay(1, retry_after=45.0) == 45.0
    assert backoff.delay(5, retry_after=0.1) >= 1.5


def test_testing_switch_makes_delays_zero() -> None:
    retry.set_testing(True)
    assert retry.is_testing()
    assert Backoff().delay(5, retry_after=60.0) == 0.0


# --- retrying --------------------------------------------------------------------------


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


class Transient(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        self.retry_after = retry_after


def verdict(exc: BaseException) -> float | bool | None:
    if isinstance(exc, Transient):
        return exc.retry_after if exc.retry_after is not None else True
    return False


class Sleeps:
    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


@pytest.mark.anyio
@pytest.mark.usefixtures("real_delays")
async def test_retrying_retries_transient_errors_then_succeeds() -> None:
    fn, sleeps, retries = Flaky([Transient(), Transient(9.0)]), Sleeps(), []
    result = await retrying(
        fn,
        retries=3,
        backoff=Backoff(jitter=0.0),
        is_transient=verdict,
        sleep=sleeps,
        on_retry=lambda n, exc, delay: retries.append((n, type(exc).__name__, delay)),
    )
    assert result == "ok" and fn.calls == 3
    assert sleeps.seen == [1.0, 9.0]  # backoff, then the server's retry_after floor
    assert retries == [(1, "Transient", 1.0), (2, "Transient", 9.0)]


@pytest.mark.anyio
async def test_retrying_stops_at_once_on_final_error() -> None:
    fn, sleeps = Flaky([ValueError("bad request"), Transient()]), Sleeps()
    with pytest.raises(ValueError, match="bad request"):
        await retrying(fn, retries=5, backoff=Backoff(), is_transient=verdict, sleep=sleeps)
    assert fn.calls == 1 and sleeps.seen == []


@pytest.mark.anyio
async def test_retrying_gives_up_after_retries() -> None:
    failures: list[BaseException] = [Transient(float(n)) for n in range(10)]
    fn, sleeps = Flaky(failures), Sleeps()
    with pytest.raises(Transient) as caught:
        await retrying(fn, retries=2, backoff=Backoff(), is_transient=verdict, sleep=sleeps)
    assert fn.calls == 3 and len(sleeps.seen) == 2
    assert caught.value.retry_after == 2.0  # the last error propagates
    assert sleeps.seen == [0.0, 0.0]  # set_testing(True) from conftest: no real waits


@pytest.mark.anyio
async def test_retrying_none_verdict_counts_as_transient() -> None:
    fn = Flaky([Transient()])
    result = await retrying(
        fn, retries=1, backoff=Backoff(), is_transient=lambda exc: None, sleep=Sleeps()
    )
    assert result == "ok"
