"""PixAI (platform.pixai.art), emulated: a real GraphQL server built with graphql-core.

- ``POST /graphql`` ``{query, variables, operationName}`` runs queries and mutations
  (``createGenerationTask``, ``cancelGenerationTask``, ``deleteGenerationTask``,
  ``task(id)``, ``media(id)``); schema and resolvers in ``pixai_schema``.
- ``GET /graphql`` with ``Upgrade: websocket``: ``graphql-transport-ws`` subscriptions to
  ``personalEvents { taskUpdated }`` (``pixai_ws``), fed by one ticker per app
  (``pixai_world``).
- Auth ``Authorization: Bearer <key>``. Refused keys get a non-GraphQL body
  ``{"message": …}`` with the HTTP status (401 missing/invalid key, 403 forbidden), the
  shape the JS SDK handles besides GraphQL errors; injected faults likewise (429,
  500, 503). PixAI documents no rate-limit headers and no Retry-After, so none are sent
  unless the ``retry_after`` knob asks.
- A request that does not parse or validate is answered 400 with ``{"errors": […]}``
  (Apollo Server's behaviour; a GUESS for PixAI). Resolver errors (limit of 10 tasks in
  progress, bad parameters, no credit) come with HTTP 200, ``{"data": …, "errors": […]}``.
- ``/_emulator/stats`` counts each GraphQL operation as ``"graphql <operationName>"``
  (``"ws <operationName>"`` over the socket), besides ``"POST /graphql"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from pipeline.emulators.app import (
    admit_request,
    bearer_token,
    build_app,
    drop_connection,
    gateway_error,
    json_body,
    origin,
    retry_after_headers,
)
from pipeline.emulators.knobs import Knobs
from pipeline.emulators.pixai_schema import GqlContext, prepare, run_operation
from pipeline.emulators.pixai_world import PixaiWorld, Record
from pipeline.emulators.pixai_ws import WORLD_KEY, admin_routes, websocket
from pipeline.emulators.state import Admission, EmulatorState, Refusal

__all__ = ["create_app"]

ROUTE = "POST /graphql"
REFUSALS: dict[Refusal, tuple[int, str]] = {
    Refusal.MISSING_KEY: (401, "Unauthorized: missing API key"),
    Refusal.INVALID_KEY: (401, "Unauthorized: invalid API key"),
    Refusal.FORBIDDEN: (403, "Forbidden: this API key cannot use the API"),
    Refusal.NO_CREDIT: (402, "Insufficient credits"),
    Refusal.LIMIT_EXCEEDED: (429, "Too Many Requests"),
    Refusal.RATE_LIMITED: (429, "Too Many Requests"),
    Refusal.SERVER_ERROR: (500, "Internal Server Error"),
    Refusal.UNAVAILABLE: (503, "Service Unavailable"),
}


def create_app(knobs: Knobs) -> web.Application:
    """The PixAI emulator, behaving as ``knobs`` say."""
    state = EmulatorState("pixai", knobs)
    state.record_type = Record
    world = PixaiWorld(state)
    routes = [
        web.post("/graphql", graphql_http),
        web.get("/graphql", websocket),
        *admin_routes(),
    ]
    app = build_app(state, routes, not_found, echo=_echo)
    app[WORLD_KEY] = world

    async def ticking(_app: web.Application) -> Any:
        async with world.ticking():
            yield

    async def close_sockets(_app: web.Application) -> None:
        for ws in list(world.sockets):
            await ws.close(code=1001, message=b"server shutdown")

    app.cleanup_ctx.append(ticking)
    app.on_shutdown.append(close_sockets)
    return app


async def graphql_http(request: web.Request) -> web.Response:
    state, admission = admit_request(request, ROUTE)
    if admission.refusal is not None:
        return _refused(admission)
    api_key = bearer_token(request)  # admitted, so present; resolvers check its prefix
    assert api_key is not None
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    query, name, variables = body.get("query"), body.get("operationName"), body.get("variables")
    operation = prepare(query, name)
    state.stats.count(f"graphql {operation.name}")
    if operation.errors:
        return json_body({"errors": [e.formatted for e in operation.errors]}, status=400)
    if operation.kind is not None and operation.kind.value == "subscription":
        return _errors(400, "Subscriptions are served over WebSocket at GET /graphql")
    ctx = GqlContext(request.app[WORLD_KEY], admission.key, api_key, origin(request))
    result = await run_operation(operation, ctx, variables, name)
    return _answer(request, ctx, result.formatted)


def _answer(request: web.Request, ctx: GqlContext, formatted: Mapping[str, Any]) -> web.Response:
    """The result, unless a fault knob fired while the operation ran."""
    if ctx.drop_connection:
        return drop_connection(request)
    if ctx.error_status is not None:
        return gateway_error(ctx.error_status)
    return json_body(formatted)


async def not_found(request: web.Request) -> web.Response:
    return json_body({"message": f"Cannot {request.method} {request.path}"}, status=404)


def _refused(admission: Admission) -> web.Response:
    assert admission.refusal is not None
    status_code, message = REFUSALS[admission.refusal]
    headers = retry_after_headers(admission)
    return json_body({"message": message}, status=status_code, headers=headers)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _errors(400, "Body must be JSON: {query, variables, operationName}")
    if not isinstance(body, dict):
        return _errors(400, "Body must be a JSON object: {query, variables, operationName}")
    return body


def _echo(body: Any, text: str) -> None:
    """Knob ``echo_auth``: the credentials go into the message (plain or GraphQL)."""
    if not isinstance(body, dict):
        return
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        errors[0]["message"] = f"{errors[0].get('message', '')} {text}"
    elif "message" in body:
        body["message"] = f"{body['message']} {text}"


def _errors(status_code: int, message: str) -> web.Response:
    return json_body({"errors": [{"message": message}]}, status=status_code)
