"""The PixAI adapter's mapping, checked with httpx.MockTransport (the transport is a
seam: no patching). Wire behaviour end to end is covered against the emulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.errors import (
    AccountBusy,
    AccountError,
    FinalError,
    RateLimited,
    SubmitUnknown,
    TransientError,
)
from pipeline.models import Job, ProviderSettings, RemoteStatus
from pipeline.providers.pixai import PixAIProvider

SETTINGS = ProviderSettings(name="pixai", type="pixai", api_key="k", base_url="http://px.test")


def job(model: str | None = None, **params: object) -> Job:
    return Job(
        id="0123456789abcdef", provider="pixai", model=model, params={"prompt": "a cat", **params}
    )


def adapter(handler: Callable[[httpx.Request], httpx.Response]) -> PixAIProvider:
    client = httpx.AsyncClient(base_url="http://px.test", transport=httpx.MockTransport(handler))
    return PixAIProvider(SETTINGS, client)


def answer(body: Any, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _request: httpx.Response(status, json=body)


def test_common_vocabulary_maps_to_pixai_parameters() -> None:
    request = PixAIProvider(SETTINGS).build_submit(
        job(
            "1648918127446573124",
            negative_prompt="dogs",
            seed=3,
            count=4,
            width=512,
            height=768,
            cfgScale=7,
        )
    )
    assert request.method == "POST" and request.path == "/graphql"
    assert request.json is not None
    assert request.json["operationName"] == "createGenerationTask"
    assert "createGenerationTask(parameters: $parameters)" in request.json["query"]
    assert request.json["variables"] == {
        "parameters": {
            "prompts": "a cat",
            "negativePrompts": "dogs",
            "seed": 3,
            "batchSize": 4,
            "width": 512,
            "height": 768,
            "cfgScale": 7,
            "modelId": "1648918127446573124",
        }
    }


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("1:1", (768, 768)), ("16:9", (768, 432)), ("9:16", (432, 768)), ("3:4", (576, 768))],
)
def test_aspect_ratio_becomes_a_size(ratio: str, size: tuple[int, int]) -> None:
    request = PixAIProvider(SETTINGS).build_submit(job(aspect_ratio=ratio))
    assert request.json is not None
    parameters = request.json["variables"]["parameters"]
    assert (parameters["width"], parameters["height"]) == size
    assert "aspect_ratio" not in parameters


def test_documented_limits_are_validated() -> None:
    assert PixAIProvider.validate_params({"count": 4, "width": 512, "seed": "12"}) == []
    problems = dict(
        PixAIProvider.validate_params(
            {"count": 5, "width": 500, "aspect_ratio": "wide", "seed": -1}
        )
    )
    assert set(problems) == {"count", "width", "aspect_ratio", "seed"}


def test_ws_url_is_derived_from_the_base_url() -> None:
    assert PixAIProvider(SETTINGS).ws_url == "ws://px.test/graphql"
    real = ProviderSettings(name="p", type="pixai")
    assert PixAIProvider(real).ws_url == "wss://gw.pixai.art/graphql"
    tls = ProviderSettings(name="p", type="pixai", base_url="https://proxy.example/")
    assert PixAIProvider(tls).ws_url == "wss://proxy.example/graphql"
    chosen = ProviderSettings(name="p", type="pixai", options={"ws_url": "ws://x/y"})
    assert PixAIProvider(chosen).ws_url == "ws://x/y"


@pytest.mark.anyio
async def test_submit_returns_the_task_id() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(
            200, json={"data": {"createGenerationTask": {"id": "123", "status": "waiting"}}}
        )

    provider = adapter(handler)
    assert await provider.submit(job()) == "123"
    assert provider.submit_sent_at("123") is not None
    assert provider.submit_sent_at("123") is None  # read once


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            {
                "errors": [
                    {
                        "message": "Too many tasks in progress",
                        "extensions": {"code": "TOO_MANY_TASKS"},
                    }
                ]
            },
            200,
            AccountBusy,
        ),
        ({"errors": [{"message": "You have too many tasks running"}]}, 200, AccountBusy),
        (
            {"errors": [{"message": "Limit reached", "extensions": {"code": "CONCURRENCY"}}]},
            200,
            AccountBusy,
        ),
        (
            {
                "errors": [
                    {"message": "10 generations already pending", "extensions": {"code": "E1"}}
                ]
            },
            200,
            AccountBusy,
        ),
        (
            {"errors": [{"message": "boom", "extensions": {"code": "SOMETHING_NEW"}}]},
            200,
            SubmitUnknown,
        ),
        (
            {"errors": [{"message": "x", "extensions": {"code": "INSUFFICIENT_CREDITS"}}]},
            200,
            AccountError,
        ),
        (
            {"errors": [{"message": "bad", "extensions": {"code": "BAD_USER_INPUT"}}]},
            200,
            FinalError,
        ),
        (
            {"errors": [{"message": "boom", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
            200,
            SubmitUnknown,
        ),
        ({"data": None}, 200, SubmitUnknown),
        ({"message": "Unauthorized"}, 401, AccountError),
        ({"message": "Payment required"}, 402, AccountError),
        ({"message": "Too Many Requests"}, 429, RateLimited),
        ({"message": "Service Unavailable"}, 503, SubmitUnknown),  # undocumented: ambiguous
        ({"message": "Internal Server Error"}, 500, SubmitUnknown),
        ({"errors": [{"message": "Syntax Error"}]}, 400, FinalError),
    ],
)
async def test_submit_errors_map_onto_the_error_tree(
    body: Any, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as raised:
        await adapter(answer(body, status)).submit(job())
    assert type(raised.value) is error


def task_answer(**task: Any) -> dict[str, Any]:
    return {"data": {"task": {"id": "9", "outputs": {}, **task}}}


def media(media_id: str) -> dict[str, Any]:
    return {
        "id": media_id,
        "urls": [
            {"variant": "THUMBNAIL", "url": f"http://cdn.test/{media_id}-thumb.webp"},
            {"variant": "PUBLIC", "url": f"http://cdn.test/{media_id}.png?sig=1"},
        ],
    }


def graphql_router(task: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["operationName"] == "getTaskById":
            return httpx.Response(200, json=task)
        assert body["operationName"] == "getMediaByIds"
        data = {f"m{i}": media(v) for i, v in enumerate(body["variables"].values())}
        return httpx.Response(200, json={"data": data})

    return handler


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("word", "status"),
    [("waiting", RemoteStatus.QUEUED), ("running", RemoteStatus.RUNNING)],
)
async def test_status_words_map(word: str, status: RemoteStatus) -> None:
    task = await adapter(answer(task_answer(status=word))).status("9")
    assert task.status is status and task.outputs == ()


@pytest.mark.anyio
async def test_single_image_is_the_top_level_media() -> None:
    outputs = {"mediaId": "m1", "duration": 1}
    task = await adapter(graphql_router(task_answer(status="completed", outputs=outputs))).status(
        "9"
    )
    assert task.status is RemoteStatus.SUCCEEDED
    assert [(o.url, o.ext, o.content_type) for o in task.outputs] == [
        ("http://cdn.test/m1.png?sig=1", "png", "image/")
    ]


@pytest.mark.anyio
async def test_batch_images_come_from_the_batch_never_the_grid() -> None:
    outputs = {"mediaId": "grid", "batch": [{"seed": s, "mediaId": f"b{s}"} for s in range(4)]}
    task = await adapter(graphql_router(task_answer(status="completed", outputs=outputs))).status(
        "9"
    )
    assert [o.url for o in task.outputs] == [f"http://cdn.test/b{s}.png?sig=1" for s in range(4)]


@pytest.mark.anyio
async def test_failure_and_cancel_reasons_are_kept() -> None:
    failed = task_answer(
        status="failed", outputs={"error": {"code": "NSFW_CONTENT", "message": "blocked"}}
    )
    task = await adapter(answer(failed)).status("9")
    assert task.status is RemoteStatus.FAILED and task.error == "NSFW_CONTENT: blocked"
    plain = task_answer(status="failed", outputs={"error": "worker crashed"})
    assert (await adapter(answer(plain)).status("9")).error == "worker crashed"
    cancelled = task_answer(status="cancelled", outputs={"reason": "by user"})
    task = await adapter(answer(cancelled)).status("9")
    assert task.status is RemoteStatus.CANCELLED and task.error == "by user"


@pytest.mark.anyio
async def test_unknown_task_is_final_and_unknown_status_transient() -> None:
    with pytest.raises(FinalError):
        await adapter(answer({"data": {"task": None}})).status("9")
    with pytest.raises(TransientError):
        await adapter(answer(task_answer(status="exploded"))).status("9")


@pytest.mark.anyio
async def test_cancel() -> None:
    body = {"data": {"cancelGenerationTask": {"id": "9", "status": "cancelled"}}}
    assert await adapter(answer(body)).cancel("9") is True
    done = {"data": {"cancelGenerationTask": {"id": "9", "status": "completed"}}}
    assert await adapter(answer(done)).cancel("9") is False


def test_task_update_reads_next_payloads() -> None:
    payload = {"data": {"personalEvents": {"taskUpdated": {"id": "5", "status": "running"}}}}
    assert PixAIProvider.task_update(payload) == {"id": "5", "status": "running"}
    assert PixAIProvider.task_update({"data": {"personalEvents": {"newNotification": {}}}}) is None
    assert PixAIProvider.task_update(None) is None
