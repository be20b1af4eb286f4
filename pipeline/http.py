"""HTTP clients and the boundary where transport errors become ours.

Code everywhere uses httpx's API. What runs underneath is chosen here, once: by default
the aiohttp transport from ``httpx-aiohttp`` (measured at several times less CPU per
request than httpx's own transport on this workload; see benchmarks/RESULTS.md), with
``PIPELINE_HTTP_BACKEND=httpx`` to fall back to httpx's native transport.

Two kinds of client, never mixed (contract 5):
- an *API client* per provider, carrying that provider's credentials, with event hooks
  that take a rate-limit token before every request and feed every response's rate
  headers back to the limiter;
- one *download client* with no credentials at all, for result URLs on other hosts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from pipeline.errors import SubmitUnknown, TransientError

__all__ = [
    "RequestHook",
    "ResponseHook",
    "make_api_client",
    "make_download_client",
    "request_was_unsent",
    "send",
]

RequestHook = Callable[[httpx.Request], Awaitable[None]]
ResponseHook = Callable[[httpx.Response], Awaitable[None]]

USER_AGENT = "pipeline/0.1 (+https://github.com/pipeline)"


def _backend() -> str:
    return os.environ.get("PIPELINE_HTTP_BACKEND", "aiohttp")


def _transport(max_connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if _backend() == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits)
    return _aiohttp_transport(limits)


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport, with bodies handed on as aiohttp receives them.

    Upstream's ``AiohttpResponseStream`` reads 16 KiB at a time, so a 200 MB body makes
    12,000 trips through five async-generator layers (aiohttp → transport → httpx's
    bound stream → ``aiter_raw`` → ``aiter_bytes``), and a coalescing ``chunk_size``
    on top copies every byte once more. ``iter_any()`` yields each piece the socket
    delivered (asyncio reads up to 256 KiB per ``recv``), without copying. Measured
    on the project machine (benchmarks scenario 2, one 200 MB file over loopback, with
    pipeline.download): 16 KiB pieces 1.9-2.9 ms of CPU per MB, whole pieces 1.45.
    The stream is swapped after upstream builds the response, so everything else
    (request, timeouts, error mapping) stays upstream's; if a future httpx-aiohttp
    renames the private ``_aiohttp_response``, its own stream is kept.
    """
    from httpx_aiohttp.transport import (
        AiohttpResponseStream,
        AiohttpTransport,
        map_aiohttp_exceptions,
    )

    class WholePieceStream(AiohttpResponseStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            with map_aiohttp_exceptions():
                async for piece in self._aiohttp_response.content.iter_any():
                    yield piece

    class Transport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response: httpx.Response = await super().handle_async_request(request)
            upstream = response.stream
            raw = getattr(upstream, "_aiohttp_response", None)  # absent: keep upstream's
            if isinstance(upstream, AiohttpResponseStream) and raw is not None:
                response.stream = WholePieceStream(raw)
            return response

    transport: httpx.AsyncBaseTransport = Transport(limits=limits)
    return transport


def make_api_client(
    base_url: str,
    *,
    headers: Mapping[str, str],
    timeout: float,
    max_connections: int,
    on_request: RequestHook | None = None,
    on_response: ResponseHook | None = None,
) -> httpx.AsyncClient:
    """A client for one provider's API: its base URL, its credentials, its limiter."""
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [], "response": []}
    if on_request is not None:
        hooks["request"].append(on_request)
    if on_response is not None:
        hooks["response"].append(on_response)
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, **headers},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        transport=_transport(max_connections),
        event_hooks=hooks,
        follow_redirects=False,
    )


def make_download_client(*, timeout: float, max_connections: int) -> httpx.AsyncClient:
    """A client for result URLs. It carries no credentials whatsoever (contract 5)."""
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        transport=_transport(max_connections),
        follow_redirects=True,
    )


def request_was_unsent(exc: BaseException) -> bool:
    """True only when the request provably never reached the server.

    A refused or failed connection means nothing was sent. Anything else (a read
    timeout, a dropped connection after sending) leaves the outcome unknown. The aiohttp
    transport maps every ``ClientConnectionError`` — including a server that hung up
    after reading the request — to ``httpx.ConnectTimeout``, so the original aiohttp
    exception is inspected rather than trusting the mapped httpx type.
    """
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        import aiohttp

        return isinstance(cause, aiohttp.ClientConnectorError)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    submit: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request, reading the whole body; transport trouble becomes our errors.

    With ``submit=True`` a failure after the request may have left raises
    ``SubmitUnknown`` (contract 2); otherwise transport trouble is a ``TransientError``.
    """
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        what = f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": ")
        if submit and not request_was_unsent(exc):
            raise SubmitUnknown(f"no answer to submit ({what})") from exc
        raise TransientError(f"request failed ({what})") from exc
    return response
