"""Serving files the way a CDN does: Content-Length, ETag, Range (206), expiring URLs.

Also where downloads misbehave on purpose (``truncate_rate``, ``unframed_rate``,
``short_length_rate``, ``change_after_truncate``, ``endless_downloads``,
``redirect_downloads_to``) and where a leaked API key is noticed (a download that
carries an Authorization header is counted).
"""

from __future__ import annotations

import asyncio
import struct
import weakref
import zlib

from aiohttp import web

from pipeline.emulators.media import Rendered
from pipeline.emulators.state import STATE_KEY, EmulatorState

__all__ = ["byte_range", "download", "send_file"]

EXPIRED_STATUS = 403


_CHANGED: weakref.WeakKeyDictionary[EmulatorState, set[str]] = weakref.WeakKeyDictionary()
"""Per emulator, the tokens whose file was replaced after a cut (``change_after_truncate``)."""
_ENDLESS_PIECE = 64 * 1024


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
    if knobs.redirect_downloads_to is not None:
        target = knobs.redirect_downloads_to.rstrip("/") + "/" + request.path.rsplit("/", 1)[1]
        return web.Response(status=302, headers={"Location": target})
    if knobs.download_delay:
        await asyncio.sleep(knobs.download_delay)
    file = await state.media.rendered(token, draw=knobs.render, pad_to=knobs.output_bytes)
    if knobs.endless_downloads and request.method != "HEAD":
        return await _endless(request, file.content_type)
    if token in _CHANGED.get(state, ()):
        file = _other_version(file)
    return await _answer(request, state, token, file)


async def _answer(
    request: web.Request, state: EmulatorState, token: str, file: Rendered
) -> web.StreamResponse:
    """The file whole, ranged, or misbehaving as the knobs ask."""
    stats, knobs = state.stats, state.knobs
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
    if request.method != "HEAD":
        unframed = state.dice.roll(knobs.unframed_rate)
        if state.dice.roll(knobs.truncate_rate):
            stats.faults["truncated"] += 1
            if knobs.change_after_truncate:
                _CHANGED.setdefault(state, set()).add(token)
            if unframed:
                return _raw(request, status, body[: len(body) // 2], headers, None)
            return await _truncated(request, status, body, headers)
        lying = state.dice.roll(knobs.short_length_rate)
        if unframed or lying:
            stats.faults["short_length" if lying else "unframed"] += 1
            return _raw(request, status, body, headers, len(body) // 2 if lying else None)
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
    await asyncio.sleep(0.05)  # let the client read the prefix: aiohttp drops unread data
    if request.transport is not None:
        request.transport.close()
    return response


def _raw(
    request: web.Request, status: int, body: bytes, headers: dict[str, str], length: int | None
) -> web.Response:
    """Write the answer straight to the socket, then close: with ``length`` None there is
    neither Content-Length nor chunking (the close ends the body), else that (lying)
    Content-Length before the whole body. aiohttp then finds the transport closed."""
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Partial Content'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Connection: close")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    transport = request.transport
    if transport is not None:
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        transport.close()
    return web.Response(status=204)


async def _endless(request: web.Request, content_type: str) -> web.StreamResponse:
    """A body that never ends (the client must give up), streamed chunked."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    piece = bytes(_ENDLESS_PIECE)
    while True:
        await response.write(piece)
        await asyncio.sleep(0)


def _other_version(file: Rendered) -> Rendered:
    """The same media with other bytes from near its start on, and another ETag: a PNG
    chunk after IHDR, or an MP4 box after ``ftyp`` (a splice with the old bytes shows)."""
    marker = b"replaced after a cut download"
    body = file.body
    if body.startswith(b"\x89PNG"):
        at = 8 + 25  # the signature, then IHDR (length, type, 13 bytes, CRC)
        chunk = struct.pack(">I", len(marker)) + b"tEXt" + marker
        chunk += struct.pack(">I", zlib.crc32(b"tEXt" + marker))
    else:
        at = struct.unpack(">I", body[:4])[0] if body[4:8] == b"ftyp" else 0
        chunk = struct.pack(">I", 8 + len(marker)) + b"free" + marker
    body = body[:at] + chunk + body[at:]
    return Rendered(body, f'"{file.etag.strip(chr(34))}-v2"', file.content_type)


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
