"""Burst coalescing: when a route falls behind Pumble's rate limit, merge its backlog into digests.

Every digestible notification's job id is added to its route's *backlog* (a sorted set by receipt
time) when it is enqueued. A worker about to send one takes it out of the backlog; if more are
still waiting than the message limit can post in the configured window, it also takes up to
``max_items - 1`` of the oldest and sends one digest listing them all. Those jobs stay in the
queue and end as "delivered in digest …" when a worker reaches them. The claim is recorded in
Redis before anything is sent, so a digest whose worker dies is sent again by the same job's
retry, with the same lines: no order is dropped, every one appears alone or in a digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from bridge.notification import Notification

# Atomic: take self out of the backlog, then (if the backlog is still too long) the oldest others.
# Returns {"owner", ids-json} (self sends a digest of these), {"taken", owner-id} (self is in
# another job's digest) or {"alone"}.
_CLAIM = """
local mine = redis.call('GET', KEYS[2])
if mine then return {'owner', mine} end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  local owner = redis.call('GET', ARGV[5] .. ARGV[1])
  if owner then return {'taken', owner} end
  return {'alone'}
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return {'alone'} end
local popped = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
redis.call('ZREM', KEYS[1], unpack(popped))
for _, id in ipairs(popped) do redis.call('SET', ARGV[5] .. id, ARGV[1], 'EX', ARGV[4]) end
local ids = cjson.encode(popped)
redis.call('SET', KEYS[2], ids, 'EX', ARGV[4])
return {'owner', ids}
"""


@dataclass(frozen=True)
class Claim:
    members: tuple[str, ...] = ()  # other jobs this one sends a digest for
    owner: str = ""  # the job whose digest this one is in


class Backlog:
    def __init__(self, connection: redis.Redis, namespace: str, ttl: int):
        """``ttl``: seconds claims are kept: as long as a dead-lettered digest may be retried."""
        self.connection = connection
        self.ttl = ttl
        self._prefix = f"pumble-bridge:{namespace}:"
        self._claim = connection.register_script(_CLAIM)

    def key(self, notification: Notification) -> str:
        """The backlog of the notification's route, "" for one that is never in a digest. The
        queue adds each new job of it (scored by ``received_at``) as it enqueues it."""
        if not _digestible(notification):
            return ""
        parts = (notification.account, notification.channel, notification.route)
        return (self._prefix + "backlog:"
                + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32])

    def taken_by(self, notification: Notification, job_id: str) -> str:
        """The job whose digest took this one in, or "" (a cheap look, before any slot is
        taken: a job in a digest needs none)."""
        if not _digestible(notification):
            return ""
        owner = self.connection.get(self._prefix + "in-digest:" + job_id)
        return owner.decode() if owner else ""

    def claim(self, notification: Notification, job_id: str, threshold: int,
              max_items: int) -> Claim:
        """Take this job out of its backlog and, if at least ``threshold`` others wait, up to
        ``max_items - 1`` of them with it. Asked again by the same job, answers the same."""
        if not _digestible(notification):
            return Claim()
        answer = self._claim(keys=[self.key(notification), self._prefix + "digest:" + job_id],
                             args=[job_id, threshold, max_items - 1, self.ttl,
                                   self._prefix + "in-digest:"])
        kind = answer[0].decode()
        if kind == "owner":
            return Claim(members=tuple(json.loads(answer[1])))
        if kind == "taken":
            return Claim(owner=answer[1].decode())
        return Claim()


def _digestible(notification: Notification) -> bool:
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
