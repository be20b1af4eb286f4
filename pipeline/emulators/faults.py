"""Seeded dice for injected faults, so a run with the same seed misbehaves the same way."""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from typing import TypeVar

from pipeline.emulators.knobs import Knobs

__all__ = ["Dice", "Fault", "injected_fault"]

T = TypeVar("T")


class Fault(enum.Enum):
    """Misbehaviour injected before a request is handled; the provider renders the body."""

    RATE_LIMITED = 429
    SERVER_ERROR = 500
    UNAVAILABLE = 503


class Dice:
    """Every random decision an emulator makes about faults and timing."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self._rng.seed(seed)

    def roll(self, rate: float) -> bool:
        """True with probability ``rate``; rates of 0 and 1 use no randomness."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._rng.random() < rate

    def uniform(self, low: float, high: float) -> float:
        return self._rng.uniform(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)

    def randbits(self, bits: int) -> int:
        return self._rng.getrandbits(bits)


def injected_fault(knobs: Knobs, dice: Dice) -> Fault | None:
    """The fault (if any) to answer an API request with instead of handling it."""
    if dice.roll(knobs.rate_limit_rate):
        return Fault.RATE_LIMITED
    if dice.roll(knobs.error_rate):
        return dice.choice((Fault.SERVER_ERROR, Fault.UNAVAILABLE))
    return None
