"""httpx's transport interface over aiohttp: what ``pipeline.http.client``'s clients send
through by default (the measurements that chose it: benchmarks/RESULTS.md, section
"http/client.py").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    import aiohttp

__all__ = ["READ_AT_ONCE", "AiohttpTransport", "PlainBody", "WholePieceStream"]

READ_AT_ONCE = 256 * 1024
"""Bodies announced at most this long (Content-Length) are read by the transport in one
``await``; longer ones, or of unknown length, are streamed piece by piece. A small body
read at once costs less CPU than streamed (benchmarks/RESULTS.md, section
"http/transport.py"). Past this size a body that breaks off still leaves its prefix for
``pipeline.outputs.download`` to resume from (with a small ``chunk_size``)."""

_ErrorMap = Callable[[], AbstractContextManager[object]]  # map_aiohttp_exceptions


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over one ``aiohttp.ClientSession``.

    In place of httpx-aiohttp's ``AiohttpTransport``, which it follows in what it sends
    and in how errors map (its own ``map_aiohttp_exceptions``, so the aiohttp exception
    stays the ``__cause__`` that ``request_was_unsent`` inspects), but with less work
    per request: the URL is handed over already encoded (yarl does not parse and quote
    it again), headers as one list of strings, a ``ClientTimeout`` made once per
    distinct timeout, no cookie jar (``DummyCookieJar``), no decompression (httpx
    decodes). A body whose Content-Length is at most ``READ_AT_ONCE`` is read at once
    and handed over as a ``PlainBody`` (an ``httpx.ByteStream``; a plain one when it
    has a Content-Encoding for httpx to decode), so the connection goes back to the pool
    before the response is returned. Such a body is not kept for resuming if the
    transfer breaks (nor would ``pipeline.outputs.download`` keep it with its default 1 MiB
    held in memory).

    Longer bodies stream as aiohttp receives them (``WholePieceStream``).
    """

    def __init__(self, limits: httpx.Limits) -> None:
        import yarl
        from httpx_aiohttp.transport import map_aiohttp_exceptions

        self._yarl_url = yarl.URL
        self._map_errors = _mapping_all(map_aiohttp_exceptions)
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        limit = self._limits.max_connections
        connector = aiohttp.TCPConnector(
            limit=100 if limit is None else limit,  # aiohttp's default, as upstream
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=httpx.create_ssl_context(),  # what httpx verifies against (certifi, env)
        )
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        return self._session

    def _timeout(self, timeout: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        known = self._timeouts.get(key)
        if known is None:
            import aiohttp

            connect, read, pool = key
            known = aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)
            self._timeouts[key] = known
        return known

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session if self._session is not None else self._open()
        extensions = request.extensions
        headers = _header_strings(request.headers)
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:  # a streamed body: aiohttp chunks it itself
            data = request.stream  # type: ignore[assignment]
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        try:
            response = await session.request(
                request.method,
                self._yarl_url(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(extensions.get("timeout", {})),
                server_hostname=extensions.get("sni_hostname"),
            )
            stream: httpx.AsyncByteStream
            length = response.content_length
            if length is not None and length <= READ_AT_ONCE:
                body = await response.read()  # closes the response if it fails
                response.release()
                encoded = "Content-Encoding" in response.headers
                stream = httpx.ByteStream(body) if encoded else PlainBody(body)
            else:
                stream = WholePieceStream(response, self._map_errors)
        except Exception:
            with self._map_errors():  # maps it (or lets it through) as upstream does
                raise
        reason = response.reason
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason.encode()}
            if reason
            else {"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _mapping_all(upstream: _ErrorMap) -> _ErrorMap:
    """httpx-aiohttp's error map, plus what it lets through: any other aiohttp error (a
    response header past aiohttp's line limit, a malformed status line…) becomes an
    ``httpx.RemoteProtocolError``, so callers see only httpx's errors."""
    import aiohttp

    @contextmanager
    def mapping() -> Iterator[None]:
        try:
            with upstream():
                yield
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc

    return mapping


def _header_strings(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The headers as aiohttp takes them: names as given, values decoded as httpx would
    (ASCII almost always, and decoding it as such is cheaper than ``multi_items``)."""
    try:
        return [(name.decode("ascii"), value.decode("ascii")) for name, value in headers.raw]
    except UnicodeDecodeError:
        return headers.multi_items()


class PlainBody(httpx.ByteStream):
    """A body read whole by the transport that needs no decoding (no Content-Encoding):
    ``LeanClient`` makes it the response's content as it is."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.body = body


class WholePieceStream(httpx.AsyncByteStream):
    """A body handed on as aiohttp receives it.

    httpx-aiohttp's ``AiohttpResponseStream`` reads 16 KiB at a time, so a 200 MB body
    makes 12,000 trips through five async-generator layers (aiohttp → transport →
    httpx's bound stream → ``aiter_raw`` → ``aiter_bytes``), and a coalescing
    ``chunk_size`` on top copies every byte once more. ``iter_any()`` yields each piece
    the socket delivered (asyncio reads up to 256 KiB per ``recv``), without copying,
    for less CPU per MB (benchmarks/RESULTS.md, section "http/transport.py").
    """

    def __init__(self, response: aiohttp.ClientResponse, map_errors: _ErrorMap) -> None:
        self._response = response
        self._map_errors = map_errors

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with self._map_errors():
            async for piece in self._response.content.iter_any():
                yield piece

    async def aclose(self) -> None:
        with self._map_errors():
            self._response.release()
            await self._response.wait_for_close()
