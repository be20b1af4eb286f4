"""Room: how a job learns its remote task is finished: poll, batch, subscription
(WebSocket) and webhook (with the run's callback receiver)."""

from pipeline.completion.follower import FollowContext, Follower, UpdateCallback, make_follower
from pipeline.completion.webhook import SERVICE, attach_callbacks, open_receiver, wants_callbacks

__all__ = [
    "SERVICE",
    "FollowContext",
    "Follower",
    "UpdateCallback",
    "attach_callbacks",
    "make_follower",
    "open_receiver",
    "wants_callbacks",
]
