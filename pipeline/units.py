"""Rates (``60/min``) and durations (``1h30m``) as written in specs."""

from __future__ import annotations

import math
import re

from pipeline.models import Rate

__all__ = ["DURATION_PATTERN", "RATE_PATTERN", "parse_duration", "parse_rate"]

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = "|".join(sorted(_UNIT_SECONDS, key=len, reverse=True))
_DURATION_PART = re.compile(rf"({_NUMBER})\s*({_UNIT})")
_DURATION = re.compile(rf"(?:{_NUMBER}\s*(?:{_UNIT})\s*)+")
_RATE = re.compile(rf"({_NUMBER})\s*/\s*(.+)")

DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}\s*(?:{_UNIT})\s*)+)\s*$"
"""JSON-Schema pattern of duration strings."""
RATE_PATTERN = rf"^\s*{_NUMBER}\s*(?:/\s*\S.*)?$"
"""JSON-Schema pattern of rate strings (the part after ``/`` is a duration or a unit)."""


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``: ``90``, ``"90"``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``.

    Raises ValueError for anything else, negatives and non-finite numbers included.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(  # noqa: TRY004 -- pydantic turns only ValueErrors into messages
            f"a duration is a number of seconds or text like '90s', not {value!r}"
        )
    if isinstance(value, str):
        return _duration_from_text(value)
    return _checked_seconds(float(value), value)


def _duration_from_text(text: str) -> float:
    cleaned = text.strip().lower()
    if re.fullmatch(_NUMBER, cleaned):
        return _checked_seconds(float(cleaned), text)
    if not _DURATION.fullmatch(cleaned):
        raise ValueError(
            f"bad duration {text!r}: write seconds (90) or amounts with units, "
            "e.g. '250ms', '90s', '5m', '1h30m'"
        )
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(cleaned)
    )
    return _checked_seconds(seconds, text)


def _checked_seconds(seconds: float, original: object) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad duration {original!r}: must be a finite, non-negative time")
    return seconds


def parse_rate(value: str | float) -> Rate:
    """``"60/min"`` → ``Rate(60, 60.0)``; ``"5/s"``, ``"1000/hour"``, ``"10/30s"``; a bare
    number is per second (``2`` → ``Rate(2, 1.0)``, ``0.5`` → ``Rate(1, 2.0)``).

    Raises ValueError for anything else, zero and negative rates included.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(  # noqa: TRY004 -- pydantic turns only ValueErrors into messages
            f"a rate is written like '60/min' or a number per second, not {value!r}"
        )
    if not isinstance(value, str):
        return _rate(float(value), 1.0, value)
    text = value.strip().lower()
    if re.fullmatch(_NUMBER, text):
        return _rate(float(text), 1.0, value)
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"bad rate {value!r}: write it like '60/min', '5/s' or '1000/hour'")
    count, period = match.groups()
    return _rate(float(count), _period_seconds(period.strip(), value), value)


def _period_seconds(period: str, original: str) -> float:
    if period in _UNIT_SECONDS:
        return _UNIT_SECONDS[period]
    try:
        return parse_duration(period)
    except ValueError:
        units = "s, min, hour, day"
        raise ValueError(
            f"bad rate {original!r}: the part after '/' must be a unit ({units}) "
            "or a duration like '30s'"
        ) from None


def _rate(count: float, per_seconds: float, original: object) -> Rate:
    if not (math.isfinite(count) and count > 0 and per_seconds > 0):
        raise ValueError(f"bad rate {original!r}: must be more than zero per a positive time")
    if count.is_integer():
        return Rate(int(count), per_seconds)
    return Rate(1, per_seconds / count)
