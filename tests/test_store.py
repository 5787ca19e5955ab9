"""bridge.store: the key layout users' Redis already holds is still found, and the jobs the
accept writes by hand are, key by key and field by field, the ones rq's own enqueue writes."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import hiredis
import orjson
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcparse

from bridge.activity import Activity
from bridge.digest import Backlog
from bridge.notification import Notification
from bridge.queue import (
    CRASH_RETRIES,
    DELIVER,
    FAILURE_TTL,
    RESULT_TTL,
    NotificationQueue,
    Received,
    connect,
    job_id,
)
from bridge.ratelimit import RateLimiter
from bridge.redis_embedded import EmbeddedRedis
from bridge.store import accept, scripts
from bridge.store.accept import PER_JOB, ListEntry, Tally
from bridge.store.keys import Keys, rq_scheduler
from bridge.store.runs import Finisher, decode
from bridge.threads import Root, ThreadRoots
from bridge.worker import DeliveryWorker

# The digests of the parts below, as every release so far has written them.
EVENT = "90ca113f6b7ed866939893ba401f5a3d"  # shop, e-1
THREAD = "93d8811b1ed0d5cd635b3deaa76cfe04"  # default, orders, shop, order:1001
ROUTE_LINE = "0710759dd0ddae94d56037814f135a2d"  # default, orders, orders
THREAD_LINE = "0f1324fe873fda087d38ba1c7ece5c28"  # thread, default, orders, shop, order:1001
ACCOUNT = "37a8eec1ce19687d132fe29051dca629"  # default


def order(route: str = "orders", **fields: Any) -> Notification:
    return Notification(**{"source": "shop", "event_id": "e-1", "event_type": "order.created",
                           "route": route, "channel": "orders", "text": "🛒 order #1001",
                           "received_at": time.time(), "thread_key": "order:1001",
                           "starts_thread": True, **fields})


def test_every_key_keeps_the_name_it_had():
    keys = Keys("q")
    assert [keys.seen("shop", "e-1"), keys.event("shop", "e-1"), keys.writable(),
            keys.activity(), keys.replays("shop", "e-1"),
            keys.thread_root("default", "orders", "shop", "order:1001"),
            keys.route_line("default", "orders", "orders"),
            keys.thread_line("default", "orders", "shop", "order:1001"),
            keys.digest_of("n-1"), keys.in_digest("n-1"), keys.in_digest_prefix(),
            keys.rate_limit("default", "messages"), keys.admin_sessions(),
            keys.admin_login_failures(), rq_scheduler("s-1")] == [
        f"pumble-bridge:q:seen:{EVENT}", f"pumble-bridge:q:event:{EVENT}",
        "pumble-bridge:q:writable", "pumble-bridge:q:activity",
        f"pumble-bridge:q:activity:replays:{EVENT}", f"pumble-bridge:q:thread:{THREAD}",
        f"pumble-bridge:q:backlog:{ROUTE_LINE}", f"pumble-bridge:q:backlog:{THREAD_LINE}",
        "pumble-bridge:q:digest:n-1", "pumble-bridge:q:in-digest:n-1",
        "pumble-bridge:q:in-digest:",
        f"pumble-bridge:q:ratelimit:{{{ACCOUNT}}}:messages", "pumble-bridge:q:admin:session:",
        "pumble-bridge:q:admin:login-failures:", "rq:scheduler:s-1"]


def test_state_an_earlier_release_wrote_is_found_after_an_upgrade(redis_url, queue_name,
                                                                  rq_queue):
    """Written by name, as an earlier release left it in Redis; read through the modules."""
    connection = redis.Redis.from_url(redis_url)
    prefix = f"pumble-bridge:{queue_name}:"
    first, reply = order(), order(route="paid", reply=True, starts_thread=False)
    connection.set(prefix + f"seen:{EVENT}", 1, ex=60)
    connection.set(prefix + f"event:{EVENT}", orjson.dumps({"source": "shop", "body": "{}"}),
                   ex=60)
    connection.set(prefix + f"thread:{THREAD}", "m-1 c-1", ex=60)
    connection.zadd(prefix + f"backlog:{ROUTE_LINE}", {"n-earlier": 1, "n-mine": 2})
    connection.zadd(prefix + f"backlog:{THREAD_LINE}", {"n-reply": 1})
    connection.set(prefix + "in-digest:n-taken", "n-owner", ex=60)
    connection.lpush(prefix + "activity", orjson.dumps({
        "event_id": "e-1", "source": "shop", "type": "order.created", "received_at": 1.0,
        "duplicate": False, "notifications": [], "terms": "e-1"}))
    connection.zadd(prefix + f"ratelimit:{{{ACCOUNT}}}:messages", {"slot": time.time() * 1e6})
    connection.set(prefix + f"activity:replays:{EVENT}", 4, ex=60)
    try:
        queue = NotificationQueue(connect(redis_url), queue_name)
        assert queue.seen("shop", "e-1") and queue.load_event("shop", "e-1")["body"] == "{}"
        roots = ThreadRoots(connection, queue_name, ttl=60)
        assert roots.get(first) == Root("m-1", "c-1")
        backlog = Backlog(connection, queue_name, ttl=60)
        assert backlog.ahead(first, "n-mine", limit=5) == (["n-earlier"], 0)
        assert backlog.ahead(reply, "n-other", limit=5) == (["n-reply"], 0)
        assert backlog.taken_by(first, "n-taken") == "n-owner"
        activity = Activity(queue)
        assert [line.event_id for line in activity.recent()] == ["e-1"]
        assert activity.next_replay("shop", "e-1") == 5
        limiter = RateLimiter(connection, queue_name)
        assert limiter.state("default")["messages"]["used"] == 1
    finally:
        connection.delete(*connection.keys(prefix + "*"))


def _snapshot(connection: redis.Redis) -> dict[bytes, Any]:
    """Every key of rq's (``rq:``) with its type, whether it expires, and its content."""
    found: dict[bytes, Any] = {}
    for key in connection.scan_iter(match="rq:*"):
        kind = connection.type(key).decode()
        content: Any = {"hash": connection.hgetall, "list": lambda k: connection.lrange(k, 0, -1),
                        "set": connection.smembers, "string": connection.get,
                        "zset": lambda k: connection.zrange(k, 0, -1)}[kind](key)
        found[key] = (kind, connection.ttl(key) > 0, content)
    return found


