"""``/_emulator/…``: what tests and benchmarks ask an emulator about itself.

- ``GET  /_emulator/ledger``  every accepted submit: ``{"count", "charges": [...]}``
- ``GET  /_emulator/stats``   request counters, injected faults, download counters, and
  ``active_tasks``/``peak_tasks`` (tasks created and not yet ended, now and at most at
  once) and ``active_requests``/``peak_requests`` (API requests being handled)
- ``GET  /_emulator/config``  the knobs, as a JSON object
- ``POST /_emulator/config``  change some knobs (a partial object); answers with all knobs
- ``POST /_emulator/reset``   forget tasks, media, charges, counters and peaks; keep the knobs
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pipeline.emulators.state import STATE_KEY

__all__ = ["admin_routes"]


async def ledger(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"provider": state.provider, **state.ledger.to_dict()})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body: dict[str, Any] = {"provider": state.provider, **state.stats_dict()}
    body["tasks"] = len(state.tasks)
    body["charges"] = len(state.ledger)
    return web.json_response(body)


async def read_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].knobs.to_dict())


async def change_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = json.loads(await request.read() or b"{}")
    except ValueError:
        return _bad_request("the body must be JSON")
    if not isinstance(changes, dict):
        return _bad_request("the body must be a JSON object of knob names and values")
    try:
        knobs = state.configure(changes)
    except ValueError as error:
        return _bad_request(str(error))
    return web.json_response(knobs.to_dict())


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


def admin_routes() -> list[web.RouteDef]:
    return [
        web.get("/_emulator/ledger", ledger),
        web.get("/_emulator/stats", stats),
        web.get("/_emulator/config", read_config),
        web.post("/_emulator/config", change_config),
        web.post("/_emulator/reset", reset),
    ]
