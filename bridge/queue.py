"""Put notifications on the RQ queue durably, once each. The only module that knows RQ's keys.

A notification's job id is derived from (queue, source, delivery id, route), and a job is written
only if none with its id exists: a shop re-delivering the same webhook cannot make a second job
while the first exists (a plain ``job_id=`` would run it twice).

A webhook is accepted in one step (``accept``): one Lua script checks its delivery id against
the dedupe window, keeps the webhook, writes each notification's job (the hash fields rq's Job
makes; the same check-and-write as rq's ``unique=True`` enqueue) with its thread root and
digest backlog entries, marks the delivery seen and records it for the admin page. One round
trip instead of eight, and atomic: a crash leaves all of it or none, so a platform's retry never
finds a seen marker without its jobs. When the Redis has replicas, ``accept`` returns only once
the write reached them (``redis.min_replicas``): a failover then loses nothing acknowledged.
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
from redis.exceptions import NoScriptError
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

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


def _event_digest(source: str, event_id: str) -> str:
    return hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:32]


# Replicas that are online (not still syncing): ROLE is not allowed in scripts, INFO is.
_ONLINE_REPLICAS = """
local function online_replicas(wanted)
  if wanted == '' then return -1 end
  local _, online = string.gsub(redis.call('INFO', 'replication'), 'state=online', '')
  return online
