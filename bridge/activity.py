"""The recent webhooks and what became of each: the admin page's first table.

The receiver records every event (a capped list in Redis, newest first) with the jobs it
enqueued, in the same step as it enqueues them (``NotificationQueue.accept``); reading it joins
each job's state from rq (queued, scheduled for a retry, sent with Pumble's message id, in a
digest, dead-lettered with the reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from rq.job import Job

from bridge.notification import Notification
from bridge.queue import ListEntry, NotificationQueue, job_id

KEEP = 500  # events remembered


@dataclass(frozen=True)
class Delivery:
    route: str
    channel: str
    job_id: str
    state: str  # queued, started, scheduled, finished, failed, … (rq's), or "gone"
    message_id: str = ""
    in_digest_of: str = ""
    error: str = ""


@dataclass(frozen=True)
class EventActivity:
    event_id: str
    source: str
    type: str
    received_at: float
    duplicate: bool
    deliveries: list[Delivery] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # routes whose template failed


class Activity:
    def __init__(self, queue: NotificationQueue, keep: int = KEEP):
        self.queue = queue
        self.keep = keep
        self._key = f"pumble-bridge:{queue.rq.name}:activity"

    @property
    def connection(self) -> redis.Redis:
        return self.queue.rq.connection

    def entry(self, *, event_id: str, source: str, event_type: str, received_at: float,
              notifications: list[Notification], failures: list[str],
              duplicate: bool = False) -> ListEntry:
        """The event's line, for the queue to push as it accepts the event."""
        entry = {
            "event_id": event_id, "source": source, "type": event_type,
            "received_at": received_at, "duplicate": duplicate, "failures": failures,
            "notifications": [{"route": n.route, "channel": n.channel,
                               "job_id": job_id(self.queue.rq.name, n)} for n in notifications],
        }
        return ListEntry(self._key, orjson.dumps(entry), self.keep)

    def record(self, **event: Any) -> None:
        """Push an event's line now (a re-delivery's, which the queue did not accept)."""
        line = self.entry(**event)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.lpush(line.key, line.entry)
            pipe.ltrim(line.key, 0, line.keep - 1)
            pipe.execute()

    def recent(self, limit: int = 50) -> list[EventActivity]:
        entries = [json.loads(raw) for raw in self.connection.lrange(self._key, 0, limit - 1)]
        ids = [n["job_id"] for entry in entries for n in entry["notifications"]]
        jobs = dict(zip(ids, Job.fetch_many(ids, connection=self.connection,
                                            serializer=self.queue.rq.serializer), strict=True))
        return [EventActivity(
            event_id=entry["event_id"], source=entry["source"], type=entry["type"],
            received_at=entry["received_at"], duplicate=entry["duplicate"],
            failures=entry["failures"],
            deliveries=[_delivery(n, jobs.get(n["job_id"])) for n in entry["notifications"]],
        ) for entry in entries]


def _delivery(notification: dict[str, Any], job: Job | None) -> Delivery:
    if job is None:  # expired (a day after sending) or purged
        return Delivery(notification["route"], notification["channel"], notification["job_id"],
                        "gone")
    state = job.get_status(refresh=False)
    state = getattr(state, "value", state) or "gone"
    result = job.return_value() if state == "finished" else None
    result = result if isinstance(result, dict) else {}
    return Delivery(
        route=notification["route"], channel=notification["channel"], job_id=job.id,
        state=state,
        message_id=result.get("message_id", ""),
        in_digest_of=result.get("in_digest_of", ""),
        error=job.meta.get("dead_reason") or job.meta.get("last_error") or "",
    )
