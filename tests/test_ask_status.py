"""retry.ask_status: the one status query with retries that polls, webhook confirmations,
subscription polls and fetches share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline import retry
from pipeline.errors import FinalError, TransientError
from pipeline.models import RemoteStatus, RemoteTask
from pipeline.retry import Backoff, ask_status

pytestmark = pytest.mark.anyio


class Flaky:
    """Raises the queued errors, then answers SUCCEEDED; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def status(self, remote_id: str) -> RemoteTask:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return RemoteTask(remote_id, RemoteStatus.SUCCEEDED)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def real_backoff() -> Iterator[None]:
    """Real backoff delays (the suite zeroes them), to see what is waited."""
    retry.set_testing(False)
    yield
    retry.set_testing(True)


@pytest.mark.usefixtures("real_backoff")
async def test_transient_errors_are_retried_with_backoff_and_retry_after() -> None:
    provider = Flaky(TransientError("503"), TransientError("429", retry_after=7.0))
    sleep = Sleeps()
    backoff = Backoff(initial=1.0, factor=2.0, jitter=0.0)
    task = await ask_status(provider, "t", retries=3, backoff=backoff, sleep=sleep)  # type: ignore[arg-type]
    assert task.status is RemoteStatus.SUCCEEDED
    assert provider.calls == 3
    assert sleep.waits == [1.0, 7.0]  # the backoff, then the server's Retry-After


async def test_a_final_error_is_not_retried() -> None:
    provider = Flaky(FinalError("gone", status=404))
    sleep = Sleeps()
    with pytest.raises(FinalError):
        await ask_status(provider, "t", retries=3, backoff=Backoff(), sleep=sleep)  # type: ignore[arg-type]
    assert provider.calls == 1 and sleep.waits == []


async def test_the_last_transient_error_propagates_once_the_retries_are_spent() -> None:
    provider = Flaky(*[TransientError(f"down {n}") for n in range(3)])
    sleep = Sleeps()
    with pytest.raises(TransientError, match="down 2"):
        await ask_status(provider, "t", retries=2, backoff=Backoff(), sleep=sleep)  # type: ignore[arg-type]
    assert provider.calls == 3 and len(sleep.waits) == 2
