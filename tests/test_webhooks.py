"""The webhook receiver over real HTTP on loopback, and the follower on an in-memory
provider whose task states the test sets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from pipeline.completion.receiver import WebhookReceiver
from pipeline.completion.webhook import WebhookFollower, open_receiver
from pipeline.errors import SpecError
from pipeline.models import (
    Job,
    ProviderSettings,
    RemoteStatus,
    RemoteTask,
    RunSettings,
    WebhookSettings,
)
from pipeline.providers.base import CallbackCapable, PreparedRequest
from pipeline.spec.load import load_spec

from .conftest import write_spec

pytestmark = pytest.mark.anyio

RUN = RunSettings(poll_initial=0.01, poll_max=0.05, retries=1)


class FakeProvider(CallbackCapable):
    """Tasks live in a dict; ``status`` counts its calls."""

    type = "fake"
    title = "Fake"
    default_base_url = "http://fake.invalid"
    completion_modes = ("poll", "webhook")

    def __init__(self) -> None:
        super().__init__(ProviderSettings(name="fake", type="fake"))
        self.states: dict[str, RemoteStatus] = {}
        self.status_calls = 0

    def build_submit(self, job: Job) -> PreparedRequest:
        return PreparedRequest("POST", "/submit", {})

    async def submit(self, job: Job) -> str:
        raise NotImplementedError

    async def status(self, remote_id: str) -> RemoteTask:
        self.status_calls += 1
        return RemoteTask(remote_id, self.states[remote_id])

    def callback_task_id(self, body: object) -> str | None:
        task_id = body.get("id") if isinstance(body, dict) else None
        return task_id if isinstance(task_id, str) else None


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with open_receiver(WebhookSettings()) as running:
        running.register("fake", FakeProvider().callback_task_id)
        yield running


async def post(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(url, **kwargs)


# -- the receiver ----------------------------------------------------------------------


async def test_valid_callback_wakes_the_waiter(receiver):
    url = receiver.url_for("fake")
    assert url.startswith("http://127.0.0.1:") and f"/hooks/{receiver.token}/fake" in url
    with receiver.watch("fake", "t1") as mailbox:
        assert (await post(url, json={"id": "t1"})).status_code == 200
        assert await mailbox.wait(1.0)
        assert not await mailbox.wait(0.05)  # one hint, one wake-up


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/hooks/WRONG/fake", {"json": {"id": "t1"}}, 404),
        ("/hooks/{token}/other", {"json": {"id": "t1"}}, 404),
        ("/elsewhere", {"json": {"id": "t1"}}, 404),
        ("/hooks/{token}/fake", {"content": b"{nope"}, 400),
        ("/hooks/{token}/fake", {"json": {"no": "id"}}, 400),
        ("/hooks/{token}/fake", {"content": b"[" + b" " * (1024 * 1024 + 10) + b"]"}, 413),
    ],
)
async def test_bad_callbacks_are_refused_and_change_nothing(receiver, path, kwargs, status):
    url = receiver.base_url + path.format(token=receiver.token)
    with receiver.watch("fake", "t1") as mailbox:
        assert (await post(url, **kwargs)).status_code == status
        assert not await mailbox.wait(0.05)
    assert receiver.stats["hints"] == 0


async def test_non_ascii_token_is_refused_not_a_crash(receiver):
    response = await post(f"{receiver.base_url}/hooks/%C3%A9t%C3%A9/fake", json={"id": "t1"})
    assert response.status_code == 404


async def test_a_hint_before_the_waiter_is_kept(receiver):
    await post(receiver.url_for("fake"), json={"id": "early"})
    with receiver.watch("fake", "early") as mailbox:
        assert await mailbox.wait(0.0)
    with receiver.watch("fake", "early") as mailbox:  # consumed once
        assert not await mailbox.wait(0.0)


async def test_subscriptions_get_every_hint_of_their_provider(receiver):
    with receiver.hints("fake") as hints:
        for task_id in ("a", "b", "a"):
            await post(receiver.url_for("fake"), json={"id": task_id})
        assert await hints.next(1.0) == {"a", "b"}
        assert await hints.next(0.05) == set()


async def test_public_url_replaces_host_and_port():
    settings = WebhookSettings(public_url="https://hooks.example.com/base/")
    async with open_receiver(settings) as running:
        url = running.register("fake", FakeProvider().callback_task_id)
        assert url == f"https://hooks.example.com/base/hooks/{running.token}/fake"


async def test_tokens_differ_per_receiver():
    async with open_receiver(WebhookSettings()) as one, open_receiver(WebhookSettings()) as two:
        assert one.token != two.token and len(one.token) >= 32


# -- the follower ----------------------------------------------------------------------


def follower(receiver: WebhookReceiver, provider: FakeProvider, **kwargs: Any) -> WebhookFollower:
    options = {"callback_timeout": 5.0, "safety_poll": 5.0, **kwargs}
    return WebhookFollower(provider, receiver, RUN, provider="fake", **options)


async def test_follower_confirms_a_callback_with_a_status_query(receiver):
    provider = FakeProvider()
    provider.states["t1"] = RemoteStatus.RUNNING
    updates: list[RemoteTask] = []
    result: list[RemoteTask] = []

    async def follow() -> None:
        result.append(await follower(receiver, provider).follow("t1", on_update=updates.append))

    async with anyio.create_task_group() as group:
        group.start_soon(follow)
        await anyio.sleep(0.05)
        assert provider.status_calls == 0  # waiting, not polling
        provider.states["t1"] = RemoteStatus.SUCCEEDED
        await post(receiver.url_for("fake"), json={"id": "t1"})
    assert result[0].status is RemoteStatus.SUCCEEDED
    assert provider.status_calls == 1


async def test_a_lying_callback_is_not_believed(receiver):
    provider = FakeProvider()
    provider.states["t1"] = RemoteStatus.RUNNING
    result: list[RemoteTask] = []

    async def follow() -> None:
        result.append(await follower(receiver, provider).follow("t1", on_update=lambda _: None))

    async with anyio.create_task_group() as group:
        group.start_soon(follow)
        await anyio.sleep(0.02)
        await post(receiver.url_for("fake"), json={"id": "t1", "state": "success"})
        await anyio.sleep(0.1)
        assert not result  # confirmed: still running (then one re-check, poll_max later)
        assert 1 <= provider.status_calls <= 2
        provider.states["t1"] = RemoteStatus.FAILED
        await post(receiver.url_for("fake"), json={"id": "t1"})
    assert result[0].status is RemoteStatus.FAILED


async def test_late_and_duplicate_callbacks_after_the_end_change_nothing(receiver):
    provider = FakeProvider()
    provider.states["t1"] = RemoteStatus.SUCCEEDED
    await post(receiver.url_for("fake"), json={"id": "t1"})
    task = await follower(receiver, provider).follow("t1", on_update=lambda _: None)
    assert task.status is RemoteStatus.SUCCEEDED and provider.status_calls == 1
    for _ in range(3):
        assert (await post(receiver.url_for("fake"), json={"id": "t1"})).status_code == 200
    assert provider.status_calls == 1


async def test_no_callback_falls_back_to_polling(receiver):
    provider = FakeProvider()
    provider.states["t1"] = RemoteStatus.SUCCEEDED
    quick = follower(receiver, provider, callback_timeout=0.1)
    with anyio.fail_after(5):
        task = await quick.follow("t1", on_update=lambda _: None)
    assert task.status is RemoteStatus.SUCCEEDED
    assert quick.confirmations == 0 and provider.status_calls == 1


async def test_the_safety_poll_catches_a_silent_end(receiver):
    provider = FakeProvider()
    provider.states["t1"] = RemoteStatus.SUCCEEDED
    slow = follower(receiver, provider, safety_poll=0.1)
    with anyio.fail_after(5):
        task = await slow.follow("t1", on_update=lambda _: None)
    assert task.status is RemoteStatus.SUCCEEDED and slow.confirmations == 1


# -- the spec section ------------------------------------------------------------------


def load(tmp_path: Path, webhooks: str) -> Any:
    path = write_spec(
        tmp_path,
        f"""
        providers: {{pixellabs: {{}}}}
        prompts: [a fox]
        {webhooks}
        """,
    )
    return load_spec(path, known_providers=["pixellabs"], env={})


def test_spec_webhooks_defaults_and_values(tmp_path):
    assert load(tmp_path, "").webhooks == WebhookSettings("127.0.0.1", 0, None)
    spec = load(tmp_path, "webhooks: {host: 0.0.0.0, port: 8099, public_url: 'https://h.example'}")
    assert spec.webhooks == WebhookSettings("0.0.0.0", 8099, "https://h.example")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("webhooks: {public_url: 'ftp://x'}", "public_url must start with http"),
        ("webhooks: {port: 70000}", "65535"),
        ("webhooks: {secret: x}", "unknown key 'secret'"),
    ],
)
def test_spec_webhooks_errors_point_at_the_field(tmp_path, text, message):
    with pytest.raises(SpecError, match=message) as caught:
        load(tmp_path, text)
    assert caught.value.path is not None and caught.value.path.startswith("webhooks")
