"""The PixelLabs adapter's mapping, checked with httpx.MockTransport (the transport is a
seam: no patching). Wire behaviour end to end is covered against the emulator."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.errors import AccountError, FinalError, RateLimited, SubmitUnknown, TransientError
from pipeline.models import Job, ProviderSettings, RemoteStatus
from pipeline.providers.pixellabs import PixelLabsProvider

SETTINGS = ProviderSettings(name="pixellabs", type="pixellabs", api_key="k")


def job(**params: object) -> Job:
    return Job(
        id="0123456789abcdef",
        provider="pixellabs",
        model=None,
        params={"prompt": "a cat", **params},
    )


def adapter(handler) -> PixelLabsProvider:
    client = httpx.AsyncClient(base_url="http://pl.test", transport=httpx.MockTransport(handler))
    return PixelLabsProvider(SETTINGS, client)


def test_common_vocabulary_maps_to_pixellabs_fields() -> None:
    request = PixelLabsProvider(SETTINGS).build_submit(
        job(negative_prompt="dogs", aspect_ratio="16:9", seed=3, style="anime", extra=1)
    )
    assert request.method == "POST" and request.path == "/v1/generate"
    assert request.json == {
        "prompt": "a cat",
        "negativePrompt": "dogs",
        "aspectRatio": "16:9",
        "seed": 3,
        "style": "anime",
        "extra": 1,
    }


def test_width_and_height_become_an_aspect_ratio() -> None:
    request = PixelLabsProvider(SETTINGS).build_submit(job(width=1920, height=1080))
    assert request.json == {"prompt": "a cat", "aspectRatio": "16:9"}
    problems = PixelLabsProvider.validate_params({"width": 1000, "height": 333})
    assert problems and problems[0][0] == "width"


def test_documented_enums_are_validated() -> None:
    assert PixelLabsProvider.validate_params({"style": "anime", "quality": "ultra"}) == []
    problems = dict(PixelLabsProvider.validate_params({"style": "watercolor", "prompt": "x" * 501}))
    assert "watercolor" in problems["style"] and "500" in problems["prompt"]


@pytest.mark.anyio
async def test_submit_and_status_parse() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers.get("authorization") is None  # auth is the client's job
        if request.method == "POST":
            assert json.loads(request.content)["prompt"] == "a cat"
            return httpx.Response(
                200,
                json={"generationId": "gen_abcdefabcdef", "status": "queued", "estimatedTime": 3},
            )
        return httpx.Response(
            200,
            json={
                "generationId": "gen_abcdefabcdef",
                "status": "completed",
                "progress": 100,
                "imageUrl": "http://cdn.test/x.png",
                "arweaveUrl": "http://ar.test/x",
            },
        )

    provider = adapter(handler)
    assert await provider.submit(job()) == "gen_abcdefabcdef"
    task = await provider.status("gen_abcdefabcdef")
    assert task.status is RemoteStatus.SUCCEEDED and task.progress == 100
    assert [o.url for o in task.outputs] == ["http://cdn.test/x.png"]


@pytest.mark.anyio
async def test_failed_task_keeps_the_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "generationId": "g",
                "status": "failed",
                "progress": 40,
                "error": {"code": "nsfw", "message": "blocked"},
            },
        )

    task = await adapter(handler).status("g")
    assert task.status is RemoteStatus.FAILED and task.error == "nsfw: blocked"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "validation_error", FinalError),
        (401, "invalid_token", AccountError),
        (403, "insufficient_permissions", FinalError),
        (429, "rate_limit_exceeded", RateLimited),
        (503, "internal_error", TransientError),
    ],
)
async def test_error_bodies_map_onto_the_error_tree(status, code, error) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"error": code, "message": "m", "details": {}},
            headers={"Retry-After": "7"},
        )

    with pytest.raises(error) as caught:
        await adapter(handler).status("g")
    assert caught.value.code == code and caught.value.status == status
    if error is RateLimited:
        assert caught.value.retry_after == 7


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 504])
async def test_submit_answered_with_a_server_error_is_ambiguous(status) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "internal_error", "message": "boom"})

    with pytest.raises(SubmitUnknown):
        await adapter(handler).submit(job())


@pytest.mark.anyio
async def test_submit_without_an_id_is_ambiguous() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>gateway</html>")

    with pytest.raises(SubmitUnknown):
        await adapter(handler).submit(job())


@pytest.mark.anyio
async def test_estimated_time_aims_the_first_poll_once() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = {"generationId": "gen_1", "status": "queued", "estimatedTime": 15}
        if json.loads(request.content)["prompt"] == "no estimate":
            answer = {"generationId": "gen_2", "status": "queued"}
        return httpx.Response(200, json=answer)

    provider = adapter(handler)
    assert await provider.submit(job()) == "gen_1"
    assert (
        13.0 < (provider.first_check_in("gen_1") or 0) <= 14.0
    )  # a second early: whole seconds, rounded up
    assert provider.first_check_in("gen_1") is None  # asked once
    assert await provider.submit(job(prompt="no estimate")) == "gen_2"
    assert provider.first_check_in("gen_2") is None
