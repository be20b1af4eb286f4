"""PixelLabs AI: REST submit and poll (docs.pixellabsai.app/api-reference).

    POST /v1/generate          {prompt, negativePrompt, style, aspectRatio, quality, seed}
                               → {generationId, status: "queued", estimatedTime, createdAt}
    GET  /v1/generate/{id}     → {generationId, status, progress, metadata, imageUrl…}

Statuses queued/processing/completed/failed; ``imageUrl`` appears only when completed.
The submit answer's ``estimatedTime`` (seconds) aims the first poll (``first_check_in``).
Errors are flat: ``{"error": "<code>", "message": "…", "details": {}}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar

import httpx

from pipeline.errors import SubmitUnknown, TransientError
from pipeline.models import Job, OutputRef, ProviderSettings, RemoteStatus, RemoteTask
from pipeline.providers.base import ParamInfo, PreparedRequest, Provider, brief, json_or_none

__all__ = ["PixelLabsProvider"]

STATUS = {
    "queued": RemoteStatus.QUEUED,
    "processing": RemoteStatus.RUNNING,
    "completed": RemoteStatus.SUCCEEDED,
    "failed": RemoteStatus.FAILED,
}

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")
MAX_ESTIMATES = 100_000
"""Estimates kept for tasks whose first poll has not been planned yet (oldest dropped)."""

# common vocabulary → PixelLabs field
FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negativePrompt",
    "style": "style",
    "aspect_ratio": "aspectRatio",
    "quality": "quality",
    "seed": "seed",
}


class PixelLabsProvider(Provider):
    type = "pixellabs"
    title = "PixelLabs AI"
    default_base_url = "https://api.pixellabsai.app"
    media = "image"
    completion_modes = ("poll",)
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "prompt": ParamInfo("prompt", "what to draw", maximum_length=500),
        "negative_prompt": ParamInfo("negativePrompt", "what to avoid", maximum_length=200),
        "style": ParamInfo(
            "style",
            "rendering style",
            ("digital_art", "photorealistic", "anime", "3d_render", "oil_painting"),
        ),
        "aspect_ratio": ParamInfo("aspectRatio", "image shape", ASPECT_RATIOS),
        "quality": ParamInfo("quality", "render quality", ("standard", "high", "ultra")),
        "seed": ParamInfo("seed", "random seed (echoed in metadata)"),
        "count": ParamInfo("-", "images per task: PixelLabs makes exactly one", (1,)),
    }

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(settings, client)
        self._expected: dict[str, float] = {}  # generation id → monotonic time it should end

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems = super().validate_params(params)
        sized = "width" in params or "height" in params
        if sized and "aspect_ratio" not in params and _aspect_from_size(params) is None:
            allowed = ", ".join(ASPECT_RATIOS)
            problems.append(("width", f"width:height must reduce to one of {allowed}"))
        return problems

    def build_submit(self, job: Job) -> PreparedRequest:
        params = dict(job.params)
        body: dict[str, Any] = {}
        ratio = _aspect_from_size(params)
        if ratio is not None and "aspect_ratio" not in params:
            params["aspect_ratio"] = ratio
        for key, value in params.items():
            if key in ("width", "height", "count"):
                continue
            body[FIELDS.get(key, key)] = value
        if job.model:
            body["model"] = job.model
        return PreparedRequest("POST", "/v1/generate", body)

    async def submit(self, job: Job) -> str:
        answer = await self._send_json(self.build_submit(job), submit=True)
        generation_id = answer.get("generationId")
        if not isinstance(generation_id, str) or not generation_id:
            raise SubmitUnknown(f"submit answered without a generationId: {brief(answer)}")
        estimate = answer.get("estimatedTime")
        if isinstance(estimate, int | float) and not isinstance(estimate, bool) and estimate > 0:
            # Whole seconds, rounded up: the task may be done up to a second sooner (a
            # 0.2 s task says 1). Aim a second early; a poll that comes too soon costs
            # one request, one that comes too late costs every job its latency.
            self._expected[generation_id] = time.monotonic() + float(estimate) - 1.0
            if len(self._expected) > MAX_ESTIMATES:
                del self._expected[next(iter(self._expected))]
        return generation_id

    def first_check_in(self, remote_id: str) -> float | None:
        """Seconds until the submit answer's ``estimatedTime`` is up (asked once)."""
        at = self._expected.pop(remote_id, None)
        return None if at is None else max(at - time.monotonic(), 0.0)

    async def status(self, remote_id: str) -> RemoteTask:
        answer = await self._send_json(PreparedRequest("GET", f"/v1/generate/{remote_id}"))
        return _parse_status(remote_id, answer)

    def error_code(self, response: httpx.Response) -> tuple[str | None, str]:
        body = json_or_none(response)
        if isinstance(body, Mapping):
            return _str_or_none(body.get("error")), str(body.get("message") or "error")
        return None, response.reason_phrase or "error"


def _parse_status(remote_id: str, answer: Mapping[str, Any]) -> RemoteTask:
    raw_status = str(answer.get("status", ""))
    status = STATUS.get(raw_status)
    if status is None:
        raise TransientError(f"unknown PixelLabs status {raw_status!r} for {remote_id}")
    progress = answer.get("progress")
    outputs: tuple[OutputRef, ...] = ()
    image_url = answer.get("imageUrl")
    if status is RemoteStatus.SUCCEEDED and isinstance(image_url, str):
        outputs = (OutputRef(image_url, ext="png", content_type="image/"),)
    return RemoteTask(
        remote_id=remote_id,
        status=status,
        progress=_percent(progress),
        outputs=outputs,
        error=_failure_reason(answer) if status is RemoteStatus.FAILED else None,
        raw=answer,
    )


def _percent(value: object) -> float | None:
    """A progress figure, or None for anything that is not a plain number 0-100."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= 100 else None


def _failure_reason(answer: Mapping[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return ": ".join(str(p) for p in (code, message) if p) or "failed"
    return str(error or answer.get("message") or "failed without a reason")


def _aspect_from_size(params: Mapping[str, Any]) -> str | None:
    width, height = params.get("width"), params.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        return None
    ratio = Fraction(width, height)
    text = f"{ratio.numerator}:{ratio.denominator}"
    return text if text in ASPECT_RATIOS else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
