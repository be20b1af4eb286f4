"""The PixAI emulator over real HTTP and WebSocket on loopback, as a client sees it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
from PIL import Image

from pipeline.emulators import ManualClock, RunningEmulator

from .emulator_helpers import emulator_client

pytestmark = pytest.mark.anyio

KEY = "pixai-live-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
TASK = "id userId parameters outputs status startedAt endAt createdAt updatedAt"
CREATE = (
    "mutation createGenerationTask($parameters: JSONObject!) "
    f"{{ createGenerationTask(parameters: $parameters) {{ {TASK} }} }}"
)
GET_TASK_ID = f"query getTaskById($id: ID!) {{ task(id: $id) {{ {TASK} }} }}"
GET_TASK_STRING = f"query getTaskById($id: String!) {{ task(id: $id) {{ {TASK} }} }}"
MEDIA = "query getMediaById($id: String!) { media(id: $id) { id type width height urls { variant url } imageType } }"  # noqa: E501
CANCEL = "mutation cancelGenerationTask($id: ID!, $reason: String) { cancelGenerationTask(id: $id, reason: $reason) { id status outputs } }"  # noqa: E501
SUBSCRIBE = (
    f"subscription subscribePersonalEvents {{ personalEvents {{ taskUpdated {{ {TASK} }} }} }}"
)


def emulator(
    clock: ManualClock | None = None, **knobs: Any
) -> AbstractAsyncContextManager[tuple[RunningEmulator, httpx.AsyncClient]]:
    return emulator_client("pixai", AUTH, clock, **knobs)


async def gql(
    client: httpx.AsyncClient, query: str, name: str | None = None, **variables: Any
) -> dict[str, Any]:
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables, "operationName": name}
    )
    body: dict[str, Any] = response.json()
    body["_status"] = response.status_code
    return body


async def create(client: httpx.AsyncClient, **parameters: Any) -> dict[str, Any]:
    body = await gql(
        client, CREATE, "createGenerationTask", parameters={"prompts": "a cat", **parameters}
    )
    assert "errors" not in body, body
    task: dict[str, Any] = body["data"]["createGenerationTask"]
    return task


async def get_task(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    body = await gql(client, GET_TASK_ID, "getTaskById", id=task_id)
    task: dict[str, Any] = body["data"]["task"]
    return task


async def test_task_lifecycle_and_both_id_declarations() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=10) as (pixai, client):
        task = await create(client, seed=42)
        assert task["status"] == "waiting" and task["startedAt"] is None
        assert task["parameters"] == {"prompts": "a cat", "seed": 42}
        clock.advance(3)
        assert (await get_task(client, task["id"]))["status"] == "running"
        clock.advance(8)
        by_string = await gql(client, GET_TASK_STRING, "getTaskById", id=task["id"])
        done = by_string["data"]["task"]
        assert done["status"] == "completed" and done["endAt"]
        outputs = done["outputs"]
        assert set(outputs) >= {"duration", "detailParameters", "mediaId"}
        assert "batch" not in outputs and outputs["detailParameters"]["seed"] == 42
        media = (await gql(client, MEDIA, "getMediaById", id=outputs["mediaId"]))["data"]["media"]
        variants = {u["variant"]: u["url"] for u in media["urls"]}
        assert set(variants) == {"PUBLIC", "THUMBNAIL"}
        assert (media["width"], media["height"]) == (512, 512)
        image = await client.get(variants["PUBLIC"])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        stats = pixai.state.stats.requests
        assert stats["graphql createGenerationTask"] == 1 and stats["graphql getTaskById"] == 2
        assert len(pixai.state.ledger) == 1


async def test_batch_gives_distinct_images_and_a_grid() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=1) as (_pixai, client):
        task = await create(client, batchSize=4, seed=7, width=256, height=256)
        clock.advance(2)
        outputs = (await get_task(client, task["id"]))["outputs"]
        batch = outputs["batch"]
        assert [item["seed"] for item in batch] == [7, 8, 9, 10]
        ids = {item["mediaId"] for item in batch}
        assert len(ids) == 4 and outputs["mediaId"] not in ids
        blobs = []
        for media_id in [*ids, outputs["mediaId"]]:
            media = (await gql(client, MEDIA, id=media_id))["data"]["media"]
            url = next(u["url"] for u in media["urls"] if u["variant"] == "PUBLIC")
            blobs.append((await client.get(url)).content)
        assert len(set(blobs)) == 5
        with Image.open(io.BytesIO(blobs[-1])) as grid:
            assert grid.size == (256, 256)
            quadrants = {grid.getpixel((x, y)) for x in (64, 192) for y in (64, 192)}
            assert len(quadrants) == 4  # four differently seeded cells


async def test_invalid_parameters_are_graphql_errors() -> None:
    async with emulator() as (pixai, client):
        for bad in ({"batchSize": 5}, {"width": 500}, {"seed": "x"}, {"prompts": 3}):
            body = await gql(client, CREATE, parameters=bad)
            assert body["_status"] == 200 and body["data"]["createGenerationTask"] is None
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        not_an_object = await gql(client, CREATE, parameters=[1])
        assert not_an_object["_status"] == 200 and not_an_object["errors"]
        syntax = await gql(client, "query { task(id: ")
        assert syntax["_status"] == 400 and syntax["errors"]
        unknown = await gql(client, "query { nothing }")
        assert unknown["_status"] == 400
        assert len(pixai.state.ledger) == 0


async def test_eleventh_task_in_progress_is_refused() -> None:
    clock = ManualClock()
    async with emulator(clock, task_seconds=10) as (pixai, client):
        ids = [(await create(client))["id"] for _ in range(10)]
        refused = await gql(client, CREATE, parameters={"prompts": "one too many"})
        assert refused["errors"][0]["extensions"]["code"] == "TOO_MANY_TASKS"
        assert "Too many tasks" in refused["errors"][0]["message"]
        cancelled = await gql(client, CANCEL, id=ids[0], reason="changed my mind")
        assert cancelled["data"]["cancelGenerationTask"]["status"] == "cancelled"
        assert cancelled["data"]["cancelGenerationTask"]["outputs"] == {"reason": "changed my mind"}
        await create(client)  # a slot is free again
        clock.advance(11)
        await create(client)  # all finished
        assert len(pixai.state.ledger) == 12


async def test_key_errors_and_faults_use_message_bodies() -> None:
    async with emulator() as (_pixai, client):
        bad = await client.post(
            "/graphql", json={"query": CREATE}, headers={"Authorization": "Bearer bad-key"}
        )
        assert bad.status_code == 401 and "message" in bad.json()
        missing = await client.post(
            "/graphql", json={"query": CREATE}, headers={"Authorization": ""}
        )
        assert missing.status_code == 401
        broke = await client.post(
            "/graphql",
            json={"query": CREATE, "variables": {"parameters": {"prompts": "x"}}},
            headers={"Authorization": "Bearer broke-key"},
        )
        assert broke.json()["errors"][0]["extensions"]["code"] == "INSUFFICIENT_CREDITS"
    async with emulator(rate_limit_rate=1.0, retry_after=3) as (_pixai, client):
        limited = await client.post("/graphql", json={"query": CREATE})
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
        assert "message" in limited.json()


# -- WebSocket ---------------------------------------------------------------------------


@asynccontextmanager
async def socket(
    base_url: str, payload: dict[str, Any] | None = None
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http:
        url = base_url + "/graphql"
        async with http.ws_connect(url, protocols=("graphql-transport-ws",)) as ws:
            if payload is not None:
                await ws.send_json({"type": "connection_init", "payload": payload})
            yield ws


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 10)
    return message


async def test_subscription_streams_the_accounts_task_events() -> None:
    async with emulator(task_seconds=0.3) as (pixai, client):
        async with socket(pixai.base_url, {"token": KEY}) as ws:
            assert await receive(ws) == {"type": "connection_ack"}
            await ws.send_json({"type": "ping", "payload": {"n": 1}})
            assert await receive(ws) == {"type": "pong", "payload": {"n": 1}}
            await ws.send_json({"id": "s1", "type": "subscribe", "payload": {"query": SUBSCRIBE}})
            await asyncio.sleep(0.05)
            task = await create(client)
            seen: dict[str, list[str]] = {}
            while seen.get(task["id"], [])[-1:] != ["completed"]:
                message = await receive(ws)
                assert message["type"] == "next" and message["id"] == "s1"
                update = message["payload"]["data"]["personalEvents"]["taskUpdated"]
                seen.setdefault(update["id"], []).append(update["status"])
            assert seen[task["id"]] == ["running", "completed"]
            assert len(seen) == 2  # plus one task of the same account from the web UI
        stats = pixai.state.stats.requests
        assert stats["ws subscribePersonalEvents"] == 1


async def test_authorization_payload_with_bearer_is_accepted() -> None:
    async with (
        emulator() as (pixai, _client),
        socket(pixai.base_url, {"Authorization": f"Bearer {KEY}"}) as ws,
    ):
        assert await receive(ws) == {"type": "connection_ack"}
        await ws.send_json(
            {"id": "q", "type": "subscribe", "payload": {"query": '{ task(id: "1") { id } }'}}
        )
        assert await receive(ws) == {
            "id": "q",
            "type": "next",
            "payload": {"data": {"task": None}},
        }
        assert (await receive(ws))["type"] == "complete"


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"type": "connection_init", "payload": {"token": "bad-key"}}], 4403),
        ([{"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE}}], 4401),
        ([{"type": "connection_init", "payload": {"token": KEY}}] * 2, 4429),
        ([{"nonsense": True}], 4400),
    ],
)
async def test_protocol_violations_close_with_graphql_ws_codes(
    messages: list[dict[str, Any]], code: int
) -> None:
    async with emulator() as (pixai, _client), socket(pixai.base_url) as ws:
        for message in messages:
            await ws.send_json(message)
        while (await asyncio.wait_for(ws.receive(), 10)).type is aiohttp.WSMsgType.TEXT:
            pass
        assert ws.close_code == code


async def test_duplicate_subscription_id_closes_4409() -> None:
    async with emulator() as (pixai, _client), socket(pixai.base_url, {"token": KEY}) as ws:
        await receive(ws)
        subscribe = {"id": "x", "type": "subscribe", "payload": {"query": SUBSCRIBE}}
        await ws.send_json(subscribe)
        await ws.send_json(subscribe)
        while (await asyncio.wait_for(ws.receive(), 10)).type is aiohttp.WSMsgType.TEXT:
            pass
        assert ws.close_code == 4409


async def test_drop_closes_sockets_and_refuses_upgrades_for_a_while() -> None:
    async with emulator() as (pixai, client), socket(pixai.base_url, {"token": KEY}) as ws:
        await receive(ws)
        dropped = await client.post("/_emulator/ws/drop", json={"down_seconds": 30})
        assert dropped.json()["dropped"] == 1
        assert (await asyncio.wait_for(ws.receive(), 10)).type is aiohttp.WSMsgType.CLOSE
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(
                    pixai.base_url + "/graphql", protocols=("graphql-transport-ws",)
                )
            assert refused.value.status == 503


async def test_event_loss_knob_drops_events() -> None:
    async with emulator(task_seconds=0.2) as (pixai, client):
        config = await client.post(
            "/_emulator/ws/config", json={"event_loss_rate": 1.0, "foreign_events": False}
        )
        assert config.json() == {"event_loss_rate": 1.0, "foreign_events": False}
        async with socket(pixai.base_url, {"token": KEY}) as ws:
            await receive(ws)
            await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE}})
            await asyncio.sleep(0.05)
            await create(client)
            await asyncio.sleep(0.6)
            overview = (await client.get("/_emulator/ws")).json()
            assert overview["events_lost"] == 2 and overview.get("events_sent", 0) == 0
