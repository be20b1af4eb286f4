"""An example provider plugin for pipeline.

It speaks an imaginary "Echo" API with the same shape as most generation APIs:

    POST /v1/jobs            {"prompt": ..., "seed": ...}  ->  {"id": "..."}
    GET  /v1/jobs/{id}       ->  {"id", "state": "working"|"done"|"error", "url"?, "error"?}

A plugin only turns jobs into requests and answers into ``RemoteTask``: pipeline does
the rest (limits, retries, the manifest, downloads, resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pipeline.errors import SubmitUnknown
from pipeline.models import Job, OutputRef, RemoteStatus, RemoteTask
from pipeline.providers.base import ParamInfo, PreparedRequest, Provider

__all__ = ["EchoProvider"]

STATES = {
    "working": RemoteStatus.RUNNING,
    "done": RemoteStatus.SUCCEEDED,
    "error": RemoteStatus.FAILED,
}


class EchoProvider(Provider):
    type = "echo"
    title = "Echo (example plugin)"
    default_base_url = "https://echo.example"
    completion_modes = ("poll",)
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "prompt": ParamInfo("prompt", "what to draw", maximum_length=1000),
        "seed": ParamInfo("seed", "random seed"),
    }

    def build_submit(self, job: Job) -> PreparedRequest:
        return PreparedRequest("POST", "/v1/jobs", dict(job.params))

    async def submit(self, job: Job) -> str:
        answer = await self._send_json(self.build_submit(job), submit=True)
        if not isinstance(answer.get("id"), str):
            raise SubmitUnknown("the Echo API answered without an id")
        return str(answer["id"])

    async def status(self, remote_id: str) -> RemoteTask:
        answer: Mapping[str, Any] = await self._send_json(
            PreparedRequest("GET", f"/v1/jobs/{remote_id}")
        )
        status = STATES.get(str(answer.get("state")), RemoteStatus.RUNNING)
        url = answer.get("url")
        outputs = (OutputRef(url, content_type="image/"),) if isinstance(url, str) else ()
        error = str(answer.get("error")) if status is RemoteStatus.FAILED else None
        return RemoteTask(remote_id, status, outputs=outputs, error=error, raw=answer)
