"""Assembling an emulator's aiohttp application around its state.

Every emulator gets the same admin endpoints and file host; it adds its API's routes
and a catch-all that answers unknown paths with its API's own 404 body. The helpers
below are the parts every API handler shares: the bearer key, the counted and gated
prologue (``admit_request``), ``Retry-After`` on refusals, JSON bodies and dropped
connections.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from pipeline.emulators.admin import admin_routes
from pipeline.emulators.downloads import download
from pipeline.emulators.state import STATE_KEY, Admission, EmulatorState

__all__ = [
    "EchoHook",
    "Handler",
    "admit_request",
    "bearer_token",
    "build_app",
    "drop_connection",
    "gateway_error",
    "json_body",
    "origin",
    "retry_after_headers",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EchoHook = Callable[[Any, str], None]
"""Adds an echo text to an error body in the API's own words (knob ``echo_auth``)."""


def build_app(
    state: EmulatorState,
    routes: Iterable[web.RouteDef],
    not_found: Handler,
    *,
    echo: EchoHook | None = None,
) -> web.Application:
    """An application serving ``routes``, the admin endpoints and ``/files/…``.

    Any other path is counted as ``"<METHOD> (unknown path)"`` and answered by
    ``not_found``, which only renders the API's 404 body. With knob ``echo_auth`` on,
    ``echo`` writes the caller's credentials into every JSON error body.
    """

    async def unknown_path(request: web.Request) -> web.StreamResponse:
        state.stats.count(f"{request.method} (unknown path)")
        return await not_found(request)

    middlewares: list[Any] = [_count_in_progress, _pad_status]
    if echo is not None:
        middlewares.append(_echo_middleware(state, echo))
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=middlewares)
    app[STATE_KEY] = state
    app.router.add_routes(admin_routes())
    app.router.add_get("/files/{name}", download)
    app.router.add_routes(list(routes))
    app.router.add_route("*", "/{tail:.*}", unknown_path)
    return app


def _echo_middleware(state: EmulatorState, echo: EchoHook) -> Any:
    @web.middleware
    async def echo_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not state.knobs.echo_auth or response.status < 400:
            return response
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        try:
            body = json.loads(response.body)
        except ValueError:
            return response
        echo(body, echo_text(request))
        response.body = json.dumps(body, separators=(",", ":")).encode()
        return response

    return echo_auth


def echo_text(request: web.Request) -> str:
    """The caller's credentials as a careless API quotes them: the bare key, the header
    and the key URL-encoded (so that every form must be redacted by the client)."""
    auth = request.headers.get("Authorization", "")
    key = bearer_token(request) or ""
    return f"(token {key} sent as 'Authorization: {auth}', url-encoded {quote(key, safe='')})"


@web.middleware
async def _count_in_progress(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count API requests being handled, for ``peak_requests``: not admin calls, file
    downloads or WebSocket connections (which stay open)."""
    state = request.app[STATE_KEY]
    path = request.path
    if (
        path.startswith(("/_emulator/", *state.file_paths))
        or request.headers.get("Upgrade", "").lower() == "websocket"
    ):
        return await handler(request)
    state.stats.request_started()
    try:
        return await handler(request)
    finally:
        state.stats.request_ended()


@web.middleware
async def _pad_status(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``status_pad_bytes``: a JSON answer to a GET behind that many spaces, chunked."""
    response = await handler(request)
    pad = request.app[STATE_KEY].knobs.status_pad_bytes
    if not pad or request.method != "GET" or not isinstance(response, web.Response):
        return response
    if response.content_type != "application/json" or request.path.startswith("/_emulator"):
        return response
    body = response.body if isinstance(response.body, bytes) else b""
    padded = web.StreamResponse(
        status=response.status, headers={"Content-Type": "application/json"}
    )
    await padded.prepare(request)
    spaces = b" " * min(pad, 1 << 20)
    left = pad
    while left > 0:
        await padded.write(spaces[:left])
        left -= len(spaces)
    await padded.write(body)
    await padded.write_eof()
    return padded


def bearer_token(request: web.Request) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header; None if absent or blank."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def admit_request(
    request: web.Request, route: str, *, credit_documented: bool = False
) -> tuple[EmulatorState, Admission]:
    """Every API handler's prologue: count the request under ``route`` (the stats key),
    then pass its bearer key through ``state.admit``. The caller renders a refusal."""
    state = request.app[STATE_KEY]
    state.stats.count(route)
    admission = state.admit(bearer_token(request), credit_documented=credit_documented, route=route)
    return state, admission


def retry_after_headers(admission: Admission) -> dict[str, str]:
    """``{"Retry-After": …}`` when the refusal carries one (a 429 whose knob asks), else
    ``{}``."""
    if admission.retry_after is None:
        return {}
    return {"Retry-After": str(admission.retry_after)}


def origin(request: web.Request) -> str:
    """``scheme://host[:port]`` as the client addressed this server."""
    return f"{request.scheme}://{request.host}"


def json_body(
    payload: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A compact JSON response (lean: no content negotiation, no charset dance)."""
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection without answering: the client sees no response at all.

    Return the result from the handler; aiohttp then finds the transport closed and
    writes nothing.
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def gateway_error(status: int) -> web.Response:
    """A 5xx in a gateway's words (plain text, not the API's error body): what a client
    sees when a proxy fails after the origin already created the task."""
    return web.Response(status=status, text=f"error code: {status}")
