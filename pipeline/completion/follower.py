"""How a job learns its remote task is finished.

A ``Follower`` turns a remote id into the task's final ``RemoteTask``, reporting every
intermediate state through ``on_update``. Each completion mode has one:

    poll          ``completion.poll``: ``status`` per task with a growing interval
    batch         ``completion.batch``: one ``status_many`` request per round for every task
    subscription  ``completion.subscription``: one shared WebSocket per API key
    webhook       ``completion.webhook``: callbacks are hints, confirmed by a status query

Transient errors are retried with backoff (honouring Retry-After); final ones (the task
is unknown to the provider) end the job. A lane picks its mode from the provider
entry's ``options.completion``, defaulting to the adapter's first completion mode; the
modes are registered in ``completion.modes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.abc import TaskGroup

from pipeline.models import ProviderSettings, RemoteTask, RunSettings
from pipeline.providers.base import Provider

__all__ = [
    "FollowContext",
    "Follower",
    "UpdateCallback",
    "estimated_first_delay",
    "expected_finish",
]

UpdateCallback = Callable[[RemoteTask], None]


class Follower(Protocol):
    async def ready(self) -> None:
        """Return when tasks submitted from now on cannot be missed (e.g. a subscription
        is live, or failed to come up in time). The scheduler awaits it before submits."""
        ...

    async def follow(
        self, remote_id: str, *, on_update: UpdateCallback, first_delay: float | None = None
    ) -> RemoteTask: ...


@dataclass
class FollowContext:
    """What a follower may use: the adapter, timings, a task group for background loops
    (a batch round, a WebSocket), and run-wide services such as the webhook receiver."""

    adapter: Provider
    settings: ProviderSettings
    run: RunSettings
    task_group: TaskGroup
    services: dict[str, Any] = field(default_factory=dict)


def expected_finish(provider: Provider, remote_id: str) -> float | None:
    """Seconds from now until the API expects the task done, from its submit answer
    (``Provider.first_check_in``, e.g. PixelLabs' ``estimatedTime``); None if unknown."""
    seconds = provider.first_check_in(remote_id)
    return None if seconds is None else max(float(seconds), 0.0)


ESTIMATE_CAP = 4.0
"""An estimate from the submit answer puts off the first check by at most this × poll_max."""


def estimated_first_delay(expected: float, run: RunSettings) -> float:
    """The first wait for a task the API expects done in ``expected`` seconds."""
    return min(expected, ESTIMATE_CAP * run.poll_max)
