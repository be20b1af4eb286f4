"""The completion modes: name → the capability an adapter needs and the follower factory.

The built-in modes are registered here; ``register_mode`` adds another (a plugin may, at
import). ``make_follower`` checks the lane's adapter has the mode's capability, once,
and hands the factory the adapter typed as that capability.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from pipeline.completion import batch, poll, subscription, webhook
from pipeline.completion.follower import FollowContext, Follower
from pipeline.providers.base import (
    BatchStatusCapable,
    CallbackCapable,
    Provider,
    SubscriptionCapable,
)

__all__ = ["MODES", "CompletionMode", "make_follower", "register_mode"]

P = TypeVar("P", bound=Provider)


@dataclass(frozen=True, slots=True)
class CompletionMode(Generic[P]):
    """A completion mode: what it asks of the adapter, and how its follower is made."""

    needs: type[P]
    create: Callable[[FollowContext, P], Follower]

    def follower(self, name: str, context: FollowContext) -> Follower:
        adapter = context.adapter
        if not isinstance(adapter, self.needs):
            raise TypeError(
                f"{adapter.type} adapter cannot complete by {name!r}: "
                f"it is not a {self.needs.__name__}"
            )
        return self.create(context, adapter)


MODES: dict[str, CompletionMode[Any]] = {
    "poll": CompletionMode(Provider, poll.create),
    "batch": CompletionMode(BatchStatusCapable, batch.create),
    "subscription": CompletionMode(SubscriptionCapable, subscription.create),
    "webhook": CompletionMode(CallbackCapable, webhook.create),
}
"""Every completion mode by name; an adapter lists those it offers (``completion_modes``)."""


def register_mode(
    name: str, create: Callable[[FollowContext, P], Follower], *, needs: type[P]
) -> None:
    """Add completion mode ``name``: ``create`` makes a lane's follower from its context
    and its adapter, which must be a ``needs`` (a capability class, or ``Provider``)."""
    if name in MODES:
        raise ValueError(f"completion mode {name!r} is registered already")
    MODES[name] = CompletionMode(needs, create)


def make_follower(mode: str, context: FollowContext) -> Follower:
    """The lane's follower, with the poll settings the spec left unset taken from the
    API's documented advice (``Provider.poll_advice``)."""
    entry = MODES.get(mode)
    if entry is None:
        known = ", ".join(MODES)
        raise ValueError(f"unknown completion mode {mode!r}; registered: {known}")
    context = replace(context, run=context.run.advised(context.adapter.poll_advice))
    return entry.follower(mode, context)
