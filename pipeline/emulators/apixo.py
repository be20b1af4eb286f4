"""APIXO (apixo.ai/docs/api-reference), emulated.

- ``POST /api/v1/generateTask/{model}`` with ``{"request_type": "async"|"callback",
  "callback_url"?, "provider"?, "input": {prompt, mode, aspect_ratio, seed, …}}`` →
  ``{"code":200,"message":"success","data":{"taskId":"<32 hex>"}}``.
- ``GET /api/v1/statusTask/{model}?taskId=…`` → ``{code, message, data}`` where data is
  ``{taskId, state, createTime}`` while ``pending``/``processing``, plus ``resultJson``
  (a JSON *string* holding ``resultUrls``), ``costTime``, ``completeTime`` on
  ``success``, or ``failCode``/``failMsg`` on ``failed``. Times are Unix milliseconds.
- ``request_type: callback``: when the task ends, the same envelope as the status answer
  is POSTed to ``callback_url``, retried on non-200 or timeout (see ``callbacks``).
- Errors: ``{"code": <http status>, "message": "…", "data": {"error": "…"}}``; 401 for a
  missing or invalid key, 402 for no balance, 403, 404, 429, 500, 503.

Every model yields a PNG (video models too: the emulator renders no video). Unknown
model ids are answered 400, as the real server decides which models exist.
"""

from __future__ import annotations

import json
import re
import secrets
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
from pipeline.emulators.render import ImageSpec, size_for_ratio
from pipeline.emulators.state import Admission, EmulatorState, Refusal
from pipeline.emulators.tasks import Phase, Task, Timeline, extra_of, unique_id

__all__ = ["MODELS", "create_app"]

PROVIDER = "APIXO"
SUBMIT_ROUTE = "POST /api/v1/generateTask/{model}"
STATUS_ROUTE = "GET /api/v1/statusTask/{model}"
MODELS = (
    "nano-banana",
    "nano-banana-2",
    "flux2",
    "sora-2",
    "midjourney",
    "veo-3-1",
    "seedance-2-0",
    "seedance-2-0-fast",
    "kling-2-6",
    "gpt-image-2",
)
REQUEST_TYPES = ("async", "callback")
MAX_PROMPT = 5000
MAX_SEED = 2**32 - 1
RATIO = re.compile(r"([1-9][0-9]?):([1-9][0-9]?)")
STATE_WORDS = {
    Phase.QUEUED: "pending",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "success",
    Phase.FAILED: "failed",
}
FAILURES = (
    ("CONTENT_VIOLATION", "The prompt violates the content policy."),
    ("GENERATION_FAILED", "The model failed to generate a result. Please try again."),
    ("PROCESSING_TIMEOUT", "The task exceeded the processing time limit."),
)
MESSAGES = {
    400: "Invalid request",
    401: "Unauthorized",
    402: "Insufficient balance",
    403: "Forbidden",
    404: "Not found",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}
REFUSALS: dict[Refusal, tuple[int, str]] = {
    Refusal.MISSING_KEY: (401, "Missing API key"),
    Refusal.INVALID_KEY: (401, "Invalid API key"),
    Refusal.FORBIDDEN: (403, "This API key has no permission for this model"),
    Refusal.NO_CREDIT: (402, "Insufficient balance, please recharge"),
    Refusal.LIMIT_EXCEEDED: (429, "Rate limit exceeded, please retry later"),
    Refusal.RATE_LIMITED: (429, "Rate limit exceeded, please retry later"),
    Refusal.SERVER_ERROR: (500, "Internal server error"),
    Refusal.UNAVAILABLE: (503, "Service temporarily unavailable"),
}


@dataclass(frozen=True, slots=True)
class _Record:
    """What APIXO keeps about a task beyond the common one."""

    model: str
    base: str  # the origin the client used, for result URLs in callbacks
    callback_url: str | None


class Invalid(ValueError):
    """The request breaks a documented rule (400)."""


def create_app(knobs: Knobs) -> web.Application:
    """The APIXO emulator, behaving as ``knobs`` say."""
    state = EmulatorState("apixo", knobs)
    state.record_type = _Record
    routes = [
        web.post("/api/v1/generateTask/{model}", submit),
        web.get("/api/v1/statusTask/{model}", status),
    ]
    return build_app_with_callbacks(state, routes, not_found, echo=_echo)


async def submit(request: web.Request) -> web.Response:
    state, admission = admit_request(request, SUBMIT_ROUTE, credit_documented=True)
    if admission.refusal is not None:
        return _refused(admission)
    model = request.match_info["model"]
    try:
        body = json.loads(await request.read())
        request_type, callback_url, params = _validated(model, body)
    except Invalid as invalid:
        return _error(400, str(invalid))
    except ValueError:
        return _error(400, "Request body must be valid JSON")
    task = _create(
        state,
        admission.key,
        model=model,
        params=params,
        base=origin(request),
        callback_url=callback_url,
    )
    state.charge(task, SUBMIT_ROUTE, body)
    if request_type == "callback" and callback_url is not None:
        _schedule_callback(request.app, state, task)
    if state.drop_after_create():
        return drop_connection(request)
    if (failed := state.error_after_create()) is not None:
        return gateway_error(failed)
    return _success({"taskId": task.id})


