"""What a route asks Pumble to do for one notification, as data the steps read.

A notification is queued with its route's options as plain fields (bridge.notification: the
payload every version of the bridge writes and reads); ``actions_of`` turns them into the
actions below once, when a job starts, and the steps (bridge.delivery.steps) read only these.
A new Pumble action is one class here, its line in ``actions_of`` and one step.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.notification import Notification


@dataclass(frozen=True)
class Post:
    """A message in the route's channel (or in a thread, see ``Thread``), the text marked."""

    channel: str
    text: str
    as_bot: bool
    create_channel: bool  # create a channel Pumble does not know, then post again


@dataclass(frozen=True)
class Thread:
    """It belongs to a conversation (an order, a checkout, a dispute: the notification's
    ``thread_key``) whose first message is kept in Redis (bridge.threads)."""

    starts: bool  # it is the conversation's first event
    reply: bool  # posted in the thread of the first message, waiting for it (route ``thread:``)


@dataclass(frozen=True)
class React:
    """A reaction to the thread's first message (route ``reactions:``), Pumble's colon form."""

    reaction: str


@dataclass(frozen=True)
class Actions:
    post: Post
    thread: Thread | None  # None: a message of its own
    react: React | None


def actions_of(notification: Notification) -> Actions:
    n = notification
    # A thread starter joins a thread a later event began; a reply waits for its root.
    in_thread = bool(n.thread_key) and (n.reply or n.starts_thread)
    return Actions(
        post=Post(channel=n.channel, text=n.text, as_bot=n.as_bot,
                  create_channel=n.create_channel),
        thread=Thread(starts=n.starts_thread, reply=n.reply) if in_thread else None,
        react=React(n.reaction) if n.reaction else None)
