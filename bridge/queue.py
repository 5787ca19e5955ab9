"""Put notifications on the RQ queue durably, once each. The only module that knows RQ's keys.

A notification's job id is derived from (queue, source, delivery id, route), and jobs are
enqueued with ``unique=True``: a shop re-delivering the same webhook cannot make a second job while
the first exists (rq-notes §3; a plain ``job_id=`` would run it twice).
"""

from __future__ import annotations

import hashlib

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from bridge.notification import Notification

DELIVER = "bridge.delivery.deliver"
JOB_TIMEOUT = 30  # seconds; well above the client's worst case (3 s connect + 10 s read)
RESULT_TTL = 24 * 3600  # a delivered job is kept a day: the window in which re-deliveries dedupe
FAILURE_TTL = 30 * 24 * 3600  # failed jobs stay a month for inspection and retry


def connect(url: str, *, patient: bool = False) -> redis.Redis:
    """A Redis client. ``patient`` (the worker) rides out a Redis restart of about a minute
    mid-job instead of dying with the job half done (rq-notes §7); the receiver gives up fast
    so the shop gets its 503 and retries."""
    if patient:
        return redis.Redis.from_url(
            url,
            retry=Retry(ExponentialWithJitterBackoff(cap=2, base=0.1), 60),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 2),
    )


def job_id(queue: str, notification: Notification) -> str:
    # rq accepts only [A-Za-z0-9_-] in ids: hash the external ids. Job ids are global in Redis,
    # so the queue name is part of it: bridges sharing a Redis never dedupe each other's events.
    key = "\0".join((queue, notification.source, notification.event_id, notification.route))
    return "n-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class NotificationQueue:
    def __init__(self, connection: redis.Redis, name: str):
        self.rq = Queue(name, connection=connection, serializer=JSONSerializer)
        self._seen_prefix = f"pumble-bridge:{name}:seen:"

    def _seen_key(self, source: str, event_id: str) -> str:
        digest = hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:32]
        return self._seen_prefix + digest

    def seen(self, source: str, event_id: str) -> bool:
        """True when this delivery was accepted before, within the dedupe window."""
        return bool(self.rq.connection.exists(self._seen_key(source, event_id)))

    def mark_seen(self, source: str, event_id: str, window: int) -> None:
        """Remember an accepted delivery. Written only after its jobs are stored, so a failure
        in between makes the platform's retry enqueue again (the jobs' unique ids dedupe it),
        never lose it."""
        if window > 0:
            self.rq.connection.set(self._seen_key(source, event_id), 1, ex=window)

    def enqueue(self, notification: Notification) -> bool:
        """Store the job in Redis; False when the same notification is already there.
        Raises redis.RedisError when Redis cannot be written."""
        try:
            self.rq.enqueue(
                DELIVER,
                notification.to_payload(),
                job_id=job_id(self.rq.name, notification),
                unique=True,
                description="deliver",  # the default would copy the message text into logs
                job_timeout=JOB_TIMEOUT,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
            )
        except DuplicateJobError:
            return False
        return True
