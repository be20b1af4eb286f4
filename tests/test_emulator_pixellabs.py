"""The PixelLabs emulator, over real HTTP on loopback, as a client would see it."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from PIL import Image

from pipeline.emulators import EMULATORS, Knobs, ManualClock, RunningEmulator, serve
from pipeline.emulators.downloads import byte_range

from .emulator_helpers import emulator_client

pytestmark = pytest.mark.anyio

KEY = "pixel_live_abc123def456"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "cyberpunk samurai warrior with glowing katana"
ERROR_KEYS = {"error", "message", "details"}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def emulator(
    clock: ManualClock | None = None, **knobs: Any
) -> AbstractAsyncContextManager[tuple[RunningEmulator, httpx.AsyncClient]]:
    """A PixelLabs emulator with ``knobs`` and a client that holds a valid key."""
    return emulator_client("pixellabs", AUTH, clock, **knobs)


async def submit(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post("/v1/generate", json={"prompt": PROMPT, **fields})
    assert response.status_code == 200, response.text
    generation_id: str = response.json()["generationId"]
    return generation_id


async def poll(client: httpx.AsyncClient, generation_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/generate/{generation_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def completed(client: httpx.AsyncClient, generation_id: str) -> dict[str, Any]:
    """Poll (real time, short tasks) until the generation is terminal."""
    for _ in range(400):
        view = await poll(client, generation_id)
        if view["status"] in ("completed", "failed"):
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"{generation_id} never finished: {view}")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], dict)
    return body


# --- the happy path -------------------------------------------------------------------


async def test_submit_answers_queued_with_documented_fields() -> None:
    async with emulator() as (_, client):
        response = await client.post("/v1/generate", json={"prompt": PROMPT})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"generationId", "status", "estimatedTime", "createdAt"}
        assert body["status"] == "queued"
        assert body["generationId"].startswith("gen_")
        assert len(body["generationId"]) == len("gen_") + 12
        assert isinstance(body["estimatedTime"], int)
        assert body["createdAt"].endswith("Z")


async def test_task_moves_through_states_on_the_clock() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=10) as (running, client):
        generation_id = await submit(client, aspectRatio="16:9", seed=1847293847)
        queued = await poll(client, generation_id)
        assert queued["status"] == "queued"
        assert queued["progress"] == 0
        assert "imageUrl" not in queued
        assert "completedAt" not in queued
        assert queued["metadata"] == {
            "prompt": PROMPT,
            "style": "digital_art",
            "aspectRatio": "16:9",
            "quality": "standard",
            "seed": 1847293847,
            "model": "synthetix-v2.1",
        }

        progress = []
        for _ in range(3):
            clock.advance(2.5)
            view = await poll(client, generation_id)
            assert view["status"] == "processing"
            assert {"imageUrl", "arweaveUrl", "completedAt"}.isdisjoint(view)
            progress.append(view["progress"])
        assert progress == sorted(progress)
        assert 0 < progress[0] < progress[-1] < 100

        clock.advance(5)
        done = await poll(client, generation_id)
        assert done["status"] == "completed"
        assert done["progress"] == 100
        assert done["completedAt"].endswith("Z")
        assert done["imageUrl"].startswith(f"{running.base_url}/files/")
        assert done["arweaveUrl"].startswith(f"{running.base_url}/arweave/")


async def test_download_is_a_png_sized_by_aspect_ratio() -> None:
    async with emulator(task_seconds=0) as (_, client):
        sizes = {}
        for ratio in ("1:1", "16:9", "9:16", "4:3", "3:4"):
            view = await completed(client, await submit(client, aspectRatio=ratio, seed=7))
            async with httpx.AsyncClient(timeout=10.0) as cdn:
                response = await cdn.get(view["imageUrl"])
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "image/png"
            assert int(response.headers["Content-Length"]) == len(response.content)
            assert response.headers["Accept-Ranges"] == "bytes"
            assert response.headers["ETag"]
            image = Image.open(io.BytesIO(response.content))
            assert image.format == "PNG"
            sizes[ratio] = image.size
            image.verify()
        assert sizes == {
            "1:1": (512, 512),
            "16:9": (512, 288),
            "9:16": (288, 512),
            "4:3": (512, 384),
            "3:4": (384, 512),
        }


async def test_real_clock_short_task_completes() -> None:
    async with emulator(task_seconds=0.1) as (_, client):
        view = await completed(client, await submit(client))
        assert view["status"] == "completed"
        assert view["progress"] == 100


async def test_absent_seed_is_chosen_and_echoed() -> None:
    async with emulator(task_seconds=0) as (_, client):
        view = await poll(client, await submit(client))
        assert isinstance(view["metadata"]["seed"], int)


async def test_cheap_render_and_padding_still_give_valid_pngs() -> None:
    async with emulator(task_seconds=0, render=False, output_bytes=200_000) as (_, client):
        view = await poll(client, await submit(client, aspectRatio="4:3"))
        async with httpx.AsyncClient(timeout=10.0) as cdn:
            body = (await cdn.get(view["imageUrl"])).content
        assert 199_000 <= len(body) <= 201_000
        image = Image.open(io.BytesIO(body))
        assert image.size == (512, 384)
        image.load()


# --- downloads ------------------------------------------------------------------------


async def test_range_requests_return_206_with_the_right_bytes() -> None:
    async with emulator(task_seconds=0) as (running, client):
        url = (await poll(client, await submit(client)))["imageUrl"]
        async with httpx.AsyncClient(timeout=10.0) as cdn:
            whole = (await cdn.get(url)).content
            size = len(whole)
            part = await cdn.get(url, headers={"Range": "bytes=10-19"})
            assert part.status_code == 206
            assert part.content == whole[10:20]
            assert part.headers["Content-Range"] == f"bytes 10-19/{size}"
            assert part.headers["Content-Length"] == "10"

            tail = await cdn.get(url, headers={"Range": "bytes=-5"})
            assert (tail.status_code, tail.content) == (206, whole[-5:])
            rest = await cdn.get(url, headers={"Range": f"bytes={size - 3}-"})
            assert (rest.status_code, rest.content) == (206, whole[-3:])

            beyond = await cdn.get(url, headers={"Range": f"bytes={size}-"})
            assert beyond.status_code == 416
            assert beyond.headers["Content-Range"] == f"bytes */{size}"

            stale = await cdn.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
            assert (stale.status_code, stale.content) == (200, whole)
            etag = stale.headers["ETag"]
            same = await cdn.get(url, headers={"If-None-Match": etag})
            assert same.status_code == 304
        assert running.state.stats.ranged_downloads == 3


def test_byte_range_parsing() -> None:
    assert byte_range("bytes=0-0", 10) == range(0, 1)
    assert byte_range("bytes=5-100", 10) == range(5, 10)
    assert byte_range("bytes=-100", 10) == range(0, 10)
    assert byte_range("bytes=0-1,3-4", 10) is None
    assert byte_range("items=0-1", 10) is None
    assert byte_range("bytes=5-2", 10) is None
    assert byte_range("bytes=x-y", 10) is None


async def test_truncated_download_sends_fewer_bytes_than_promised() -> None:
    async with emulator(task_seconds=0, truncate_rate=1) as (running, client):
        url = (await poll(client, await submit(client)))["imageUrl"]
        received = 0
        async with httpx.AsyncClient(timeout=10.0) as cdn:
            with pytest.raises(httpx.RemoteProtocolError):
                async with cdn.stream("GET", url) as response:
                    promised = int(response.headers["Content-Length"])
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
        assert 0 < received < promised
        assert running.state.stats.faults["truncated"] == 1


async def test_result_urls_expire_and_a_fresh_poll_gives_a_working_one() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=0, url_ttl=30) as (_, client):
        generation_id = await submit(client)
        view = await poll(client, generation_id)
        assert "expires=" in view["imageUrl"]
        async with httpx.AsyncClient(timeout=10.0) as cdn:
            assert (await cdn.get(view["imageUrl"])).status_code == 200
            clock.advance(31)
            expired = await cdn.get(view["imageUrl"])
            assert expired.status_code == 403
            assert b"expired" in expired.content
            forged = view["imageUrl"].replace("expires=", "expires=9")
            assert (await cdn.get(forged)).status_code == 403
            fresh = (await poll(client, generation_id))["imageUrl"]
            assert (await cdn.get(fresh)).status_code == 200
            assert (await cdn.get(view["arweaveUrl"])).status_code == 200


async def test_downloads_carrying_an_api_key_are_counted() -> None:
    async with emulator(task_seconds=0) as (running, client):
        url = (await poll(client, await submit(client)))["imageUrl"]
        async with httpx.AsyncClient(timeout=10.0) as cdn:
            await cdn.get(url)
        assert running.state.stats.downloads_with_auth == 0
        await client.get(url)  # the API client's default headers carry the key
        stats = (await client.get("/_emulator/stats")).json()
        assert stats["downloads"] == 2
        assert stats["downloads_with_auth"] == 1


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "x" * 501},
        {"prompt": 5},
        {"prompt": PROMPT, "negativePrompt": "x" * 201},
        {"prompt": PROMPT, "style": "watercolour"},
        {"prompt": PROMPT, "aspectRatio": "2:1"},
        {"prompt": PROMPT, "quality": "max"},
        {"prompt": PROMPT, "seed": "42"},
        {"prompt": PROMPT, "seed": -1},
        ["not", "an", "object"],
    ],
)
async def test_invalid_requests_get_400_validation_error(body: Any) -> None:
    async with emulator() as (running, client):
        response = await client.post("/v1/generate", json=body)
        assert_error(response, 400, "validation_error")
        assert all(header in response.headers for header in RATE_HEADERS)
        assert len(running.state.ledger) == 0


async def test_malformed_json_gets_400() -> None:
    async with emulator() as (_, client):
        response = await client.post("/v1/generate", content=b"{nope")
        assert_error(response, 400, "validation_error")


async def test_longest_allowed_fields_are_accepted() -> None:
    async with emulator() as (_, client):
        await submit(client, prompt="p" * 500, negativePrompt="n" * 200, quality="ultra")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "invalid_token"),
        ({"Authorization": "Bearer"}, 401, "invalid_token"),
        ({"Authorization": f"Basic {KEY}"}, 401, "invalid_token"),
        ({"Authorization": "Bearer bad_key"}, 401, "invalid_token"),
        ({"Authorization": "Bearer deny_key"}, 403, "insufficient_permissions"),
    ],
)
async def test_key_problems(headers: dict[str, str], status: int, code: str) -> None:
    async with emulator() as (running, _):
        url = f"{running.base_url}/v1/generate"
        async with httpx.AsyncClient(timeout=10.0) as anonymous:
            response = await anonymous.post(url, json={"prompt": PROMPT}, headers=headers)
        assert_error(response, status, code)
        assert len(running.state.ledger) == 0


async def test_unknown_generation_and_other_accounts_get_404() -> None:
    async with emulator() as (_, client):
        assert_error(await client.get("/v1/generate/gen_000000000000"), 404, "not_found")
        generation_id = await submit(client)
        other = {"Authorization": "Bearer pixel_live_someone_else"}
        response = await client.get(f"/v1/generate/{generation_id}", headers=other)
        assert_error(response, 404, "not_found")
        assert_error(await client.get("/v2/nothing"), 404, "not_found")


async def test_injected_429_without_retry_after() -> None:
    async with emulator(rate_limit_rate=1) as (running, client):
        response = await client.post("/v1/generate", json={"prompt": PROMPT})
        assert_error(response, 429, "rate_limit_exceeded")
        assert "Retry-After" not in response.headers
        assert all(header in response.headers for header in RATE_HEADERS)
        assert len(running.state.ledger) == 0


async def test_injected_429_with_retry_after() -> None:
    async with emulator(rate_limit_rate=1, retry_after=7) as (_, client):
        response = await client.get("/v1/generate/gen_000000000000")
        assert_error(response, 429, "rate_limit_exceeded")
        assert response.headers["Retry-After"] == "7"


async def test_injected_server_errors_use_the_error_body() -> None:
    async with emulator(error_rate=1) as (running, client):
        statuses = set()
        for _ in range(12):
            response = await client.post("/v1/generate", json={"prompt": PROMPT})
            assert response.status_code in (500, 503)
            body = assert_error(
                response,
                response.status_code,
                "internal_error" if response.status_code == 500 else "service_unavailable",
            )
            assert body["details"] == {}
            statuses.add(response.status_code)
        assert 500 in statuses
        assert len(running.state.ledger) == 0


async def test_failed_generation_reports_an_error() -> None:
    async with emulator(task_seconds=0, failure_rate=1) as (_, client):
        view = await poll(client, await submit(client))
        assert view["status"] == "failed"
        assert set(view["error"]) == {"code", "message"}
        assert {"imageUrl", "arweaveUrl", "completedAt"}.isdisjoint(view)
        assert view["progress"] < 100


async def test_same_seed_gives_the_same_faults() -> None:
    async def statuses() -> list[int]:
        async with emulator(rate_limit_rate=0.5, seed=11) as (_, client):
            return [(await client.get("/v1/generate/gen_x")).status_code for _ in range(20)]

    first = await statuses()
    assert set(first) == {404, 429}
    assert await statuses() == first


# --- the ledger -----------------------------------------------------------------------


async def test_ledger_records_each_accepted_submit_once() -> None:
    async with emulator() as (running, client):
        ids = [await submit(client, seed=n) for n in range(3)]
        await client.post("/v1/generate", json={})  # rejected: not charged
        ledger = (await client.get("/_emulator/ledger")).json()
        assert ledger["count"] == 3
        assert [charge["task_id"] for charge in ledger["charges"]] == ids
        assert [charge["body"]["seed"] for charge in ledger["charges"]] == [0, 1, 2]
        assert all(charge["route"] == "POST /v1/generate" for charge in ledger["charges"])
        assert all(KEY not in charge["key"] for charge in ledger["charges"])
        assert running.state.ledger.duplicate_bodies() == {}


async def test_dropped_submit_is_still_created_and_charged() -> None:
    async with emulator(task_seconds=0, drop_after_create_rate=1) as (running, client):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/generate", json={"prompt": PROMPT, "seed": 5})
        charges = running.state.ledger.charges
        assert len(charges) == 1
        assert charges[0].body == {"prompt": PROMPT, "seed": 5}
        view = await poll(client, charges[0].task_id)
        assert view["status"] == "completed"


# --- rate limits ----------------------------------------------------------------------


async def test_rate_limit_headers_count_down_and_the_limiter_is_real() -> None:
    clock = ManualClock()
    async with emulator(clock, requests_per_minute=3, retry_after=1) as (_, client):
        remaining = []
        resets = set()
        for _ in range(3):
            response = await client.get("/v1/generate/gen_000000000000")
            assert response.headers["X-RateLimit-Limit"] == "3"
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
            resets.add(int(response.headers["X-RateLimit-Reset"]))
        assert remaining == [2, 1, 0]
        assert len(resets) == 1
        assert resets.pop() > clock()

        clock.advance(20)
        refused = await client.post("/v1/generate", json={"prompt": PROMPT})
        body = assert_error(refused, 429, "rate_limit_exceeded")
        assert body["details"]["limit"] == 3
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.headers["Retry-After"] == "40"

        clock.advance(41)
        response = await client.get("/v1/generate/gen_000000000000")
        assert response.status_code == 404
        assert response.headers["X-RateLimit-Remaining"] == "2"


async def test_unlimited_still_sends_decreasing_headers() -> None:
    async with emulator() as (_, client):
        first = await client.get("/v1/generate/gen_000000000000")
        second = await client.get("/v1/generate/gen_000000000000")
        before = int(first.headers["X-RateLimit-Remaining"])
        assert int(second.headers["X-RateLimit-Remaining"]) == before - 1


# --- admin and knobs ------------------------------------------------------------------


async def test_admin_config_changes_knobs_at_runtime() -> None:
    async with emulator(task_seconds=0) as (running, client):
        config = (await client.get("/_emulator/config")).json()
        assert config["failure_rate"] == 0.0
        assert (await poll(client, await submit(client)))["status"] == "completed"

        changed = await client.post("/_emulator/config", json={"failure_rate": 1})
        assert changed.status_code == 200
        assert changed.json()["failure_rate"] == 1.0
        assert running.state.knobs.failure_rate == 1.0
        assert (await poll(client, await submit(client)))["status"] == "failed"

        unknown = await client.post("/_emulator/config", json={"failure": 1})
        assert unknown.status_code == 400
        assert "failure_rate" in unknown.json()["error"]
        wrong = await client.post("/_emulator/config", json={"failure_rate": 2})
        assert wrong.status_code == 400
        assert running.state.knobs.failure_rate == 1.0


async def test_admin_reset_and_stats() -> None:
    async with emulator(task_seconds=0) as (_, client):
        generation_id = await submit(client)
        await poll(client, generation_id)
        stats = (await client.get("/_emulator/stats")).json()
        assert stats["requests"] == {"POST /v1/generate": 1, "GET /v1/generate/{id}": 1}
        assert stats["charges"] == 1
        assert (await client.post("/_emulator/reset")).json() == {"reset": True}
        assert (await client.get("/_emulator/ledger")).json()["count"] == 0
        assert_error(await client.get(f"/v1/generate/{generation_id}"), 404, "not_found")


def test_knobs_validate() -> None:
    assert Knobs.from_mapping({"task_seconds": 1}).task_seconds == 1.0
    with pytest.raises(ValueError, match=r"allowed: .*task_seconds"):
        Knobs.from_mapping({"task_secs": 1})
    for bad in (
        {"failure_rate": 1.5},
        {"task_seconds": -1},
        {"render": "yes"},
        {"requests_per_minute": 2.5},
        {"error_rate": True},
        {"task_seconds": None},
        {"task_seconds": float("nan")},
    ):
        with pytest.raises(ValueError, match="knob"):
            Knobs.from_mapping(bad)
    assert Knobs.from_mapping({"url_ttl": None, "retry_after": 2}).retry_after == 2.0


# --- serving --------------------------------------------------------------------------


async def test_serve_on_a_fixed_port_and_reject_unknown_names() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with serve(["pixellabs"], port=port) as running:
        assert running["pixellabs"].base_url == f"http://127.0.0.1:{port}"
    assert "pixellabs" in EMULATORS
    with pytest.raises(ValueError, match="available"):
        async with serve(["nope"]):
            pass
    with pytest.raises(ValueError, match="not being served"):
        async with serve(["pixellabs"], knobs={"pixai": {}}):
            pass


@pytest.mark.slow
def test_run_forever_announces_and_stops_on_sigterm() -> None:
    code = (
        "from pipeline.emulators import run_forever\n"
        "run_forever(['pixellabs'], announce=lambda name, url: print(name, url, flush=True))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        name, base_url = process.stdout.readline().split()
        assert name == "pixellabs"
        assert base_url.startswith("http://127.0.0.1:")
        config = httpx.get(f"{base_url}/_emulator/config", timeout=10.0)
        assert config.json()["task_seconds"] == 2.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
