"""When a head sends a digest, and how large (bridge.delivery.steps ``_fill_a_digest`` and
``_claim``): a burst that the slots left in the message limit's window cannot post one by one is
sent as full digests; a lone order with slots free goes at once. A real Redis, real burst
workers, the fake Pumble over HTTP; the test's clock moves instead of sleeping."""

from __future__ import annotations

import re

from rq.scheduler import RQScheduler

from bridge.delivery.deliverer import BURST_SECONDS
from bridge.delivery.steps import FILL_LOOK
from bridge.queue import job_id
from bridge.ratelimit import RateLimiter, limits_per_minute
from tests.conftest import Bridge, FakePumble, stats


def order_numbers(fake: FakePumble) -> list[list[int]]:
    """The channel as read: per message, the order numbers it shows (a digest, several)."""
    return [[int(n) for n in re.findall(r"#(\d+)", m["text"])] for m in fake.messages("orders")]


def enqueue_orders(b: Bridge, numbers: range) -> None:
    for number in numbers:
        b.enqueue(f"🛒 order #{number}", event_id=f"p-{number}")


def use_slots(b: Bridge, count: int, seconds_ago: float = 2 * BURST_SECONDS) -> None:
    """``count`` messages posted ``seconds_ago`` (by default, earlier in the window than a
    burst looks back), as the limiter every worker shares records them."""
    limiter = RateLimiter(b.rq.connection, b.config.redis.queue,
                          limits_per_minute(b.config.delivery.rate_limits))
    seconds, micros = b.rq.connection.time()
    now = (seconds * 1_000_000 + micros + round((b.clock.offset - seconds_ago) * 1_000_000))
    b.rq.connection.zadd(limiter.key("default", "messages"),
                         {f"earlier-{k}": now - 1000 * (k + 1) for k in range(count)})


def fill_waits(b: Bridge) -> list[float]:
    return [s for s in b.clock.sleeps if s == FILL_LOOK]


def test_a_burst_beyond_the_slots_left_goes_as_full_digests_in_this_window(bridge, fake_pumble):
    """10 messages a minute, 4 spent already, 5 lines a digest, 30 orders waiting at once: the
    6 slots left carry all 30, as 6 full digests, now. (The old rule, digests only while 10
    or more wait, sent 4 digests and then 10 orders alone, 8 of them a minute later.)"""
    b = bridge({"rate_limits": {"messages": 10}, "digest": {"window": 60, "max_items": 5}})
    use_slots(b, 4)
    numbers = range(1001, 1031)
    enqueue_orders(b, numbers)
    b.work()
    read = order_numbers(fake_pumble)
    assert [n for message in read for n in message] == list(numbers)  # once each, in order
    assert [len(message) for message in read] == [5] * 6
    assert b.clock.sleeps == []  # no wait: neither for a slot nor for a digest to fill
    assert stats(fake_pumble)["rate_limited"] == 0


def test_a_long_burst_fills_each_window_with_full_digests(bridge, fake_pumble):
    """80 orders at 10 messages a minute, 5 lines a digest: the first window's 10 slots carry
    50 orders in full digests; the 30 left go in the next window, which has slots for all of
    them as 6 digests or fewer messages: every order once, in arrival order, no 429."""
    b = bridge({"rate_limits": {"messages": 10}, "digest": {"window": 60, "max_items": 5}})
    numbers = range(1101, 1181)
    enqueue_orders(b, numbers)
    b.drain(rounds=400)
    read = order_numbers(fake_pumble)
    assert [n for message in read for n in message] == list(numbers)
    assert [len(message) for message in read[:10]] == [5] * 10
    assert len(read) <= 20
    assert stats(fake_pumble)["rate_limited"] == 0


def test_a_burst_counts_what_its_line_posted_a_moment_ago(bridge, fake_pumble):
    """80 slots: 30 orders at once fit, and go one by one. 40 more a moment later: fewer wait
    than the 50 slots left, but with the 30 just posted, and half as much again to come, they
    are more (bridge.delivery.deliverer, ``bursting``): the head sends a full digest, and the
    next the 15 left, after waiting its fill_wait for more. (The old rule: 40 alone.)"""
    b = bridge({"rate_limits": {"messages": 80}, "digest": {"max_items": 25}})
    first, then = range(8001, 8031), range(8031, 8071)
    enqueue_orders(b, first)
    b.work()
    assert order_numbers(fake_pumble) == [[n] for n in first]
    enqueue_orders(b, then)
    b.work()
    read = order_numbers(fake_pumble)
    assert [n for message in read for n in message] == [*first, *then]
    assert [len(message) for message in read[30:]] == [25, 15]
    # The first digest was full at once; the last waited its fill_wait for more, none came.
    assert b.clock.sleeps == fill_waits(b)
    assert abs(sum(fill_waits(b)) - 2) < FILL_LOOK + 1e-9