@pytest.fixture
def own_redis(tmp_path: Path) -> redis.Redis:
    """A Redis of the test's own: every rq key in it is this test's."""
    own = EmbeddedRedis(tmp_path)
    try:
        yield connect(own.start())
    finally:
        own.stop()


def test_the_accept_writes_what_rqs_own_enqueue_writes_key_by_key(own_redis, queue_name):
    """rq is pinned to a minor release (pyproject.toml): this fails the day one writes a job
    differently from the accept's hand-written records (bridge.store.accept)."""
    queue = NotificationQueue(own_redis, queue_name)
    notification = order()
    new_id = job_id(queue_name, notification)
    queue.rq.enqueue(DELIVER, notification.to_payload(), job_id=new_id, unique=True,
                     description="deliver", job_timeout=queue.delivery.job_timeout,
                     result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, retry=CRASH_RETRIES)
    theirs = _snapshot(own_redis)
    own_redis.flushall()
    assert queue.accept([notification]).written == (True,)
    ours = _snapshot(own_redis)

    assert theirs.keys() == ours.keys() == {f"rq:job:{new_id}".encode(),
                                            f"rq:queue:{queue_name}".encode(), b"rq:queues"}
    for key, (kind, expires, content) in theirs.items():
        assert ours[key][:2] == (kind, expires), key
        if kind != "hash":
            assert ours[key][2] == content, key
    their_job, our_job = theirs[f"rq:job:{new_id}".encode()][2], ours[
        f"rq:job:{new_id}".encode()][2]
    assert our_job.keys() == their_job.keys()
    per_job = {name.encode() for name in PER_JOB}
    assert {name: value for name, value in our_job.items() if name not in per_job} == {
        name: value for name, value in their_job.items() if name not in per_job}
    # Ours is not compressed (rq reads either: Job.restore falls back to the raw bytes).
    assert json.loads(our_job[b"data"]) == json.loads(zlib.decompress(their_job[b"data"]))
    for name in (b"created_at", b"enqueued_at"):
        assert abs(utcparse(our_job[name].decode()) - utcparse(their_job[name].decode())
                   ).total_seconds() < 5


