"""The declarative REST base keeps every guarantee of ``Provider``: checked with a small
table-made provider over httpx.MockTransport (a seam, no patching)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import pytest
from aiohttp import web

from pipeline.errors import (
    FinalError,
    RateLimited,
    ResponseTooLarge,
    SubmitUnknown,
    TransientError,
)
from pipeline.http.client import make_api_client
from pipeline.models import Job, OutputRef, ProviderSettings, RemoteStatus, RemoteTask
from pipeline.providers.base import ParamInfo
from pipeline.providers.rest import NOT_SENT, RestProvider, percent
from pipeline.redact import register_secrets

from .conftest import serve_app

KEY = "tiny-secret-key-0001"
SETTINGS = ProviderSettings(name="tiny", type="tiny", api_key=KEY)


class Tiny(RestProvider):
    type = "tiny"
    title = "Tiny"
    default_base_url = "http://tiny.test"
    submit_path = "/v2/tasks"
    status_path = "/v2/tasks/{id}"
    states: ClassVar[Mapping[str, RemoteStatus]] = {
        "wait": RemoteStatus.QUEUED,
        "ok": RemoteStatus.SUCCEEDED,
        "bad": RemoteStatus.FAILED,
    }
    error_fields = ("kind", "detail")
    auth_header = "X-Api-Key"
    auth_value = "{key}"
    parameters: ClassVar[Mapping[str, ParamInfo]] = {
        "prompt": ParamInfo("text", "what to draw"),
        "count": ParamInfo(NOT_SENT, "always one", (1,)),
    }

    def parse_submit(self, answer: Mapping[str, Any]) -> str:
        return str(answer["task"]["id"])  # a KeyError when absent: the base decides

    def parse_status(self, remote_id: str, answer: Mapping[str, Any]) -> RemoteTask:
        status = self.remote_status(remote_id, answer.get("state"))
        url = answer.get("url")
        outputs = (OutputRef(url),) if isinstance(url, str) else ()
        return RemoteTask(remote_id, status, progress=percent(answer.get("pct")), outputs=outputs)


def job(**params: object) -> Job:
    return Job(id="0123456789abcdef", provider="tiny", model="m1", params={"prompt": "a", **params})


def tiny(handler: Any) -> Tiny:
    client = httpx.AsyncClient(base_url="http://tiny.test", transport=httpx.MockTransport(handler))
    return Tiny(SETTINGS, client)


def answer(status: int, body: Any, **headers: str) -> Any:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def test_the_table_maps_the_vocabulary_and_passes_the_rest_through() -> None:
    request = Tiny(SETTINGS).build_submit(job(count=1, extra=2))
    assert (request.method, request.path) == ("POST", "/v2/tasks")
    assert request.json == {"text": "a", "extra": 2, "model": "m1"}


def test_the_auth_header_is_declared() -> None:
    assert Tiny.auth_headers("k1") == {"X-Api-Key": "k1"}
    assert Tiny.auth_headers(None) == {}


@pytest.mark.anyio
async def test_submit_and_status_go_through_the_parsers() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.raw_path.decode()}")
        if request.method == "POST":
            assert json.loads(request.content)["text"] == "a"
            return httpx.Response(200, json={"task": {"id": "t/1?x"}})
        return httpx.Response(200, json={"state": "ok", "pct": 100, "url": "http://cdn/x.png"})

    provider = tiny(handler)
    remote_id = await provider.submit(job())
    task = await provider.status(remote_id)
    assert remote_id == "t/1?x" and task.status is RemoteStatus.SUCCEEDED and task.progress == 100
    assert seen == ["POST /v2/tasks", "GET /v2/tasks/t%2F1%3Fx"]  # the id stays one segment


@pytest.mark.anyio
async def test_a_submit_answer_the_parser_cannot_read_is_unknown() -> None:
    with pytest.raises(SubmitUnknown) as caught:
        await tiny(answer(200, {"created": True})).submit(job())
    assert isinstance(caught.value.__cause__, KeyError)


class Enveloped(Tiny):
    """An API that reports errors inside a 200 answer's ``code``."""

    def parse_submit(self, answer: Mapping[str, Any]) -> str:
        if answer.get("code") == 429:
            raise RateLimited("busy", status=429)
        if answer.get("code") == 503:
            raise TransientError("down", status=503)
        return super().parse_submit(answer)


@pytest.mark.anyio
@pytest.mark.parametrize(("code", "error"), [(429, RateLimited), (503, SubmitUnknown)])
async def test_what_the_submit_parser_raises_is_classified(code: int, error: type) -> None:
    client = httpx.AsyncClient(
        base_url="http://tiny.test", transport=httpx.MockTransport(answer(200, {"code": code}))
    )
    with pytest.raises(error):
        await Enveloped(SETTINGS, client).submit(job())


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 524])
async def test_a_server_error_answering_a_submit_is_unknown(status: int) -> None:
    with pytest.raises(SubmitUnknown):
        await tiny(answer(status, {"kind": "boom", "detail": "m"})).submit(job())


@pytest.mark.anyio
async def test_a_refusal_keeps_its_class_and_retry_after_is_capped() -> None:
    provider = tiny(answer(429, {"kind": "slow_down", "detail": "m"}, **{"Retry-After": "900"}))
    provider.max_retry_after = 30.0
    with pytest.raises(RateLimited) as caught:
        await provider.submit(job())
    assert caught.value.retry_after == 30.0 and caught.value.code == "slow_down"
    with pytest.raises(FinalError) as final:
        await tiny(answer(400, {"kind": "bad_prompt", "detail": "too long"})).submit(job())
    assert (final.value.code, final.value.message) == ("bad_prompt", "too long")


@pytest.mark.anyio
async def test_an_unknown_state_is_transient() -> None:
    with pytest.raises(TransientError, match="unknown Tiny state 'melting'"):
        await tiny(answer(200, {"state": "melting"})).status("t1")


@pytest.mark.anyio
async def test_answers_are_read_under_the_byte_cap() -> None:
    async def big(request: web.Request) -> web.Response:
        return web.json_response({"state": "ok", "task": {"id": "t1"}, "pad": "x" * 5000})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", big)
    async with serve_app(app) as base_url:
        client = make_api_client(
            base_url, headers={}, timeout=5, max_connections=1, max_response_bytes=1000
        )
        async with client:
            provider = Tiny(SETTINGS, client)
            with pytest.raises(ResponseTooLarge):
                await provider.status("t1")
            with pytest.raises(SubmitUnknown):
                await provider.submit(job())


@pytest.mark.anyio
async def test_keys_echoed_in_errors_are_redacted() -> None:
    register_secrets([KEY])
    body = {"kind": "denied", "detail": f"key {KEY} is not allowed"}
    with pytest.raises(FinalError) as caught:
        await tiny(answer(403, body)).status("t1")
    assert KEY not in str(caught.value) and "[redacted]" in str(caught.value)


def test_percent_takes_plain_numbers_from_0_to_100_only() -> None:
    assert [percent(v) for v in (0, 55.5, 100, 101, -1, True, "50", None)] == [
        0.0,
        55.5,
        100.0,
        None,
        None,
        None,
        None,
        None,
    ]
