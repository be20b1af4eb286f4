"""Resuming a ``.part`` only against the version of the file it holds a prefix of.

When a body first lands in ``<dest>.part``, what identifies that version of the file
(a strong ETag, else Last-Modified, and its length) is written beside it, in
``<dest>.part.validator``. A resume sends ``Range`` with ``If-Range``, so a server that
knows the file changed answers 200 with the whole new file; a 206 whose start, total or
validator differ from the stored ones (a server that ignores ``If-Range``) is not used,
and the file is fetched again from byte 0. A ``.part`` without a validator is never
resumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "int_or_none",
    "is_stale",
    "parse_content_range",
    "read_validator",
    "resume_headers",
    "validator_of",
    "validator_path",
]


def validator_path(part: Path) -> Path:
    """Where the validator of a ``.part``'s file version is kept while it may resume."""
    return part.with_name(part.name + ".validator")


def validator_of(fields: Mapping[str, str], total: int | None) -> str:
    """The validator text of an answer (``fields``: its headers by lower-cased name)."""
    etag = fields.get("etag")
    return json.dumps(
        {
            "etag": etag if etag and not etag.startswith("W/") else None,  # If-Range: strong
            "last_modified": fields.get("last-modified"),
            "total": total,
        }
    )


def read_validator(part: Path) -> dict[str, Any] | None:
    """The validator stored beside ``part``; None when there is none (or unreadable)."""
    try:
        data = json.loads(validator_path(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resume_headers(offset: int, validator: Mapping[str, Any] | None) -> dict[str, str]:
    """``Range`` and ``If-Range`` for a resume at ``offset``; none without a validator."""
    if not offset or validator is None:
        return {}
    headers = {"Range": f"bytes={offset}-"}
    if_range = validator.get("etag") or validator.get("last_modified")
    if if_range:
        headers["If-Range"] = str(if_range)
    return headers


def is_stale(
    status: int, fields: Mapping[str, str], offset: int, validator: Mapping[str, Any] | None
) -> bool:
    """Whether the answer to a resume shows the ``.part`` is no prefix of this file."""
    if status == 416:
        return True
    if status != 206 or validator is None:
        return False
    start, total = parse_content_range(fields.get("content-range"))
    if start != offset or total != validator.get("total"):
        return True
    etag, modified = validator.get("etag"), validator.get("last_modified")
    if etag is not None:
        return bool(fields.get("etag") != etag)
    return modified is not None and fields.get("last-modified") != modified


def parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` → (100, 200); the total may be ``*`` (unknown)."""
    if not value or not value.strip().lower().startswith("bytes "):
        return None, None
    spec = value.strip()[6:]
    span, _, total = spec.partition("/")
    first, _, _last = span.partition("-")
    return int_or_none(first), int_or_none(total)


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None
