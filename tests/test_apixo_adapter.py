"""The APIXO adapter: request building, status mapping and errors, on a MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.errors import AccountError, FinalError, RateLimited, SubmitUnknown, TransientError
from pipeline.models import Job, ProviderSettings, RemoteStatus
from pipeline.providers.apixo import ApixoProvider
from pipeline.providers.registry import BUILTIN

pytestmark = pytest.mark.anyio

SETTINGS = ProviderSettings(name="apixo", type="apixo", api_key="k")
TASK = "a" * 32


def job(model: str | None = "nano-banana", **params: Any) -> Job:
    return Job(id="j1", provider="apixo", model=model, params={"prompt": "a fox", **params})


def adapter(handler: Callable[[httpx.Request], httpx.Response]) -> ApixoProvider:
    client = httpx.AsyncClient(base_url="https://api.test", transport=httpx.MockTransport(handler))
    return ApixoProvider(SETTINGS, client)


def envelope(data: dict[str, Any], code: int = 200) -> httpx.Response:
    return httpx.Response(code, json={"code": code, "message": "success", "data": data})


def error(code: int, message: str, detail: str) -> httpx.Response:
    return httpx.Response(code, json={"code": code, "message": message, "data": {"error": detail}})


def test_registered():
    assert BUILTIN["apixo"] is ApixoProvider
    assert ApixoProvider.completion_modes == ("poll", "webhook")


def test_build_submit_maps_the_vocabulary_into_input():
    request = ApixoProvider(SETTINGS).build_submit(
        job(aspect_ratio="16:9", seed=7, negative_prompt="blur", resolution="2K", count=1)
    )
    assert request.method == "POST"
    assert request.path == "/api/v1/generateTask/nano-banana"
    assert request.json == {
        "request_type": "async",
        "input": {
            "prompt": "a fox",
            "aspect_ratio": "16:9",
            "seed": 7,
            "negative_prompt": "blur",
            "resolution": "2K",
            "mode": "text-to-image",
        },
    }


def test_build_submit_keeps_explicit_mode_and_routes_provider_field():
    request = ApixoProvider(SETTINGS).build_submit(
        job("flux2", mode="image-to-image", image_urls=["https://x/y.png"], provider="official")
    )
    assert request.json is not None
    assert request.json["provider"] == "official"
    assert request.json["input"]["mode"] == "image-to-image"
    video = ApixoProvider(SETTINGS).build_submit(job("sora-2"))
    assert video.json is not None and "mode" not in video.json["input"]


def test_callback_url_switches_to_callback_requests():
    provider = ApixoProvider(SETTINGS)
    provider.callback_url = "http://127.0.0.1:9/hooks/t/apixo"
    body = provider.build_submit(job()).json
    assert body is not None
    assert body["request_type"] == "callback"
    assert body["callback_url"] == "http://127.0.0.1:9/hooks/t/apixo"


def test_a_job_without_model_fails_clearly():
    with pytest.raises(FinalError, match="needs a model"):
        ApixoProvider(SETTINGS).build_submit(job(model=None))


def test_validate_params():
    problems = ApixoProvider.validate_params({"provider": "cheapest", "image_urls": "x"})
    assert {key for key, _ in problems} == {"provider", "image_urls", "model"}
    assert ApixoProvider.validate_params({"model": "flux2", "anything": 1}) == []


async def test_submit_returns_model_and_task_id():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return envelope({"taskId": TASK})

    remote_id = await adapter(handler).submit(job())
    assert remote_id == f"nano-banana/{TASK}"
    assert json.loads(seen[0].content)["input"]["prompt"] == "a fox"


async def test_status_parses_states_and_result_json_string():
    answers = {
        "pending": {"taskId": TASK, "state": "pending", "createTime": 1},
        "processing": {"taskId": TASK, "state": "processing", "createTime": 1},
        "success": {
            "taskId": TASK,
            "state": "success",
            "resultJson": json.dumps({"resultUrls": ["https://cdn/a.png", "https://cdn/b.mp4"]}),
            "costTime": 1200,
        },
        "failed": {"taskId": TASK, "state": "failed", "failCode": "NSFW", "failMsg": "blocked"},
    }
    expected = {
        "pending": RemoteStatus.QUEUED,
        "processing": RemoteStatus.RUNNING,
        "success": RemoteStatus.SUCCEEDED,
        "failed": RemoteStatus.FAILED,
    }
    for state, data in answers.items():
        seen: list[httpx.Request] = []

        def handler(
            request: httpx.Request, data: dict[str, Any] = data, seen: list[Any] = seen
        ) -> httpx.Response:
            seen.append(request)
            return envelope(data)

        task = await adapter(handler).status(f"veo-3-1/{TASK}")
        assert task.status is expected[state]
        assert seen[0].url.path == "/api/v1/statusTask/veo-3-1"
        assert seen[0].url.params["taskId"] == TASK
    assert task.error == "NSFW: blocked"
    success = await adapter(lambda _: envelope(answers["success"])).status(f"m/{TASK}")
    assert [(o.url, o.content_type) for o in success.outputs] == [
        ("https://cdn/a.png", "image/"),
        ("https://cdn/b.mp4", "video/"),
    ]


@pytest.mark.parametrize("result_json", ["{not json", json.dumps({"resultUrls": []}), None])
async def test_malformed_result_json_is_a_clear_transient_error(result_json):
    data = {"taskId": TASK, "state": "success", "resultJson": result_json}
    with pytest.raises(TransientError, match="resultJson"):
        await adapter(lambda _: envelope(data)).status(f"m/{TASK}")


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (error(401, "Unauthorized", "Invalid API key"), AccountError),
        (error(402, "Insufficient balance", "recharge"), AccountError),
        (error(403, "Forbidden", "content policy"), FinalError),
        (error(400, "Invalid request", "Missing required field: input.prompt"), FinalError),
        (error(429, "Too many requests", "slow down"), RateLimited),
        (error(503, "Service unavailable", "later"), SubmitUnknown),  # not "not processed"
        (error(500, "Internal server error", "oops"), SubmitUnknown),
        (httpx.Response(200, json={"code": 402, "message": "Insufficient balance"}), AccountError),
    ],
)
async def test_submit_errors_map_onto_the_tree(response, kind):
    with pytest.raises(kind) as caught:
        await adapter(lambda _: response).submit(job())
    assert type(caught.value) is kind


async def test_error_reason_carries_message_and_detail():
    with pytest.raises(FinalError) as caught:
        await adapter(lambda _: error(400, "Invalid request", "Missing input.prompt")).submit(job())
    assert caught.value.reason() == "400: Invalid request: Missing input.prompt"


async def test_status_404_is_final_and_5xx_transient():
    with pytest.raises(FinalError):
        await adapter(lambda _: error(404, "Not found", "Task not found")).status(f"m/{TASK}")
    with pytest.raises(TransientError):
        await adapter(lambda _: error(500, "Internal server error", "x")).status(f"m/{TASK}")


def test_callback_task_id_and_hint_key():
    provider = ApixoProvider(SETTINGS)
    assert provider.callback_task_id({"code": 200, "data": {"taskId": TASK}}) == TASK
    assert provider.callback_task_id({"data": {}}) is None
    assert provider.callback_task_id(["x"]) is None
    assert provider.hint_key(f"nano-banana/{TASK}") == TASK
