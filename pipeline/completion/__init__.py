"""Room: how a job learns its remote task is finished: poll, batch, subscription
(WebSocket) and webhook (with the run's callback receiver)."""

from pipeline.completion.follower import FollowContext, Follower, UpdateCallback
from pipeline.completion.modes import CompletionMode, make_follower, register_mode
from pipeline.completion.receiver import WebhookReceiver
from pipeline.completion.webhook import SERVICE, attach_callbacks, open_receiver, wants_callbacks

__all__ = [
    "SERVICE",
    "CompletionMode",
    "FollowContext",
    "Follower",
    "UpdateCallback",
    "WebhookReceiver",
    "attach_callbacks",
    "make_follower",
    "open_receiver",
    "register_mode",
    "wants_callbacks",
]
