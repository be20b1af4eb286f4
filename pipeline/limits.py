"""How fast pipeline may talk to one provider: rate, pauses and server hints.

``ProviderLimiter`` holds how many requests go out per second (a ``TokenBucket``); how
many jobs are in flight at once is the scheduler's worker count, which the bucket reads
only to know how early to slow down. The bucket also listens to the server:
``Retry-After`` pauses every request to that provider, and
``X-RateLimit-Remaining``/``-Reset`` make it slow down *before* the server starts
refusing. Retrying lives in ``pipeline.retry``.

Every clock here is injectable: ``clock`` is monotonic seconds (for waiting), ``wall`` is
epoch seconds (only to read dates the server sends).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from pipeline.models import Rate
from pipeline.retry import DEFAULT_MAX_WAIT, parse_retry_after

__all__ = ["ProviderLimiter", "TokenBucket"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_EPOCH_THRESHOLD = 1e9  # a reset value above this is an epoch timestamp, below it a delta
_EPOCH_MS_THRESHOLD = 1e12  # ...and above this one, epoch milliseconds


class TokenBucket:
    """A request-rate limit: ``rate`` on average, at most ``burst`` requests at once.

    Implemented as a reservation schedule (GCRA): each ``acquire`` takes the next free
    send time in call order, so waiters are served first come, first served and each
    sleeps exactly once until its turn (no polling). ``rate=None`` means no steady limit;
    the bucket then only applies pauses and server hints.

    ``burst`` defaults to one second's worth of requests (at least 1, at most
    ``rate.count``): ``60/min`` sends one request per second, not 60 at once.

    An acquirer cancelled while waiting leaves its slot unused; that errs on the slow side.
    """

    def __init__(
        self,
        rate: Rate | None,
        *,
        burst: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        wall: Clock = time.time,
        low_fraction: float = 0.2,
        low_remaining: int = 5,
        in_flight: int = 0,
    ) -> None:
        self._interval = 1.0 / rate.per_second if rate else 0.0
        self._burst = burst if burst is not None else _default_burst(rate)
        if self._burst < 1:
            raise ValueError("burst must be at least 1")
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._low_fraction = low_fraction
        self._low_remaining = low_remaining
        # Requests that can be on the wire at once all pass before their answers lower
        # ``remaining``: start spreading while at least that many are left.
        self._in_flight = in_flight
        self._tat = -math.inf  # theoretical arrival time of the next request (GCRA)
        self._paused_until = -math.inf
        self._pause_epoch = 0  # bumped by every new pause, so sleepers re-check their slot
        self._hint_interval = 0.0  # spread imposed by X-RateLimit-* hints...
        self._hint_until = -math.inf  # ...until the server's reset time

    @property
    def paused_until(self) -> float:
        """Clock time before which no request leaves (``-inf`` when not paused)."""
        return self._paused_until

    async def acquire(self) -> None:
        """Wait for this caller's turn to send one request."""
        while True:
            epoch = self._pause_epoch
            send_at = self._reserve()
            wait = send_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
            if epoch == self._pause_epoch:
                return
            # A pause began while we slept: our slot may fall inside it; take a new one.

    def pause_until(self, moment: float) -> None:
        """No request leaves before clock time ``moment`` (e.g. a 429's Retry-After)."""
        if moment <= self._paused_until:
            return
        self._paused_until = moment
        self._pause_epoch += 1
        # After the pause, restart at the steady rate rather than with a full burst.
        self._tat = max(self._tat, moment + self._tau(moment))

    def pause_for(self, seconds: float) -> None:
        """No request leaves for ``seconds`` from now."""
        self.pause_until(self._clock() + max(0.0, seconds))

    def observe_headers(
        self, remaining: int | None, reset_at_epoch: float | None, limit: int | None
    ) -> None:
        """Take the server's rate-limit hints (``X-RateLimit-Remaining``/``Reset``/``Limit``).

        ``remaining == 0``: pause until the reset. ``remaining`` low (at most
        ``low_fraction`` of ``limit``, or ``low_remaining`` when the limit is unknown):
        spread what is left evenly until the reset, so the server never has to refuse.
        """
        if remaining is None or reset_at_epoch is None:
            return
        now = self._clock()
        until_reset = max(0.0, reset_at_epoch - self._wall())
        if remaining <= 0:
            self.pause_until(now + until_reset)
        elif remaining <= self._low_water(limit) and until_reset > 0:
            self._hint_interval = until_reset / remaining
            self._hint_until = now + until_reset

    def _low_water(self, limit: int | None) -> int:
        if limit is None or limit <= 0:
            return max(self._low_remaining, self._in_flight)
        return max(1, math.ceil(limit * self._low_fraction), self._in_flight)

    def _current_interval(self, now: float) -> float:
        if now < self._hint_until:
            return max(self._interval, self._hint_interval)
        return self._interval

    def _tau(self, now: float) -> float:
        """How far ahead of schedule a request may go: the burst allowance, in seconds."""
        if now < self._hint_until:
            return 0.0  # while spreading a small budget, no bursts
        return (self._burst - 1) * self._interval

    def _reserve(self) -> float:
        """Book the next send time and return it. Synchronous, so bookings keep call order."""
        now = self._clock()
        send_at = max(now, self._tat - self._tau(now), self._paused_until)
        self._tat = max(self._tat, send_at) + self._current_interval(send_at)
        return send_at