def test_a_job_a_run_finishes_reads_as_one_rqs_worker_finished(own_redis, queue_name):
    """rq is pinned to a minor release: this fails the day its worker finishes a job otherwise
    than bridge.store.runs does for the jobs of a run (the fields rq reads back, the result,
    the registries, the expiry)."""
    queue = Queue(queue_name, connection=own_redis, serializer=JSONSerializer)
    answer = {"message_id": "m-1", "channel_id": "c-1"}

    def enqueue() -> Job:  # a job whose function returns ``answer``
        return queue.enqueue("json.loads", json.dumps(answer), job_id="j-1",
                             result_ttl=RESULT_TTL, meta={"attempts": 1})

    enqueue()
    # rq's SimpleWorker as the bridge runs it (its own takes a minute to stop: bridge.worker)
    DeliveryWorker([queue], connection=own_redis, serializer=JSONSerializer).work(burst=True)
    theirs = own_redis.hgetall("rq:job:j-1")
    their_expiry = own_redis.ttl("rq:job:j-1")
    own_redis.flushall()

    job, line = enqueue(), "line"
    own_redis.zadd(line, {job.id: 1})
    claimed = own_redis.eval(scripts.CLAIM_RUN, 3, line, queue.key,
                             queue.scheduled_job_registry.key, "head", 10, 60, "mark:", 50, 2, 100,
                             Job.redis_job_namespace_prefix)
    assert claimed[:2] == [1, b"j-1"]  # one waited behind "head"; taken
    job = Job.fetch("j-1", connection=own_redis, serializer=JSONSerializer)
    pipe = own_redis.pipeline(transaction=False)
    Finisher(queue, RESULT_TTL, "in-digest:").finish(pipe, job, answer, now(), line, "mark:j-1")
    pipe.execute()
    ours = own_redis.hgetall("rq:job:j-1")

    assert {k for k in theirs if theirs[k] != ours.get(k)} <= {
        b"started_at", b"ended_at", b"enqueued_at", b"created_at", b"last_heartbeat",
        b"worker_name"}  # times, and the worker a run's job never had
    assert abs(own_redis.ttl("rq:job:j-1") - their_expiry) <= 5
    read = Job.fetch("j-1", connection=own_redis, serializer=JSONSerializer)
    assert read.get_status() == JobStatus.FINISHED and read.return_value() == answer
    assert read.latest_result().type == Result.Type.SUCCESSFUL
    assert read.meta == {"attempts": 1} and read.started_at and read.ended_at
    assert queue.finished_job_registry.get_job_ids() == ["j-1"]
    assert queue.scheduled_job_registry.get_job_ids() == [] == queue.get_job_ids()
    assert own_redis.zrange(line, 0, -1) == [] and not own_redis.exists("mark:j-1")


def test_the_accept_sends_the_bytes_redis_py_would_send(redis_url, queue_name, monkeypatch):
    """The accept's EVALSHA is packed by hiredis in one call, not by redis-py argument by
    argument: what goes out is what redis-py would send for the same arguments (text in
    UTF-8, numbers, floats among them, as redis-py writes them)."""
    packed: list[tuple[Any, ...]] = []

    def pack_command(args: tuple[Any, ...]) -> bytes:
        packed.append(args)
        return hiredis.pack_command(args)

    monkeypatch.setattr(accept, "hiredis", type("Recording", (), {
        "pack_command": staticmethod(pack_command)}))
    queue = NotificationQueue(connect(redis_url), queue_name)
    received = Received("shop", "e-1", "order.created", {"x-shopify-topic": "orders/create"},
                        '{"note": "größer 🛒"}'.encode(), received_at=time.time())
    tally = Tally(f"{queue_name}:totals", f"{queue_name}:products",
                  (("orders", 1), ("cents:EUR", 12345)), (("Wool Sweater", 2),))
    answer = queue.accept([order(text="🛒 order #1001 für Jürgen")], received=received,
                          dedupe_window=60, tallies=[tally],
                          activity=ListEntry(f"{queue_name}:activity", b'{"id": "e-1"}', 10))
    assert answer.written == (True,)
    assert packed and any(isinstance(arg, float) for arg in packed[0])
    redis_py = queue.rq.connection.connection_pool.make_connection()  # packs; never connects
    for args in packed:
        assert hiredis.pack_command(args) == b"".join(redis_py.pack_command(*args))


