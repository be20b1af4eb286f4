"""The AceData Pixverse emulator, over real HTTP on loopback, as a client would see it."""

from __future__ import annotations

import asyncio
import io
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import av
import httpx
import pytest

from pipeline.emulators import ManualClock, RunningEmulator
from pipeline.emulators.pixverse import BLOCKING_ROUTE, SUBMIT_ROUTE, tasks_route
from pipeline.emulators.video import VideoSpec

from .emulator_helpers import emulator_client, hook_server, wait_until

pytestmark = pytest.mark.anyio

KEY = "3d6e4c2a-0b1f-4b7e-9a55-6f0c2f1e8d11"
AUTH = {"authorization": f"Bearer {KEY}", "accept": "application/json"}
PROMPT = "a paper boat drifting down a rainy street"
NO_HOOK = "http://127.0.0.1:9/unused"  # nothing listens; the sender gives up quietly
RECORD_KEYS = {
    "_id",
    "id",
    "api_id",
    "application_id",
    "created_at",
    "credential_id",
    "user_id",
    "trace_id",
    "request",
}
ITEM_KEYS = {
    "id",
    "video_url",
    "first_frame",
    "last_frame",
    "video_width",
    "video_height",
    "prompt",
    "model",
    "quality",
    "motion",
    "template_id",
    "template_name",
    "style",
    "aspect_ratio",
    "duration",
    "extended",
    "seed",
    "asset_id",
    "asset_name",
}


def emulator(
    clock: ManualClock | None = None, **knobs: Any
) -> AbstractAsyncContextManager[tuple[RunningEmulator, httpx.AsyncClient]]:
    return emulator_client("acedata", AUTH, clock, **{"callback_retry_delays": [], **knobs})


async def submit(client: httpx.AsyncClient, **fields: Any) -> str:
    body = {"action": "generate", "prompt": PROMPT, "callback_url": NO_HOOK, **fields}
    response = await client.post("/pixverse/videos", json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"task_id"}
    task_id: str = response.json()["task_id"]
    return task_id


async def retrieve(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.post("/pixverse/tasks", json={"id": task_id, "action": "retrieve"})
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "error", "trace_id"}
    assert body["success"] is False
    assert body["error"]["code"] == code and body["error"]["message"]


# --- submit and the task record ---------------------------------------------------------


async def test_submit_with_callback_answers_a_task_id_at_once() -> None:
    async with emulator(task_seconds=60) as (running, client):
        task_id = await submit(client, model="v4", seed=7)
        assert uuid.UUID(task_id)
        charges = running.state.ledger.charges
        assert [c.task_id for c in charges] == [task_id]
        assert charges[0].body["prompt"] == PROMPT
        assert running.state.stats.requests[SUBMIT_ROUTE] == 1


async def test_record_has_no_response_until_the_task_ends() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=10) as (_, client):
        task_id = await submit(client, aspect_ratio="9:16", seed=42, quality="720p")
        running_record = await retrieve(client, task_id)
        assert set(running_record) == RECORD_KEYS
        assert running_record["id"] == task_id
        assert isinstance(running_record["created_at"], float)
        assert running_record["request"]["aspect_ratio"] == "9:16"
        assert running_record["request"]["callback_url"] == NO_HOOK

        clock.advance(10.5)
        record = await retrieve(client, task_id)
        assert set(record) == RECORD_KEYS | {"response"}
        response = record["response"]
        assert response["success"] is True and response["task_id"] == task_id
        assert response["trace_id"] == record["trace_id"]
        (item,) = response["data"]
        assert set(item) == ITEM_KEYS
        assert item["seed"] == 42 and item["quality"] == "720p" and item["model"] == "v3.5"
        assert (item["video_width"], item["video_height"]) == (180, 320)
        assert item["video_url"].endswith(".mp4")


async def test_failed_task_says_why() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=2, failure_rate=1.0) as (_, client):
        task_id = await submit(client)
        clock.advance(3)
        response = (await retrieve(client, task_id))["response"]
        assert response["success"] is False
        assert response["error"]["code"] in {"forbidden", "api_error"}
        assert response["error"]["message"]
        assert "data" not in response


async def test_retrieve_batch_answers_many_in_one_request() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=5) as (running, client):
        ids = [await submit(client, seed=n) for n in range(5)]
        clock.advance(6)
        extra = [await submit(client)]
        body = {"ids": [*ids, *extra, "no-such-task"], "action": "retrieve_batch"}
        response = await client.post("/pixverse/tasks", json=body)
        assert response.status_code == 200
        answer = response.json()
        assert set(answer) == {"items", "count"}
        assert answer["count"] == 6
        assert [item["id"] for item in answer["items"]] == [*ids, *extra]
        assert all(item["response"]["success"] for item in answer["items"][:5])
        assert "response" not in answer["items"][5]
        stats = running.state.stats.requests
        assert stats[tasks_route("retrieve_batch")] == 1
        assert stats[tasks_route("retrieve")] == 0


