"""The APIXO emulator, over real HTTP on loopback, as a client would see it."""

from __future__ import annotations

import io
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from pipeline.emulators import ManualClock, RunningEmulator
from pipeline.emulators.callbacks import SENDER_KEY

from .emulator_helpers import emulator_client, hook_server, wait_until

pytestmark = pytest.mark.anyio

KEY = "apixo-test-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "a lighthouse in a storm"
SUBMIT = "/api/v1/generateTask/nano-banana"
STATUS = "/api/v1/statusTask/nano-banana"


def emulator(
    clock: ManualClock | None = None, **knobs: Any
) -> AbstractAsyncContextManager[tuple[RunningEmulator, httpx.AsyncClient]]:
    return emulator_client("apixo", AUTH, clock, **knobs)


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    payload = {"request_type": "async", "input": {"prompt": PROMPT}, **body}
    response = await client.post(SUBMIT, json=payload)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["code"] == 200 and answer["message"] == "success"
    task_id: str = answer["data"]["taskId"]
    return task_id


async def status(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(STATUS, params={"taskId": task_id})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_task_goes_pending_processing_success_with_result_json_string():
    clock = ManualClock()
    async with emulator(clock, task_seconds=10) as (apixo, client):
        task_id = await submit(client)
        assert len(task_id) == 32 and int(task_id, 16) >= 0
        pending = await status(client, task_id)
        assert pending == {
            "taskId": task_id,
            "state": "pending",
            "createTime": pending["createTime"],
        }
        clock.advance(5)
        assert (await status(client, task_id))["state"] == "processing"
        clock.advance(6)
        done = await status(client, task_id)
        assert done["state"] == "success"
        assert isinstance(done["resultJson"], str)
        urls = json.loads(done["resultJson"])["resultUrls"]
        assert done["costTime"] == 10_000
        assert done["completeTime"] - done["createTime"] == 10_000
        image = await client.get(urls[0])
        assert image.status_code == 200
        with Image.open(io.BytesIO(image.content)) as png:
            assert png.format == "PNG"
        assert apixo.state.ledger.task_ids() == [task_id]


async def test_failed_task_carries_fail_code_and_message():
    clock = ManualClock()
    async with emulator(clock, task_seconds=1, failure_rate=1.0) as (_, client):
        task_id = await submit(client)
        clock.advance(2)
        data = await status(client, task_id)
        assert data["state"] == "failed"
        assert data["failCode"] in {"CONTENT_VIOLATION", "GENERATION_FAILED", "PROCESSING_TIMEOUT"}
        assert data["failMsg"]
        assert "resultJson" not in data


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"input": {}}, "Missing required field: input.prompt"),
        ({"request_type": "callback", "input": {"prompt": "x"}}, "callback_url"),
        ({"request_type": "sync", "input": {"prompt": "x"}}, "request_type"),
        ({"input": {"prompt": "x", "seed": "one"}}, "input.seed"),
    ],
)
async def test_invalid_requests_get_the_error_envelope(body, error):
    async with emulator() as (apixo, client):
        response = await client.post(SUBMIT, json=body)
        assert response.status_code == 400
        answer = response.json()
        assert answer["code"] == 400 and answer["message"] == "Invalid request"
        assert error in answer["data"]["error"]
        assert len(apixo.state.ledger) == 0


async def test_unknown_model_and_unknown_task():
    async with emulator() as (_, client):
        response = await client.post(
            "/api/v1/generateTask/dall-e-9", json={"input": {"prompt": "x"}}
        )
        assert response.status_code == 400
        assert "Unsupported model" in response.json()["data"]["error"]
        missing = await client.get(STATUS, params={"taskId": "0" * 32})
        assert missing.status_code == 404 and missing.json()["code"] == 404


@pytest.mark.parametrize(
    ("key", "code"), [("bad-key", 401), ("broke-key", 402), ("deny-key", 403), (None, 401)]
)
async def test_account_refusals(key, code):
    async with emulator() as (apixo, client):
        headers = {"Authorization": f"Bearer {key}"} if key else {"Authorization": ""}
        response = await client.post(SUBMIT, json={"input": {"prompt": "x"}}, headers=headers)
        assert response.status_code == code
        assert response.json()["code"] == code
        assert len(apixo.state.ledger) == 0


