"""Order: replies in an order's thread follow its events, whatever order the webhooks arrive and
the retries run; a late first event never makes a second top-level message. Webhooks over real
HTTP to the receiver, a real Redis, real (burst) workers, the fake Pumble over HTTP with its
faults."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler

from bridge.delivery.steps import PARK_MIN
from bridge.digest import HANDOVER_MARGIN
from bridge.local_server import LocalServer
from bridge.queue import job_id
from bridge.ratelimit import RateLimiter, limits_per_minute
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources.shopify import sign
from bridge.web import create_app
from tests.conftest import TEST_SECRET, FakePumble, faults, stats, texts, wait_until
from tests.test_delivery import THREAD_ROUTES
from tests.test_identity import LossyProxy
from tests.test_worker_processes import kill, worker_process

EVENT_TIMES = {"orders/create": "10:15:00", "orders/paid": "10:15:30",
               "orders/fulfilled": "10:16:00"}


@contextmanager
def receiver(b) -> Iterator[callable]:
    """Send a Shopify webhook for an order and topic to the bridge's receiver, over HTTP."""
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server, \
            httpx.Client(base_url=server.url) as http:
        def send(topic: str, number: int = 5005) -> None:
            payload = shopify_order(number)
            payload["updated_at"] = f"2026-11-25T{EVENT_TIMES.get(topic, '10:15:00')}+01:00"
            body = body_of(payload)
            headers = {**shopify_headers(topic, webhook_id=f"wh-{number}-{topic}"),
                       "X-Shopify-Hmac-Sha256": sign(TEST_SECRET.encode(), body)}
            answer = http.post("/webhooks/shop", content=body, headers=headers)
            assert answer.status_code == 202, answer.text

        yield send


def thread_of(fake: FakePumble) -> list[str]:
    """The channel as read: each top-level message, then its replies in posting order."""
    messages = fake.messages()
    roots = [m for m in messages if not m["threadReplyInfo"]]
    return [line for root in roots for line in (
        root["text"], *(f"  ↳ {m['text']}" for m in messages
                        if (m["threadReplyInfo"] or {}).get("rootId") == root["id"]))]


CREATED_PAID_FULFILLED = ["🛒 order 5005 created", "  ↳ order 5005: order.paid",
                          "  ↳ order 5005: order.fulfilled"]


def test_paid_before_create_then_fulfilled_reads_created_paid_fulfilled(bridge, fake_pumble):
    b = bridge({"thread_wait": 30}, routes=THREAD_ROUTES)
    with receiver(b) as send:
        send("orders/paid")
        b.work()  # the reply is worked on (and waits) before its root arrives
        send("orders/create")
        send("orders/fulfilled")
    b.drain()
    assert thread_of(fake_pumble) == CREATED_PAID_FULFILLED


def test_replies_follow_the_event_time_not_the_arrival(bridge, fake_pumble):
    b = bridge({"thread_wait": 30}, routes=THREAD_ROUTES)
    with receiver(b) as send:
        for topic in ("orders/create", "orders/fulfilled", "orders/paid"):
            send(topic)
    b.drain()
    assert thread_of(fake_pumble) == CREATED_PAID_FULFILLED


def test_an_earlier_reply_retried_after_a_lost_request_still_comes_first(bridge, fake_pumble):
    lossy = LossyProxy(fake_pumble.url)
    lossy.drop["sendReply"] = {1}  # the paid reply's first send never reaches Pumble
    with LocalServer(lossy.app) as proxy:
        b = bridge({"thread_wait": 30}, routes=THREAD_ROUTES, base_url=proxy.url)
        with receiver(b) as send:
            for topic in ("orders/create", "orders/paid", "orders/fulfilled"):
                send(topic)
        b.drain()
    assert thread_of(fake_pumble) == CREATED_PAID_FULFILLED


