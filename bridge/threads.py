"""Where each conversation's first message is: the thread roots, kept in Redis.

A conversation is one order (checkout, dispute) in one channel of one Pumble account: later
events of it reply in its first message's thread. The receiver marks a root as *expected* when it
enqueues a conversation's first notification, so a reply that is processed first (the shop sent
``orders/paid`` before ``orders/create``) waits for it instead of starting the thread itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from bridge.notification import Notification
from bridge.store import scripts
from bridge.store.keys import Keys

EXPECTED = b"expected"
ABANDONED = b"abandoned"

@dataclass(frozen=True)
class Root:
    message_id: str
    channel_id: str


class ThreadRoots:
    def __init__(self, connection: redis.Redis, namespace: str, ttl: int):
        """``ttl``: seconds a root is remembered; later events of an older order start anew."""
        self.connection = connection
        self.ttl = ttl
        self.keys = Keys(namespace)
        self._claim = connection.register_script(scripts.CLAIM_ROOT)
        self._give_up = connection.register_script(scripts.GIVE_UP_ROOT)

    def key(self, notification: Notification) -> str:
        """Where the conversation's root is kept; "" for a notification outside any. The queue
        sets it to EXPECTED (NX) as it enqueues the conversation's first message, so replies
        wait for it."""
        if not notification.thread_key:
            return ""
        return self.keys.thread_root(notification.account, notification.channel,
                                     notification.source, notification.thread_key)

    def get(self, notification: Notification) -> Root | bool | None:
        """The root; True while one is expected but not sent; False when the expected one was
        given up; None when none was ever announced."""
        if not notification.thread_key:
            return None
        return self._root(self.connection.get(self.key(notification)))

    def get_many(self, notifications: list[Notification]) -> list[Root | bool | None]:
        """``get`` for each, in one round trip."""
        keys = [self.key(n) for n in notifications if n.thread_key]
        values = iter(self.connection.mget(keys) if keys else [])
        return [self._root(next(values)) if n.thread_key else None for n in notifications]

    @staticmethod
    def _root(value: bytes | None) -> Root | bool | None:
        if value is None:
            return None
        if value == ABANDONED:
            return False
        if value == EXPECTED:
            return True
        message_id, _, channel_id = value.decode().partition(" ")
        return Root(message_id, channel_id)

    def claim(self, notification: Notification, message_id: str, channel_id: str) -> bool:
        """Record a just-posted message as the root unless there is one already, or one is
        expected and this is not it (an ``order.paid`` posted on a route without threads does
        not take the place of the ``order.created`` on its way). True when it became the root."""
        if not notification.thread_key:
            return False
        return bool(self.claim_on(self.connection, notification, message_id, channel_id))

    def claim_on(self, client: redis.Redis | redis.client.Pipeline, notification: Notification,
                 message_id: str, channel_id: str) -> Any:
        """``claim``'s script, run by ``client`` (a pipeline: among its answers)."""
        takes_expected = "1" if notification.starts_thread else "0"
        return scripts.run(self._claim, client, [self.key(notification)],
                           [f"{message_id} {channel_id}", self.ttl, EXPECTED, takes_expected,
                            ABANDONED])

    def give_up(self, notification: Notification) -> None:
        """The expected root will not be sent (dead-lettered): replies stop waiting for it and
        the first of them to be posted takes its place."""
        if notification.thread_key:
            self._give_up(keys=[self.key(notification)], args=[EXPECTED, ABANDONED])
