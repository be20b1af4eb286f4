"""PixelLabs AI (docs.pixellabsai.app/api-reference), emulated.

- ``POST /v1/generate`` → ``{"generationId":"gen_…","status":"queued","estimatedTime",
  "createdAt"}`` (status 200; the docs do not say which, 200 is the guess).
- ``GET /v1/generate/{id}`` → ``generationId, status (queued|processing|completed|failed),
  progress (0-100), metadata{prompt, style, aspectRatio, quality, seed, model}, createdAt``
  plus ``imageUrl, arweaveUrl, completedAt`` once completed, ``error{code, message}``
  once failed (the failed shape is a guess; it is not documented).
- Errors: flat ``{"error": "<code>", "message": "…", "details": {}}``.
- Every API response carries ``X-RateLimit-Limit/-Remaining/-Reset`` (epoch seconds).

``imageUrl`` points at this server's ``/files/…``; ``arweaveUrl`` at ``/arweave/<txid>``
on this server, a permanent copy that never expires.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.emulators.app import (
    admit_request,
    build_app,
    drop_connection,
    gateway_error,
    json_body,
    origin,
    retry_after_headers,
)
from pipeline.emulators.downloads import send_file
from pipeline.emulators.knobs import Knobs
from pipeline.emulators.render import ImageSpec, size_for_ratio
from pipeline.emulators.state import STATE_KEY, Admission, EmulatorState, Refusal
from pipeline.emulators.tasks import Phase, Task, Timeline, extra_of, unique_id

__all__ = ["create_app"]

PROVIDER = "PixelLabs"
MODEL = "synthetix-v2.1"
SUBMIT_ROUTE = "POST /v1/generate"
STATUS_ROUTE = "GET /v1/generate/{id}"
STYLES = ("digital_art", "photorealistic", "anime", "3d_render", "oil_painting")
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")
QUALITIES = ("standard", "high", "ultra")
MAX_SEED = 2**32 - 1
STATUS_WORDS = {
    Phase.QUEUED: "queued",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "completed",
    Phase.FAILED: "failed",
}
FAILURES = (
    ("content_policy_violation", "The prompt was rejected by the content filter."),
    ("generation_failed", "The model failed to generate an image. Please try again."),
    ("timeout", "Generation exceeded the time limit."),
)
REFUSALS: dict[Refusal, tuple[int, str, str]] = {
    Refusal.MISSING_KEY: (401, "invalid_token", "Missing or malformed Authorization header"),
    Refusal.INVALID_KEY: (401, "invalid_token", "Invalid or expired API token"),
    Refusal.FORBIDDEN: (403, "insufficient_permissions", "This token cannot use this endpoint"),
    Refusal.NO_CREDIT: (403, "insufficient_permissions", "Insufficient credits"),
    Refusal.LIMIT_EXCEEDED: (429, "rate_limit_exceeded", "Rate limit exceeded"),
    Refusal.RATE_LIMITED: (429, "rate_limit_exceeded", "Rate limit exceeded"),
    Refusal.SERVER_ERROR: (500, "internal_error", "An internal error occurred"),
    Refusal.UNAVAILABLE: (503, "service_unavailable", "The service is temporarily unavailable"),
}


@dataclass(frozen=True, slots=True)
class _Record:
    """What PixelLabs shows about a generation beyond the common task."""

    metadata: dict[str, Any]
    created_at: str
    completed_at: str
    arweave_id: str


class Invalid(ValueError):
    """A request field breaks the documented rules (400 validation_error)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def create_app(knobs: Knobs) -> web.Application:
    """The PixelLabs emulator, behaving as ``knobs`` say."""
    state = EmulatorState("pixellabs", knobs)
    state.file_paths = (*state.file_paths, "/arweave/")
    state.record_type = _Record
    routes = [
        web.post("/v1/generate", submit),
        web.get("/v1/generate/{id}", status),
        web.get("/arweave/{txid}", arweave),
    ]
    return build_app(state, routes, not_found, echo=_echo)


async def submit(request: web.Request) -> web.Response:
    state, admission = admit_request(request, SUBMIT_ROUTE)
    headers = admission.quota.headers()
    if admission.refusal is not None:
        return _refused(admission, headers)
    try:
        body = json.loads(await request.read())
        params = _validated(body)
    except Invalid as invalid:
        return _error(400, "validation_error", str(invalid), headers, {"field": invalid.field})
    except ValueError:
        return _error(400, "validation_error", "The request body must be valid JSON", headers)
    task = _create(state, admission.key, params)
    state.charge(task, SUBMIT_ROUTE, body)
    if state.drop_after_create():
        return drop_connection(request)
    if (failed := state.error_after_create()) is not None:
        return gateway_error(failed)
    line = task.timeline
    answer = {
        "generationId": task.id,
        "status": "queued",
        "estimatedTime": max(1, math.ceil(line.finished_at - line.created_at)),
        "createdAt": extra_of(task, _Record).created_at,
    }
    return json_body(answer, headers=headers)


