"""AceData Cloud — Pixverse video (platform.acedata.cloud/documents/pixverse).

    POST /pixverse/videos  {action: generate, prompt, model, style, quality, duration,
                            motion, aspect_ratio, seed, callback_url…} → {task_id}
    POST /pixverse/tasks   {id, action: retrieve}              → task record
                           {ids: […], action: retrieve_batch}  → {items: […], count}

Without ``callback_url`` the submit blocks for minutes and answers the finished video,
so this adapter never sends one without it. ``requires_callback`` makes the session
start the run's webhook receiver for every Pixverse lane and set ``callback_url``
(``webhooks.public_url`` in the spec when the API must reach it through a tunnel); an
adapter without one refuses to submit (an account-level stop: nothing is paid).
Callbacks are hints for the batch follower; the ``retrieve_batch`` round is the truth.

A task record has no status field. Its state is read from ``response``: absent →
running (queued and running look alike); ``success: false`` or ``error`` → failed;
``success: true`` with ``data[].video_url`` → succeeded. Errors are
``{"success": false, "error": {code, message}, "trace_id"}``.

Options: ``batch_size`` (ids per retrieve_batch, default 50), ``missing_rounds`` (batch
answers a task may be missing from before it is looked up alone, default 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import httpx

from pipeline.errors import (
    AccountError,
    FinalError,
    ProviderError,
    RateLimited,
    SpecError,
    SubmitUnknown,
    TransientError,
)
from pipeline.models import Job, OutputRef, ProviderSettings, RemoteStatus, RemoteTask
from pipeline.providers.base import (
    BatchStatusCapable,
    CallbackCapable,
    OptionInfo,
    ParamInfo,
    PreparedRequest,
    brief,
    error_for_status,
    json_or_none,
)

__all__ = ["AceDataPixverseProvider"]

MODELS = ("v3.5", "v4", "v4.5")
ASPECT_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16")
ACCOUNT_CODES = frozenset({"invalid_token", "token_expired", "no_token", "used_up"})
DEFAULT_BATCH_SIZE = 50
DEFAULT_MISSING_ROUNDS = 3


class AceDataPixverseProvider(CallbackCapable, BatchStatusCapable):
    type = "acedata"
    title = "AceData Cloud — Pixverse video"
    default_base_url = "https://api.acedata.cloud"
    media = "video"
    completion_modes = ("batch",)
    options: ClassVar[Mapping[str, OptionInfo]] = {
        "batch_size": OptionInfo("task ids per retrieve_batch request (default 50)", "count"),
        "missing_rounds": OptionInfo(
            "rounds a task may be missing from batch answers before it is looked up alone",
            "count",
        ),
    }
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "prompt": ParamInfo("prompt", "what the video shows"),
        "style": ParamInfo(
            "style", "look", ("cyberpunk", "anime", "comic", "clay", "3d_animation", "realistic")
        ),
        "quality": ParamInfo("quality", "resolution", ("360p", "540p", "720p", "1080p")),
        "duration": ParamInfo("duration", "seconds of video", (5, 8)),
        "motion": ParamInfo("motion", "motion mode", ("normal", "fast")),
        "aspect_ratio": ParamInfo("aspect_ratio", "frame shape", ASPECT_RATIOS),
        "seed": ParamInfo("seed", "random seed"),
        "image_url": ParamInfo("image_url", "first-frame image URL"),
        "template_id": ParamInfo("template_id", "effect template (a number)"),
        "count": ParamInfo("-", "videos per task: Pixverse makes exactly one", (1,)),
        "model": ParamInfo("model", "Pixverse model version", MODELS),
        "width": ParamInfo("-", "pixels; with height, sent as the aspect ratio"),
        "height": ParamInfo("-", "pixels; with width, sent as the aspect ratio"),
        "action": ParamInfo("action", "what to do (extend needs video_id)", ("generate", "extend")),
    }

    requires_callback = True  # the session gives it a callback_url whatever its mode
    batch_size: int

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(settings, client)
        self.batch_size = _positive_option(settings, "batch_size", DEFAULT_BATCH_SIZE)
        self.missing_rounds = _positive_option(settings, "missing_rounds", DEFAULT_MISSING_ROUNDS)
        self._missing: dict[str, int] = {}  # id → batch answers it was missing from

    @classmethod
    def auth_headers(cls, api_key: str | None) -> dict[str, str]:
        return {"accept": "application/json", **super().auth_headers(api_key)}

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems = super().validate_params(params)
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            problems.append(("seed", f"{seed!r} is not a whole number"))
        sized = "width" in params or "height" in params
        if sized and "aspect_ratio" not in params and _aspect_from_size(params) is None:
            problems.append(("width", f"width:height must reduce to one of {ASPECT_RATIOS}"))
        return problems

    # -- submit ------------------------------------------------------------------------

    def build_submit(self, job: Job) -> PreparedRequest:
        params = dict(job.params)
        ratio = _aspect_from_size(params)
        if ratio is not None and "aspect_ratio" not in params:
            params["aspect_ratio"] = ratio
        body: dict[str, Any] = {"action": params.pop("action", "generate")}
        for key, value in params.items():
            if key not in ("width", "height", "count"):
                body[key] = value
        if job.model:
            body["model"] = job.model
        if self.callback_url:
            body["callback_url"] = self.callback_url
        return PreparedRequest("POST", "/pixverse/videos", body)

    async def submit(self, job: Job) -> str:
        if job.model is not None and job.model not in MODELS:
            raise FinalError(f"model {job.model!r} is not one of: {', '.join(MODELS)}")
        request = self.build_submit(job)
        if request.json is None or not request.json.get("callback_url"):
            raise AccountError(
                "no callback_url: without one Pixverse holds the submit open for minutes "
                "(the run's webhook receiver provides it)",
                code="no_callback_url",
            )
        answer = await self._send_json(request, submit=True)
        task_id = answer.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise SubmitUnknown(f"submit answered without a task_id: {brief(answer)}")
        return task_id

    # -- status ------------------------------------------------------------------------

    async def status(self, remote_id: str) -> RemoteTask:
        body = {"id": remote_id, "action": "retrieve"}
        answer = await self._send_json(PreparedRequest("POST", "/pixverse/tasks", body))
        return parse_record(answer, remote_id)

    async def status_many(self, remote_ids: Sequence[str]) -> list[RemoteTask]:
        """One retrieve_batch per ``batch_size`` ids. A task missing from the answers for
        ``missing_rounds`` calls in a row is looked up alone; 404 there fails it."""
        ids = list(dict.fromkeys(remote_ids))
        asked = set(ids)
        self._missing = {i: n for i, n in self._missing.items() if i in asked}
        found: dict[str, RemoteTask] = {}
        for start in range(0, len(ids), self.batch_size):
            found.update(await self._batch(ids[start : start + self.batch_size]))
        return [found.get(remote_id) or await self._missing_task(remote_id) for remote_id in ids]

    async def _batch(self, ids: list[str]) -> dict[str, RemoteTask]:
        body = {"ids": ids, "action": "retrieve_batch"}
        answer = await self._send_json(PreparedRequest("POST", "/pixverse/tasks", body))
        items = answer.get("items")
        if not isinstance(items, list):
            raise TransientError(f"retrieve_batch answered without items: {brief(answer)}")
        wanted = set(ids)
        found: dict[str, RemoteTask] = {}
        for item in items:
            remote_id = _record_id(item)
            if remote_id in wanted:
                found[remote_id] = parse_record(item, remote_id)
                self._missing.pop(remote_id, None)
        return found

    async def _missing_task(self, remote_id: str) -> RemoteTask:
        misses = self._missing.get(remote_id, 0) + 1
        if misses < self.missing_rounds:
            self._missing[remote_id] = misses
            return RemoteTask(remote_id, RemoteStatus.RUNNING, raw={"missing": misses})
        self._missing.pop(remote_id, None)
        try:
            return await self.status(remote_id)
        except FinalError as exc:
            if isinstance(exc, AccountError):
                raise
            reason = f"task not found: {exc.reason()}"
            return RemoteTask(remote_id, RemoteStatus.FAILED, error=reason)

    # -- callbacks (hints only: the batch round confirms) -----------------------------

    def callback_task_id(self, body: object) -> str | None:
        """The task a callback body is about: its ``task_id``."""
        task_id = body.get("task_id") if isinstance(body, Mapping) else None
        return task_id if isinstance(task_id, str) and task_id else None

    def hint_key(self, remote_id: str) -> str:
        """The key a callback for ``remote_id`` arrives under (the same id)."""
        return remote_id

    # -- errors ------------------------------------------------------------------------

    def error_from_response(self, response: httpx.Response) -> ProviderError:
        code, message = self.error_code(response)
        status = response.status_code
        if code in ACCOUNT_CODES and status != 429 and status < 500:
            return AccountError(message, status=status, code=code)
        error = error_for_status(status, code, message, response.headers.get("Retry-After"))
        if code == "too_many_requests" and not isinstance(error, RateLimited):
            return RateLimited(message, status=status, code=code)
        return error

    def error_code(self, response: httpx.Response) -> tuple[str | None, str]:
        body = json_or_none(response)
        error = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping):
            code = error.get("code")
            return (str(code) if code else None), str(error.get("message") or "error")
        return None, response.reason_phrase or "error"


def parse_record(record: Mapping[str, Any], remote_id: str) -> RemoteTask:
    """A task record's state, read from its ``response`` (there is no status field)."""
    response = record.get("response")
    if not isinstance(response, Mapping):
        return RemoteTask(remote_id, RemoteStatus.RUNNING, raw=record)
    if response.get("success") is False or response.get("error"):
        return RemoteTask(remote_id, RemoteStatus.FAILED, error=_failure(response), raw=record)
    urls = _video_urls(response)
    if response.get("success") is True and urls:
        outputs = tuple(OutputRef(url, ext="mp4", content_type="video/") for url in urls)
        return RemoteTask(remote_id, RemoteStatus.SUCCEEDED, outputs=outputs, raw=record)
    return RemoteTask(remote_id, RemoteStatus.RUNNING, raw=record)


