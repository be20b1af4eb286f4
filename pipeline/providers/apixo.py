"""APIXO: one REST API for many models, polled or called back (apixo.ai/docs).

    POST /api/v1/generateTask/{model}   {request_type, callback_url?, input: {…}}
                                        → {code: 200, message, data: {taskId}}
    GET  /api/v1/statusTask/{model}?taskId=…
                                        → {code, message, data: {taskId, state, resultJson,
                                           costTime, createTime, completeTime,
                                           failCode, failMsg}}

States pending/processing/success/failed; ``resultJson`` is a JSON *string* holding
``resultUrls``. With ``request_type: callback`` APIXO POSTs the status envelope to
``callback_url`` when the task ends; that is only a hint, confirmed by a status query
(see ``pipeline.completion.webhook``). Errors: ``{"code": <status>, "message", "data": {"error"}}``.
There is no cancel.

The model is part of both paths, so every APIXO job needs ``model`` (in the provider's
``params`` or the matrix); the common vocabulary goes into ``input`` under the same
names, and anything else passes through into ``input`` unchanged.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from pipeline.errors import FinalError, SubmitUnknown, TransientError
from pipeline.models import Job, OutputRef, PollAdvice, RemoteStatus, RemoteTask
from pipeline.providers.base import (
    CallbackCapable,
    OptionInfo,
    ParamInfo,
    PreparedRequest,
    brief,
    error_for_status,
    json_or_none,
    submit_outcome,
)

__all__ = ["IMAGE_MODELS", "VIDEO_MODELS", "ApixoProvider"]

STATES = {
    "pending": RemoteStatus.QUEUED,
    "processing": RemoteStatus.RUNNING,
    "success": RemoteStatus.SUCCEEDED,
    "failed": RemoteStatus.FAILED,
}
IMAGE_MODELS = frozenset({"nano-banana", "nano-banana-2", "flux2", "midjourney", "gpt-image-2"})
VIDEO_MODELS = frozenset({"sora-2", "veo-3-1", "seedance-2-0", "seedance-2-0-fast", "kling-2-6"})
DEFAULT_IMAGE_MODE = "text-to-image"
_SKIPPED = frozenset({"count"})  # common vocabulary APIXO has no field for
_SUFFIX_FAMILY = {
    "png": "image/",
    "jpg": "image/",
    "jpeg": "image/",
    "webp": "image/",
    "gif": "image/",
    "mp4": "video/",
    "webm": "video/",
    "mov": "video/",
}


class ApixoProvider(CallbackCapable):
    type = "apixo"
    title = "APIXO"
    default_base_url = "https://api.apixo.ai"
    media = "image"
    completion_modes = ("poll", "webhook")
    https_callbacks_only = True  # the docs: callback_url must be an HTTPS URL
    poll_advice: ClassVar[PollAdvice] = PollAdvice(initial=3.0)
    """The docs: poll every 3–5 s, with backoff (the spacing then grows × poll.factor)."""
    options: ClassVar[Mapping[str, OptionInfo]] = {
        "callback_timeout": OptionInfo(
            "no callback by then: poll instead (webhook mode)", "duration"
        ),
        "safety_poll": OptionInfo(
            "a status query this often while waiting for a callback", "duration"
        ),
    }
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "model": ParamInfo("{model} in the path", "model id, e.g. nano-banana, flux2, sora-2"),
        "prompt": ParamInfo("input.prompt", "what to generate"),
        "negative_prompt": ParamInfo("input.negative_prompt", "what to avoid"),
        "aspect_ratio": ParamInfo("input.aspect_ratio", "shape, e.g. 1:1, 16:9"),
        "seed": ParamInfo("input.seed", "random seed, where the model takes one"),
        "mode": ParamInfo("input.mode", "e.g. text-to-image (the default for image models)"),
        "image_urls": ParamInfo("input.image_urls", "reference images"),
        "resolution": ParamInfo("input.resolution", "output resolution, per model"),
        "output_format": ParamInfo("input.output_format", "e.g. png, jpeg"),
        "provider": ParamInfo("provider", "routing", ("auto", "value", "official")),
    }

    callback_url: str | None = None
    """Where APIXO should POST results; set by the session for webhook lanes."""

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems = super().validate_params(params)
        if not params.get("model"):
            problems.append(
                (
                    "model",
                    "APIXO needs a model (e.g. nano-banana, flux2, sora-2): "
                    "set it in the provider's params or as a matrix dimension",
                )
            )
        urls = params.get("image_urls")
        if urls is not None and not (
            isinstance(urls, list) and all(isinstance(url, str) for url in urls)
        ):
            problems.append(("image_urls", "a list of image URLs"))
        return problems

    def build_submit(self, job: Job) -> PreparedRequest:
        model = _model(job)
        params = dict(job.params)
        body: dict[str, Any] = {}
        route = params.pop("provider", None)
        if self.callback_url:
            body |= {"request_type": "callback", "callback_url": self.callback_url}
        else:
            body["request_type"] = "async"
        if route is not None:
            body["provider"] = route
        inputs = {key: value for key, value in params.items() if key not in _SKIPPED}
        if model in IMAGE_MODELS and "mode" not in inputs and not inputs.get("image_urls"):
            inputs["mode"] = DEFAULT_IMAGE_MODE
        body["input"] = inputs
        return PreparedRequest("POST", f"/api/v1/generateTask/{quote(model, safe='')}", body)

    async def submit(self, job: Job) -> str:
        answer = await self._send_json(self.build_submit(job), submit=True)
        _raise_for_envelope(answer, submit=True)
        data = answer.get("data")
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        if not isinstance(task_id, str) or not task_id:
            raise SubmitUnknown(f"submit answered without a taskId: {brief(answer)}")
        return _remote_id(job, task_id)

    async def status(self, remote_id: str) -> RemoteTask:
        model, task_id = _split_remote_id(remote_id)
        request = PreparedRequest(
            "GET", f"/api/v1/statusTask/{quote(model, safe='')}", query={"taskId": task_id}
        )
        answer = await self._send_json(request)
        _raise_for_envelope(answer, submit=False)
        return _parse_status(remote_id, answer)

    def callback_task_id(self, body: object) -> str | None:
        """The task a callback body is about, as ``hint_key`` names it (a hint only:
        the follower confirms with ``status``)."""
        if not isinstance(body, Mapping):
            return None
        data = body.get("data")
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        return task_id if isinstance(task_id, str) and task_id else None

    def hint_key(self, remote_id: str) -> str:
        """The key a callback for ``remote_id`` arrives under: APIXO's own task id, as
        our remote ids also carry the model (``<model>/<taskId>``)."""
        return _split_remote_id(remote_id)[1]

    def error_code(self, response: httpx.Response) -> tuple[str | None, str]:
        body = json_or_none(response)
        if not isinstance(body, Mapping):
            return None, response.reason_phrase or "error"
        return None, _envelope_message(body, response.reason_phrase or "error")


# -- remote ids: "<model>/<taskId>", because every status query names the model --------


def _model(job: Job) -> str:
    if not job.model:
        raise FinalError(
            "APIXO needs a model (it is part of the URL): set params.model on the provider, "
            "or a `model` matrix dimension, e.g. nano-banana"
        )
    return job.model


def _remote_id(job: Job, task_id: str) -> str:
    return f"{_model(job)}/{task_id}"


def _split_remote_id(remote_id: str) -> tuple[str, str]:
    model, sep, task_id = remote_id.rpartition("/")
    if not sep or not model or not task_id:
        raise FinalError(f"not an APIXO remote id (model/taskId): {remote_id!r}")
    return model, task_id


# -- answers -----------------------------------------------------------------------------


def _raise_for_envelope(answer: Mapping[str, Any], *, submit: bool) -> None:
    """A 200 whose envelope says otherwise is an error of that code."""
    code = answer.get("code", 200)
    if not isinstance(code, int) or isinstance(code, bool) or code < 400:
        return
    error = error_for_status(code, None, _envelope_message(answer, "error"))
    raise submit_outcome(error) if submit else error


def _envelope_message(body: Mapping[str, Any], fallback: str) -> str:
    message = str(body.get("message") or fallback)
    data = body.get("data")
    detail = data.get("error") if isinstance(data, Mapping) else None
    return f"{message}: {detail}" if detail else message


def _parse_status(remote_id: str, answer: Mapping[str, Any]) -> RemoteTask:
    data = answer.get("data")
    if not isinstance(data, Mapping):
        raise TransientError(f"APIXO status of {remote_id} has no data object")
    raw_state = str(data.get("state", ""))
    status = STATES.get(raw_state)
    if status is None:
        raise TransientError(f"unknown APIXO state {raw_state!r} for {remote_id}")
    outputs: tuple[OutputRef, ...] = ()
    if status is RemoteStatus.SUCCEEDED:
        outputs = tuple(_output(url) for url in _result_urls(remote_id, data))
    error = None
    if status is RemoteStatus.FAILED:
        parts = [str(p) for p in (data.get("failCode"), data.get("failMsg")) if p]
        error = ": ".join(parts) or "failed without a reason"
    return RemoteTask(
        remote_id=remote_id,
        status=status,
        progress=100.0 if status is RemoteStatus.SUCCEEDED else None,
        outputs=outputs,
        error=error,
        raw=data,
    )


def _result_urls(remote_id: str, data: Mapping[str, Any]) -> list[str]:
    text = data.get("resultJson")
    try:
        result = json.loads(text) if isinstance(text, str) else text
    except (ValueError, RecursionError) as exc:
        message = f"APIXO resultJson of {remote_id} is not readable JSON: {brief(text)}"
        raise TransientError(message) from exc
    urls = result.get("resultUrls") if isinstance(result, Mapping) else None
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise TransientError(f"APIXO resultJson of {remote_id} has no resultUrls: {brief(text)}")
    return urls


def _output(url: str) -> OutputRef:
    suffix = posixpath.splitext(urlsplit(url).path)[1].lstrip(".").lower()
    return OutputRef(url, content_type=_SUFFIX_FAMILY.get(suffix))
