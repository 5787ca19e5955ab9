"""Put notifications on the RQ queue durably, once each. The only module that knows RQ's keys.

A notification's job id is derived from (queue, source, delivery id, route), and jobs are
enqueued with ``unique=True``: a shop re-delivering the same webhook cannot make a second job while
the first exists (rq-notes §3; a plain ``job_id=`` would run it twice).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from bridge.config import DeliverySettings
from bridge.digest import Backlog
from bridge.notification import Notification
from bridge.threads import ThreadRoots

DELIVER = "bridge.delivery.deliver"
RESULT_TTL = 24 * 3600  # a delivered job is kept a day: the window in which re-deliveries dedupe
FAILURE_TTL = 30 * 24 * 3600  # dead letters stay a month for inspection and retry
# The job's own failures are decided by bridge.delivery; this net only catches a worker that
# died mid-job (SIGKILL, lost machine) or a bug: the job is run again this many times. The first
# time at once: the job was already given up for dead, and a dead worker's scheduler lock would
# hold a scheduled run back for another minute.
CRASH_RETRIES = Retry(max=3, interval=[0, 30, 120])


# The worker rides out a Redis restart of about a minute mid-job instead of dying with the job
# half done (rq-notes §7); the receiver gives up fast so the shop gets its 503 and retries.
PATIENT: dict[str, Any] = {
    "retry": RedisRetry(ExponentialWithJitterBackoff(cap=2, base=0.1), 60),
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    "health_check_interval": 30,
}
PROMPT: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "retry": RedisRetry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 2),
}
SENTINEL_SCHEME = "redis+sentinel://"


def connect(url: str, *, patient: bool = False) -> redis.Redis:
    """A Redis client for ``redis://``, ``rediss://``, ``unix://`` or, for a Redis run under
    Sentinel, ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]``."""
    options = PATIENT if patient else PROMPT
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_master(url, options)
    return redis.Redis.from_url(url, **options)


def _sentinel_master(url: str, options: dict[str, Any]) -> redis.Redis:
    """The master Sentinel names for SERVICE; the client follows it through a failover. The
    password, if any, is the master's (and the sentinels', when they have one)."""
    from redis.sentinel import Sentinel

    location, _, path = url.removeprefix(SENTINEL_SCHEME).partition("/")
    credentials, _, hosts = location.rpartition("@")
    password = (unquote(credentials.partition(":")[2]) or None) if credentials else None
    service, _, db = path.partition("/")
    try:
        sentinels = [(host, int(port)) for host, _, port in
                     (entry.rpartition(":") for entry in hosts.split(","))]
    except ValueError:
        raise ValueError(f"{SENTINEL_SCHEME}: expected HOST:PORT[,HOST:PORT…]/SERVICE[/DB], "
                         f"got {hosts!r}") from None
    if not service or not sentinels:
        raise ValueError(f"{SENTINEL_SCHEME}: expected HOST:PORT[,HOST:PORT…]/SERVICE[/DB]")
    sentinel = Sentinel(sentinels, sentinel_kwargs={"password": password, "socket_timeout": 2},
                        password=password, **options)
    return sentinel.master_for(service, db=int(db or 0))


def job_id(queue: str, notification: Notification) -> str:
    # rq accepts only [A-Za-z0-9_-] in ids: hash the external ids. Job ids are global in Redis,
    # so the queue name is part of it: bridges sharing a Redis never dedupe each other's events.
    key = "\0".join((queue, notification.source, notification.event_id, notification.route))
    return "n-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _event_digest(source: str, event_id: str) -> str:
    return hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:32]


class NotificationQueue:
    def __init__(self, connection: redis.Redis, name: str,
                 delivery: DeliverySettings | None = None):
        self.rq = Queue(name, connection=connection, serializer=JSONSerializer)
        self.delivery = delivery or DeliverySettings()
        self.backlog = Backlog(connection, name, ttl=FAILURE_TTL)
        self.roots = ThreadRoots(connection, name, ttl=FAILURE_TTL)
        self._seen_prefix = f"pumble-bridge:{name}:seen:"
        self._event_prefix = f"pumble-bridge:{name}:event:"

    def _seen_key(self, source: str, event_id: str) -> str:
        return self._seen_prefix + _event_digest(source, event_id)

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
        new_id = job_id(self.rq.name, notification)
        try:
            self.rq.enqueue(
                DELIVER,
                notification.to_payload(),
                job_id=new_id,
                unique=True,
                description="deliver",  # the default would copy the message text into logs
                job_timeout=self.delivery.job_timeout,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                retry=CRASH_RETRIES,
            )
        except DuplicateJobError:
            return False
        if notification.starts_thread:
            self.roots.expect(notification, ttl=self.delivery.max_age)
        self.backlog.add(notification, new_id)
        return True

    # -- the original events, for dead letters ---------------------------------------------------

    def _event_key(self, source: str, event_id: str) -> str:
        return self._event_prefix + _event_digest(source, event_id)

    def store_event(self, source: str, event_id: str, event_type: str,
                    headers: dict[str, str], body: bytes) -> None:
        """Keep the webhook as received (``headers`` without secrets) while its notifications
        may still fail; a dead letter keeps it for as long as itself (``keep_event``)."""
        record = {"source": source, "event_id": event_id, "type": event_type,
                  "headers": headers, "body": body.decode("utf-8", "replace")}
        self.rq.connection.set(self._event_key(source, event_id), json.dumps(record),
                               ex=self.delivery.max_age + 3600)

    def keep_event(self, source: str, event_id: str) -> None:
        self.rq.connection.expire(self._event_key(source, event_id), FAILURE_TTL)

    def load_event(self, source: str, event_id: str) -> dict[str, Any] | None:
        value = self.rq.connection.get(self._event_key(source, event_id))
        return json.loads(value) if value else None