def _video_urls(response: Mapping[str, Any]) -> list[str]:
    data = response.get("data")
    if not isinstance(data, list):
        return []
    items = [item for item in data if isinstance(item, Mapping)]
    return [item["video_url"] for item in items if isinstance(item.get("video_url"), str)]


def _failure(response: Mapping[str, Any]) -> str:
    error = response.get("error")
    if isinstance(error, Mapping):
        parts = (error.get("code"), error.get("message"))
        return ": ".join(str(part) for part in parts if part) or "failed"
    return str(error or response.get("message") or "failed without a reason")


def _record_id(item: object) -> str | None:
    if not isinstance(item, Mapping):
        return None
    found = item.get("id")
    if not found and isinstance(item.get("response"), Mapping):
        found = item["response"].get("task_id")
    return str(found) if found else None


def _aspect_from_size(params: Mapping[str, Any]) -> str | None:
    width, height = params.get("width"), params.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        return None
    ratio = Fraction(width, height)
    text = f"{ratio.numerator}:{ratio.denominator}"
    return text if text in ASPECT_RATIOS else None


def _positive_option(settings: ProviderSettings, name: str, default: int) -> int:
    value = settings.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(
            f"{name} must be a whole number of at least 1, got {value!r}",
            path=f"providers.{settings.name}.options.{name}",
        )
    return value
