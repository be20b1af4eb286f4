"""AceData Cloud — Pixverse (platform.acedata.cloud/documents/pixverse), emulated.

- ``POST /pixverse/videos`` ``{action: generate, prompt, model, style, quality,
  duration, motion, aspect_ratio, seed, template_id, image_url, callback_url…}``.
  With ``callback_url`` it answers at once ``{"task_id": "<uuid>"}`` and, when the task
  ends, POSTs the full body to the callback (through ``callbacks.CallbackSender``).
  Without it, it **blocks** until the task ends and answers the full body, as the docs
  say; such submits are counted as ``POST /pixverse/videos (blocking)`` in the stats.
- Full success body: ``{"success": true, "task_id", "trace_id", "data": [{id,
  video_url, first_frame, last_frame, video_width, video_height, prompt, model, quality,
  motion, template_id, template_name, style, aspect_ratio, duration, extended, seed,
  asset_id, asset_name}]}``. A failed task: ``{"success": false, "task_id", "trace_id",
  "error": {code, message}}`` (a GUESS: failures are not documented).
- ``POST /pixverse/tasks`` ``{"id", "action": "retrieve"}`` → the task record ``{_id, id,
  api_id, application_id, created_at, credential_id, user_id, trace_id, request,
  response}``; ``response`` is absent until the task ends (GUESS, as the reference
  says), so queued and running look alike. ``{"ids": […], "action": "retrieve_batch"}``
  → ``{"items": […], "count"}``; unknown ids are left out. A single unknown id is 404
  ``not_found`` (GUESS). Counted per action: ``POST /pixverse/tasks (retrieve_batch)``.
- Errors: ``{"success": false, "error": {"code", "message"}, "trace_id"}``: 400
  ``bad_request``/``token_mismatched``, 401 ``no_token``/``invalid_token``, 403
  ``used_up``, 429 ``too_many_requests``, 500 ``api_error``. No rate-limit headers.

The video is real but short (``video.VideoSpec``: one second, 320 px on the long side)
whatever ``duration`` and ``quality`` say; the data item echoes what was asked for and
states the true pixel size.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.emulators.app import (
    admit_request,
    drop_connection,
    gateway_error,
    json_body,
    origin,
    retry_after_headers,
)
from pipeline.emulators.callbacks import SENDER_KEY, build_app_with_callbacks
from pipeline.emulators.knobs import Knobs
from pipeline.emulators.state import STATE_KEY, Admission, EmulatorState, Refusal
from pipeline.emulators.tasks import Phase, Task, Timeline, extra_of
from pipeline.emulators.video import VideoSpec, size_for_ratio

__all__ = ["BATCH_LIMIT", "BLOCKING_ROUTE", "SUBMIT_ROUTE", "create_app", "tasks_route"]

PROVIDER = "Pixverse"
SUBMIT_ROUTE = "POST /pixverse/videos"
BLOCKING_ROUTE = "POST /pixverse/videos (blocking)"
TASKS_ROUTE = "POST /pixverse/tasks"
ACTIONS = ("retrieve", "retrieve_batch")
BATCH_LIMIT = 100
"""Most ids one retrieve_batch accepts (GUESS: the docs state no limit)."""
BLOCKING_TICK = 0.05
API_ID = "2cc118fc-d019-4782-b02f-649df3b9f603"
MODELS = ("v3.5", "v4", "v4.5")
STYLES = ("cyberpunk", "anime", "comic", "clay", "3d_animation", "realistic")
QUALITIES = ("360p", "540p", "720p", "1080p")
DURATIONS = (5, 8)
MOTIONS = ("normal", "fast")
ASPECT_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16")
MAX_SEED = 2**31 - 1
FAILURES = (
    (403, "forbidden", "The prompt was rejected by content moderation."),
    (500, "api_error", "fetch failed"),
    (500, "api_error", "Video generation failed, please try again later."),
)
REFUSALS: dict[Refusal, tuple[int, str, str]] = {
    Refusal.MISSING_KEY: (401, "no_token", "The authorization token is missing."),
    Refusal.INVALID_KEY: (401, "invalid_token", "The authorization token is invalid."),
    Refusal.FORBIDDEN: (400, "token_mismatched", "The token does not belong to this API."),
    Refusal.NO_CREDIT: (403, "used_up", "The balance of this application is used up."),
    Refusal.LIMIT_EXCEEDED: (429, "too_many_requests", "Too many requests."),
    Refusal.RATE_LIMITED: (429, "too_many_requests", "Too many requests."),
    Refusal.SERVER_ERROR: (500, "api_error", "fetch failed"),
    Refusal.UNAVAILABLE: (503, "api_error", "The service is temporarily unavailable."),
}


@dataclass(frozen=True, slots=True)
class _Record:
    """What the task record shows beyond the common task."""

    fields: dict[str, Any]  # _id, id, api_id, application_id, created_at, … (no response)
    item: dict[str, Any]  # the data item, without video_url
    failure_status: int = 200  # the blocking submit's HTTP status when the task fails

    @property
    def trace_id(self) -> str:
        return str(self.fields["trace_id"])


class Invalid(ValueError):
    """A request field breaks the documented rules (400 bad_request)."""


def create_app(knobs: Knobs) -> web.Application:
    """The Pixverse emulator, behaving as ``knobs`` say."""
    state = EmulatorState("acedata", knobs)
    state.record_type = _Record
    routes = [
        web.post("/pixverse/videos", submit),
        web.post("/pixverse/tasks", tasks),
    ]
    return build_app_with_callbacks(state, routes, not_found, echo=_echo)


def tasks_route(action: str) -> str:
    """The stats key of a tasks request with this action."""
    return f"{TASKS_ROUTE} ({action if action in ACTIONS else 'other'})"


# -- submit ------------------------------------------------------------------------------


async def submit(request: web.Request) -> web.Response:
    body = await _json(request)
    blocking = not (isinstance(body, dict) and body.get("callback_url"))
    route = BLOCKING_ROUTE if blocking else SUBMIT_ROUTE
    state, admission = admit_request(request, route, credit_documented=True)
    if admission.refusal is not None:
        return _refused(admission)
    try:
        params = _validated(body)
    except Invalid as invalid:
        return _error(400, "bad_request", str(invalid))
    task = _create(state, admission.key, params, body)
    state.charge(task, SUBMIT_ROUTE, body)
    base = origin(request)
    if not blocking:
        _schedule_callback(request.app, task, params["callback_url"], base)
    if state.drop_after_create():
        return drop_connection(request)
    if (failed := state.error_after_create()) is not None:
        return gateway_error(failed)
    if not blocking:
        return json_body({"task_id": task.id})
    return await _blocking_answer(state, task, base)


def _schedule_callback(app: web.Application, task: Task, url: str, base: str) -> None:
    state = app[STATE_KEY]

    def payload() -> Mapping[str, Any]:
        return _response(state, task, base)

    app[SENDER_KEY].schedule(url, task.id, task.timeline.finished_at, payload)


async def _blocking_answer(state: EmulatorState, task: Task, base: str) -> web.Response:
    """Hold the connection until the task ends (minutes, at the real API)."""
    while not _finished(state, task):
        remaining = task.timeline.finished_at - state.clock()
        await asyncio.sleep(min(BLOCKING_TICK, max(remaining, 0.0)) or BLOCKING_TICK / 10)
    answer = _response(state, task, base)
    if task.failure is not None:
        return json_body(answer, status=extra_of(task, _Record).failure_status)
    return json_body(answer)


def _create(state: EmulatorState, owner: str, params: dict[str, Any], body: Any) -> Task:
    now = state.clock()
    line = Timeline.draw(state.knobs, state.dice, now)
    seed = params["seed"] if params["seed"] is not None else state.dice.randbits(31)
    width, height = size_for_ratio(params["aspect_ratio"])
    details = (f"{params['model']} · {params['quality']} · {params['aspect_ratio']}",)
    media = state.media.add(VideoSpec(PROVIDER, params["prompt"], seed, width, height, details))
    fields = _fields(str(uuid.uuid4()), owner, now, body)
    failure = state.dice.choice(FAILURES) if line.fails else None
    record = _Record(fields, _item(params, seed, width, height), failure[0] if failure else 200)
    task = Task(
        id=fields["id"],
        owner=owner,
        timeline=line,
        params=params,
        media=media,
        failure=(failure[1], failure[2]) if failure else None,
        extra=record,
    )
    state.tasks.add(task)
    return task


def _fields(task_id: str, owner: str, now: float, body: Any) -> dict[str, Any]:
    account = uuid.uuid5(uuid.NAMESPACE_URL, owner)
    return {
        "_id": secrets.token_hex(12),
        "id": task_id,
        "api_id": API_ID,
        "application_id": str(uuid.uuid5(account, "application")),
        "created_at": round(now, 3),
        "credential_id": str(uuid.uuid5(account, "credential")),
        "request": body,
        "trace_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid5(account, "user")),
    }


def _item(params: dict[str, Any], seed: int, width: int, height: int) -> dict[str, Any]:
    return {
        "id": secrets.randbits(48),
        "first_frame": "",
        "video_width": width,
        "video_height": height,
        "prompt": params["prompt"],
        "model": params["model"],
        "quality": params["quality"],
        "motion": params["motion"],
        "template_id": params["template_id"],
        "template_name": "",
        "style": params["style"],
        "aspect_ratio": params["aspect_ratio"],
        "duration": params["duration"],
        "extended": 0,
        "last_frame": "",
        "seed": seed,
        "asset_id": 0,
        "asset_name": "",
    }


# -- tasks -------------------------------------------------------------------------------


async def tasks(request: web.Request) -> web.Response:
    body = await _json(request)
    action = body.get("action") if isinstance(body, dict) else None
    state, admission = admit_request(request, tasks_route(str(action)))
    if admission.refusal is not None:
        return _refused(admission)
    base = origin(request)
    if action == "retrieve":
        return _retrieve(state, admission.key, body.get("id"), base)
    if action == "retrieve_batch":
        return _retrieve_batch(state, admission.key, body.get("ids"), base)
    return _error(400, "bad_request", "action must be one of: retrieve, retrieve_batch")


def _retrieve(state: EmulatorState, owner: str, task_id: Any, base: str) -> web.Response:
    if not isinstance(task_id, str) or not task_id:
        return _error(400, "bad_request", "id is required")
    task = state.tasks.get(task_id)
    if task is None or task.owner != owner:
        return _error(404, "not_found", f"task {task_id} not found")
    return json_body(_view(state, task, base))


def _retrieve_batch(state: EmulatorState, owner: str, ids: Any, base: str) -> web.Response:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _error(400, "bad_request", "ids must be an array of task ids")
    if len(ids) > BATCH_LIMIT:
        return _error(400, "bad_request", f"ids may hold at most {BATCH_LIMIT} task ids")
    items = []
    for task_id in dict.fromkeys(ids):
        task = state.tasks.get(task_id)
        if task is not None and task.owner == owner:
            items.append(_view(state, task, base))
    return json_body({"items": items, "count": len(items)})


def _view(state: EmulatorState, task: Task, base: str) -> dict[str, Any]:
    record = extra_of(task, _Record)
    view = dict(record.fields)
    if _finished(state, task):
        view["response"] = _response(state, task, base)
    return view


def _response(state: EmulatorState, task: Task, base: str) -> dict[str, Any]:
    """The full body of a finished task (as the blocking submit and the callback send)."""
    record = extra_of(task, _Record)
    if task.failure is not None:
        code, message = task.failure
        error = {"code": code, "message": message}
        return {"success": False, "task_id": task.id, "trace_id": record.trace_id, "error": error}
    now = state.clock()
    url = base + state.media.path(
        task.media, now=now, ttl=state.knobs.url_ttl, stale=state.knobs.stale_urls
    )
    item = {**record.item, "video_url": url}
    return {"success": True, "task_id": task.id, "trace_id": record.trace_id, "data": [item]}


def _finished(state: EmulatorState, task: Task) -> bool:
    return task.phase(state.clock()) in (Phase.SUCCEEDED, Phase.FAILED)


# -- validation --------------------------------------------------------------------------


def _validated(body: Any) -> dict[str, Any]:
    """The documented fields of a generate request, with defaults filled in."""
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    action = body.get("action", "generate")
    if action not in ("generate", "extend"):
        raise Invalid("action must be one of: generate, extend")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("prompt is required")
    if action == "extend" and not body.get("video_id"):
        raise Invalid("video_id is required to extend a video")
    return {
        "prompt": prompt,
        "model": _choice(body, "model", MODELS),
        "style": _choice(body, "style", ("", *STYLES)),
        "quality": _choice(body, "quality", QUALITIES, default="540p"),
        "duration": _choice(body, "duration", DURATIONS),
        "motion": _choice(body, "motion", MOTIONS),
        "aspect_ratio": _choice(body, "aspect_ratio", ASPECT_RATIOS),
        "seed": _integer(body, "seed", MAX_SEED),
        "template_id": _integer(body, "template_id", 2**53) or 0,
        "callback_url": _url(body, "callback_url"),
        "image_url": _url(body, "image_url"),
    }


def _choice(body: dict[str, Any], field: str, allowed: tuple[Any, ...], default: Any = None) -> Any:
    value = body.get(field, allowed[0] if default is None else default)
    if value not in allowed or isinstance(value, bool):
        shown = ", ".join(str(a) for a in allowed if a != "")
        raise Invalid(f"{field} must be one of: {shown}")
    return value


def _integer(body: dict[str, Any], field: str, maximum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise Invalid(f"{field} must be an integer from 0 to {maximum}")
    return value


def _url(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise Invalid(f"{field} must be an http(s) URL")
    return value


# -- plumbing ----------------------------------------------------------------------------


async def not_found(request: web.Request) -> web.Response:
    return _error(404, "not_found", f"No route for {request.method} {request.path}")


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        return None


def _refused(admission: Admission) -> web.Response:
    assert admission.refusal is not None
    status_code, code, message = REFUSALS[admission.refusal]
    return _error(status_code, code, message, retry_after_headers(admission))


def _echo(body: Any, text: str) -> None:
    """Knob ``echo_auth``: the credentials go into ``error.message``."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error["message"] = f"{error.get('message', '')} {text}"


def _error(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"success": False, "error": {"code": code, "message": message}}
    body["trace_id"] = str(uuid.uuid4())
    return json_body(body, status=status_code, headers=headers)
