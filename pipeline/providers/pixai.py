"""PixAI: GraphQL over HTTP to submit and read, a GraphQL subscription to learn of
completion (platform.pixai.art/docs; pixai-client-js ``graphql/*.graphql``).

    POST /graphql  mutation createGenerationTask($parameters: JSONObject!)
                   query getTaskById($id: ID!) { task(id: $id) {...TaskBase} }
                   query { media(id) { id type width height urls { variant url } imageType } }
                   mutation cancelGenerationTask($id: ID!)
    wss://gw.pixai.art/graphql  graphql-transport-ws, subscription personalEvents.taskUpdated

Statuses waiting/running/completed/failed/cancelled. A completed task's
``outputs.mediaId`` is its image, except in a batch (``batchSize`` > 1): then the images
are ``outputs.batch[].mediaId`` and ``outputs.mediaId`` is a 2x2 grid of them, never
downloaded as a result. Media ids become URLs through ``media(id)`` (variant ``PUBLIC``).

Errors come as GraphQL errors (also with HTTP 200) or as ``{"message"}`` with an HTTP
status. The concurrency-limit refusal (10 tasks waiting or running per account) is not
documented; it is recognised by the meaning of its code or message, whatever the
words (see ``_BUSY`` and ``_classify``), and waited out rather than failed.

The WebSocket mechanics live in ``pipeline.completion.subscription``; what to subscribe
to and how an event's payload becomes a ``RemoteTask`` live here.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import httpx

from pipeline.errors import (
    AccountBusy,
    AccountError,
    FinalError,
    ProviderError,
    SubmitUnknown,
    TransientError,
)
from pipeline.models import (
    Job,
    OutputRef,
    PollAdvice,
    ProviderSettings,
    RemoteStatus,
    RemoteTask,
)
from pipeline.providers.base import (
    OptionInfo,
    ParamInfo,
    PreparedRequest,
    SubscriptionCapable,
    brief,
    json_or_none,
)

__all__ = ["PixAIProvider"]

STATUS = {
    "waiting": RemoteStatus.QUEUED,
    "running": RemoteStatus.RUNNING,
    "completed": RemoteStatus.SUCCEEDED,
    "failed": RemoteStatus.FAILED,
    "cancelled": RemoteStatus.CANCELLED,
}

DEFAULT_WS_URL = "wss://gw.pixai.art/graphql"
TASK_FIELDS = "id userId parameters outputs status startedAt endAt createdAt updatedAt"
CREATE_TASK = (
    "mutation createGenerationTask($parameters: JSONObject!) "
    f"{{ createGenerationTask(parameters: $parameters) {{ {TASK_FIELDS} }} }}"
)
GET_TASK = f"query getTaskById($id: ID!) {{ task(id: $id) {{ {TASK_FIELDS} }} }}"
CANCEL_TASK = (
    "mutation cancelGenerationTask($id: ID!) { cancelGenerationTask(id: $id) { id status } }"
)
MEDIA_FIELDS = "id type width height urls { variant url } imageType"
SUBSCRIBE_EVENTS = (
    "subscription subscribePersonalEvents { personalEvents { taskUpdated { "
    + TASK_FIELDS
    + " } } }"
)

MAX_BATCH = 4
"""The batch grid is 2x2; the docs do not state a maximum, so 4 is our limit."""
ASPECT_LONG_SIDE = 768
"""``aspect_ratio`` becomes a size with this long side, both sides multiples of 8."""

# common vocabulary → PixAI parameter
FIELDS = {
    "prompt": "prompts",
    "negative_prompt": "negativePrompts",
    "width": "width",
    "height": "height",
    "seed": "seed",
    "count": "batchSize",
}

_ACCOUNT = re.compile(r"unauthori[sz]ed|unauthenticated|invalid (api )?(key|token)|credit|balance")
_TASKS = r"(tasks?|jobs?|generations?|requests?)"
_BUSY = re.compile(
    r"too.?many|concurren|simultaneous|parallel|slots?\b|busy|rate.?limit|throttl"
    rf"|(pending|running|waiting|active|queued|in.progress|ongoing|unfinished).{{0,20}}{_TASKS}"
    rf"|{_TASKS}.{{0,20}}(pending|running|waiting|active|in.progress|limit|maximum|exceed)"
    rf"|(limit|maximum|max)\b.{{0,30}}{_TASKS}"
)
"""The account's "not now" in any words: too many pending/running tasks, a concurrency
or task limit. PixAI documents the limit (10 tasks) but not the error, so the code and
the message are both read for their meaning."""
_ACCOUNT_CODES = frozenset(
    {"UNAUTHENTICATED", "UNAUTHORIZED", "INSUFFICIENT_CREDITS", "INSUFFICIENT_BALANCE"}
)
_REQUEST_CODES = frozenset(
    {"BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "BAD_REQUEST"}
)
"""Codes that say the request itself was rejected before anything was made."""
_SUBMIT_TIMES_KEPT = 4096


class PixAIProvider(SubscriptionCapable):
    type = "pixai"
    title = "PixAI"
    default_base_url = "https://api.pixai.art"
    media = "image"
    completion_modes = ("subscription", "poll")
    options: ClassVar[Mapping[str, OptionInfo]] = {
        "ws_url": OptionInfo("the subscription WebSocket URL (default: PixAI's gateway)"),
        "ws_safety_poll": OptionInfo("query a task that heard no event for this long", "duration"),
    }
    max_concurrency = 10  # platform.pixai.art/docs/quick-start/limits
    poll_advice: ClassVar[PollAdvice] = PollAdvice(initial=1.5)
    """The limits page: poll no faster than every 1.5 s, with exponential backoff."""
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "prompt": ParamInfo("prompts", "what to draw"),
        "negative_prompt": ParamInfo("negativePrompts", "what to avoid"),
        "width": ParamInfo("width", "pixels, a positive multiple of 8"),
        "height": ParamInfo("height", "pixels, a positive multiple of 8"),
        "aspect_ratio": ParamInfo(
            "width/height", f"W:H, sent as a size with a {ASPECT_LONG_SIDE}px long side"
        ),
        "seed": ParamInfo("seed", "random seed (a number, or a string of digits)"),
        "model": ParamInfo("modelId", "a model *version* id"),
        "count": ParamInfo("batchSize", "images per task (a 2x2 grid at most)", (1, 2, 3, 4)),
    }

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(settings, client)
        self._submit_times: OrderedDict[str, float] = OrderedDict()

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems = super().validate_params(params)
        for name in ("width", "height"):
            value = params.get(name)
            if value is not None and not _positive_multiple_of_8(value):
                problems.append((name, f"{value!r} is not a positive multiple of 8"))
        ratio = params.get("aspect_ratio")
        if ratio is not None and _ratio(ratio) is None:
            problems.append(("aspect_ratio", f"{ratio!r} is not W:H with positive integers"))
        seed = params.get("seed")
        if seed is not None and not _is_seed(seed):
            problems.append(("seed", f"{seed!r} is not a non-negative integer"))
        return problems

    # -- submit ---------------------------------------------------------------------

    def build_submit(self, job: Job) -> PreparedRequest:
        return _graphql("createGenerationTask", CREATE_TASK, {"parameters": task_parameters(job)})

    async def submit(self, job: Job) -> str:
        sent_at = time.monotonic()
        answer = await self._send_json(self.build_submit(job), submit=True)
        task = _data_field(answer, "createGenerationTask")
        if isinstance(task, Mapping) and isinstance(task.get("id"), str | int) and task["id"]:
            remote_id = str(task["id"])
            self._remember_submit(remote_id, sent_at)
            return remote_id
        errors = answer.get("errors")
        if errors:
            raise _classify(errors, submit=True)
        raise SubmitUnknown(f"createGenerationTask answered without a task id: {brief(answer)}")

    def submit_sent_at(self, remote_id: str) -> float | None:
        """``time.monotonic()`` when the submit that created ``remote_id`` was sent by this
        adapter (None for tasks of an earlier run). Read once: the entry is forgotten."""
        return self._submit_times.pop(remote_id, None)

    def _remember_submit(self, remote_id: str, sent_at: float) -> None:
        self._submit_times[remote_id] = sent_at
        while len(self._submit_times) > _SUBMIT_TIMES_KEPT:
            self._submit_times.popitem(last=False)

    # -- status ---------------------------------------------------------------------

    async def status(self, remote_id: str) -> RemoteTask:
        answer = await self._query(_graphql("getTaskById", GET_TASK, {"id": remote_id}))
        task = _data_field(answer, "task")
        if not isinstance(task, Mapping):
            raise FinalError(f"PixAI knows no task {remote_id}", code="NOT_FOUND")
        return await self.task_from_payload(task)

    async def task_from_payload(self, payload: Mapping[str, Any]) -> RemoteTask:
        """A ``Task`` object (from ``task(id)`` or a ``taskUpdated`` event) as a RemoteTask,
        its media ids resolved to URLs when it completed."""
        remote_id = str(payload.get("id", ""))
        raw_status = str(payload.get("status", ""))
        status = STATUS.get(raw_status)
        if status is None:
            raise TransientError(f"unknown PixAI status {raw_status!r} for {remote_id}")
        outputs = payload.get("outputs")
        outputs = outputs if isinstance(outputs, Mapping) else {}
        refs: tuple[OutputRef, ...] = ()
        if status is RemoteStatus.SUCCEEDED:
            refs = await self._resolve_media(result_media_ids(outputs))
        error = None
        if status in (RemoteStatus.FAILED, RemoteStatus.CANCELLED):
            error = failure_reason(outputs, status)
        return RemoteTask(remote_id, status, outputs=refs, error=error, raw=payload)

    async def _resolve_media(self, media_ids: Sequence[str]) -> tuple[OutputRef, ...]:
        """One request for every media id (aliased ``media`` fields)."""
        if not media_ids:
            raise TransientError("PixAI task completed without a media id")
        variables = {f"id{i}": media_id for i, media_id in enumerate(media_ids)}
        declared = ", ".join(f"$id{i}: String!" for i in range(len(media_ids)))
        fields = " ".join(
            f"m{i}: media(id: $id{i}) {{ {MEDIA_FIELDS} }}" for i in range(len(media_ids))
        )
        query = f"query getMediaByIds({declared}) {{ {fields} }}"
        answer = await self._query(_graphql("getMediaByIds", query, variables))
        data = answer.get("data")
        data = data if isinstance(data, Mapping) else {}
        refs = []
        for i, media_id in enumerate(media_ids):
            url = public_url(data.get(f"m{i}"))
            if url is None:
                raise TransientError(f"PixAI media {media_id} has no PUBLIC url yet")
            refs.append(OutputRef(url, ext=_ext(url), content_type="image/"))
        return tuple(refs)

    async def _query(self, request: PreparedRequest) -> Mapping[str, Any]:
        answer = await self._send_json(request)
        if answer.get("errors") and not _has_data(answer):
            raise _classify(answer["errors"], submit=False)
        return answer

    # -- cancel ---------------------------------------------------------------------

    async def cancel(self, remote_id: str) -> bool:
        answer = await self._query(_graphql("cancelGenerationTask", CANCEL_TASK, {"id": remote_id}))
        task = _data_field(answer, "cancelGenerationTask")
        return isinstance(task, Mapping) and task.get("status") == "cancelled"

    # -- subscription (used by pipeline.completion.subscription) ---------------------------

    @property
    def ws_url(self) -> str:
        """``options.ws_url``; else PixAI's gateway for the real API, or this base URL's
        ``/graphql`` (http→ws) for anything else, such as an emulator."""
        configured = self.settings.options.get("ws_url")
        if configured:
            return str(configured)
        base = (self.settings.base_url or self.default_base_url).rstrip("/")
        if base == self.default_base_url:
            return DEFAULT_WS_URL
        if base.startswith("https://"):
            return "wss://" + base.removeprefix("https://") + "/graphql"
        return "ws://" + base.removeprefix("http://") + "/graphql"

    def ws_connection_params(self) -> dict[str, Any]:
        """``connection_init`` payload: the JS SDK's ``connectionParams``."""
        return {"token": self.settings.api_key or ""}

    def subscription_payload(self) -> dict[str, Any]:
        return {
            "query": SUBSCRIBE_EVENTS,
            "operationName": "subscribePersonalEvents",
            "variables": {},
        }

    @staticmethod
    def task_update(payload: Any) -> Mapping[str, Any] | None:
        """The ``taskUpdated`` Task in a ``next`` payload (None for other events)."""
        if not isinstance(payload, Mapping):
            return None
        data = payload.get("data")
        events = data.get("personalEvents") if isinstance(data, Mapping) else None
        task = events.get("taskUpdated") if isinstance(events, Mapping) else None
        if isinstance(task, Mapping) and task.get("id") is not None:
            return task
        return None

    # -- errors ---------------------------------------------------------------------

    def error_code(self, response: httpx.Response) -> tuple[str | None, str]:
        body = json_or_none(response)
        if isinstance(body, Mapping):
            errors = body.get("errors")
            if isinstance(errors, list) and errors:
                return _error_code(errors[0]), _error_message(errors)
            if body.get("message"):
                return None, str(body["message"])
        return None, response.reason_phrase or "error"


