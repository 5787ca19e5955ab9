"""A rendered message on its way to Pumble: what the receiver enqueues and the worker sends.

It names the Pumble account that sends it, never the account's key: the worker resolves the key
from its own config at send time, so no secret is ever stored in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Notification:
    source: str  # config source name
    event_id: str  # the platform's delivery id
    event_type: str
    route: str
    channel: str
    text: str
    as_bot: bool = True
    account: str = "default"
    received_at: float = 0.0  # unix time the receiver accepted the webhook
    occurred_at: float = 0.0  # unix time of the event on the platform (Event.occurred_at), 0: none
    thread_key: str = ""  # the conversation it belongs to (``order:1234``), see events.thread_key
    starts_thread: bool = False  # the first message about its order/checkout/dispute
    reply: bool = False  # post in the thread of the conversation's first message (route thread:)
    reaction: str = ""  # add to the thread's first message (route reactions:)
    create_channel: bool = False  # create the channel if Pumble does not know it
    digest: bool = True  # may be merged into a digest when the route falls behind

    @property
    def summary(self) -> str:
        """The message's first line: what a digest lists for it."""
        return self.text.strip().split("\n", 1)[0]

    def to_payload(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field (all plain values here), at five
        # times the cost, on the receiver's path.
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Notification:
        # Jobs outlive deploys: a field this version does not know is dropped, not fatal.
        return cls(**{k: v for k, v in payload.items() if k in _FIELDS})


_FIELDS = tuple(f.name for f in fields(Notification))