def test_a_run_reads_a_job_as_rq_reads_it(own_redis, queue_name):
    """The two fields a run reads as it claims them (scripts.CLAIM_RUN, bridge.store.runs
    .decode), of a job the accept wrote and of one rq's enqueue wrote (compressed), decode as
    rq's own ``Job.fetch`` decodes them; a job gone is None."""
    queue = NotificationQueue(own_redis, queue_name)
    ours, theirs = order(event_id="e-1"), order(event_id="e-2")
    assert queue.accept([ours]).written == (True,)
    queue.rq.enqueue(DELIVER, theirs.to_payload(), job_id="theirs", meta={"attempts": 2})
    ids = [job_id(queue_name, ours), "theirs", "gone"]
    own_redis.zadd("line", {job_id_: n for n, job_id_ in enumerate(["head", *ids])})
    own_redis.rpush(queue.rq.key, "gone")
    behind, *answer = own_redis.eval(
        scripts.CLAIM_RUN, 3, "line", queue.rq.key, queue.rq.scheduled_job_registry.key, "head",
        10, 60, "mark:", 50, 2, 100, Job.redis_job_namespace_prefix)
    assert behind == len(ids)
    claimed = decode(own_redis, queue.rq.serializer, answer)
    assert [job_id_ for job_id_, _ in claimed] == ids
    assert claimed[2][1] is None
    for job_id_, (job, payload) in claimed[:2]:
        fetched = Job.fetch(job_id_, connection=own_redis, serializer=queue.rq.serializer)
        assert (job.id, job.meta, payload) == (fetched.id, fetched.meta, fetched.args[0])
    assert claimed[1][1][0].meta == {"attempts": 2}


def test_a_digests_lines_are_finished_as_rqs_worker_finishes_a_job(own_redis, queue_name):
    """bridge.store.runs.Finisher.finish_in_digest: the digest's own lines that wait (queued or
    parked) end finished, with their result, as rq's worker would end them; one another worker
    took already, or another digest's, is left alone."""
    queue = Queue(queue_name, connection=own_redis, serializer=JSONSerializer)
    for name in ("queued", "parked", "running", "other"):
        queue.enqueue("json.loads", "{}", job_id=name, result_ttl=RESULT_TTL)
    queue.remove("parked")
    queue.scheduled_job_registry.schedule(Job.fetch("parked", connection=own_redis), now())
    queue.remove("running")  # dequeued by another worker
    keys = Keys(queue_name)
    for name in ("queued", "parked", "running"):
        own_redis.set(keys.in_digest(name), "owner")
    own_redis.set(keys.in_digest("other"), "another")
    finisher = Finisher(queue, RESULT_TTL, keys.in_digest_prefix())
    assert finisher.finish_in_digest("owner", ["queued", "parked", "running", "other"]) == [
        "queued", "parked"]
    for name in ("queued", "parked"):
        job = Job.fetch(name, connection=own_redis, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED and job.ended_at
        assert job.return_value() == {"in_digest_of": "owner"}
        assert abs(own_redis.ttl(job.key) - RESULT_TTL) <= 5
    assert sorted(queue.finished_job_registry.get_job_ids()) == ["parked", "queued"]
    assert queue.get_job_ids() == ["other"] and queue.scheduled_job_registry.get_job_ids() == []
