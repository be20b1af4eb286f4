"""A real per-key rate limiter (fixed windows, one minute unless the ``rate_window`` knob
says otherwise) and the quota it reports."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["UNLIMITED", "Quota", "RateLimiter"]

UNLIMITED = 1_000_000
"""The limit advertised when no requests_per_minute is set (never enforced)."""

WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Quota:
    """What the rate-limit headers say after a request."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    """Epoch seconds at which the window resets."""

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window resets (at least 1)."""
        return max(1, math.ceil(self.reset - now))

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class RateLimiter:
    """Counts requests per key in windows that start at the key's first request."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}
        self.window_seconds = WINDOW_SECONDS

    def hit(self, key: str, now: float, per_window: int | None) -> Quota:
        """Count one request for ``key``; ``allowed`` is False when over the limit."""
        start, used = self._window(key, now)
        limit = UNLIMITED if per_window is None else per_window
        allowed = per_window is None or used < per_window
        if allowed:
            used += 1
            self._windows[key] = (start, used)
        reset = math.ceil(start + self.window_seconds)
        return Quota(allowed, limit, max(0, limit - used), reset)

    def peek(self, key: str, now: float, per_window: int | None) -> Quota:
        """The quota for ``key`` without counting a request."""
        start, used = self._windows.get(key, (now, 0))
        limit = UNLIMITED if per_window is None else per_window
        reset = math.ceil(start + self.window_seconds)
        return Quota(used < limit, limit, max(0, limit - used), reset)

    def clear(self) -> None:
        self._windows.clear()

    def _window(self, key: str, now: float) -> tuple[float, int]:
        window = self._windows.get(key)
        if window is None or now >= window[0] + self.window_seconds:
            return now, 0
        return window
