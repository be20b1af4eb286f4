"""Every emulator reports the most tasks and API requests it had in progress at once
(``peak_tasks``, ``peak_requests``, and the current ``active_*``) in
``GET /_emulator/stats``, and forgets them on ``POST /_emulator/reset``: how a test
proves that a provider's ``concurrency`` held across several runners."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from pipeline.emulators import ManualClock

from . import test_emulator_apixo as apixo
from . import test_emulator_pixai as pixai
from . import test_emulator_pixellabs as pixellabs
from . import test_emulator_pixverse as pixverse
from .conftest import EmulatorProcess
from .emulator_helpers import emulator_client, wait_until

pytestmark = pytest.mark.anyio

TASK_SECONDS = 10.0

Submit = Callable[[httpx.AsyncClient], Awaitable[Any]]


async def pixai_create(client: httpx.AsyncClient) -> str:
    task_id: str = (await pixai.create(client))["id"]
    return task_id


EMULATORS: dict[str, tuple[dict[str, str], Submit]] = {
    "pixellabs": (pixellabs.AUTH, pixellabs.submit),
    "apixo": (apixo.AUTH, apixo.submit),
    "acedata": (pixverse.AUTH, pixverse.submit),
    "pixai": (pixai.AUTH, pixai_create),
}


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/_emulator/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def peaks(body: dict[str, Any]) -> dict[str, int]:
    keys = ("active_tasks", "peak_tasks", "active_requests", "peak_requests")
    return {key: body[key] for key in keys}


@pytest.mark.parametrize("name", list(EMULATORS))
async def test_tasks_submitted_at_once_peak_together_and_reset_forgets(name: str) -> None:
    auth, submit = EMULATORS[name]
    clock = ManualClock()
    async with emulator_client(name, auth, clock, task_seconds=TASK_SECONDS) as (_, client):
        assert peaks(await stats(client)) == dict.fromkeys(
            ("active_tasks", "peak_tasks", "active_requests", "peak_requests"), 0
        )
        await asyncio.gather(*(submit(client) for _ in range(4)))
        body = await stats(client)
        assert (body["active_tasks"], body["peak_tasks"]) == (4, 4)
        assert body["peak_requests"] >= 1 and body["active_requests"] == 0

        clock.advance(TASK_SECONDS)  # every task ends now
        body = await stats(client)
        assert (body["active_tasks"], body["peak_tasks"]) == (0, 4)

        assert (await client.post("/_emulator/reset")).status_code == 200
        assert peaks(await stats(client)) == dict.fromkeys(
            ("active_tasks", "peak_tasks", "active_requests", "peak_requests"), 0
        )


@pytest.mark.parametrize("name", list(EMULATORS))
async def test_peak_is_the_largest_overlap_of_the_task_timelines(name: str) -> None:
    auth, submit = EMULATORS[name]
    clock = ManualClock()
    async with emulator_client(name, auth, clock, task_seconds=TASK_SECONDS) as (_, client):
        for _ in range(3):  # each ends the moment the next is created
            await submit(client)
            clock.advance(TASK_SECONDS)
        assert (await stats(client))["peak_tasks"] == 1

        await submit(client)  # t=0: A until 10
        clock.advance(5)
        await submit(client)  # t=5: B until 15
        clock.advance(6)
        await submit(client)  # t=11: C until 21 (A is over)
        body = await stats(client)
        assert (body["active_tasks"], body["peak_tasks"]) == (2, 2)
        clock.advance(1)
        await submit(client)  # t=12: B, C and D
        body = await stats(client)
        assert (body["active_tasks"], body["peak_tasks"]) == (3, 3)


async def test_failed_tasks_end_where_they_fail() -> None:
    clock = ManualClock()
    knobs = {"task_seconds": TASK_SECONDS, "failure_rate": 1.0}
    async with emulator_client("pixellabs", pixellabs.AUTH, clock, **knobs) as (_, client):
        await pixellabs.submit(client)
        clock.advance(TASK_SECONDS - 0.001)  # a failure strikes before the run would end
        assert (await stats(client))["active_tasks"] == 0
        await pixellabs.submit(client)
        assert (await stats(client))["peak_tasks"] == 1


async def test_a_cancelled_pixai_task_stops_counting_when_cancelled() -> None:
    clock = ManualClock()
    async with emulator_client("pixai", pixai.AUTH, clock, task_seconds=TASK_SECONDS) as (
        _,
        client,
    ):
        first = await pixai_create(client)
        await pixai_create(client)
        clock.advance(1)
        body = await pixai.gql(client, pixai.CANCEL, "cancelGenerationTask", id=first)
        assert body["data"]["cancelGenerationTask"]["status"] == "cancelled", body
        assert (await stats(client))["active_tasks"] == 1
        await pixai_create(client)
        body = await stats(client)
        assert (body["active_tasks"], body["peak_tasks"]) == (2, 2)


async def test_peak_requests_counts_api_requests_in_progress_together() -> None:
    """Blocking Pixverse submits stay in progress until the (manual) clock ends their
    tasks, so the overlap is certain without relying on timing."""
    clock = ManualClock()
    async with emulator_client(
        "acedata", pixverse.AUTH, clock, task_seconds=TASK_SECONDS, callback_retry_delays=[]
    ) as (running, client):
        blocking = {"action": "generate", "prompt": pixverse.PROMPT}
        held = [
            asyncio.ensure_future(client.post("/pixverse/videos", json=blocking)) for _ in range(3)
        ]
        await wait_until(lambda: running.state.stats.active_requests == 3, seconds=60)
        # neither the admin endpoints nor the file host are API requests
        assert (await client.get("/_emulator/config")).status_code == 200
        assert (await client.get("/files/nothing.mp4")).status_code == 404
        body = await stats(client)
        assert (body["active_requests"], body["peak_requests"]) == (3, 3)
        assert (body["active_tasks"], body["peak_tasks"]) == (3, 3)

        task_id = await pixverse.submit(client)  # one more API request while 3 wait
        assert (await stats(client))["peak_requests"] == 4

        clock.advance(TASK_SECONDS)
        answers = await asyncio.gather(*held)
        assert [answer.status_code for answer in answers] == [200] * 3
        body = await stats(client)
        assert (body["active_requests"], body["peak_requests"]) == (0, 4)
        assert (body["active_tasks"], body["peak_tasks"]) == (0, 4)
        assert task_id

        assert (await client.post("/_emulator/reset")).status_code == 200
        body = await stats(client)
        assert (body["active_requests"], body["peak_requests"]) == (0, 0)


def test_a_separate_emulator_process_reports_its_peaks(
    emulator_factory: Callable[..., EmulatorProcess],
) -> None:
    emulator = emulator_factory(["pixellabs", "apixo"], task_seconds=600, task_jitter=0.0)

    async def submit_all() -> None:
        clients = [
            httpx.AsyncClient(base_url=emulator.urls[name], headers=auth, timeout=30)
            for name, auth in (("pixellabs", pixellabs.AUTH), ("apixo", apixo.AUTH))
        ]
        try:
            await asyncio.gather(
                *(pixellabs.submit(clients[0]) for _ in range(5)),
                *(apixo.submit(clients[1]) for _ in range(2)),
            )
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(submit_all())
    assert emulator.stats("pixellabs")["peak_tasks"] == 5
    assert emulator.stats("apixo")["peak_tasks"] == 2
    assert emulator.stats("pixellabs")["active_tasks"] == 5
    httpx.post(f"{emulator.urls['pixellabs']}/_emulator/reset", timeout=10).raise_for_status()
    after = emulator.stats("pixellabs")
    assert (after["peak_tasks"], after["peak_requests"]) == (0, 0)
    assert emulator.stats("apixo")["peak_tasks"] == 2