# -- request building ------------------------------------------------------------------


def task_parameters(job: Job) -> dict[str, Any]:
    """The job's parameters in PixAI's words; unknown keys pass through unchanged."""
    params = dict(job.params)
    ratio = params.pop("aspect_ratio", None)
    if ratio is not None and ("width" not in params or "height" not in params):
        params.update(_size_for(ratio, params.get("width"), params.get("height")))
    body = {FIELDS.get(key, key): value for key, value in params.items()}
    if job.model:
        body["modelId"] = job.model
    return body


def _graphql(name: str, query: str, variables: Mapping[str, Any]) -> PreparedRequest:
    body = {"query": query, "variables": dict(variables), "operationName": name}
    return PreparedRequest("POST", "/graphql", body)


def _size_for(ratio: Any, width: Any, height: Any) -> dict[str, int]:
    parsed = _ratio(ratio)
    if parsed is None:
        return {}
    if isinstance(width, int):
        return {"width": width, "height": _round8(width / parsed)}
    if isinstance(height, int):
        return {"width": _round8(height * parsed), "height": height}
    if parsed >= 1:
        return {"width": ASPECT_LONG_SIDE, "height": _round8(ASPECT_LONG_SIDE / parsed)}
    return {"width": _round8(ASPECT_LONG_SIDE * parsed), "height": ASPECT_LONG_SIDE}


