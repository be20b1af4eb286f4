"""Provider capabilities are declared, and completion modes are a registry.

A completion mode an adapter lists must be backed by the capability it needs: the class
is refused when it is defined, with the provider and the missing hook named. Followers
read declared hooks; they never probe an adapter (getattr, runtime-checked Protocols)."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.completion import FollowContext, UpdateCallback, make_follower, modes
from pipeline.models import Job, ProviderSettings, RemoteStatus, RemoteTask, RunSettings
from pipeline.providers import registry
from pipeline.providers.base import (
    MODE_CAPABILITIES,
    BatchStatusCapable,
    CallbackCapable,
    PreparedRequest,
    Provider,
    SubscriptionCapable,
)
from pipeline.providers.pixellabs import PixelLabsProvider

COMPLETION = Path(__file__).resolve().parents[1] / "pipeline" / "completion"
SETTINGS = ProviderSettings(name="x", type="x")


class Minimal(Provider):
    """The core hooks only: enough for completion by polling."""

    type = "minimal"
    title = "Minimal"
    default_base_url = "http://minimal.invalid"

    def build_submit(self, job: Job) -> PreparedRequest:
        return PreparedRequest("POST", "/jobs", {})

    async def submit(self, job: Job) -> str:
        return "t"

    async def status(self, remote_id: str) -> RemoteTask:
        return RemoteTask(remote_id, RemoteStatus.SUCCEEDED)


@pytest.mark.parametrize(
    ("mode", "capability", "hook"),
    [
        ("subscription", "SubscriptionCapable", "task_update"),
        ("webhook", "CallbackCapable", "callback_task_id"),
        ("batch", "BatchStatusCapable", "status_many"),
    ],
)
def test_a_mode_without_its_capability_is_refused_when_the_class_is_defined(
    mode: str, capability: str, hook: str
) -> None:
    with pytest.raises(TypeError) as refused:

        class Plugin(Minimal):
            type = "plugin"
            completion_modes = ("poll", mode)

    message = str(refused.value)
    assert "Plugin" in message and "'plugin'" in message and repr(mode) in message
    assert capability in message and hook in message


def test_a_capability_with_a_hook_left_out_is_refused_naming_the_hook() -> None:
    with pytest.raises(TypeError, match=r"Half .*'subscription'.* task_update") as refused:

        class Half(SubscriptionCapable, Minimal):
            type = "half"
            completion_modes = ("subscription",)
            ws_url = "ws://half.invalid/graphql"

            def ws_connection_params(self) -> dict[str, Any]:
                return {}

            def subscription_payload(self) -> dict[str, Any]:
                return {}

            async def task_from_payload(self, payload: Mapping[str, Any]) -> RemoteTask:
                return RemoteTask(str(payload["id"]), RemoteStatus.RUNNING)

    assert "ws_connection_params" not in str(refused.value)


def test_requires_callback_needs_the_callback_hooks() -> None:
    with pytest.raises(TypeError, match=r"requires_callback.*CallbackCapable"):

        class Needy(Minimal):
            type = "needy"
            requires_callback = True


def test_a_full_capability_is_accepted_and_unlisted_modes_need_nothing() -> None:
    class Batched(BatchStatusCapable, Minimal):
        type = "batched"
        completion_modes = ("batch", "poll")

        async def status_many(self, remote_ids: Sequence[str]) -> list[RemoteTask]:
            return [RemoteTask(remote_id, RemoteStatus.RUNNING) for remote_id in remote_ids]

    class Called(CallbackCapable, Minimal):
        type = "called"  # can be called back, but lists only poll: still fine

        def callback_task_id(self, body: object) -> str | None:
            return None

    assert Batched(SETTINGS).batch_size is None
    assert Called(SETTINGS).callback_url is None


def test_every_built_in_adapter_backs_the_modes_it_lists() -> None:
    for adapter in registry.BUILTIN.values():
        for mode in adapter.completion_modes:
            assert issubclass(adapter, MODE_CAPABILITIES.get(mode, Provider)), (adapter, mode)


def test_the_registry_asks_of_each_mode_what_the_base_declares() -> None:
    assert set(modes.MODES) == {"poll", "batch", "subscription", "webhook"}
    for name, mode in modes.MODES.items():
        assert mode.needs is MODE_CAPABILITIES.get(name, Provider), name


class Pigeon:
    """A follower of a made-up mode: the task ends as soon as it is followed."""

    def __init__(self, adapter: Provider) -> None:
        self.adapter = adapter

    async def ready(self) -> None:
        return None

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask:
        return RemoteTask(remote_id, RemoteStatus.SUCCEEDED)


def context_of(adapter: Provider) -> FollowContext:
    return FollowContext(adapter, SETTINGS, RunSettings(), None)  # type: ignore[arg-type]


def test_a_registered_mode_is_used_by_make_follower(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modes, "MODES", dict(modes.MODES))
    modes.register_mode("pigeon", lambda context, adapter: Pigeon(adapter), needs=Provider)
    adapter = Minimal(SETTINGS)
    follower = make_follower("pigeon", context_of(adapter))
    assert isinstance(follower, Pigeon) and follower.adapter is adapter


def test_a_mode_cannot_be_registered_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modes, "MODES", dict(modes.MODES))
    with pytest.raises(ValueError, match="'poll' is registered already"):
        modes.register_mode("poll", lambda context, adapter: Pigeon(adapter), needs=Provider)


def test_make_follower_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"unknown completion mode 'smoke'.*poll"):
        make_follower("smoke", context_of(Minimal(SETTINGS)))
    with pytest.raises(TypeError, match=r"pixellabs.*'subscription'.*SubscriptionCapable"):
        make_follower("subscription", context_of(PixelLabsProvider(SETTINGS)))


def probes(path: Path) -> list[str]:
    """Lines of ``path`` that probe an adapter instead of reading a declared hook."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        called = node.func if isinstance(node, ast.Call) else None
        if isinstance(called, ast.Name) and called.id in {"getattr", "hasattr"}:
            found.append(f"{path.name}:{node.lineno} {called.id}")
        if isinstance(node, ast.Name) and node.id == "runtime_checkable":
            found.append(f"{path.name}:{node.lineno} runtime_checkable")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] + [getattr(node, "module", "") or ""]
            if "importlib" in names:
                found.append(f"{path.name}:{node.lineno} importlib")
    return found


def test_followers_read_declared_hooks_and_never_probe() -> None:
    found = [line for path in sorted(COMPLETION.glob("*.py")) for line in probes(path)]
    assert found == []