end
"""
# Makes a write for /readyz to try. KEYS: 1 the probe key. ARGV: 1 its ttl (ms), 2 as the
# accept script's 8. Returns the online replicas (-1: not counted).
_PROBE = _ONLINE_REPLICAS + """
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return online_replicas(ARGV[2])
"""
PROBE_TTL_MS = 60_000


class NotReplicated(redis.RedisError):
    """A write did not reach ``redis.min_replicas`` replicas within
    ``redis.replica_timeout_ms``: it may be lost in a failover, so it is not acknowledged."""


# KEYS: 1 seen marker, 2 stored webhook, 3 the rq queue, 4 rq's set of queues, 5 the activity
# list; then per notification: its job, its thread root ('' for none), its backlog ('' for none).
# ARGV: 1 dedupe window (0: none), 2 webhook record ('' : none), 3 its ttl, 4 activity entry
# ('' : none), 5 activity length, 6 notifications, 7 the root's "expected" marker, 8 '1' to
# count the online replicas ('' : don't); then per notification: job id, root ttl, backlog
# score, number of job fields, fields and values.
# Returns {0, replicas} for a delivery seen before, else {1, replicas, then 1 (written) or 0
# (job already there) per notification}; replicas is -1 when not counted.
_ACCEPT = _ONLINE_REPLICAS + """
local window = tonumber(ARGV[1])
if window > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  -- Written again as it is: a write to WAIT for, which reaches a replica only after the
  -- first accept's, so a re-delivery is acknowledged only once those are replicated too.
  redis.call('SET', KEYS[1], 1, 'KEEPTTL')
  return {0, online_replicas(ARGV[8])}
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
local written = {1, online_replicas(ARGV[8])}
local at = 9
for i = 0, tonumber(ARGV[6]) - 1 do
  local job, root, backlog = KEYS[6 + 3 * i], KEYS[7 + 3 * i], KEYS[8 + 3 * i]
  local id, root_ttl, score = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local first = at + 4
  at = first + 2 * tonumber(ARGV[at + 3])
  if redis.call('EXISTS', job) == 1 then
    written[#written + 1] = 0
  else
    redis.call('HSET', job, unpack(ARGV, first, at - 1))
    redis.call('RPUSH', KEYS[3], id)
    redis.call('SADD', KEYS[4], KEYS[3])
    if root ~= '' then redis.call('SET', root, ARGV[7], 'EX', root_ttl, 'NX') end
    if backlog ~= '' then redis.call('ZADD', backlog, score, id) end
    written[#written + 1] = 1
  end
end
if window > 0 then redis.call('SET', KEYS[1], 1, 'EX', window) end
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
return written
"""


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


@dataclass(frozen=True)
class ListEntry:
    """A line for a capped Redis list (the activity record), pushed by ``accept`` when the
    delivery is not one seen before."""

    key: str
    entry: bytes  # JSON
    keep: int


@dataclass(frozen=True)
class Accepted:
    duplicate: bool  # the delivery id was seen within the dedupe window: nothing was written
    written: tuple[bool, ...] = ()  # per notification: False when its job was already there


PER_JOB = ("created_at", "enqueued_at", "data")


def _text(value: Any) -> Any:
    return value if isinstance(value, bytes | str) else str(value)


class NotificationQueue:
    def __init__(self, connection: redis.Redis, name: str,
                 delivery: DeliverySettings | None = None,
                 replication: RedisSettings | None = None):
        self.rq = Queue(name, connection=connection, serializer=JSONSerializer)
        self.delivery = delivery or DeliverySettings()
        self.replication = replication or RedisSettings()
        self.backlog = Backlog(connection, name, ttl=FAILURE_TTL)
        self.roots = ThreadRoots(connection, name, ttl=FAILURE_TTL)
        self._seen_prefix = f"pumble-bridge:{name}:seen:"
        self._event_prefix = f"pumble-bridge:{name}:event:"
        self._accept = connection.register_script(_ACCEPT)
        self._probe = connection.register_script(_PROBE)
        self._probe_key = f"pumble-bridge:{name}:writable"
        self._count_replicas = "1" if self.replication.min_replicas is None else ""
        self._job_template: list[Any] | None = None
        self._per_thread = threading.local()

    def _seen_key(self, source: str, event_id: str) -> str:
        return self._seen_prefix + _event_digest(source, event_id)

    def seen(self, source: str, event_id: str) -> bool:
        """True when this delivery was accepted before, within the dedupe window."""
        return bool(self.rq.connection.exists(self._seen_key(source, event_id)))

    def accept(self, notifications: Sequence[Notification], *, received: Received | None = None,
               dedupe_window: int = 0, activity: ListEntry | None = None) -> Accepted:
        """Store a webhook's notifications as jobs, in one atomic step with what comes with
        them: with ``received``, the webhook itself (while any of its notifications may fail)
        and, with a ``dedupe_window`` (seconds), the check that its delivery id is new and the
        marker that makes a re-delivery within the window a duplicate; the ``activity`` line.
        Returns once the write reached ``redis.min_replicas`` replicas. Raises redis.RedisError
        when Redis cannot be written (then nothing was), and NotReplicated (a RedisError too)
        when the write did not reach them in time (then a retry of the delivery is a duplicate,
        acknowledged once they have it)."""
        seen_key = event_key = record = ""
        record_ttl = window = 0
        if received is not None:
            seen_key = self._seen_key(received.source, received.event_id)
            event_key = self._event_key(received.source, received.event_id)
            window = dedupe_window
            if notifications or received.dead_letters:  # else nothing may need it again
                record = orjson.dumps({"source": received.source,
                                       "event_id": received.event_id,
                                       "type": received.event_type, "headers": received.headers,
                                       "body": received.body.decode("utf-8", "replace")})
                # A dead letter keeps its webhook as long as itself (keep_event).
                record_ttl = (FAILURE_TTL if received.dead_letters
                              else self.delivery.max_age + 3600)
        keys: list[str] = [seen_key, event_key, self.rq.key, self.rq.redis_queues_keys,
                           activity.key if activity else ""]
        args: list[Any] = [window, record, record_ttl, activity.entry if activity else "",
                           activity.keep if activity else 0, len(notifications), EXPECTED,
                           self._count_replicas]
        for notification in notifications:
            new_id = job_id(self.rq.name, notification)
            root = self.roots.key(notification) if notification.starts_thread else ""
            keys += [self.rq.job_class.key_for(new_id), root,
                     self.backlog.key(notification)]
            fields = self._job_fields(new_id, notification)
            args += [new_id, self.delivery.max_age, notification.received_at, len(fields) // 2,
                     *fields]
        client = self._thread_client()
        try:  # not through the Script object: it copies every argument twice, for nothing here
            answer = client.evalsha(self._accept.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted (or other) Redis: load it, once
            client.script_load(_ACCEPT)
            answer = client.evalsha(self._accept.sha, len(keys), *keys, *args)
        self._replicate(client, answer[1])
        if not answer[0]:
            return Accepted(duplicate=True)
        return Accepted(duplicate=False, written=tuple(bool(flag) for flag in answer[2:]))

    def writable(self) -> None:
        """Raise redis.RedisError when a webhook could not be accepted now: Redis out of reach,
        read-only (a replica, a master Sentinel demoted), full or loading, or a write not
        reaching ``redis.min_replicas`` replicas in time. Tries a real write, as ``accept``."""
        client = self._thread_client()
        online = self._probe(keys=[self._probe_key], args=[PROBE_TTL_MS, self._count_replicas],
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

    def enqueue(self, notification: Notification) -> bool:
        """Store one notification's job; False when the same notification is already there.
        Raises redis.RedisError when Redis cannot be written."""
        return self.accept([notification]).written[0]

    def _job_fields(self, new_id: str, notification: Notification) -> list[Any]:
        """The job's hash as rq's own unique enqueue writes it (rq.scripts): the fields that
        are the same for every job come from a Job rq made; the three that are not (the two
        times and the call) are made here the way rq makes them, except that the call is not
        zlib-compressed (rq reads either; compressing ~800 bytes saved little memory for ~10 µs
        a job). rq is pinned to a minor version, and tests/test_queue.py compares the two
        field by field."""
        if self._job_template is None:
            template = Job.create(DELIVER, args=[{}], connection=self.rq.connection,
                                  serializer=self.rq.serializer, id="n-template",
                                  status=JobStatus.QUEUED, origin=self.rq.name,
                                  description="deliver",  # not the text: it would be logged
                                  timeout=self.delivery.job_timeout, result_ttl=RESULT_TTL,
                                  failure_ttl=FAILURE_TTL, retry=CRASH_RETRIES)
            self._job_template = [field for name, value in template.to_dict().items()
                                  if value is not None and name not in PER_JOB
                                  for field in (name, _text(value))]
        at = utcformat(now())
        call = orjson.dumps((DELIVER, None, (notification.to_payload(),), {}))
        return [*self._job_template, "created_at", at, "enqueued_at", at, "data", call]

    # -- the original events, for dead letters ---------------------------------------------------

    def _event_key(self, source: str, event_id: str) -> str:
        return self._event_prefix + _event_digest(source, event_id)

    def keep_event(self, source: str, event_id: str) -> None:
        self.rq.connection.expire(self._event_key(source, event_id), FAILURE_TTL)

    def load_event(self, source: str, event_id: str) -> dict[str, Any] | None:
        value = self.rq.connection.get(self._event_key(source, event_id))
        return json.loads(value) if value else None


def readable_body(body: str) -> str:
    """A kept webhook's body for a person: JSON indented, anything else as received."""
    with contextlib.suppress(ValueError):
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    return body
