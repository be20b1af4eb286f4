"""Whether a media file's bytes reach its own end: proof of completeness for bodies
whose transfer cannot prove it (no length), and a check on lying lengths.

A PNG ends with its IEND chunk; an MP4 (ISO BMFF) is a sequence of boxes whose sizes
add up exactly to the file's length. Other types are not judged here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["TAIL", "incomplete_media", "media_kind"]

TAIL = 16  # bytes of a body's end kept for ``incomplete_media``
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_MAX_BOXES = 100_000

ReadAt = Callable[[int, int], bytes]


def media_kind(head: bytes) -> str | None:
    """ "png", "mp4" or None, from a file's first bytes."""
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head[4:8] == b"ftyp":
        return "mp4"
    return None


def incomplete_media(
    kind: str | None, tail: bytes, read_at: ReadAt | None, size: int, *, open_ended: bool = True
) -> str | None:
    """Why a file of ``kind`` and ``size`` bytes is cut short, or None when it is whole
    (or of a kind not judged). ``tail`` is its last bytes (PNG); ``read_at(offset,
    count)`` reads it (MP4). ``open_ended``: an MP4 whose last box runs to the end of
    the file (size 0) counts as whole; that proves nothing when the length is unknown."""
    if kind == "png":
        return None if tail.endswith(_IEND) else "the PNG does not end with its IEND chunk"
    if kind == "mp4" and read_at is not None:
        return _mp4_problem(read_at, size, open_ended=open_ended)
    return None


def _mp4_problem(  # noqa: PLR0911 (one answer per flaw)
    read_at: ReadAt, size: int, *, open_ended: bool
) -> str | None:
    offset = 0
    for _ in range(_MAX_BOXES):
        if offset == size:
            return None
        if offset > size:
            return f"the MP4's boxes need {offset} bytes, it has {size}"
        header = read_at(offset, 16)
        if len(header) < 8:
            return f"the MP4 ends inside a box header at byte {offset}"
        length = struct.unpack(">I", header[:4])[0]
        if length == 1:
            if len(header) < 16:
                return f"the MP4 ends inside a box header at byte {offset}"
            length = struct.unpack(">Q", header[8:16])[0]
        elif length == 0:  # the last box runs to the end of the file
            return None if open_ended else "the MP4's last box has no length to check"
        if length < 8:
            return f"the MP4 has a malformed box at byte {offset}"
        offset += length
    return "the MP4 has too many top-level boxes"