def test_a_late_first_event_joins_the_thread_instead_of_starting_another(bridge, fake_pumble):
    b = bridge({"thread_wait": 5}, routes=THREAD_ROUTES)
    with receiver(b) as send:
        send("orders/paid")
        b.drain()  # waited thread_wait for a root never announced: posted alone, the root
        send("orders/create")
        send("orders/fulfilled")
        b.drain()
    assert thread_of(fake_pumble) == ["order 5005: order.paid", "  ↳ 🛒 order 5005 created",
                                      "  ↳ order 5005: order.fulfilled"]


# -- new orders in one channel: arrival order, under the rate limit and in digests --------------

def order_numbers(fake: FakePumble) -> list[list[int]]:
    """The channel as read: per message, the order numbers it shows (a digest, several)."""
    return [[int(n) for n in re.findall(r"#(\d+)", m["text"])] for m in fake.messages("orders")]


def enqueue_orders(b, numbers: range) -> None:
    for number in numbers:
        b.enqueue(f"🛒 order #{number}", event_id=f"o-{number}")
        b.clock.sleep(0.01)  # each received after the one before


def test_new_orders_under_the_rate_limit_read_in_arrival_order_alone_and_in_digests(
        bridge, fake_pumble):
    # 4 messages a minute, digests of 5 over a 60 s window: the first 4 slots go at once, the
    # rest wait for theirs (a worker's slot wait gives up at once: job_timeout), and digests
    # take over while 4 or more wait.
    b = bridge({"rate_limits": {"messages": 4}, "job_timeout": 2,
                "digest": {"window": 60, "max_items": 5}})
    enqueue_orders(b, range(4001, 4033))
    b.drain(rounds=400)
    read = order_numbers(fake_pumble)
    assert [n for message in read for n in message] == list(range(4001, 4033))
    assert any(len(message) > 1 for message in read) and any(len(m) == 1 for m in read)
    assert stats(fake_pumble)["rate_limited"] == 0


@contextmanager
def two_workers(b) -> Iterator[None]:
    """Two worker processes on the test's queue, for as long as the block runs."""
    workers = [worker_process(b.path) for _ in range(2)]
    try:
        yield
    finally:
        for worker in workers:
            kill(worker)


def posted_in_order(fake: FakePumble, numbers: range, timeout: float = 90) -> list[int]:
    """Once every order is posted: each order's number, as the channel reads."""
    def shown() -> list[int]:
        return [n for message in order_numbers(fake) for n in message]

    wait_until(lambda: len(shown()) >= len(numbers), "every order posted", timeout)
    return shown()


def test_orders_after_one_whose_first_send_fails_wait_for_it(bridge, fake_pumble):
    """Two worker processes; the first send (of the first order) answers 503: the orders after
    it wait until it is posted, a backoff later."""
    b = bridge()
    numbers = range(5001, 5031)
    enqueue_orders(b, numbers)
    faults(fake_pumble, fail_next={"count": 1, "status": 503})
    with two_workers(b):
        assert posted_in_order(fake_pumble, numbers) == list(numbers)
    assert stats(fake_pumble)["failed"] == 1


def test_two_workers_under_a_full_rate_limit_window_post_in_arrival_order(bridge, fake_pumble):
    """20 messages a minute, the window already full, a slot freed every half second; no worker
    waits for a slot (job_timeout 2: it runs again later instead), digests of 4 while 5 or
    more wait: 32 orders read in arrival order, alone and in digests."""
    b = bridge({"rate_limits": {"messages": 20}, "job_timeout": 2,
                "digest": {"window": 15, "max_items": 4}})
    numbers = range(7001, 7033)
    enqueue_orders(b, numbers)
    limiter = RateLimiter(b.rq.connection, b.config.redis.queue, limits_per_minute({}))
    now = float(b.rq.connection.time()[0])
    b.rq.connection.zadd(limiter.key("default", "messages"), {
        f"earlier-{k}": (now - limiter.window("messages") + 0.5 * (k + 1)) * 1_000_000
        for k in range(20)})
    with two_workers(b):
        assert posted_in_order(fake_pumble, numbers) == list(numbers)
    read = order_numbers(fake_pumble)
    assert any(len(message) > 1 for message in read), read
    assert stats(fake_pumble)["rate_limited"] == 0


