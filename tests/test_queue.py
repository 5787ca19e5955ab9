"""The receiver's one-step accept (bridge.queue.accept) on a real Redis: the jobs it writes are
rq's own, and a delivery is written whole, once."""

from __future__ import annotations

import json
import threading
import time
import zlib

import pytest
import redis
from rq.job import Job
from rq.utils import utcparse

from bridge.activity import Activity
from bridge.config import RedisSettings
from bridge.events import Event, SourceRef
from bridge.notification import Notification
from bridge.queue import (
    DELIVER,
    FAILURE_TTL,
    RESULT_TTL,
    NotificationQueue,
    NotReplicated,
    Received,
    connect,
    job_id,
)
from bridge.redis_embedded import EmbeddedRedis
from bridge.retry import CRASH_RETRIES
from bridge.threads import EXPECTED

WINDOW = 600


@pytest.fixture
def queue(redis_url, queue_name, rq_queue) -> NotificationQueue:
    return NotificationQueue(connect(redis_url), queue_name)


def order(event_id: str = "e-1", route: str = "orders", **fields) -> Notification:
    return Notification(**{"source": "shop", "event_id": event_id, "event_type": "order.created",
                           "route": route, "channel": "orders", "text": "🛒 order #1001",
                           "received_at": time.time(), "thread_key": "order:1001",
                           "starts_thread": True, **fields})


def received(event_id: str = "e-1", **fields) -> Received:
    return Received(**{"source": "shop", "event_id": event_id, "event_type": "order.created",
                       "headers": {"X-Shopify-Topic": "orders/create"}, "body": b'{"id": 1}',
                       **fields})


def job_hash(queue: NotificationQueue, new_id: str) -> dict[bytes, bytes]:
    return queue.rq.connection.hgetall(Job.key_for(new_id))


def test_the_job_is_the_one_rqs_own_unique_enqueue_writes(queue):
    """rq is pinned to a minor version; this says when a new one changes what a job holds."""
    notification = order()
    assert queue.accept([notification]).written == (True,)
    ours = job_hash(queue, job_id(queue.rq.name, notification))

    rq_id = "n-by-rq"
    queue.rq.enqueue(DELIVER, notification.to_payload(), job_id=rq_id, unique=True,
                     description="deliver", job_timeout=queue.delivery.job_timeout,
                     result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, retry=CRASH_RETRIES)
    theirs = job_hash(queue, rq_id)

    assert ours.keys() == theirs.keys()
    differs = {k for k in ours if ours[k] != theirs[k]}
    assert differs <= {b"created_at", b"enqueued_at", b"data"}
    # Ours is not compressed (rq reads either: Job.restore falls back to the raw bytes).
    assert json.loads(ours[b"data"]) == json.loads(zlib.decompress(theirs[b"data"]))
    assert abs(utcparse(ours[b"created_at"].decode()) - utcparse(theirs[b"created_at"].decode())
               ).total_seconds() < 5
    assert ours[b"created_at"] == ours[b"enqueued_at"]
    job = Job.fetch(job_id(queue.rq.name, notification), connection=queue.rq.connection,
                    serializer=queue.rq.serializer)
    assert list(job.args) == [notification.to_payload()] and job.func_name == DELIVER
    assert job.get_status() == "queued" and job.retries_left == 3 and job.origin == queue.rq.name
    assert queue.rq.get_job_ids() == [job.id, rq_id]
    assert queue.rq.key.encode() in queue.rq.connection.smembers("rq:queues")


def test_a_delivery_is_accepted_once_with_everything_that_comes_with_it(queue):
    first, paid = order(), order(route="paid", reply=True, starts_thread=False)
    activity = Activity(queue)
    event = Event(id="e-1", type="order.created", source=SourceRef("shop", "shopify"))
    line = activity.entry(event, source="shop", received_at=1.0, notifications=[first, paid],
                          failures=[])
    accepted = queue.accept([first, paid], received=received(), dedupe_window=WINDOW,
                            activity=line)
    assert not accepted.duplicate and accepted.written == (True, True)

    connection = queue.rq.connection
    assert len(queue.rq) == 2
    assert queue.seen("shop", "e-1")
    assert 0 < connection.ttl(queue.keys.seen("shop", "e-1")) <= WINDOW
    stored = queue.load_event("shop", "e-1")
    assert stored["body"] == '{"id": 1}' and stored["headers"] == {"X-Shopify-Topic":
                                                                   "orders/create"}
    assert connection.ttl(queue.keys.event("shop", "e-1")) > queue.delivery.max_age
    assert connection.get(queue.roots.key(first)) == EXPECTED
    # The first message is in its route's line; the reply in its thread's, never a digest's.
    assert connection.zrange(queue.backlog.key(first), 0, -1) == [
        job_id(queue.rq.name, first).encode()]
    assert connection.zrange(queue.backlog.key(paid), 0, -1) == [
        job_id(queue.rq.name, paid).encode()]
    [recorded] = activity.recent()
    assert [d.route for d in recorded.deliveries] == ["orders", "paid"]

    again = queue.accept([first, paid], received=received(), dedupe_window=WINDOW,
                         activity=line)
    assert again.duplicate and again.written == ()
    assert len(queue.rq) == 2 and len(activity.recent()) == 1


