"""Assembling an emulator's aiohttp application around its state.

Every emulator gets the same admin endpoints and file host; it adds its API's routes
and a catch-all that answers unknown paths with its API's own 404 body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from pipeline.emulators.admin import admin_routes
from pipeline.emulators.downloads import download
from pipeline.emulators.state import STATE_KEY, EmulatorState

__all__ = ["Handler", "build_app", "drop_connection", "json_body", "origin"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    state: EmulatorState, routes: Iterable[web.RouteDef], not_found: Handler
) -> web.Application:
    """An application serving ``routes``, the admin endpoints and ``/files/…``."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_routes(admin_routes())
    app.router.add_get("/files/{name}", download)
    app.router.add_routes(list(routes))
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


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