def test_a_lone_order_in_a_burst_waits_for_a_digest_to_fill(bridge, fake_pumble):
    """10 slots, 8 posted a moment ago: one order arrives, and it heads a burst (fewer than
    ``BURST_MIN`` would not): it waits for more, up to ``fill_wait``, and goes with what came."""
    b = bridge({"rate_limits": {"messages": 10},
                "digest": {"max_items": 5, "fill_wait": 1}})
    use_slots(b, 8, seconds_ago=0)
    enqueue_orders(b, range(8101, 8102))
    b.work()
    assert order_numbers(fake_pumble) == [[8101]]
    assert abs(sum(fill_waits(b)) - 1) < FILL_LOOK + 1e-9


def test_a_lone_order_with_slots_free_goes_at_once(bridge, fake_pumble):
    b = bridge({"rate_limits": {"messages": 10}, "digest": {"max_items": 5}})
    use_slots(b, 8)
    enqueue_orders(b, range(2001, 2002))
    b.work()
    assert order_numbers(fake_pumble) == [[2001]]
    assert b.clock.sleeps == []  # neither a wait for a digest to fill nor for a slot


def test_as_many_as_the_slots_left_go_alone(bridge, fake_pumble):
    """3 orders, 3 slots left: each can go alone in this window, so each does, at once."""
    b = bridge({"rate_limits": {"messages": 10}, "digest": {"max_items": 5}})
    use_slots(b, 7)
    enqueue_orders(b, range(3001, 3004))
    b.work()
    assert order_numbers(fake_pumble) == [[3001], [3002], [3003]]
    assert b.clock.sleeps == []


def test_short_of_slots_a_head_waits_for_a_full_digest_then_goes_with_what_came(
        bridge, fake_pumble):
    """2 slots left, 4 orders waiting, digests of 10: the head waits ``fill_wait`` for more,
    none come, and it sends the 4 as one digest rather than spend both slots."""
    b = bridge({"rate_limits": {"messages": 10},
                "digest": {"max_items": 10, "fill_wait": 1.5}})
    use_slots(b, 8)
    enqueue_orders(b, range(4001, 4005))
    b.work()
    assert order_numbers(fake_pumble) == [[4001, 4002, 4003, 4004]]
    assert abs(sum(fill_waits(b)) - 1.5) < FILL_LOOK + 1e-9


def test_a_head_waiting_for_its_digest_goes_as_soon_as_it_is_full(bridge, fake_pumble):
    """Orders keep arriving while the head waits (one each time the clock moves): it sends the
    digest the moment it is full, long before ``fill_wait`` ends."""
    b = bridge({"rate_limits": {"messages": 10},
                "digest": {"max_items": 5, "fill_wait": 5}})
    use_slots(b, 9)
    enqueue_orders(b, range(5001, 5003))
    arrivals = iter(range(5003, 5010))
    move_rq_on = b.clock.also

    def and_one_more_order(seconds: float) -> None:
        move_rq_on(seconds)
        number = next(arrivals, None)
        if number is not None:
            enqueue_orders(b, range(number, number + 1))

    b.clock.also = and_one_more_order
    b.work()
    assert order_numbers(fake_pumble) == [[5001, 5002, 5003, 5004, 5005]]
    assert fill_waits(b) == [FILL_LOOK] * 3  # three looks filled it: 2 waiting, 3 arrived


def test_no_fill_wait_when_turned_off(bridge, fake_pumble):
    b = bridge({"rate_limits": {"messages": 10}, "digest": {"max_items": 10, "fill_wait": 0}})
    use_slots(b, 8)
    enqueue_orders(b, range(6001, 6005))
    b.work()
    assert order_numbers(fake_pumble) == [[6001, 6002, 6003, 6004]]
    assert b.clock.sleeps == []


def test_a_route_without_digests_never_waits_for_one(bridge, fake_pumble):
    b = bridge({"rate_limits": {"messages": 10}, "digest": {"max_items": 10}})
    use_slots(b, 8)
    for number in range(7001, 7003):
        b.enqueue(f"🛒 order #{number}", event_id=f"p-{number}", digest=False)
    b.work()
    assert order_numbers(fake_pumble) == [[7001], [7002]]
    assert fill_waits(b) == []


def test_a_rate_limited_head_runs_again_from_the_queues_front(bridge, fake_pumble, rq_queue):
    """Pinned to rq (pinned to a minor release): a head whose slot is further away than it may
    wait runs again when the slot is due, from the queue's front, ahead of the jobs that came
    meanwhile (in a burst, thousands that would only park), as rq's own scheduler moves it."""
    b = bridge({"rate_limits": {"messages": 10}})
    use_slots(b, 10)
    head, *_ = [b.enqueue(f"🛒 order #{n}", event_id=f"f-{n}") for n in range(8001, 8004)]
    b.work()
    name, connection = b.queue.rq.name, rq_queue.connection
    head_id = job_id(name, head)
    assert order_numbers(fake_pumble) == []
    assert head_id in rq_queue.scheduled_job_registry.get_job_ids()
    later = b.enqueue("🛒 order #8004", event_id="f-8004")
    connection.zadd(rq_queue.scheduled_job_registry.key, {head_id: 0}, xx=True)  # due now
    scheduler = RQScheduler([rq_queue], connection=connection, serializer=rq_queue.serializer)
    scheduler.prepare_registries([name])
    scheduler.enqueue_scheduled_jobs()
    assert rq_queue.get_job_ids() == [head_id, job_id(name, later)]
