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

from pipeline.errors import SubmitUnknown
from pipeline.models import Job, OutputRef, ProviderSettings, RemoteStatus, RemoteTask
from pipeline.providers.base import ParamInfo, brief
from pipeline.providers.rest import NOT_SENT, RestProvider, percent

__all__ = ["PixelLabsProvider"]

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")
MAX_ESTIMATES = 100_000
"""Estimates kept for tasks whose first poll has not been planned yet (oldest dropped)."""


class PixelLabsProvider(RestProvider):
    type = "pixellabs"
    title = "PixelLabs AI"
    default_base_url = "https://api.pixellabsai.app"
    media = "image"
    completion_modes = ("poll",)
    submit_path = "/v1/generate"
    status_path = "/v1/generate/{id}"
    states: ClassVar[Mapping[str, RemoteStatus]] = {
        "queued": RemoteStatus.QUEUED,
        "processing": RemoteStatus.RUNNING,
        "completed": RemoteStatus.SUCCEEDED,
        "failed": RemoteStatus.FAILED,
    }
    error_fields = ("error", "message")
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
        "count": ParamInfo(NOT_SENT, "images per task: PixelLabs makes exactly one", (1,)),
        "width": ParamInfo(NOT_SENT, "pixels; with height, sent as the aspect ratio"),
        "height": ParamInfo(NOT_SENT, "pixels; with width, sent as the aspect ratio"),
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

    def submit_params(self, job: Job) -> dict[str, Any]:
        """Width and height are sent as the aspect ratio they reduce to."""
        params = super().submit_params(job)
        ratio = _aspect_from_size(params)
        if ratio is not None and "aspect_ratio" not in params:
            params["aspect_ratio"] = ratio
        params.pop("width", None)
        params.pop("height", None)
        return params

    def parse_submit(self, answer: Mapping[str, Any]) -> str:
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

    def parse_status(self, remote_id: str, answer: Mapping[str, Any]) -> RemoteTask:
        status = self.remote_status(remote_id, answer.get("status", ""))
        image_url = answer.get("imageUrl")
        outputs: tuple[OutputRef, ...] = ()
        if status is RemoteStatus.SUCCEEDED and isinstance(image_url, str):
            outputs = (OutputRef(image_url, ext="png", content_type="image/"),)
        return RemoteTask(
            remote_id=remote_id,
            status=status,
            progress=percent(answer.get("progress")),
            outputs=outputs,
            error=_failure_reason(answer) if status is RemoteStatus.FAILED else None,
            raw=answer,
        )


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
