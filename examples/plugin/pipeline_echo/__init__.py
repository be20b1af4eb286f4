"""An example provider plugin for pipeline.

It speaks an imaginary "Echo" API with the same shape as most generation APIs:

    POST /v1/jobs            {"prompt": ..., "seed": ...}  ->  {"id": "..."}
    GET  /v1/jobs/{id}       ->  {"id", "state": "working"|"done"|"error", "url"?, "error"?}

That shape is ``RestProvider``'s: the adapter is a table and two parsers. pipeline does
the rest (limits, retries, the manifest, downloads, resume). ``pipeline_echo.emulator``
is the fake Echo server that ``emulate:`` in a spec runs it against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pipeline.errors import SubmitUnknown
from pipeline.models import OutputRef, RemoteStatus, RemoteTask
from pipeline.providers.base import ParamInfo
from pipeline.providers.rest import RestProvider

__all__ = ["EchoProvider"]


class EchoProvider(RestProvider):
    type = "echo"
    title = "Echo (example plugin)"
    default_base_url = "https://echo.example"
    submit_path = "/v1/jobs"
    status_path = "/v1/jobs/{id}"
    states: ClassVar[Mapping[str, RemoteStatus]] = {
        "working": RemoteStatus.RUNNING,
        "done": RemoteStatus.SUCCEEDED,
        "error": RemoteStatus.FAILED,
    }
    error_fields = ("code", "message")
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "prompt": ParamInfo("prompt", "what to draw", maximum_length=1000),
        "seed": ParamInfo("seed", "random seed"),
    }

    def parse_submit(self, answer: Mapping[str, Any]) -> str:
        remote_id = answer.get("id")
        if not isinstance(remote_id, str) or not remote_id:
            raise SubmitUnknown("the Echo API answered without an id")
        return remote_id

    def parse_status(self, remote_id: str, answer: Mapping[str, Any]) -> RemoteTask:
        status = self.remote_status(remote_id, answer.get("state"))
        url = answer.get("url")
        outputs = (OutputRef(url, content_type="image/"),) if isinstance(url, str) else ()
        error = str(answer.get("error")) if status is RemoteStatus.FAILED else None
        return RemoteTask(remote_id, status, outputs=outputs, error=error, raw=answer)
