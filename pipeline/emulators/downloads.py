"""Serving files the way a CDN does: Content-Length, ETag, Range (206), expiring URLs.

Also where downloads misbehave on purpose (``truncate_rate``) and where a leaked API
key is noticed (a download that carries an Authorization header is counted).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from pipeline.emulators.media import Rendered
from pipeline.emulators.state import STATE_KEY, EmulatorState

__all__ = ["byte_range", "download", "send_file"]

EXPIRED_STATUS = 403


class Unsatisfiable(ValueError):
    """The Range asks for bytes the file does not have (416)."""


async def download(request: web.Request) -> web.StreamResponse:
    """``GET /files/{token}.{ext}``, optionally signed with ``expires`` and ``sig``."""
    state = request.app[STATE_KEY]
    state.stats.count(f"{request.method} /files/{{name}}")
    token = request.match_info["name"].partition(".")[0]
    return await send_file(request, state, token, signed=True)


async def send_file(
    request: web.Request, state: EmulatorState, token: str, *, signed: bool = False
) -> web.StreamResponse:
    """Answer a download of ``token``'s file (whole, ranged, or cut short on purpose).

    ``signed``: the URL may carry an expiry and signature, which must hold.
    """
    stats = state.stats
    stats.downloads += 1
    if "Authorization" in request.headers:
        stats.downloads_with_auth += 1
    if state.media.media(token) is None:
        return _refuse(404, "NoSuchKey", "The specified key does not exist.")
    if signed and not _signature_valid(request, state, token):
        return _refuse(EXPIRED_STATUS, "AccessDenied", "Request has expired")
    knobs = state.knobs
    if knobs.download_delay:
        await asyncio.sleep(knobs.download_delay)
    file = await state.media.rendered(token, draw=knobs.render, pad_to=knobs.output_bytes)
    headers = {
        "Content-Type": file.content_type,
        "ETag": file.etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=3600",
    }
    if request.headers.get("If-None-Match") == file.etag:
        return web.Response(status=304, headers=headers)
    status, body = _select(request, file, headers)
    if status == 416:
        return web.Response(status=416, headers=headers)
    if request.method != "HEAD" and state.dice.roll(knobs.truncate_rate):
        stats.faults["truncated"] += 1
        return await _truncated(request, status, body, headers)
    stats.download_bytes += len(body)
    return web.Response(status=status, body=body, headers=headers)


def byte_range(header: str, size: int) -> range | None:
    """The bytes a single-range ``Range`` header asks for; None means send everything.

    Malformed headers, other units and multiple ranges are ignored (RFC 9110 allows a
    server to ignore Range); a range starting past the end raises Unsatisfiable.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first:
        suffix = int(last) if last.isdigit() else -1
        if suffix <= 0:
            raise Unsatisfiable(header)
        return range(max(0, size - suffix), size)
    if last and not last.isdigit():
        return None
    start = int(first)
    stop = min(size, int(last) + 1) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    return range(start, stop)


def _select(request: web.Request, file: Rendered, headers: dict[str, str]) -> tuple[int, bytes]:
    size = len(file.body)
    header = request.headers.get("Range")
    if header is None or request.headers.get("If-Range", file.etag) != file.etag:
        return 200, file.body
    try:
        wanted = byte_range(header, size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return 416, b""
    if wanted is None:
        return 200, file.body
    request.app[STATE_KEY].stats.ranged_downloads += 1
    headers["Content-Range"] = f"bytes {wanted.start}-{wanted.stop - 1}/{size}"
    return 206, file.body[wanted.start : wanted.stop]


async def _truncated(
    request: web.Request, status: int, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Promise ``len(body)`` bytes, send about half, then close the connection."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    response.force_close()
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _signature_valid(request: web.Request, state: EmulatorState, token: str) -> bool:
    query = request.query
    if "expires" not in query and "sig" not in query:
        return True
    expires, sig = query.get("expires", ""), query.get("sig", "")
    if not state.media.signature_ok(token, expires, sig):
        return False
    return state.clock() <= int(expires)


def _refuse(status: int, code: str, message: str) -> web.Response:
    """An object-store style error (XML, as S3 and most CDNs answer)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")
