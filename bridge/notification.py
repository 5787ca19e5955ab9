"""A rendered message on its way to Pumble: what the receiver enqueues and the worker sends.

It names the Pumble account that sends it, never the account's key: the worker resolves the key
from its own config at send time, so no secret is ever stored in Redis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Notification:
        return cls(**payload)
