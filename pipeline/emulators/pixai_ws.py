"""PixAI's WebSocket side: the ``graphql-transport-ws`` protocol (graphql-ws v5, as the
JS SDK uses it), served at ``GET /graphql`` on the same server, and its admin switches.

Protocol (github.com/enisdenjo/graphql-ws PROTOCOL.md):

    client  connection_init {payload: {token} | {Authorization}}  (with or without "Bearer ")
    server  connection_ack
    client  subscribe {id, payload: {query, variables, operationName}}
    server  next {id, payload: ExecutionResult} … complete {id}   | error {id, payload: [errors]}
    either  ping / pong;  client complete {id} stops a subscription

Close codes: 4400 invalid message, 4401 subscribe before ack, 4403 bad token,
4406 wrong subprotocol, 4408 no connection_init in time, 4409 duplicate subscription
id, 4429 a second connection_init.

Admin (not part of PixAI):

- ``POST /_emulator/ws/drop`` ``{"down_seconds": 0}`` closes every socket (code 1012,
  "service restart") and refuses new upgrades with 503 for ``down_seconds``.
- ``GET/POST /_emulator/ws/config`` reads/changes ``event_loss_rate`` and
  ``foreign_events`` (see ``pixai_world.WsSettings``).
- ``GET /_emulator/ws`` open sockets, subscriptions and event counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import WSMsgType, web
from graphql import ExecutionResult, GraphQLError, OperationType

from pipeline.emulators.app import json_body, origin
from pipeline.emulators.ledger import key_fingerprint
from pipeline.emulators.pixai_schema import GqlContext, prepare, run_operation, run_subscription
from pipeline.emulators.pixai_world import PixaiWorld
from pipeline.emulators.state import STATE_KEY

__all__ = ["WORLD_KEY", "admin_routes", "websocket"]

PROTOCOL = "graphql-transport-ws"
INIT_TIMEOUT = 10.0
WORLD_KEY = web.AppKey("pixai_world", PixaiWorld)


class Closed(Exception):
    """Close the socket with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /graphql``: a graphql-transport-ws connection."""
    world = request.app[WORLD_KEY]
    world.state.stats.count("GET /graphql (websocket)")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return json_body({"message": "GET /graphql is for WebSocket subscriptions"}, status=400)
    if time.monotonic() < world.ws.down_until:
        return json_body({"message": "Service Unavailable"}, status=503)
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), autoping=True)
    await ws.prepare(request)
    if ws.ws_protocol != PROTOCOL:
        await ws.close(code=4406, message=b"Subprotocol not acceptable")
        return ws
    world.sockets.add(ws)
    connection = Connection(ws, world, origin(request))
    try:
        await connection.serve()
    finally:
        world.sockets.discard(ws)
        await connection.stop_all()
    return ws


class Connection:
    """One socket: its handshake state and running operations."""

    def __init__(self, ws: web.WebSocketResponse, world: PixaiWorld, base: str) -> None:
        self.ws = ws
        self.world = world
        self.base = base
        self.initialised = False
        self.ctx: GqlContext | None = None
        self.operations: dict[str, asyncio.Task[None]] = {}

    async def serve(self) -> None:
        try:
            await self._serve()
        except Closed as closed:
            await self.ws.close(code=closed.code, message=closed.reason.encode())

    async def _serve(self) -> None:
        init_timer = asyncio.get_running_loop().call_later(INIT_TIMEOUT, self._init_timeout)
        try:
            async for message in self.ws:
                if message.type is not WSMsgType.TEXT:
                    raise Closed(4400, "Only text messages are accepted")
                await self._handle(_decode(message.data))
                if self.initialised:
                    init_timer.cancel()
        finally:
            init_timer.cancel()

    def _init_timeout(self) -> None:
        if not self.initialised:
            asyncio.get_running_loop().create_task(
                self.ws.close(code=4408, message=b"Connection initialisation timeout")
            )

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connection_init":
            await self._init(message.get("payload"))
        elif kind == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if "payload" in message:
                pong["payload"] = message["payload"]
            await self._send(pong)
        elif kind == "pong":
            return
        elif kind == "subscribe":
            self._subscribe(message)
        elif kind == "complete":
            task = self.operations.pop(str(message.get("id")), None)
            if task is not None:
                task.cancel()
        else:
            raise Closed(4400, f"Invalid message type {kind!r}")

    async def _init(self, payload: Any) -> None:
        if self.initialised:
            raise Closed(4429, "Too many initialisation requests")
        self.world.state.stats.count("WS connection_init")
        token = _token(payload)
        knobs = self.world.state.knobs
        bad = [p for p in (knobs.invalid_key_prefix, knobs.forbidden_key_prefix) if p]
        if not token or any(token.startswith(prefix) for prefix in bad):
            raise Closed(4403, "Forbidden")
        self.ctx = GqlContext(self.world, key_fingerprint(token), token, self.base)
        self.initialised = True
        await self._send({"type": "connection_ack"})

    def _subscribe(self, message: dict[str, Any]) -> None:
        if not self.initialised:
            raise Closed(4401, "Unauthorized")
        op_id, payload = message.get("id"), message.get("payload")
        if not isinstance(op_id, str) or not op_id or not isinstance(payload, dict):
            raise Closed(4400, "Invalid subscribe message")
        if op_id in self.operations:
            raise Closed(4409, f"Subscriber for {op_id} already exists")
        task = asyncio.get_running_loop().create_task(self._operate(op_id, payload))
        self.operations[op_id] = task

    async def _operate(self, op_id: str, payload: dict[str, Any]) -> None:
        assert self.ctx is not None
        query, name = payload.get("query"), payload.get("operationName")
        variables = payload.get("variables")
        operation = prepare(query, name)
        self.world.state.stats.count(f"ws {operation.name}")
        if operation.errors:
            await self._send_errors(op_id, operation.errors)
            return
        try:
            if operation.kind is OperationType.SUBSCRIPTION:
                await self._stream(op_id, operation, variables, name)
            else:
                result = await run_operation(operation, self.ctx, variables, name)
                await self._send({"id": op_id, "type": "next", "payload": result.formatted})
            await self._send({"id": op_id, "type": "complete"})
        finally:
            self.operations.pop(op_id, None)

    async def _stream(self, op_id: str, operation: Any, variables: Any, name: Any) -> None:
        assert self.ctx is not None
        results = await run_subscription(operation, self.ctx, variables, name)
        if isinstance(results, ExecutionResult):
            await self._send_errors(op_id, results.errors or [])
            return
        try:
            async for result in results:
                await self._send({"id": op_id, "type": "next", "payload": result.formatted})
        finally:
            await results.aclose()

    async def _send_errors(self, op_id: str, errors: list[GraphQLError]) -> None:
        payload = [error.formatted for error in errors]
        await self._send({"id": op_id, "type": "error", "payload": payload})
        self.operations.pop(op_id, None)

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(json.dumps(message, separators=(",", ":")))

    async def stop_all(self) -> None:
        tasks = list(self.operations.values())
        self.operations.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ctx is not None:
            for stream in self.ctx.streams:
                await stream.aclose()


def _decode(data: str) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise Closed(4400, "Invalid message received") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise Closed(4400, "Invalid message received")
    return message


def _token(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    value = payload.get("token") or payload.get("Authorization") or payload.get("authorization")
    if not isinstance(value, str):
        return None
    scheme, _, rest = value.partition(" ")
    token = rest if scheme.lower() == "bearer" and rest else value
    return token.strip() or None


# -- admin ---------------------------------------------------------------------------


async def drop(request: web.Request) -> web.Response:
    world = request.app[WORLD_KEY]
    body = await _json(request)
    down = float(body.get("down_seconds", 0) or 0)
    world.ws.down_until = time.monotonic() + max(down, 0.0)
    sockets = list(world.sockets)
    for ws in sockets:
        await ws.close(code=1012, message=b"service restart")
    return web.json_response({"dropped": len(sockets), "down_seconds": down})


async def config(request: web.Request) -> web.Response:
    world = request.app[WORLD_KEY]
    if request.method == "POST":
        body = await _json(request)
        unknown = sorted(set(body) - {"event_loss_rate", "foreign_events"})
        if unknown:
            return web.json_response({"error": f"unknown setting(s) {unknown}"}, status=400)
        if "event_loss_rate" in body:
            rate = body["event_loss_rate"]
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                return web.json_response({"error": "event_loss_rate is 0..1"}, status=400)
            world.ws.event_loss_rate = float(rate)
        if "foreign_events" in body:
            world.ws.foreign_events = bool(body["foreign_events"])
    return web.json_response(
        {"event_loss_rate": world.ws.event_loss_rate, "foreign_events": world.ws.foreign_events}
    )


async def overview(request: web.Request) -> web.Response:
    world = request.app[WORLD_KEY]
    body: dict[str, Any] = {
        "sockets": len(world.sockets),
        "subscriptions": world.bus.subscriptions(),
        **world.bus.counters,
    }
    body["requests"] = dict(request.app[STATE_KEY].stats.requests)
    return web.json_response(body)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def admin_routes() -> list[web.RouteDef]:
    return [
        web.post("/_emulator/ws/drop", drop),
        web.get("/_emulator/ws/config", config),
        web.post("/_emulator/ws/config", config),
        web.get("/_emulator/ws", overview),
    ]
