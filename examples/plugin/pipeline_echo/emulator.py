"""A fake Echo API for ``emulate:`` and tests, built from pipeline's emulator kit.

Declared under the ``pipeline.emulators`` entry point group with the provider's type as
its name; ``create_app(knobs)`` returns the aiohttp application. The kit gives it what
every built-in emulator has: the knobs (task duration, failures, 429s, 5xx, dropped
submits…), the key gate and rate limits, the charge ledger, the file host for outputs.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from pipeline.emulators import EmulatorState, Knobs
from pipeline.emulators.app import admit_request, build_app, drop_connection, json_body, origin
from pipeline.emulators.render import ImageSpec
from pipeline.emulators.state import Admission
from pipeline.emulators.tasks import Phase, Task, Timeline, unique_id

__all__ = ["create_app"]

STATES = {Phase.QUEUED: "working", Phase.RUNNING: "working", Phase.SUCCEEDED: "done"}
REFUSED = {"missing_key": 401, "invalid_key": 401, "forbidden": 403, "no_credit": 402}


def create_app(knobs: Knobs) -> web.Application:
    state = EmulatorState("echo", knobs)
    routes = [web.post("/v1/jobs", submit), web.get("/v1/jobs/{id}", status)]
    return build_app(state, routes, not_found)


async def submit(request: web.Request) -> web.Response:
    state, admission = admit_request(request, "POST /v1/jobs")
    if admission.refusal is not None:
        return _refused(admission)
    try:
        body = json.loads(await request.read())
        prompt, seed = str(body["prompt"]), int(body.get("seed") or 0)
    except (ValueError, KeyError, TypeError):
        return _error(400, "bad_request", "a JSON object with a prompt is required")
    now = state.clock()
    line = Timeline.draw(state.knobs, state.dice, now)
    media = state.media.add(ImageSpec("Echo", prompt, seed, 256, 256))
    task = Task(unique_id(_task_id, state.tasks), admission.key, line, body, media)
    if line.fails:
        task.failure = ("echo_failed", "the echo faded")
    state.tasks.add(task)
    state.charge(task, "POST /v1/jobs", body)
    if state.drop_after_create():
        return drop_connection(request)
    return json_body({"id": task.id})


async def status(request: web.Request) -> web.Response:
    state, admission = admit_request(request, "GET /v1/jobs/{id}")
    if admission.refusal is not None:
        return _refused(admission)
    task = state.tasks.get(request.match_info["id"])
    if task is None or task.owner != admission.key:
        return _error(404, "not_found", "no such job")
    now = state.clock()
    phase = task.phase(now)
    view: dict[str, Any] = {"id": task.id, "state": STATES.get(phase, "error")}
    if phase is Phase.SUCCEEDED:
        path = state.media.path(task.media, now=now, ttl=state.knobs.url_ttl)
        view["url"] = origin(request) + path
    elif phase is Phase.FAILED and task.failure is not None:
        view["error"] = task.failure[1]
    return json_body(view)


async def not_found(request: web.Request) -> web.Response:
    return _error(404, "not_found", f"no route for {request.method} {request.path}")


def _refused(admission: Admission) -> web.Response:
    assert admission.refusal is not None
    code = admission.refusal.value
    headers = {"Retry-After": str(admission.retry_after)} if admission.retry_after else None
    return _error(REFUSED.get(code, 429 if "limit" in code else 503), code, code, headers)


def _error(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    return json_body({"code": code, "message": message}, status=status, headers=headers)


def _task_id() -> str:
    return "echo_" + secrets.token_hex(6)
