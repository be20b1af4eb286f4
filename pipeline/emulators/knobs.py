"""Knobs: the behaviour switches every emulator shares, validated from plain JSON.

A knob changes what the fake server does, never what the API looks like. Knobs are
read at the moment they matter (a task's duration and fate are fixed when it is
submitted), so changing them at runtime through ``POST /_emulator/config`` affects
new requests only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Knobs"]

# kind: "rate" (0..1), "seconds" (>= 0 float), "count" (>= 0 int), "int", "bool", "text",
# "seconds_list" (a list of seconds), "status_5xx" (an int 500..599), "text_list"
_KINDS: dict[str, tuple[str, bool]] = {
    "task_seconds": ("seconds", False),
    "task_jitter": ("rate", False),
    "failure_rate": ("rate", False),
    "rate_limit_rate": ("rate", False),
    "retry_after": ("seconds", True),
    "error_rate": ("rate", False),
    "drop_after_create_rate": ("rate", False),
    "error_after_create_rate": ("rate", False),
    "error_after_create_status": ("status_5xx", False),
    "truncate_rate": ("rate", False),
    "url_ttl": ("seconds", True),
    "stale_urls": ("count", False),
    "download_delay": ("seconds", False),
    "output_bytes": ("count", True),
    "render": ("bool", False),
    "seed": ("int", False),
    "requests_per_minute": ("count", True),
    "rate_window": ("seconds", False),
    "invalid_key_prefix": ("text", True),
    "forbidden_key_prefix": ("text", True),
    "broke_key_prefix": ("text", True),
    "callback_retry_delays": ("seconds_list", False),
    "callback_timeout": ("seconds", False),
    "callback_delay": ("seconds", False),
    "callback_loss_rate": ("rate", False),
    "callback_duplicate_rate": ("rate", False),
    "event_loss_rate": ("rate", False),
    "echo_auth": ("bool", False),
    "fault_routes": ("text_list", True),
    "task_limit_code": ("text", True),
    "task_limit_message": ("text", False),
    # hostile file hosts and huge answers (downloads.py, app.py)
    "unframed_rate": ("rate", False),
    "short_length_rate": ("rate", False),
    "change_after_truncate": ("bool", False),
    "endless_downloads": ("bool", False),
    "redirect_downloads_to": ("text", True),
    "status_pad_bytes": ("count", True),
}


@dataclass(frozen=True, slots=True)
class Knobs:
    """How an emulator misbehaves. Every field has a harmless default."""

    task_seconds: float = 2.0
    """Seconds from submit to a terminal state (about the first fifth of it queued)."""
    task_jitter: float = 0.2
    """Each task's duration varies by up to this fraction either way."""
    failure_rate: float = 0.0
    """Probability that a task ends failed, with a provider-style reason."""
    rate_limit_rate: float = 0.0
    """Probability that an API request is answered 429 before anything happens."""
    retry_after: float | None = None
    """Seconds to put in Retry-After on 429s; None sends no Retry-After."""
    error_rate: float = 0.0
    """Probability that an API request is answered 500 or 503 before anything happens."""
    drop_after_create_rate: float = 0.0
    """Probability that a submit creates (and charges) the task, then drops the connection."""
    error_after_create_rate: float = 0.0
    """Probability that a submit creates (and charges) the task, then answers
    ``error_after_create_status`` instead (a proxy or gateway failing after the origin
    accepted it)."""
    error_after_create_status: int = 524
    """The 5xx (500-599) sent by ``error_after_create_rate``; its body is plain text."""
    truncate_rate: float = 0.0
    """Probability that a download sends fewer bytes than its Content-Length, then closes."""
    url_ttl: float | None = None
    """Seconds a result URL stays valid after it was handed out; None: forever."""
    stale_urls: int = 0
    """The first this many result URLs handed out for each file are already expired (403)."""
    download_delay: float = 0.0
    """Seconds the file host waits before answering each download (a slow CDN)."""
    output_bytes: int | None = None
    """Pad every output to about this many bytes (benchmarks); None: natural size."""
    render: bool = True
    """True: a PNG that shows prompt and seed. False: a cheap valid PNG (benchmarks)."""
    seed: int = 0
    """Seed of the fault dice, so a run's faults repeat exactly."""
    requests_per_minute: int | None = None  # requests allowed per rate_window, per key
    rate_window: float = 60.0  # seconds; shorter windows make limiter tests fast
    """A real per-key limiter (429 when exceeded); None: unlimited, headers still sent."""
    invalid_key_prefix: str | None = "bad"
    """API keys starting with this are rejected as invalid (401)."""
    forbidden_key_prefix: str | None = "deny"
    """API keys starting with this lack permission (403)."""
    broke_key_prefix: str | None = "broke"
    """API keys starting with this have no credit (402), where the API documents 402."""
    callback_retry_delays: tuple[float, ...] = (30.0, 60.0, 120.0)
    """Seconds before each retry of a callback answered non-200 or not in time."""
    callback_timeout: float = 30.0
    """Seconds a callback receiver has to answer before the attempt counts as failed."""
    callback_delay: float = 0.0
    """Extra seconds between a task's end and its callback (a late callback)."""
    callback_loss_rate: float = 0.0
    """Probability that a task's callback is never sent."""
    callback_duplicate_rate: float = 0.0
    event_loss_rate: float = 0.0  # PixAI: share of taskUpdated events never sent
    """Probability that a task's callback is sent twice."""
    echo_auth: bool = False
    """Error answers (status >= 400) quote the caller's key and Authorization header in
    the API's own error message, as careless real APIs do (tests of redaction)."""
    fault_routes: tuple[str, ...] | None = None
    """Routes (the stats keys, e.g. ``POST /v1/generate``) that ``rate_limit_rate`` and
    ``error_rate`` apply to; None: every API route."""
    task_limit_code: str | None = "TOO_MANY_TASKS"
    """PixAI: ``extensions.code`` of the refusal when the account already has 10 tasks
    waiting or running (None: no code). PixAI does not document its words."""
    task_limit_message: str = (
        "Too many tasks in progress: at most 10 tasks may be waiting or running"
    )
    """PixAI: the message of that refusal."""
    unframed_rate: float = 0.0
    """Probability that a download is sent with neither Content-Length nor chunking, ended
    by closing the connection (with ``truncate_rate``, cut at about half: a client cannot
    tell it from a whole body)."""
    short_length_rate: float = 0.0
    """Probability that a download's Content-Length is about half its body (a lying
    length; the rest follows it on the wire)."""
    change_after_truncate: bool = False
    """A file whose download was cut short is replaced by another version (other bytes,
    another ETag) for every later request, as an object overwritten between attempts."""
    endless_downloads: bool = False
    """Downloads never end: a 200 without a length that streams until the client leaves."""
    redirect_downloads_to: str | None = None
    """Answer every download with a 302 to this URL prefix (plus the file's name)."""
    status_pad_bytes: int | None = None
    """Pad every JSON answer to a GET (status queries) with this many leading spaces
    (still valid JSON), streamed chunked without a length; None: no padding."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> Knobs:
        """Build knobs from JSON-like values; unknown or ill-typed knobs raise ValueError."""
        return cls().updated(values or {})

    def updated(self, changes: Mapping[str, Any]) -> Knobs:
        """A copy with ``changes`` applied, each validated."""
        unknown = sorted(set(changes) - set(_KINDS))
        if unknown:
            allowed = ", ".join(sorted(_KINDS))
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; allowed: {allowed}")
        clean = {name: _validate(name, value) for name, value in changes.items()}
        return dataclasses.replace(self, **clean)

    def to_dict(self) -> dict[str, Any]:
        """Every knob and its value, JSON-ready."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def _validate(name: str, value: Any) -> Any:
    kind, optional = _KINDS[name]
    if value is None:
        if optional:
            return None
        raise ValueError(f"knob {name} cannot be null")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"knob {name} must be true or false, got {value!r}")
        return value
    if kind in _SPECIAL_KINDS:
        return _SPECIAL_KINDS[kind](name, value)
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"knob {name} must be a string, got {value!r}")
        return value
    return _number(name, kind, value)


