"""A declarative base for the common REST shape: ``POST`` creates a task and answers its
id; ``GET`` on a path naming that id answers its state and, once done, its output URLs.

A provider of that shape is a table and two parsers::

    class MyApi(RestProvider):
        type, title, default_base_url = "myapi", "My API", "https://api.example"
        submit_path = "/v1/jobs"
        status_path = "/v1/jobs/{id}"
        parameters = {"prompt": ParamInfo("text", "what to draw")}  # common name → field
        states = {"running": RemoteStatus.RUNNING, "done": RemoteStatus.SUCCEEDED}
        error_fields = ("code", "message")

        def parse_submit(self, answer): ...            # → the remote id
        def parse_status(self, remote_id, answer): ... # → RemoteTask

Everything ``Provider`` guarantees holds: a submit is sent once and its failures are
classified by ``submit_outcome``, answers are read under the byte cap, Retry-After is
honoured and capped, keys are scrubbed from errors. What ``parse_submit`` raises is
classified by ``submit_outcome`` too: a refusal it finds in the answer (an error inside
a 200 envelope) keeps its class; anything else — a KeyError included — becomes
``SubmitUnknown``, as the task may exist.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from pipeline.errors import TransientError
from pipeline.models import Job, RemoteStatus, RemoteTask
from pipeline.providers.base import PreparedRequest, Provider, json_or_none, submit_outcome

__all__ = ["NOT_SENT", "RestProvider", "percent"]

NOT_SENT = "-"
"""A ``ParamInfo.field`` that means: documented, checked, but not sent to the API."""


class RestProvider(Provider):
    """One REST API of the ``POST → id, GET → status`` shape, declared by a table.

    ``parameters`` doubles as the field mapping: each common name is sent under its
    ``ParamInfo.field`` (``NOT_SENT``: not at all); names it does not list, ``model``
    included, are sent unchanged when the spec passes them through."""

    submit_path: ClassVar[str]
    """Where the task is created (``POST``), relative to the base URL."""
    status_path: ClassVar[str]
    """Where a task's state is read (``GET``); ``{id}`` stands for the remote id."""
    states: ClassVar[Mapping[str, RemoteStatus]]
    """The API's state words and what each means."""
    error_fields: ClassVar[tuple[str, str] | None] = None
    """The (code, message) keys of a flat JSON error body; None: the reason phrase."""
    auth_header: ClassVar[str] = "Authorization"
    auth_value: ClassVar[str] = "Bearer {key}"
    """The header that carries the API key, and its value with ``{key}`` in it."""

    @abc.abstractmethod
    def parse_submit(self, answer: Mapping[str, Any]) -> str:
        """The remote id in a submit answer (a JSON object)."""

    @abc.abstractmethod
    def parse_status(self, remote_id: str, answer: Mapping[str, Any]) -> RemoteTask:
        """What a status answer (a JSON object) says about ``remote_id``."""

    @classmethod
    def auth_headers(cls, api_key: str | None) -> dict[str, str]:
        return {cls.auth_header: cls.auth_value.format(key=api_key)} if api_key else {}

    def submit_params(self, job: Job) -> dict[str, Any]:
        """The common-vocabulary parameters to send; override to derive or drop some."""
        params = dict(job.params)
        if job.model:
            params["model"] = job.model
        return params

    def build_submit(self, job: Job) -> PreparedRequest:
        body: dict[str, Any] = {}
        for name, value in self.submit_params(job).items():
            info = self.parameters.get(name)
            field = name if info is None else info.field
            if field != NOT_SENT:
                body[field] = value
        return PreparedRequest("POST", self.submit_path, body)

    def status_request(self, remote_id: str) -> PreparedRequest:
        return PreparedRequest("GET", self.status_path.format(id=quote(remote_id, safe="")))

    async def submit(self, job: Job) -> str:
        answer = await self._send_json(self.build_submit(job), submit=True)
        try:
            return self.parse_submit(answer)
        except Exception as exc:
            outcome = submit_outcome(exc)
            if outcome is exc:
                raise
            raise outcome from exc

    async def status(self, remote_id: str) -> RemoteTask:
        answer = await self._send_json(self.status_request(remote_id))
        return self.parse_status(remote_id, answer)

    def remote_status(self, remote_id: str, word: object) -> RemoteStatus:
        """The meaning of a state word; an unknown one is a transient error (asked again)."""
        status = self.states.get(str(word))
        if status is None:
            raise TransientError(f"unknown {self.title} state {str(word)!r} for {remote_id}")
        return status

    def error_code(self, response: httpx.Response) -> tuple[str | None, str]:
        body = json_or_none(response)
        if self.error_fields is None or not isinstance(body, Mapping):
            return super().error_code(response)
        code_key, message_key = self.error_fields
        code = body.get(code_key)
        message = str(body.get(message_key) or "error")
        return (code if isinstance(code, str) and code else None), message


def percent(value: object) -> float | None:
    """A progress figure, or None for anything that is not a plain number 0-100."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= 100 else None