def _default_burst(rate: Rate | None) -> int:
    if rate is None:
        return 1
    return max(1, min(rate.count, math.ceil(rate.per_second)))


class ProviderLimiter:
    """Everything that limits one provider.

    ``await limiter.request()`` before every HTTP request to the provider
    (``submit=True`` for submits); ``observe_response(headers)`` after every response,
    and ``penalize(retry_after)`` on a 429.

    A pause asked for in answer to a submit holds back only submits: status queries of
    tasks already paid for go on (a server that limits them too says so on their own
    answers). No pause or reset wait lasts longer than ``max_wait``; the first one cut
    short calls ``on_capped(asked, max_wait)``, so the run can say so once.
    """

    def __init__(
        self,
        concurrency: int,
        rate: Rate | None,
        *,
        burst: int | None = None,
        default_penalty: float = 1.0,
        max_wait: float = DEFAULT_MAX_WAIT,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        wall: Clock = time.time,
    ) -> None:
        self.bucket = TokenBucket(
            rate, burst=burst, clock=clock, sleep=sleep, wall=wall, in_flight=concurrency
        )
        self._default_penalty = default_penalty
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._submits_paused_until = -math.inf
        self.max_wait = max_wait
        self.capped: float | None = None
        """The longest wait a server asked for beyond ``max_wait`` (None: none so far)."""
        self.on_capped: Callable[[float, float], None] | None = None

    async def request(self, *, submit: bool = False) -> None:
        """Wait until one more request (a submit, with ``submit``) may be sent."""
        while submit and (wait := self._submits_paused_until - self._clock()) > 0:
            await self._sleep(wait)
        await self.bucket.acquire()

    def penalize(self, retry_after: float | None, *, submit: bool = False) -> None:
        """The provider refused (429): pause requests (only submits, with ``submit``)
        for ``retry_after`` seconds, at most ``max_wait``."""
        self._pause(self._default_penalty if retry_after is None else retry_after, submit)

    def observe_response(self, headers: Mapping[str, str], *, submit: bool = False) -> None:
        """Read ``Retry-After`` and ``X-RateLimit-*`` (or ``RateLimit-*``) from a response
        (to a submit, with ``submit``)."""
        lowered = {name.lower(): value for name, value in headers.items()}
        retry_after = parse_retry_after(lowered.get("retry-after"), now=self._wall())
        if retry_after is not None:
            self._pause(retry_after, submit)
        remaining = _first_int(_header(lowered, "remaining"))
        limit = _first_int(_header(lowered, "limit"))
        reset = self._reset_epoch(_header(lowered, "reset"))
        if reset is not None and remaining is not None:
            now = self._wall()
            wait = reset - now
            reset = now + (self._bounded(wait) if remaining <= 0 else min(wait, self.max_wait))
        self.bucket.observe_headers(remaining, reset, limit)

    def _pause(self, seconds: float, submit: bool) -> None:
        seconds = self._bounded(seconds)
        if submit:
            until = self._clock() + max(0.0, seconds)
            self._submits_paused_until = max(self._submits_paused_until, until)
        else:
            self.bucket.pause_for(seconds)

    def _bounded(self, seconds: float) -> float:
        """``seconds``, cut to ``max_wait``; the first cut is reported to ``on_capped``."""
        if seconds <= self.max_wait:
            return seconds
        first = self.capped is None
        self.capped = max(self.capped or 0.0, seconds)
        if first and self.on_capped is not None:
            self.on_capped(seconds, self.max_wait)
        return self.max_wait

    def _reset_epoch(self, value: str | None) -> float | None:
        """``X-RateLimit-Reset`` as epoch seconds: epoch s, epoch ms, or delta seconds."""
        number = _first_number(value)
        if number is None:
            return None
        if number >= _EPOCH_MS_THRESHOLD:
            return number / 1000.0
        if number >= _EPOCH_THRESHOLD:
            return number
        return self._wall() + number


def _header(lowered: Mapping[str, str], suffix: str) -> str | None:
    return lowered.get(f"x-ratelimit-{suffix}") or lowered.get(f"ratelimit-{suffix}")


def _first_number(value: str | None) -> float | None:
    """The leading number of a header such as ``"100"``, ``"1.5"`` or ``"100, 100;w=60"``."""
    if value is None:
        return None
    token = value.split(",")[0].split(";")[0].strip()
    try:
        number = float(token)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _first_int(value: str | None) -> int | None:
    number = _first_number(value)
    return None if number is None else int(number)