def _status_5xx(name: str, value: Any) -> int:
    number = _number(name, "int", value)
    if not 500 <= number <= 599:
        raise ValueError(f"knob {name} must be an HTTP status from 500 to 599, got {value!r}")
    return int(number)


def _text_list(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        # ValueError, not TypeError: a knob of the wrong type is a bad value in a document
        raise ValueError(f"knob {name} must be a list of strings, got {value!r}")
    return tuple(value)


def _seconds_list(name: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        # ValueError, not TypeError: a knob of the wrong type is a bad value in a document
        raise ValueError(f"knob {name} must be a list of seconds, got {value!r}")  # noqa: TRY004
    return tuple(float(_number(name, "seconds", item)) for item in value)


_SPECIAL_KINDS: dict[str, Callable[[str, Any], Any]] = {
    "seconds_list": _seconds_list,
    "status_5xx": _status_5xx,
    "text_list": _text_list,
}


def _number(name: str, kind: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        # ValueError, not TypeError: a knob of the wrong type is a bad value in a document
        raise ValueError(f"knob {name} must be a number, got {value!r}")  # noqa: TRY004
    if not math.isfinite(value):
        raise ValueError(f"knob {name} must be finite, got {value!r}")
    number: float | int
    if kind in ("count", "int"):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"knob {name} must be a whole number, got {value!r}")
        number = int(value)
    else:
        number = float(value)
    if kind != "int" and number < 0:
        raise ValueError(f"knob {name} must be >= 0, got {value!r}")
    if kind == "rate" and number > 1:
        raise ValueError(f"knob {name} is a probability between 0 and 1, got {value!r}")
    return number
