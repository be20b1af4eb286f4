"""The emulator knobs the resume tests need: result URLs handed out already expired
(``stale_urls``) and a slow file host (``download_delay``)."""

from __future__ import annotations

import time

import httpx
import pytest

from pipeline.emulators import Knobs

from .emulator_helpers import emulator_client

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer pixel_test_fake_key_0000"}


async def submit(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/generate", json={"prompt": "a kite"})
    return str(response.json()["generationId"])


async def finished_url(client: httpx.AsyncClient, generation_id: str) -> str:
    for _ in range(200):
        view = (await client.get(f"/v1/generate/{generation_id}")).json()
        if view.get("imageUrl"):
            return str(view["imageUrl"])
    raise AssertionError("never finished")


async def test_the_first_stale_urls_are_expired_and_each_is_new() -> None:
    async with (
        emulator_client("pixellabs", AUTH, task_seconds=0, stale_urls=2) as (_, client),
        httpx.AsyncClient(timeout=10.0) as cdn,
    ):
        remote_id = await submit(client)
        urls = [await finished_url(client, remote_id) for _ in range(3)]
        assert len(set(urls)) == 3
        assert [(await cdn.get(url)).status_code for url in urls] == [403, 403, 200]


async def test_download_delay_holds_every_answer_of_the_file_host() -> None:
    async with (
        emulator_client("pixellabs", AUTH, task_seconds=0, download_delay=0.3) as (_, client),
        httpx.AsyncClient(timeout=10.0) as cdn,
    ):
        url = await finished_url(client, await submit(client))
        started = time.monotonic()
        assert (await cdn.get(url)).status_code == 200
        assert time.monotonic() - started >= 0.3


def test_the_new_knobs_are_validated() -> None:
    assert Knobs.from_mapping({"stale_urls": 3, "download_delay": 1.5}).stale_urls == 3
    for bad in ({"stale_urls": -1}, {"stale_urls": 1.5}, {"download_delay": -2}):
        with pytest.raises(ValueError, match="knob"):
            Knobs.from_mapping(bad)