async def test_tasks_of_other_keys_and_unknown_ids_are_not_found() -> None:
    async with emulator(task_seconds=60) as (_, client):
        task_id = await submit(client)
        other = {"authorization": "Bearer another-key"}
        response = await client.post(
            "/pixverse/tasks", json={"id": task_id, "action": "retrieve"}, headers=other
        )
        assert_error(response, 404, "not_found")
        batch = await client.post(
            "/pixverse/tasks", json={"ids": [task_id], "action": "retrieve_batch"}, headers=other
        )
        assert batch.json() == {"items": [], "count": 0}
        unknown = await client.post("/pixverse/tasks", json={"id": "nope", "action": "retrieve"})
        assert_error(unknown, 404, "not_found")


# --- blocking form and callbacks ----------------------------------------------------------


async def test_submit_without_callback_blocks_until_done() -> None:
    async with emulator(task_seconds=0.4) as (running, client):
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.post("/pixverse/videos", json={"prompt": PROMPT})
        waited = loop.time() - started
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"success", "task_id", "trace_id", "data"}
        assert body["success"] is True and body["data"][0]["video_url"]
        assert waited >= 0.3
        assert running.state.stats.requests[BLOCKING_ROUTE] == 1
        assert running.state.stats.requests[SUBMIT_ROUTE] == 0
        assert len(running.state.ledger) == 1


async def test_callback_receives_the_full_body() -> None:
    async with hook_server() as (url, received), emulator(task_seconds=0.2) as (_, client):
        task_id = await submit(client, callback_url=url)
        await wait_until(lambda: received)
        record = await retrieve(client, task_id)
    (body,) = received
    assert body == record["response"]
    assert body["task_id"] == task_id and body["success"] is True


# --- validation and refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": ""},
        {"model": "v9"},
        {"style": "watercolor"},
        {"quality": "4k"},
        {"duration": 6},
        {"motion": "slow"},
        {"aspect_ratio": "2:1"},
        {"seed": "x"},
        {"callback_url": "ftp://example.com"},
    ],
)
async def test_invalid_fields_are_refused(fields: dict[str, Any]) -> None:
    async with emulator() as (running, client):
        body = {"prompt": PROMPT, "callback_url": NO_HOOK, **fields}
        response = await client.post("/pixverse/videos", json=body)
        assert_error(response, 400, "bad_request")
        assert len(running.state.ledger) == 0


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"authorization": ""}, 401, "no_token"),
        ({"authorization": "Bearer bad-token"}, 401, "invalid_token"),
        ({"authorization": "Bearer broke-token"}, 403, "used_up"),
        ({"authorization": "Bearer deny-token"}, 400, "token_mismatched"),
    ],
)
async def test_keys_are_checked(headers: dict[str, str], status: int, code: str) -> None:
    async with emulator() as (running, client):
        body = {"prompt": PROMPT, "callback_url": NO_HOOK}
        response = await client.post("/pixverse/videos", json=body, headers=headers)
        assert_error(response, status, code)
        assert len(running.state.ledger) == 0


async def test_injected_faults_use_the_error_body() -> None:
    async with emulator(rate_limit_rate=1.0, retry_after=3) as (_, client):
        response = await client.post(
            "/pixverse/tasks", json={"ids": [], "action": "retrieve_batch"}
        )
        assert_error(response, 429, "too_many_requests")
        assert response.headers["Retry-After"] == "3"
    async with emulator(error_rate=1.0) as (_, client):
        response = await client.post("/pixverse/tasks", json={"id": "x", "action": "retrieve"})
        assert response.status_code in (500, 503)
        assert response.json()["error"]["code"] == "api_error"


# --- the video --------------------------------------------------------------------------


def decode(data: bytes) -> tuple[int, int, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


async def test_video_is_a_real_mp4_served_with_ranges() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=1) as (running, client):
        task_id = await submit(client, aspect_ratio="16:9")
        clock.advance(2)
        url = (await retrieve(client, task_id))["response"]["data"][0]["video_url"]
        async with httpx.AsyncClient(timeout=10) as files:
            whole = await files.get(url)
            assert whole.status_code == 200
            assert whole.headers["content-type"] == "video/mp4"
            assert decode(whole.content) == (10, 320, 180)
            part = await files.get(url, headers={"Range": "bytes=0-99"})
            assert part.status_code == 206 and part.content == whole.content[:100]
        assert running.state.stats.downloads_with_auth == 0


async def test_cheap_video_mode_is_still_valid() -> None:
    cheap = VideoSpec("Pixverse", PROMPT, 1, 320, 180).render(draw=False)
    frames, width, height = decode(cheap)
    assert frames >= 1 and (width, height) == (320, 180)
    assert VideoSpec("Pixverse", "other", 2, 320, 180).render(draw=False) == cheap


def test_drawn_video_is_deterministic() -> None:
    spec = VideoSpec("Pixverse", PROMPT, 5, 240, 320, ("v4 · 540p · 3:4",))
    assert spec.render(draw=True) == spec.render(draw=True)


def test_padding_keeps_the_mp4_valid() -> None:
    clip = VideoSpec("Pixverse", PROMPT, 3, 320, 180).render(draw=False)
    padded = VideoSpec.pad(clip, 50_000)
    assert len(padded) == 50_000 and padded.startswith(clip)
    assert decode(padded) == decode(clip)
    assert VideoSpec.pad(clip, None) == clip == VideoSpec.pad(clip, 10)