def test_a_job_already_there_is_not_written_again_nor_counted_twice(queue):
    """Past the dedupe window (or without one) the jobs' own ids still dedupe; a job that was
    sent and left its backlog must not come back into it."""
    first = order()
    assert queue.accept([first], received=received()).written == (True,)
    backlog = queue.backlog.key(first)
    queue.rq.connection.delete(backlog)  # as the worker's claim does once it sends
    queue.rq.connection.delete(queue.roots.key(first))

    second = order(route="also")
    assert queue.accept([first, second], received=received()).written == (False, True)
    assert queue.rq.connection.zcard(backlog) == 0
    assert queue.rq.connection.zrange(queue.backlog.key(second), 0, -1) == [
        job_id(queue.rq.name, second).encode()]
    assert queue.rq.connection.get(queue.roots.key(first)) == EXPECTED  # by the new one
    assert len(queue.rq) == 2


def test_a_thread_root_already_posted_is_not_made_expected_again(queue):
    first = order()
    queue.rq.connection.set(queue.roots.key(first), "m-1 c-1")
    assert queue.accept([first]).written == (True,)
    assert queue.rq.connection.get(queue.roots.key(first)) == b"m-1 c-1"


def test_an_event_no_route_wanted_is_marked_seen_but_not_kept(queue):
    accepted = queue.accept([], received=received("e-none"), dedupe_window=WINDOW)
    assert not accepted.duplicate and accepted.written == ()
    assert queue.seen("shop", "e-none") and queue.load_event("shop", "e-none") is None


def test_a_webhook_with_dead_letters_is_kept_as_long_as_they_are(queue):
    queue.accept([], received=received("e-dead", dead_letters=True), dedupe_window=WINDOW)
    ttl = queue.rq.connection.ttl(queue.keys.event("shop", "e-dead"))
    assert FAILURE_TTL - 60 < ttl <= FAILURE_TTL


def test_without_a_dedupe_window_every_delivery_is_new(queue):
    queue.accept([], received=received("e-0"), dedupe_window=0)
    assert not queue.seen("shop", "e-0")
    assert not queue.accept([], received=received("e-0"), dedupe_window=0).duplicate


def test_redis_down_raises_a_redis_error(queue_name):
    down = NotificationQueue(connect("redis://127.0.0.1:1/0"), queue_name)
    with pytest.raises(redis.ConnectionError):
        down.accept([order()], received=received(), dedupe_window=WINDOW)


def test_a_write_no_replica_took_in_time_is_refused_and_so_is_its_retry(redis_url, queue_name,
                                                                       rq_queue):
    """min_replicas: 1 on a Redis without replicas: NotReplicated after the bounded wait (the
    shop's 503), for the delivery and for its retry, which finds it seen. The default (1 only
    when the master has replicas) acknowledges the retry at once, as a duplicate."""
    strict = NotificationQueue(connect(redis_url), queue_name,
                               replication=RedisSettings(min_replicas=1, replica_timeout_ms=50))
    for _ in range(2):
        with pytest.raises(NotReplicated, match="reached 0 of 1 replica"):
            strict.accept([order()], received=received(), dedupe_window=WINDOW)
    with pytest.raises(NotReplicated):
        strict.writable()
    default = NotificationQueue(connect(redis_url), queue_name)
    assert default.accept([order()], received=received(), dedupe_window=WINDOW).duplicate
    default.writable()
    assert len(rq_queue) == 1


def test_each_thread_accepts_on_a_connection_it_gives_back_when_it_ends(queue):
    pool = queue.rq.connection.connection_pool

    def accept(event_id: str) -> None:
        assert not queue.accept([order(event_id)], received=received(event_id),
                                dedupe_window=WINDOW).duplicate

    in_use = len(pool._in_use_connections)
    threads = [threading.Thread(target=accept, args=(f"e-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pool._in_use_connections) == in_use  # none kept by a thread that ended
    assert len(queue.rq.get_job_ids()) == 4


def test_a_thread_whose_connection_was_cut_accepts_again(queue):
    """The thread's connection killed server-side between two webhooks: the next accept
    reconnects (the client's retry) instead of failing or reading a stale reply."""
    queue.accept([order("e-1")], received=received("e-1"), dedupe_window=WINDOW)
    mine = queue._thread_client().client_id()
    queue.rq.connection.client_kill_filter(_id=mine)
    assert queue.accept([order("e-2")], received=received("e-2"),
                        dedupe_window=WINDOW).written == (True,)
    assert queue._thread_client().client_id() != mine


def test_a_redis_that_lost_the_script_is_given_it_again(tmp_path, queue_name):
    """A restarted Redis has no scripts: the accept loads its own and goes on. (A Redis of the
    test's own: flushing the script cache of a shared one would touch other users' scripts.)"""
    own = EmbeddedRedis(tmp_path)
    try:
        queue = NotificationQueue(connect(own.start()), queue_name)
        assert queue.accept([order("e-1")], received=received("e-1")).written == (True,)
        queue.rq.connection.script_flush()
        assert queue.accept([order("e-2")], received=received("e-2")).written == (True,)
        assert len(queue.rq.get_job_ids()) == 2
    finally:
        own.stop()


def test_a_line_is_in_the_order_jobs_were_queued_whatever_the_receivers_clocks(queue):
    # Two receivers' threads: the second to commit took its time a moment earlier. Its job is
    # behind the first in the queue, so it is behind it in the line too (a worker taking the
    # queue in order finds each job at its line's head).
    first = order("e-late-clock", received_at=1_000.5, thread_key="order:1", text="#1")
    second = order("e-early-clock", received_at=1_000.1, thread_key="order:2", text="#2")
    third = order("e-later", received_at=1_002.0, thread_key="order:3", text="#3")
    for notification in (first, second, third):
        assert queue.accept([notification]).written == (True,)
    line = queue.backlog.key(first)
    members = [m.decode() for m in queue.rq.connection.zrange(line, 0, -1)]
    assert members == queue.rq.job_ids
    assert queue.rq.connection.zscore(line, members[2]) == 1_002.0  # a later time is kept
