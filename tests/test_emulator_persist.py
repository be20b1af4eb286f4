"""Emulators with a state directory remember across a restart: tasks, result files (the
same bytes, under URLs signed before the restart too), charges, PixAI's account and
its subscriptions. Each restart here is a new server on a new port, as a rerun's is."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from pipeline.emulators import ManualClock, RunningEmulator, serve
from pipeline.emulators.persist import stored_charges
from pipeline.errors import PipelineError

from .test_emulator_pixai import CANCEL, CREATE, GET_TASK_ID, MEDIA, SUBSCRIBE, receive, socket

pytestmark = pytest.mark.anyio

KEY = "persist-test-fake-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
KNOBS = {"task_jitter": 0.0, "render": False, "url_ttl": 60}

Submit = Callable[[httpx.AsyncClient], Awaitable[str]]
Result = Callable[[httpx.AsyncClient, str], Awaitable[str | None]]  # the URL once done


@asynccontextmanager
async def started(
    name: str, state: Path, clock: ManualClock | None = None, **knobs: Any
) -> AsyncIterator[tuple[RunningEmulator, httpx.AsyncClient]]:
    settings = {name: {**KNOBS, **knobs}}
    async with serve([name], knobs=settings, clock=clock, state_dirs={name: state}) as running:
        emulator = running[name]
        async with httpx.AsyncClient(
            base_url=emulator.base_url, headers=AUTH, timeout=10.0
        ) as client:
            yield emulator, client


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


# -- one submit and one result per API ----------------------------------------------------


async def pixellabs_submit(client: httpx.AsyncClient) -> str:
    answer = await client.post("/v1/generate", json={"prompt": "a kept promise", "seed": 5})
    return str(answer.json()["generationId"])


async def pixellabs_result(client: httpx.AsyncClient, task_id: str) -> str | None:
    answer = (await client.get(f"/v1/generate/{task_id}")).json()
    return answer.get("imageUrl")


async def apixo_submit(client: httpx.AsyncClient) -> str:
    body = {"input": {"prompt": "a kept promise", "seed": 5}}
    answer = await client.post("/api/v1/generateTask/nano-banana", json=body)
    return str(answer.json()["data"]["taskId"])


async def apixo_result(client: httpx.AsyncClient, task_id: str) -> str | None:
    answer = await client.get("/api/v1/statusTask/nano-banana", params={"taskId": task_id})
    data = answer.json()["data"]
    return json.loads(data["resultJson"])["resultUrls"][0] if "resultJson" in data else None


async def acedata_submit(client: httpx.AsyncClient) -> str:
    body = {"prompt": "a kept promise", "seed": 5, "callback_url": "http://127.0.0.1:9/hook"}
    answer = await client.post("/pixverse/videos", json=body)
    return str(answer.json()["task_id"])


async def acedata_result(client: httpx.AsyncClient, task_id: str) -> str | None:
    answer = await client.post("/pixverse/tasks", json={"id": task_id, "action": "retrieve"})
    response = answer.json().get("response")
    return None if response is None else str(response["data"][0]["video_url"])


async def pixai_submit(client: httpx.AsyncClient) -> str:
    data = await gql(client, CREATE, parameters={"prompts": "a kept promise", "batchSize": 2})
    return str(data["createGenerationTask"]["id"])


async def pixai_result(client: httpx.AsyncClient, task_id: str) -> str | None:
    task = (await gql(client, GET_TASK_ID, id=task_id))["task"]
    if task["status"] != "completed":
        return None
    media = (await gql(client, MEDIA, id=task["outputs"]["mediaId"]))["media"]
    return str(media["urls"][0]["url"])


APIS: dict[str, tuple[Submit, Result]] = {
    "pixellabs": (pixellabs_submit, pixellabs_result),
    "apixo": (apixo_submit, apixo_result),
    "acedata": (acedata_submit, acedata_result),
    "pixai": (pixai_submit, pixai_result),
}


async def fetch(client: httpx.AsyncClient, url: str) -> str:
    """sha256 of the file at ``url``'s path and query, on ``client``'s server."""
    parts = urlsplit(url)
    answer = await client.get(f"{parts.path}?{parts.query}" if parts.query else parts.path)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    return hashlib.sha256(answer.content).hexdigest()


@pytest.mark.parametrize("name", sorted(APIS))
async def test_a_restarted_emulator_serves_its_tasks_and_the_same_bytes(
    name: str, tmp_path: Path
) -> None:
    submit, result = APIS[name]
    clock = ManualClock()
    async with started(name, tmp_path, clock, task_seconds=2) as (first, client):
        task_id = await submit(client)
        assert await result(client, task_id) is None
        clock.advance(3)
        old_url = await result(client, task_id)
        assert old_url is not None
        served = await fetch(client, old_url)
    clock.advance(1)  # the restart takes a moment; the signed URL is still valid

    async with started(name, tmp_path, clock, task_seconds=2) as (second, client):
        assert second.base_url != first.base_url
        new_url = await result(client, task_id)
        assert new_url is not None and new_url.startswith(second.base_url)
        assert await fetch(client, new_url) == served
        assert await fetch(client, old_url) == served  # its signature outlived the restart
        assert second.state.ledger.task_ids() == [task_id]
        assert await submit(client) != task_id
    charged = [c.task_id for c in stored_charges(tmp_path)]
    assert len(charged) == 2 and charged[0] == task_id


@asynccontextmanager
async def in_memory() -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(["pixellabs"], knobs={"pixellabs": KNOBS}) as running,
        httpx.AsyncClient(base_url=running["pixellabs"].base_url, headers=AUTH) as client,
    ):
        yield client


async def test_without_a_state_directory_a_restart_forgets() -> None:
    async with in_memory() as client:
        task_id = await pixellabs_submit(client)
    async with in_memory() as client:
        assert (await client.get(f"/v1/generate/{task_id}")).status_code == 404


async def test_reset_forgets_the_kept_world_too(tmp_path: Path) -> None:
    async with started("pixellabs", tmp_path) as (_, client):
        task_id = await pixellabs_submit(client)
        assert (await client.post("/_emulator/reset")).status_code == 200
    async with started("pixellabs", tmp_path) as (emulator, client):
        assert (await client.get(f"/v1/generate/{task_id}")).status_code == 404
        assert len(emulator.state.ledger) == 0


async def test_one_process_per_state_directory(tmp_path: Path) -> None:
    async with started("pixellabs", tmp_path):
        with pytest.raises(PipelineError, match=r"in use by pid \d+"):
            async with started("pixellabs", tmp_path):
                pass
    async with started("pixellabs", tmp_path):  # released on stop
        pass


async def test_pixai_account_and_subscriptions_continue_after_a_restart(tmp_path: Path) -> None:
    async with started("pixai", tmp_path, task_seconds=60) as (_, client):
        busy = [await pixai_submit(client) for _ in range(9)]
        cancelled = busy.pop()
        await gql(client, CANCEL, id=cancelled, reason="changed my mind")
    async with started("pixai", tmp_path, task_seconds=1.0) as (pixai, client):
        task = (await gql(client, GET_TASK_ID, id=cancelled))["task"]
        assert task["status"] == "cancelled" and task["outputs"] == {"reason": "changed my mind"}
        async with socket(pixai.base_url, {"token": KEY}) as ws:
            assert await receive(ws) == {"type": "connection_ack"}
            await ws.send_json({"id": "s", "type": "subscribe", "payload": {"query": SUBSCRIBE}})
            await asyncio.sleep(0.05)
            await pixai_submit(client)
            await pixai_submit(client)  # 8 kept + 2 new: the account's limit of 10
            refused = await client.post(
                "/graphql", json={"query": CREATE, "variables": {"parameters": {"prompts": "x"}}}
            )
            assert refused.json()["errors"][0]["extensions"]["code"] == "TOO_MANY_TASKS"
        assert pixai.state.ledger.task_ids()[:9] == [*busy, cancelled]


async def test_pixai_subscription_hears_a_task_made_before_the_restart(tmp_path: Path) -> None:
    async with started("pixai", tmp_path, task_seconds=1.5) as (_, client):
        task_id = await pixai_submit(client)
    async with started("pixai", tmp_path) as (pixai, client):
        async with socket(pixai.base_url, {"token": KEY}) as ws:
            assert await receive(ws) == {"type": "connection_ack"}
            await ws.send_json({"id": "s", "type": "subscribe", "payload": {"query": SUBSCRIBE}})
            while True:
                update = (await receive(ws))["payload"]["data"]["personalEvents"]["taskUpdated"]
                if update["id"] == task_id and update["status"] == "completed":
                    break
        assert await pixai_result(client, task_id) is not None


async def test_a_damaged_state_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(PipelineError, match="remove that directory to start the emulator afresh"):
        async with started("pixellabs", tmp_path):
            pass
    (tmp_path / "state.sqlite").unlink()  # as the message says; the lock was let go
    async with started("pixellabs", tmp_path) as (emulator, _):
        assert len(emulator.state.tasks) == 0


async def test_another_apis_state_is_refused(tmp_path: Path) -> None:
    async with started("pixellabs", tmp_path) as (_, client):
        await pixellabs_submit(client)
    with pytest.raises(PipelineError, match="holds the pixellabs emulator's world, not apixo's"):
        async with started("apixo", tmp_path):
            pass