async def test_injected_rate_limit_is_a_429_envelope_with_retry_after():
    async with emulator(rate_limit_rate=1.0, retry_after=3) as (_, client):
        response = await client.post(SUBMIT, json={"input": {"prompt": "x"}})
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.json()["code"] == 429


async def test_callback_posts_the_status_envelope_on_completion():
    async with hook_server() as (url, bodies), emulator(task_seconds=0.2) as (apixo, client):
        task_id = await submit(client, request_type="callback", callback_url=url)
        await wait_until(lambda: bodies)
        body = bodies[0]
        assert body["code"] == 200 and body["message"] == "success"
        assert body["data"]["taskId"] == task_id
        assert body["data"]["state"] == "success"
        assert body["data"] == await status(client, task_id)
        assert apixo.app[SENDER_KEY].counts["delivered"] == 1


async def test_callback_is_retried_on_non_200_with_the_delay_schedule():
    knobs = {"task_seconds": 0.1, "callback_retry_delays": [0.1, 0.2, 0.3]}
    async with hook_server([500, 503, 404]) as (url, bodies), emulator(**knobs) as (apixo, client):
        await submit(client, request_type="callback", callback_url=url)
        await wait_until(lambda: len(bodies) == 4)
        sender = apixo.app[SENDER_KEY]
        await wait_until(lambda: sender.counts["delivered"] == 1)
        attempts = [entry["attempt"] for entry in sender.log]
        assert attempts == [0, 1, 2, 3]
        gaps = [b["at"] - a["at"] for a, b in zip(sender.log, sender.log[1:], strict=False)]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.3


async def test_callback_gives_up_after_the_last_retry():
    knobs = {"task_seconds": 0.1, "callback_retry_delays": [0.05]}
    async with hook_server([500, 500, 500]) as (url, bodies), emulator(**knobs) as (apixo, client):
        await submit(client, request_type="callback", callback_url=url)
        sender = apixo.app[SENDER_KEY]
        await wait_until(lambda: sender.counts["given_up"] == 1)
        assert len(bodies) == 2


async def test_callback_to_a_dead_receiver_counts_as_failed_and_is_retried():
    knobs = {"task_seconds": 0.1, "callback_retry_delays": [0.05, 0.05]}
    async with emulator(**knobs) as (apixo, client):
        await submit(client, request_type="callback", callback_url="http://127.0.0.1:9/hook")
        sender = apixo.app[SENDER_KEY]
        await wait_until(lambda: sender.counts["given_up"] == 1)
        assert [entry["attempt"] for entry in sender.log] == [0, 1, 2]
        assert all(entry["outcome"].startswith("error") for entry in sender.log)


async def test_lost_duplicated_and_late_callbacks():
    async with hook_server() as (url, bodies):
        async with emulator(task_seconds=0.1, callback_loss_rate=1.0) as (apixo, client):
            await submit(client, request_type="callback", callback_url=url)
            await anyio.sleep(0.5)
            assert bodies == [] and apixo.app[SENDER_KEY].counts["lost"] == 1
        knobs = {"task_seconds": 0.1, "callback_duplicate_rate": 1.0, "callback_delay": 0.4}
        async with emulator(**knobs) as (apixo, client):
            await submit(client, request_type="callback", callback_url=url)
            await anyio.sleep(0.3)
            assert bodies == []  # late: not yet
            await wait_until(lambda: len(bodies) == 2)
            assert bodies[0] == bodies[1]


async def test_callbacks_endpoint_shows_counts():
    async with hook_server() as (url, bodies), emulator(task_seconds=0.1) as (_, client):
        await submit(client, request_type="callback", callback_url=url)
        await wait_until(lambda: bodies)
        shown = (await client.get("/_emulator/callbacks")).json()
        assert shown["counts"]["delivered"] == 1
        assert shown["attempts"][0]["outcome"] == "200"