async def status(request: web.Request) -> web.Response:
    state, admission = admit_request(request, STATUS_ROUTE)
    if admission.refusal is not None:
        return _refused(admission)
    task_id = request.query.get("taskId", "")
    if not task_id:
        return _error(400, "Missing required parameter: taskId")
    task = state.tasks.get(task_id)
    if task is None or task.owner != admission.key:
        return _error(404, "Task not found")
    if extra_of(task, _Record).model != request.match_info["model"]:
        return _error(404, "Task not found for this model")
    return _success(_view(state, task, origin(request)))


async def not_found(request: web.Request) -> web.Response:
    return _error(404, f"No route for {request.method} {request.path}")


def _create(
    state: EmulatorState,
    owner: str,
    *,
    model: str,
    params: dict[str, Any],
    base: str,
    callback_url: str | None,
) -> Task:
    now = state.clock()
    line = Timeline.draw(state.knobs, state.dice, now)
    seed = params.get("seed")
    if seed is None:
        seed = state.dice.randbits(32)
    ratio = str(params.get("aspect_ratio", "1:1"))
    width, height = size_for_ratio(ratio if RATIO.fullmatch(ratio) else "1:1")
    details = (f"{model} · {params.get('mode', '-')} · {ratio}",)
    token = state.media.add(ImageSpec(PROVIDER, params["prompt"], seed, width, height, details))
    task = Task(
        id=unique_id(_task_id, state.tasks),
        owner=owner,
        timeline=line,
        params=params,
        media=token,
        failure=state.dice.choice(FAILURES) if line.fails else None,
        extra=_Record(model, base, callback_url),
    )
    state.tasks.add(task)
    return task


def _schedule_callback(app: web.Application, state: EmulatorState, task: Task) -> None:
    record = extra_of(task, _Record)
    assert record.callback_url is not None

    def envelope() -> dict[str, Any]:
        return {"code": 200, "message": "success", "data": _view(state, task, record.base)}

    app[SENDER_KEY].schedule(record.callback_url, task.id, task.timeline.finished_at, envelope)


def _view(state: EmulatorState, task: Task, base: str) -> dict[str, Any]:
    now = state.clock()
    phase = task.phase(now)
    line = task.timeline
    view: dict[str, Any] = {
        "taskId": task.id,
        "state": STATE_WORDS[phase],
        "createTime": _ms(line.created_at),
    }
    if phase is Phase.SUCCEEDED:
        path = state.media.path(
            task.media, now=now, ttl=state.knobs.url_ttl, stale=state.knobs.stale_urls
        )
        view["resultJson"] = json.dumps({"resultUrls": [base + path]})
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        view["costTime"] = _ms(line.finished_at) - _ms(line.created_at)
        view["completeTime"] = _ms(line.finished_at)
    if phase is Phase.FAILED and task.failure is not None:
        view["failCode"], view["failMsg"] = task.failure
    return view


def _validated(model: str, body: Any) -> tuple[str, str | None, dict[str, Any]]:
    """(request_type, callback_url, input) of a generate request, or Invalid."""
    if model not in MODELS:
        raise Invalid(f"Unsupported model: {model}")
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object")
    request_type = body.get("request_type", "async")
    if request_type not in REQUEST_TYPES:
        raise Invalid("request_type must be one of: async, callback")
    callback_url = body.get("callback_url")
    if request_type == "callback":
        if not isinstance(callback_url, str) or not callback_url:
            raise Invalid("Missing required field: callback_url")
        if not re.match(r"https?://", callback_url):
            raise Invalid("callback_url must be an http(s) URL")
    params = body.get("input")
    if not isinstance(params, dict):
        raise Invalid("Missing required field: input")
    _check_input(params)
    return str(request_type), callback_url if request_type == "callback" else None, params


def _check_input(params: dict[str, Any]) -> None:
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("Missing required field: input.prompt")
    if len(prompt) > MAX_PROMPT:
        raise Invalid(f"input.prompt must be at most {MAX_PROMPT} characters")
    ratio = params.get("aspect_ratio")
    if ratio is not None and ratio != "auto" and not RATIO.fullmatch(str(ratio)):
        raise Invalid("input.aspect_ratio must look like 16:9")
    seed = params.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        raise Invalid(f"input.seed must be an integer from 0 to {MAX_SEED}")
    urls = params.get("image_urls")
    if urls is not None and (
        not isinstance(urls, list) or not all(isinstance(url, str) for url in urls)
    ):
        raise Invalid("input.image_urls must be a list of URLs")


def _refused(admission: Admission) -> web.Response:
    assert admission.refusal is not None
    status_code, message = REFUSALS[admission.refusal]
    return _error(status_code, message, retry_after_headers(admission))


def _success(data: dict[str, Any]) -> web.Response:
    return json_body({"code": 200, "message": "success", "data": data})


def _error(status_code: int, error: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": status_code, "message": MESSAGES[status_code], "data": {"error": error}}
    return json_body(body, status=status_code, headers=headers)


def _echo(body: Any, text: str) -> None:
    """Knob ``echo_auth``: the credentials go into ``data.error``."""
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, dict):
        data["error"] = f"{data.get('error', '')} {text}".strip()


def _task_id() -> str:
    return secrets.token_hex(16)


def _ms(epoch: float) -> int:
    return round(epoch * 1000)