async def status(request: web.Request) -> web.Response:
    state, admission = admit_request(request, STATUS_ROUTE)
    headers = admission.quota.headers()
    if admission.refusal is not None:
        return _refused(admission, headers)
    task = state.tasks.get(request.match_info["id"])
    if task is None or task.owner != admission.key:
        return _error(404, "not_found", "Generation not found", headers)
    return json_body(_view(state, task, origin(request)), headers=headers)


async def arweave(request: web.Request) -> web.StreamResponse:
    """The permanent copy: no key, no expiry."""
    state = request.app[STATE_KEY]
    state.stats.count(f"{request.method} /arweave/{{txid}}")
    token = state.media.resolve(request.match_info["txid"]) or ""
    return await send_file(request, state, token)


async def not_found(request: web.Request) -> web.Response:
    return _error(404, "not_found", f"No route for {request.method} {request.path}", {})


def _create(state: EmulatorState, owner: str, params: dict[str, Any]) -> Task:
    now = state.clock()
    line = Timeline.draw(state.knobs, state.dice, now)
    seed = params["seed"] if params["seed"] is not None else state.dice.randbits(32)
    width, height = size_for_ratio(params["aspectRatio"])
    details = (f"{params['style']} · {params['aspectRatio']} · {params['quality']}",)
    token = state.media.add(ImageSpec(PROVIDER, params["prompt"], seed, width, height, details))
    arweave_id = secrets.token_urlsafe(32)
    state.media.alias(arweave_id, token)
    metadata = {key: params[key] for key in ("prompt", "style", "aspectRatio", "quality")}
    metadata |= {"seed": seed, "model": MODEL}
    if params.get("negativePrompt"):
        metadata["negativePrompt"] = params["negativePrompt"]
    record = _Record(metadata, _iso(now), _iso(line.finished_at), arweave_id)
    task = Task(
        id=unique_id(_generation_id, state.tasks),
        owner=owner,
        timeline=line,
        params=params,
        media=token,
        failure=state.dice.choice(FAILURES) if line.fails else None,
        extra=record,
    )
    state.tasks.add(task)
    return task


def _view(state: EmulatorState, task: Task, base: str) -> dict[str, Any]:
    now = state.clock()
    phase = task.phase(now)
    record = extra_of(task, _Record)
    view: dict[str, Any] = {
        "generationId": task.id,
        "status": STATUS_WORDS[phase],
        "progress": math.floor(task.progress(now) * 100),
    }
    if phase is Phase.SUCCEEDED:
        path = state.media.path(
            task.media, now=now, ttl=state.knobs.url_ttl, stale=state.knobs.stale_urls
        )
        view["imageUrl"] = base + path
        view["arweaveUrl"] = f"{base}/arweave/{record.arweave_id}"
    view["metadata"] = record.metadata
    view["createdAt"] = record.created_at
    if phase is Phase.SUCCEEDED:
        view["completedAt"] = record.completed_at
    elif phase is Phase.FAILED and task.failure is not None:
        view["error"] = {"code": task.failure[0], "message": task.failure[1]}
    return view


def _validated(body: Any) -> dict[str, Any]:
    """The documented fields of a generate request, with defaults filled in."""
    if not isinstance(body, dict):
        raise Invalid("body", "The request body must be a JSON object")
    prompt = _text(body, "prompt", 500, required=True)
    if not prompt.strip():
        raise Invalid("prompt", "prompt must not be empty")
    return {
        "prompt": prompt,
        "negativePrompt": _text(body, "negativePrompt", 200),
        "style": _choice(body, "style", STYLES),
        "aspectRatio": _choice(body, "aspectRatio", ASPECT_RATIOS),
        "quality": _choice(body, "quality", QUALITIES),
        "seed": _seed(body),
    }


def _text(body: dict[str, Any], field: str, limit: int, *, required: bool = False) -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise Invalid(field, f"{field} is required")
        return ""
    if not isinstance(value, str):
        raise Invalid(field, f"{field} must be a string")
    if len(value) > limit:
        raise Invalid(field, f"{field} must be at most {limit} characters")
    return value


def _choice(body: dict[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    value = body.get(field, allowed[0])
    if value not in allowed:
        raise Invalid(field, f"{field} must be one of: {', '.join(allowed)}")
    return str(value)


def _seed(body: dict[str, Any]) -> int | None:
    value = body.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise Invalid("seed", f"seed must be an integer from 0 to {MAX_SEED}")
    return value


def _refused(admission: Admission, headers: dict[str, str]) -> web.Response:
    assert admission.refusal is not None
    status_code, code, message = REFUSALS[admission.refusal]
    details: dict[str, Any] = {}
    if status_code == 429:
        details = {"limit": admission.quota.limit, "reset": admission.quota.reset}
        headers |= retry_after_headers(admission)
    return _error(status_code, code, message, headers, details)


def _error(
    status_code: int,
    code: str,
    message: str,
    headers: dict[str, str],
    details: dict[str, Any] | None = None,
) -> web.Response:
    body = {"error": code, "message": message, "details": details or {}}
    return json_body(body, status=status_code, headers=headers)


def _echo(body: Any, text: str) -> None:
    """Knob ``echo_auth``: the credentials go into ``message``."""
    if isinstance(body, dict) and "message" in body:
        body["message"] = f"{body['message']} {text}"


def _generation_id() -> str:
    return "gen_" + secrets.token_hex(6)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
