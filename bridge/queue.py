"""Put notifications on the RQ queue durably, once each.

A notification's job id is derived from (queue, source, delivery id, route), and a job is written
only if none with its id exists: a shop re-delivering the same webhook cannot make a second job
while the first exists (a plain ``job_id=`` would run it twice).

A webhook is accepted in one step (``accept``): one Lua script (bridge.store.accept) checks
its delivery id against the dedupe window, keeps the webhook, writes each notification's job
(the hash fields rq's Job makes; the same check-and-write as rq's ``unique=True`` enqueue) with
its thread root and digest backlog entries, marks the delivery seen and records it for the
admin page. One round trip instead of eight, and atomic: a crash leaves all of it or none, so a
platform's retry never finds a seen marker without its jobs. When the Redis has replicas,
``accept`` returns only once the write reached them (``redis.min_replicas``): a failover then
loses nothing acknowledged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
import redis
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bridge.config import DeliverySettings, RedisSettings
from bridge.digest import Backlog
from bridge.notification import Notification
from bridge.retry import (
    CRASH_RETRIES,
    REDIS_PATIENT,
    REDIS_PATIENT_RETRIES,
    REDIS_PROMPT,
    REDIS_PROMPT_RETRIES,
)
from bridge.store import scripts
from bridge.store.accept import Accept, ListEntry, NewJob, Tally, Webhook
from bridge.store.keys import Keys
from bridge.summaries_totals import CAPS as SUMMARY_CAPS
from bridge.threads import EXPECTED, ThreadRoots

DELIVER = "bridge.delivery.deliver"
RESULT_TTL = 24 * 3600  # a delivered job is kept a day: the window in which re-deliveries dedupe
FAILURE_TTL = 30 * 24 * 3600  # dead letters stay a month for inspection and retry


# The worker rides out a Redis restart of about a minute mid-job instead of dying with the job
# half done; the receiver gives up fast so the shop gets its 503 and retries.
# Both connect with a timeout: a master whose machine is gone answers nothing, and the next try
# asks Sentinel again.
PATIENT: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "retry": REDIS_PATIENT.redis_retry(REDIS_PATIENT_RETRIES),
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    "health_check_interval": 30,
}
PROMPT: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "retry": REDIS_PROMPT.redis_retry(REDIS_PROMPT_RETRIES),
}
SENTINEL_SCHEME = "redis+sentinel://"


def connect(url: str, *, patient: bool = False) -> redis.Redis:
    """A Redis client for ``redis://``, ``rediss://``, ``unix://`` or, for a Redis run under
    Sentinel, ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]``."""
    options = PATIENT if patient else PROMPT
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_master(url, options)
    return redis.Redis.from_url(url, **options)


class _FollowingConnection(SentinelManagedConnection):
    """A connection that asks Sentinel where the master is each time it connects again.
    redis-py's own reconnects a dropped connection (in ``send_packed_command``) straight to the
    address it had, bypassing its Sentinel-aware ``connect``: a client that outlives a failover
    (a receiver thread's, the worker's retrying a command) kept knocking at the old master, and
    wrote to it once it was back, until Sentinel demoted it and its copy was wiped."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            self.connect()
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
        # Closed on an interrupted read, as a plain connection is (redis-py's Sentinel one is
        # not): else the late reply (of the BLMOVE a SIGTERM broke off, say) is read as the
        # next command's, and the worker's shutdown hung behind it.
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


def _sentinel_master(url: str, options: dict[str, Any]) -> redis.Redis:
    """The master Sentinel names for SERVICE; every connection follows it through a failover.
    The password, if any, is the master's (and the sentinels', when they have one)."""
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
    return sentinel.master_for(service, db=int(db or 0), connection_class=_FollowingConnection)


def job_id(queue: str, notification: Notification) -> str:
    # rq accepts only [A-Za-z0-9_-] in ids: hash the external ids. Job ids are global in Redis,
    # so the queue name is part of it: bridges sharing a Redis never dedupe each other's events.
    key = "\0".join((queue, notification.source, notification.event_id, notification.route))
    return "n-" + hashlib.sha256(key.encode()).hexdigest()[:32]


PROBE_TTL_MS = 60_000


class NotReplicated(redis.RedisError):
    """A write did not reach ``redis.min_replicas`` replicas within
    ``redis.replica_timeout_ms``: it may be lost in a failover, so it is not acknowledged."""


@dataclass(frozen=True)
class Received:
    """A webhook as accepted: kept while its notifications may still fail (a dead letter shows
    it, and a failed template is rendered again from it)."""

    source: str
    event_id: str
    event_type: str
    headers: dict[str, str]  # without secrets (Source.keepable_headers)
    body: bytes
    dead_letters: bool = False  # some of its notifications are dead letters already
    received_at: float = 0.0  # recorded as when its source was last heard from (0: not)


@dataclass(frozen=True)
class Accepted:
    duplicate: bool  # the delivery id was seen within the dedupe window: nothing was written
    written: tuple[bool, ...] = ()  # per notification: False when its job was already there


