"""The lines notifications wait in to be posted, in order; and burst coalescing (digests).

Every notification's job joins a *line* (a Redis sorted set, by receipt time) when it is enqueued:
a top-level message its route's in its channel, a reply its thread's. It leaves the line once its
message is posted (or it is dead-lettered, or taken into a digest); a job may take its turn only
when no notification before it in its line is still waiting (``ahead``): new orders are posted in
the order they arrived, replies in the order of their events (bridge.delivery decides which are
before, by event time). A job that fails and is retried keeps its place.

A new message that is not at its line's head *parks*: rq runs it again after a fallback delay.
Whatever leaves a line of new messages hands over (``leave``): the new head, if parked, goes to
the front of the queue at once, so a line drains at the pace of its posts, not of rq's
scheduling in whole seconds; the fallback only matters if a handover is lost.

When a route falls behind Pumble's rate limit, its line is merged into digests: the job whose turn
it is, if more are still waiting than the slots left in the message limit's window can post one by
one (or than the limit posts in the configured digest window), also takes up to ``max_items - 1``
of the next ones and sends one digest listing them all (bridge.delivery.steps decides the
threshold, and how long a head short of slots waits for a full digest). Once it is posted, the
job that sent it ends those jobs, "delivered in digest …" (bridge.store.runs); one another
worker is running already ends itself, and one parked is woken to. The claim is
recorded in Redis before anything is sent, so a digest whose worker dies is sent again by the same
job's retry, with the same lines: no order is dropped, every one appears alone or in a digest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from rq import Queue
from rq.job import Job
from rq.utils import now, utcformat

from bridge.notification import Notification
from bridge.store import scripts
from bridge.store.keys import Keys

# Seconds: a parked job due sooner than this is left to rq's scheduler, which may be moving it
# already (scripts.LEAVE_LINE); it reads due jobs by whole seconds, so two leave room for that
# and a second of clock difference between machines.
HANDOVER_MARGIN = 2


@dataclass(frozen=True)
class Claim:
    members: tuple[str, ...] = ()  # other jobs this one sends a digest for
    owner: str = ""  # the job whose digest this one is in


class Backlog:
    def __init__(self, connection: redis.Redis, namespace: str, ttl: int):
        """``ttl``: seconds claims are kept: as long as a dead-lettered digest may be retried."""
        self.connection = connection
        self.ttl = ttl
        self.keys = Keys(namespace)
        self._claim = connection.register_script(scripts.CLAIM_DIGEST)
        self._leave = connection.register_script(scripts.LEAVE_LINE)
        self._rq = Queue(namespace, connection=connection)  # its keys, for the handover

    def key(self, notification: Notification) -> str:
        """The line the notification waits in: its thread's for a reply, else its route's in
        its channel. The queue adds each new job to it (scored by ``received_at``) as it
        enqueues it."""
        if not notification.reply:
            return self.keys.route_line(notification.account, notification.channel,
                                        notification.route)
        if not notification.thread_key:
            return ""
        return self.keys.thread_line(notification.account, notification.channel,
                                     notification.source, notification.thread_key)

    def ahead(self, notification: Notification, job_id: str,
              limit: int) -> tuple[list[str], int]:
        """The jobs of the line the delivery must look at before this one's turn, and how many
        more there are: for a reply every other job of its thread (a later arrival may be an
        earlier event), else the first ``limit`` that arrived before it."""
        key = self.key(notification)
        if not key:
            return [], 0
        if notification.reply:
            return [m.decode() for m in self.connection.zrange(key, 0, -1)
                    if m.decode() != job_id], 0
        rank = self.connection.zrank(key, job_id)
        if not rank:  # first, or out of the line already
            return [], 0
        ids = [m.decode() for m in self.connection.zrange(key, 0, min(rank, limit) - 1)]
        return ids, rank - len(ids)

    def leave(self, notification: Notification, *job_ids: str, wake: Sequence[str] = ()) -> int:
        """Out of the line: posted, dead-lettered, or gone. A line of new messages hands over:
        its new head, and the jobs of ``wake`` (a digest's, just posted), if parked, go to the
        front of the queue at once. Returns how many were moved there."""
        key = self.key(notification)
        if not key:
            return 0
        if notification.reply:  # a thread's next is decided by event time: no handover
            if job_ids:
                self.connection.zrem(key, *job_ids)
            return 0
        return int(self._leave(
            keys=[key, self._rq.scheduled_job_registry.key, self._rq.key],
            args=[Job.redis_job_namespace_prefix, utcformat(now()), HANDOVER_MARGIN,
                  self.keys.digest_of_prefix(), len(job_ids), *job_ids, *wake,
                  self.keys.in_run_prefix()]))

    def behind(self, notification: Notification, job_id: str) -> int:
        """How many wait behind this job in its line: what a digest it sent could take."""
        if not digestible(notification):
            return 0
        with self.connection.pipeline(transaction=False) as pipe:
            key = self.key(notification)
            pipe.zrank(key, job_id)
            pipe.zcard(key)
            rank, size = pipe.execute()
        return 0 if rank is None else size - rank - 1

    def taken_by(self, notification: Notification, job_id: str) -> str:
        """The job whose digest took this one in, or "" (a cheap look, before any slot is
        taken: a job in a digest needs none)."""
        if not digestible(notification):
            return ""
        owner = self.connection.get(self.keys.in_digest(job_id))
        return owner.decode() if owner else ""

    def claim(self, notification: Notification, job_id: str, threshold: int,
              max_items: int) -> Claim:
        """If at least ``threshold`` others wait behind this job in its line, take up to
        ``max_items - 1`` of them out of it, into this one's digest. A digest once claimed is
        answered again to the same job (``max_items=1``: only that)."""
        if not digestible(notification):
            return Claim()
        answer = self._claim(keys=[self.key(notification), self.keys.digest_of(job_id)],
                             args=[job_id, threshold, max_items - 1, self.ttl,
                                   self.keys.in_digest_prefix(), self.keys.digest_of_prefix()])
        kind = answer[0].decode()
        if kind == "owner":  # its digest's members; none when it claimed to go alone
            return Claim(members=tuple(json.loads(answer[1])))
        if kind == "taken":
            return Claim(owner=answer[1].decode())
        return Claim()


def digestible(notification: Notification) -> bool:
    """Replies belong in their thread, never in a digest; a route may turn digests off."""
    return notification.digest and not notification.reply


def digest_text(notifications: Sequence[Notification]) -> str:
    """One message for many: a header, then each notification's first line, oldest first."""
    ordered = sorted(notifications, key=lambda n: n.received_at)
    types = sorted({n.event_type for n in ordered})
    span = max(0, round(ordered[-1].received_at - ordered[0].received_at))
    header = (f"📦 {len(ordered)} notifications ({', '.join(types)}) received over {span} s, "
              "sent as one digest to keep up with Pumble's rate limit:")
    return "\n".join([header, *(f"• {n.summary}" for n in ordered)])
