"""Retrying what is safe to repeat: polls, status queries and downloads, never submits.

``Backoff`` and ``retrying`` are the small retry loop; ``parse_retry_after`` reads a
server's ``Retry-After``; ``transient_delay`` turns our errors into a retry verdict;
``ask_status`` is the one status query with retries (polls, webhook confirmations,
subscription polls, fetches).
``set_testing(True)`` makes every backoff delay zero, so tests run fast without patching.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Protocol, TypeVar

import anyio

from pipeline.errors import TransientError
from pipeline.models import RemoteTask, RunSettings

__all__ = [
    "DEFAULT_MAX_WAIT",
    "Backoff",
    "StatusSource",
    "ask_status",
    "is_testing",
    "parse_retry_after",
    "retrying",
    "set_testing",
    "transient_delay",
]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_MAX_WAIT = RunSettings().max_retry_after
"""The longest a server's Retry-After or rate-limit reset is waited (``run.max_retry_after``)."""


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP-date).

    ``now`` is the current epoch time, used for HTTP-dates. Returns None when the value is
    missing or unreadable; never a negative number.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _seconds_until_http_date(text, now=now)
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _seconds_until_http_date(text: str, *, now: float) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - now


_testing = False


def set_testing(testing: bool) -> None:
    """Make every ``Backoff.delay`` zero (for test suites), or restore real delays."""
    global _testing  # noqa: PLW0603 -- a process-wide switch, exactly like stamina's
    _testing = testing


def is_testing() -> bool:
    return _testing


@dataclass
class Backoff:
    """Exponential backoff with jitter, never shorter than the server asked.

    The delay before retry ``attempt`` (1, 2, …) is ``initial * factor**(attempt-1)``,
    capped at ``maximum``, then reduced by a random fraction of at most ``jitter``
    (so with ``jitter=0.25`` it lies in ``[0.75 d, d]``), and finally raised to
    ``retry_after`` when the server gave one.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if _testing:
            return 0.0
        exponent = min(max(attempt - 1, 0), 64)  # 2**64 is far past any maximum
        base = min(self.maximum, self.initial * self.factor**exponent)
        jittered = base * (1.0 - self.jitter * self.rng.random())
        return max(jittered, retry_after or 0.0)


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    retries: int,
    backoff: Backoff,
    is_transient: Callable[[BaseException], float | bool | None],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Sleep = anyio.sleep,
) -> T:
    """Call ``fn`` until it succeeds, at most ``retries`` extra times, for polls and downloads.

    NEVER use this for submits: a submit whose outcome is unknown must be reconciled, not
    sent again (contract 2 in docs/architecture.md).

    ``is_transient(exc)`` decides: ``False`` → the error is final and propagates at once;
    ``True`` or ``None`` → transient, retry after the backoff delay; a number → transient,
    and the server asked to wait that many seconds (a floor for the delay). The last
    error propagates once the retries are spent. ``on_retry(attempt, exc, delay)`` is
    called before each wait. Cancellation is never caught.
    """
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            verdict = is_transient(exc)
            if verdict is False or attempt >= retries:
                raise
            attempt += 1
            retry_after = None if verdict is True or verdict is None else float(verdict)
            delay = backoff.delay(attempt, retry_after)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)


def transient_delay(exc: BaseException) -> float | bool | None:
    """For ``retrying``: the server's retry-after for transient errors, False otherwise."""
    if isinstance(exc, TransientError):
        return exc.retry_after if exc.retry_after is not None else True
    return False


class StatusSource(Protocol):
    """Anything that can tell where a remote task stands (every provider can)."""

    async def status(self, remote_id: str) -> RemoteTask: ...


async def ask_status(
    source: StatusSource,
    remote_id: str,
    *,
    retries: int,
    backoff: Backoff,
    sleep: Sleep = anyio.sleep,
) -> RemoteTask:
    """The task as ``source`` tells it now: transient errors retried (``retries`` extra
    times, spaced by ``backoff``, never shorter than the server's Retry-After, waited
    with ``sleep``); final errors at once."""

    async def once() -> RemoteTask:
        return await source.status(remote_id)

    return await retrying(
        once, retries=retries, backoff=backoff, is_transient=transient_delay, sleep=sleep
    )