def _ratio(value: Any) -> Fraction | None:
    across, sep, down = str(value).partition(":")
    if not sep or not across.isdigit() or not down.isdigit() or not int(across) or not int(down):
        return None
    return Fraction(int(across), int(down))


def _round8(value: float | Fraction) -> int:
    return max(8, round(float(value) / 8) * 8)


def _positive_multiple_of_8(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % 8 == 0


def _is_seed(value: Any) -> bool:
    if isinstance(value, str):
        return value.isdigit()
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- answer reading --------------------------------------------------------------------


def result_media_ids(outputs: Mapping[str, Any]) -> list[str]:
    """The images of a completed task: ``batch[].mediaId`` when there is a batch (the
    top-level ``mediaId`` is then the grid), else ``mediaId``."""
    batch = outputs.get("batch")
    if isinstance(batch, list) and batch:
        ids = [item.get("mediaId") for item in batch if isinstance(item, Mapping)]
        return [str(media_id) for media_id in ids if media_id]
    media_id = outputs.get("mediaId")
    return [str(media_id)] if media_id else []


def public_url(media: Any) -> str | None:
    if not isinstance(media, Mapping) or not isinstance(media.get("urls"), list):
        return None
    for entry in media["urls"]:
        if isinstance(entry, Mapping) and entry.get("variant") == "PUBLIC" and entry.get("url"):
            return str(entry["url"])
    return None


def failure_reason(outputs: Mapping[str, Any], status: RemoteStatus) -> str:
    """The provider's own words for a failed or cancelled task."""
    for key in ("error", "reason", "message"):
        value = outputs.get(key)
        if isinstance(value, Mapping):
            parts = [str(value[k]) for k in ("code", "message") if value.get(k)]
            if parts:
                return ": ".join(parts)
        elif value:
            return str(value)
    return "cancelled" if status is RemoteStatus.CANCELLED else "failed without a reason"


def _ext(url: str) -> str:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot and ext.isalnum() and len(ext) <= 5 else "png"


def _data_field(answer: Mapping[str, Any], name: str) -> Any:
    data = answer.get("data")
    return data.get(name) if isinstance(data, Mapping) else None


def _has_data(answer: Mapping[str, Any]) -> bool:
    data = answer.get("data")
    return isinstance(data, Mapping) and any(value is not None for value in data.values())


def _error_code(error: Any) -> str | None:
    if not isinstance(error, Mapping):
        return None
    extensions = error.get("extensions")
    code = extensions.get("code") if isinstance(extensions, Mapping) else None
    return str(code) if code else None


def _error_message(errors: Any) -> str:
    if not isinstance(errors, list):
        return str(errors)
    messages = [str(e.get("message")) for e in errors if isinstance(e, Mapping)]
    return "; ".join(m for m in messages if m) or "GraphQL error"


def _classify(errors: Any, *, submit: bool) -> ProviderError:
    """A GraphQL ``errors`` list as one of our errors (see the module docstring).

    Busy (the account's task limit, whatever its words) waits for a slot; account and
    request errors are final. On a submit anything else may have created the task:
    ``SubmitUnknown``. On a query it is final, as it was asked of a known task."""
    first = errors[0] if isinstance(errors, list) and errors else {}
    code, message = _error_code(first), _error_message(errors)
    words = f"{code or ''} {message}".lower().replace("_", " ")
    if code in _ACCOUNT_CODES or (code is None and _ACCOUNT.search(words)):
        return AccountError(message, code=code)
    if _BUSY.search(words):
        return AccountBusy(message, code=code)
    if code in _REQUEST_CODES:
        return FinalError(message, code=code)
    if submit:
        return SubmitUnknown(f"createGenerationTask answered an error: {message}", code=code)
    if code == "INTERNAL_SERVER_ERROR" or (code is None and "internal" in words):
        return TransientError(message, code=code)
    return FinalError(message, code=code)