class NotificationQueue:
    def __init__(self, connection: redis.Redis, name: str,
                 delivery: DeliverySettings | None = None,
                 replication: RedisSettings | None = None):
        self.rq = Queue(name, connection=connection, serializer=JSONSerializer)
        self.delivery = delivery or DeliverySettings()
        self.replication = replication or RedisSettings()
        self.backlog = Backlog(connection, name, ttl=FAILURE_TTL)
        self.roots = ThreadRoots(connection, name, ttl=FAILURE_TTL)
        self.keys = Keys(name)
        template = Job.create(DELIVER, args=[{}], connection=connection,
                              serializer=self.rq.serializer, id="n-template",
                              status=JobStatus.QUEUED, origin=name,
                              description="deliver",  # not the text: it would be logged
                              timeout=self.delivery.job_timeout, result_ttl=RESULT_TTL,
                              failure_ttl=FAILURE_TTL, retry=CRASH_RETRIES)
        self._accept = Accept(self.rq, template, EXPECTED)
        self._probe = connection.register_script(scripts.PROBE)
        self._count_replicas = self.replication.min_replicas is None
        self._per_thread = threading.local()

    def seen(self, source: str, event_id: str) -> bool:
        """True when this delivery was accepted before, within the dedupe window."""
        return bool(self.rq.connection.exists(self.keys.seen(source, event_id)))

    def accept(self, notifications: Sequence[Notification], *, received: Received | None = None,
               dedupe_window: int = 0, activity: ListEntry | None = None,
               tallies: Sequence[Tally] = ()) -> Accepted:
        """Store a webhook's notifications as jobs, in one atomic step with what comes with
        them: with ``received``, the webhook itself (while any of its notifications may fail)
        and, with a ``dedupe_window`` (seconds), the check that its delivery id is new and the
        marker that makes a re-delivery within the window a duplicate; the ``activity`` line;
        what the event adds to its summaries' totals (``tallies``, bridge.summaries_totals).
        Returns once the write reached ``redis.min_replicas`` replicas. Raises redis.RedisError
        when Redis cannot be written (then nothing was), and NotReplicated (a RedisError too)
        when the write did not reach them in time (then a retry of the delivery is a duplicate,
        acknowledged once they have it)."""
        webhook = None
        if received is not None:
            record, record_ttl = b"", 0
            if notifications or received.dead_letters:  # else nothing may need it again
                record = orjson.dumps({"source": received.source,
                                       "event_id": received.event_id,
                                       "type": received.event_type, "headers": received.headers,
                                       "body": received.body.decode("utf-8", "replace")})
                # A dead letter keeps its webhook as long as itself (keep_event).
                record_ttl = (FAILURE_TTL if received.dead_letters
                              else self.delivery.max_age + 3600)
            webhook = Webhook(self.keys.seen(received.source, received.event_id),
                              self.keys.event(received.source, received.event_id),
                              dedupe_window, record, record_ttl,
                              self.keys.heard_from(received.source) if received.received_at
                              else "", received.received_at)
        jobs = [NewJob(job_id(self.rq.name, notification), (DELIVER, (notification.to_payload(),)),
                       line=self.backlog.key(notification),
                       received_at=notification.received_at,
                       root=self.roots.key(notification) if notification.starts_thread else "",
                       root_ttl=self.delivery.max_age)
                for notification in notifications]
        client = self._thread_client()
        answer = self._accept.run(client, webhook, jobs, activity, self._count_replicas,
                                  tallies, SUMMARY_CAPS)
        self._replicate(client, answer[1])
        if not answer[0]:
            return Accepted(duplicate=True)
        return Accepted(duplicate=False, written=tuple(bool(flag) for flag in answer[2:]))

    def writable(self) -> None:
        """Raise redis.RedisError when a webhook could not be accepted now: Redis out of reach,
        read-only (a replica, a master Sentinel demoted), full or loading, or a write not
        reaching ``redis.min_replicas`` replicas in time. Tries a real write, as ``accept``."""
        client = self._thread_client()
        online = self._probe(keys=[self.keys.writable()],
                             args=[PROBE_TTL_MS, "1" if self._count_replicas else ""],
                             client=client)
        self._replicate(client, online)

    def _replicate(self, client: redis.Redis, online: int) -> None:
        """Wait (WAIT) until the client's last write reached ``redis.min_replicas`` replicas,
        by default one if the master has any ``online``; NotReplicated after
        ``redis.replica_timeout_ms``. Sent once, never retried: WAIT counts the writes of its
        own connection, and one opened again has made none."""
        needed = self.replication.min_replicas
        if needed is None:
            needed = min(online, 1)
        if not needed:
            return
        connection = client.connection
        if not connection.is_connected:
            raise NotReplicated("the connection that wrote is gone")
        timeout = self.replication.replica_timeout_ms
        connection.send_command("WAIT", needed, timeout, check_health=False)
        reached = connection.read_response()
        if reached < needed:
            raise NotReplicated(f"the write reached {reached} of {needed} replica(s) "
                                f"within {timeout} ms")

    def _thread_client(self) -> redis.Redis:
        """This thread's own client for ``accept``, holding one of the pool's connections for
        the thread's life: the pool's checkout of a connection for each command (a lock, and a
        poll for stale data) was a sixth of the receiver's Redis cost. The connection goes back
        to the pool when the thread ends; a failed command disconnects it, so no reply is ever
        read stale."""
        client = getattr(self._per_thread, "client", None)
        if client is None:
            client = self._per_thread.client = redis.Redis(
                connection_pool=self.rq.connection.connection_pool, single_connection_client=True)
        return client

    # -- the original events, for dead letters ---------------------------------------------------

    def keep_event(self, source: str, event_id: str) -> None:
        self.rq.connection.expire(self.keys.event(source, event_id), FAILURE_TTL)

    def load_event(self, source: str, event_id: str) -> dict[str, Any] | None:
        value = self.rq.connection.get(self.keys.event(source, event_id))
        return json.loads(value) if value else None


def readable_body(body: str) -> str:
    """A kept webhook's body for a person: JSON indented, anything else as received."""
    with contextlib.suppress(ValueError):
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    return body
