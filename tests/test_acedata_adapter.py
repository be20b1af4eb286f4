"""The AceData Pixverse adapter's mapping, checked with httpx.MockTransport (the transport
is a seam: no patching). Wire behaviour end to end is covered against the emulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.errors import (
    AccountError,
    FinalError,
    RateLimited,
    SpecError,
    SubmitUnknown,
    TransientError,
)
from pipeline.models import Job, ProviderSettings, RemoteStatus
from pipeline.providers.acedata import AceDataPixverseProvider, parse_record
from pipeline.providers.registry import get

HOOK = "http://127.0.0.1:8765/hooks/acedata"
SETTINGS = ProviderSettings(name="pixverse", type="acedata", api_key="k")
Handler = Callable[[httpx.Request], httpx.Response]


def job(model: str | None = None, **params: object) -> Job:
    return Job(
        id="0123456789abcdef",
        provider="pixverse",
        model=model,
        params={"prompt": "a cat", **params},
    )


def adapter(handler: Handler, **options: Any) -> AceDataPixverseProvider:
    client = httpx.AsyncClient(base_url="http://ace.test", transport=httpx.MockTransport(handler))
    provider = AceDataPixverseProvider(
        ProviderSettings(name="pixverse", type="acedata", api_key="k", options=options), client
    )
    provider.callback_url = HOOK
    return provider


def record(task_id: str, response: dict[str, Any] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"_id": "6789", "id": task_id, "created_at": 1.5, "request": {}}
    if response is not None:
        found["response"] = response
    return found


def success(task_id: str, url: str = "http://cdn.test/v.mp4") -> dict[str, Any]:
    return {"success": True, "task_id": task_id, "trace_id": "t", "data": [{"video_url": url}]}


def error_body(code: str, message: str = "nope") -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}, "trace_id": "t"}


# --- registry, parameters, request building ------------------------------------------------


def test_registered_as_acedata_with_batch_completion() -> None:
    assert get("acedata") is AceDataPixverseProvider
    assert AceDataPixverseProvider.completion_modes == ("batch",)
    assert AceDataPixverseProvider.media == "video"
    assert AceDataPixverseProvider.requires_callback  # the session always gives it a URL
    headers = AceDataPixverseProvider.auth_headers("tok")
    assert headers == {"accept": "application/json", "Authorization": "Bearer tok"}


def test_documented_enums_are_validated() -> None:
    good = {"style": "anime", "quality": "1080p", "duration": 8, "motion": "fast"}
    assert AceDataPixverseProvider.validate_params({**good, "aspect_ratio": "3:4", "seed": 1}) == []
    problems = dict(
        AceDataPixverseProvider.validate_params(
            {"style": "noir", "quality": "4k", "duration": 6, "motion": "slow", "model": "v9"}
        )
    )
    assert set(problems) == {"style", "quality", "duration", "motion", "model"}
    assert "cyberpunk" in problems["style"] and "v4.5" in problems["model"]
    assert dict(AceDataPixverseProvider.validate_params({"aspect_ratio": "2:1"}))["aspect_ratio"]
    assert dict(AceDataPixverseProvider.validate_params({"width": 1000, "height": 333}))["width"]


def test_submit_body_carries_the_callback_and_the_common_vocabulary() -> None:
    provider = AceDataPixverseProvider(SETTINGS)
    provider.callback_url = HOOK
    request = provider.build_submit(job("v4", width=1920, height=1080, seed=3, count=1))
    assert (request.method, request.path) == ("POST", "/pixverse/videos")
    assert request.json == {
        "action": "generate",
        "prompt": "a cat",
        "aspect_ratio": "16:9",
        "seed": 3,
        "model": "v4",
        "callback_url": HOOK,
    }


@pytest.mark.parametrize("value", [0, -1, "50", True])
def test_bad_batch_size_is_a_spec_error(value: object) -> None:
    settings = ProviderSettings(name="p", type="acedata", options={"batch_size": value})
    with pytest.raises(SpecError, match="batch_size"):
        AceDataPixverseProvider(settings)


# --- submit ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_returns_the_task_id() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/pixverse/videos" and body["callback_url"] == HOOK
        return httpx.Response(200, json={"task_id": "e3d52b98"})

    assert await adapter(handler).submit(job()) == "e3d52b98"


@pytest.mark.anyio
async def test_submit_never_uses_the_blocking_form() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"task_id": "x"})

    provider = adapter(handler)
    provider.callback_url = None
    with pytest.raises(AccountError, match="callback_url"):
        await provider.submit(job())
    assert sent == []


@pytest.mark.anyio
async def test_submit_without_task_id_or_with_an_ambiguous_500_is_unknown() -> None:
    def no_id(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"success": True})

    with pytest.raises(SubmitUnknown):
        await adapter(no_id).submit(job())

    def server_error(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json=error_body("api_error", "fetch failed"))

    with pytest.raises(SubmitUnknown, match="api_error"):
        await adapter(server_error).submit(job())


@pytest.mark.anyio
async def test_unknown_model_fails_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(FinalError, match="v9"):
        await adapter(handler).submit(job("v9"))


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "token_mismatched", FinalError),
        (400, "api_not_implemented", FinalError),
        (400, "disabled", FinalError),
        (401, "invalid_token", AccountError),
        (401, "token_expired", AccountError),
        (401, "no_token", AccountError),
        (403, "used_up", AccountError),
        (403, "forbidden", FinalError),
        (429, "too_many_requests", RateLimited),
        (500, "api_error", TransientError),
    ],
)
@pytest.mark.anyio
async def test_errors_map_onto_the_tree(status: int, code: str, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=error_body(code))

    with pytest.raises(error) as caught:
        await adapter(handler).status("t1")
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    if error is FinalError:
        assert not isinstance(caught.value, AccountError)


# --- status ------------------------------------------------------------------------------


def test_state_is_derived_from_the_response() -> None:
    assert parse_record(record("a"), "a").status is RemoteStatus.RUNNING
    assert parse_record(record("a", {"success": True, "data": []}), "a").status is (
        RemoteStatus.RUNNING
    )
    done = parse_record(record("a", success("a")), "a")
    assert done.status is RemoteStatus.SUCCEEDED
    (output,) = done.outputs
    assert (output.url, output.ext, output.content_type) == (
        "http://cdn.test/v.mp4",
        "mp4",
        "video/",
    )
    failed = parse_record(record("a", error_body("forbidden", "content rejected")), "a")
    assert failed.status is RemoteStatus.FAILED
    assert failed.error == "forbidden: content rejected"
    bare = parse_record(record("a", {"error": "boom"}), "a")
    assert bare.status is RemoteStatus.FAILED and bare.error == "boom"


@pytest.mark.anyio
async def test_status_uses_retrieve() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"id": "t1", "action": "retrieve"}
        return httpx.Response(200, json=record("t1", success("t1")))

    task = await adapter(handler).status("t1")
    assert task.status is RemoteStatus.SUCCEEDED


@pytest.mark.anyio
async def test_status_many_costs_one_request_per_batch() -> None:
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["action"] == "retrieve_batch"
        seen.append(body["ids"])
        items = [record(i, success(i) if i.endswith("0") else None) for i in body["ids"]]
        return httpx.Response(200, json={"items": items[::-1], "count": len(items)})

    provider = adapter(handler, batch_size=4)
    ids = [f"t{n}" for n in range(10)]
    tasks = await provider.status_many(ids)
    assert [len(chunk) for chunk in seen] == [4, 4, 2]
    assert [t.remote_id for t in tasks] == ids
    assert [t.status for t in tasks].count(RemoteStatus.SUCCEEDED) == 1


@pytest.mark.anyio
async def test_a_task_missing_from_batches_is_looked_up_then_failed() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body["action"])
        if body["action"] == "retrieve":
            return httpx.Response(404, json=error_body("not_found", "task gone not found"))
        items = [record(i) for i in body["ids"] if i != "gone"]
        return httpx.Response(200, json={"items": items, "count": len(items)})

    provider = adapter(handler, missing_rounds=3)
    for _ in range(2):
        tasks = await provider.status_many(["ok", "gone"])
        assert [t.status for t in tasks] == [RemoteStatus.RUNNING, RemoteStatus.RUNNING]
    tasks = await provider.status_many(["ok", "gone"])
    assert tasks[1].status is RemoteStatus.FAILED
    assert tasks[1].error is not None and "not found" in tasks[1].error
    assert calls == ["retrieve_batch", "retrieve_batch", "retrieve_batch", "retrieve"]


@pytest.mark.anyio
async def test_a_late_task_found_alone_keeps_going() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["action"] == "retrieve":
            return httpx.Response(200, json=record(body["id"], success(body["id"])))
        return httpx.Response(200, json={"items": [], "count": 0})

    provider = adapter(handler, missing_rounds=1)
    (task,) = await provider.status_many(["late"])
    assert task.status is RemoteStatus.SUCCEEDED


def test_callback_hints_name_the_task() -> None:
    provider = AceDataPixverseProvider(SETTINGS)
    assert provider.callback_task_id(success("abc")) == "abc"
    assert provider.callback_task_id({"nothing": 1}) is None
    assert provider.hint_key("abc") == "abc"