def test_a_dead_lettered_head_releases_its_line(bridge, fake_pumble):
    b = bridge()
    enqueue_orders(b, range(6001, 6011))
    faults(fake_pumble, fail_next={"count": 1, "status": 400})  # refused for good: 6001
    b.drain()
    assert [n for message in order_numbers(fake_pumble) for n in message] == \
        list(range(6002, 6011))
    assert len(b.dead.list()) == 1


def _park(rq_queue, job_id: str, in_seconds: float) -> None:
    """As rq parks a job that returned a Retry: scheduled, off the queue."""
    job = rq_queue.fetch_job(job_id)
    rq_queue.remove(job_id)
    job.set_status(JobStatus.SCHEDULED)
    rq_queue.schedule_job(job, datetime.now(UTC) + timedelta(seconds=in_seconds))


def test_a_handover_moves_a_parked_head_as_rqs_scheduler_does(bridge, rq_queue):
    """Pinned to rq's layout (rq is pinned to a minor release): the job LEAVE_LINE moves is the
    one rq's own scheduler moves, field by field, but at the queue's front; a job due within
    HANDOVER_MARGIN is left to rq's scheduler, which may be moving it already."""
    b = bridge()
    first, second = (b.enqueue(f"order #{n}", event_id=f"h-{n}") for n in (1, 2))
    name, connection = b.queue.rq.name, rq_queue.connection
    first_id, second_id = job_id(name, first), job_id(name, second)
    _park(rq_queue, second_id, 60)
    parked = connection.hgetall(Job.key_for(second_id))

    connection.zadd(rq_queue.scheduled_job_registry.key, {second_id: 0}, xx=True)  # now due
    scheduler = RQScheduler([rq_queue], connection=connection, serializer=rq_queue.serializer)
    scheduler.prepare_registries([name])
    scheduler.enqueue_scheduled_jobs()
    theirs = connection.hgetall(Job.key_for(second_id))
    assert rq_queue.get_job_ids() == [first_id, second_id]

    connection.delete(Job.key_for(second_id))
    connection.hset(Job.key_for(second_id), mapping=parked)
    _park(rq_queue, second_id, 60)
    assert b.queue.backlog.leave(first, first_id) == 1
    ours = connection.hgetall(Job.key_for(second_id))
    assert rq_queue.get_job_ids() == [second_id, first_id]  # the front
    assert rq_queue.scheduled_job_registry.get_job_ids() == []
    changed = {k for k in theirs if theirs[k] != parked.get(k)}
    assert changed == {k for k in ours if ours[k] != parked.get(k)} >= {b"status", b"enqueued_at"}
    assert {k: ours[k] for k in changed - {b"enqueued_at"}} == {
        k: theirs[k] for k in changed - {b"enqueued_at"}}

    third = b.enqueue("order #3", event_id="h-3")
    _park(rq_queue, job_id(name, third), HANDOVER_MARGIN - 1)
    assert b.queue.backlog.leave(second, second_id) == 0  # due too soon: rq's scheduler's
    assert rq_queue.scheduled_job_registry.get_job_ids() == [job_id(name, third)]


def test_a_lost_handover_is_made_up_by_the_parked_jobs_fallback(bridge, fake_pumble, rq_queue):
    """The one before it leaves its line without handing over (its worker SIGKILLed between
    the two, say): the parked job still runs when its fallback is due."""
    b = bridge()
    first, second = (b.enqueue(f"order #{n}", event_id=f"lost-{n}") for n in (1, 2))
    name = b.queue.rq.name
    rq_queue.remove(job_id(name, first))  # on its way elsewhere: not on this queue
    try:
        b.work()
        assert rq_queue.scheduled_job_registry.get_job_ids() == [job_id(name, second)]  # parked
        rq_queue.connection.zrem(b.queue.backlog.key(first), job_id(name, first))  # no handover
        parked_at = b.clock.time()
        b.drain()
    finally:
        rq_queue.fetch_job(job_id(name, first)).delete()  # in no registry the fixture cleans
    assert texts(fake_pumble) == ["order #2"]
    assert b.clock.time() - parked_at >= PARK_MIN - 1  # rq may run it up to a second early
