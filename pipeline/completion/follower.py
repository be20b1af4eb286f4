"""How a job learns its remote task is finished.

A ``Follower`` turns a remote id into the task's final ``RemoteTask``, reporting every
intermediate state through ``on_update``. Each completion mode has one:

    poll          ``completion.poll``: ``status`` per task with a growing interval
    batch         ``completion.batch``: one ``status_many`` request per round for every task
    subscription  ``completion.subscription``: one shared WebSocket per API key
    webhook       ``completion.webhook``: callbacks are hints, confirmed by a status query

Transient errors are retried with backoff (honouring Retry-After); final ones (the task
is unknown to the provider) end the job. A lane picks its mode from the provider
entry's ``options.completion``, defaulting to the adapter's first completion mode.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from anyio.abc import TaskGroup

from pipeline.models import PollAdvice, ProviderSettings, RemoteTask, RunSettings
from pipeline.providers.base import Provider

__all__ = [
    "FOLLOWERS",
    "FollowContext",
    "Follower",
    "UpdateCallback",
    "estimated_first_delay",
    "expected_finish",
    "make_follower",
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


FOLLOWERS: dict[str, str] = {
    "poll": "pipeline.completion.poll:create",
    "batch": "pipeline.completion.batch:create",
    "subscription": "pipeline.completion.subscription:create",
    "webhook": "pipeline.completion.webhook:create",
}
"""Completion mode → ``module:function`` taking a FollowContext, imported on first use."""


def make_follower(mode: str, context: FollowContext) -> Follower:
    """The lane's follower, with the poll settings the spec left unset taken from the
    API's documented advice (``Provider.poll_advice``)."""
    module_name, _, function = FOLLOWERS[mode].partition(":")
    factory: Callable[[FollowContext], Follower] = getattr(
        importlib.import_module(module_name), function
    )
    advice = getattr(context.adapter, "poll_advice", None)
    if isinstance(advice, PollAdvice):
        context = replace(context, run=context.run.advised(advice))
    return factory(context)


def expected_finish(provider: object, remote_id: str) -> float | None:
    """Seconds from now until the API expects the task done, from its submit answer
    (``Provider.first_check_in``, e.g. PixelLabs' ``estimatedTime``); None if unknown."""
    first_check_in = getattr(provider, "first_check_in", None)
    if not callable(first_check_in):
        return None
    seconds = first_check_in(remote_id)
    return max(float(seconds), 0.0) if isinstance(seconds, int | float) else None


ESTIMATE_CAP = 4.0
"""An estimate from the submit answer puts off the first check by at most this × poll_max."""


def estimated_first_delay(expected: float, run: RunSettings) -> float:
    """The first wait for a task the API expects done in ``expected`` seconds."""
    return min(expected, ESTIMATE_CAP * run.poll_max)
