"""Time as the emulators see it: a callable returning epoch seconds, swappable in tests."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "system_clock"]

Clock = Callable[[], float]
"""Returns the current time as Unix epoch seconds."""

system_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told to: ``clock.advance(2.5)``."""

    def __init__(self, start: float = 1_773_671_400.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward; tasks and URLs age on their next read."""
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.now += seconds
