"""Runs (bridge.delivery.run): the head of a line of new messages posts the next ones of its
line in its own rq job; in arrival order, each once, whatever fails or dies on the way. A real
Redis, burst workers on the test's clock, the fake Pumble over HTTP."""

from __future__ import annotations

from collections import Counter

from flask import Response
from redis.client import Pipeline
from rq.job import Job, JobStatus

from bridge.delivery.attempt import Attempt
from bridge.delivery.deliverer import HEARTBEAT_GRACE, Deliverer
from bridge.delivery.run import Run
from bridge.digest import HANDOVER_MARGIN
from bridge.local_server import LocalServer
from bridge.notification import Notification
from bridge.queue import connect, job_id
from bridge.ratelimit import RateLimiter, limits_per_minute
from bridge.store.runs import Finisher
from tests.conftest import FakePumble, stats
from tests.test_identity import LossyProxy, owners
from tests.test_order import enqueue_orders, order_numbers


def shown(fake: FakePumble) -> list[int]:
    return [n for message in order_numbers(fake) for n in message]


def jobs_of(b, numbers: range) -> list[Job]:
    return [b.rq.fetch_job(job_id(b.queue.rq.name, Notification(
        source="shop", event_id=f"o-{n}", event_type="order.created", route="r",
        channel="orders", text=""))) for n in numbers]


def nothing_left_behind(b, numbers: range, *, dead_run: bool = False) -> None:
    """Every job finished with its message as its result; no line, mark or parked job left
    (after a ``dead_run``, its marks are left to expire before their jobs fall back)."""
    connection = b.rq.connection
    for job in jobs_of(b, numbers):
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value()["message_id"] == job.meta["sent"]["id"]
    assert not connection.keys(f"pumble-bridge:{b.queue.rq.name}:backlog:*")
    marks = connection.keys(f"pumble-bridge:{b.queue.rq.name}:in-run:*")
    if dead_run:
        fallback = b.config.delivery.job_timeout + HEARTBEAT_GRACE
        assert all(0 < connection.ttl(mark) <= fallback - HANDOVER_MARGIN for mark in marks)
    else:
        assert not marks
    assert b.rq.scheduled_job_registry.get_job_ids() == [] and len(b.rq) == 0


def test_a_line_is_posted_by_one_job_in_arrival_order(bridge, fake_pumble):
    b = bridge()
    numbers = range(1001, 1031)
    enqueue_orders(b, numbers)
    b.work()  # one burst worker, once
    assert shown(fake_pumble) == list(numbers)
    nothing_left_behind(b, numbers)
    jobs = jobs_of(b, numbers)
    # Never dequeued by rq (no worker's name), each with its own record all the same:
    # the head's run posted them.
    assert sum(not job.worker_name for job in jobs) >= len(numbers) - 1
    assert all(job.started_at and job.ended_at for job in jobs)


def test_a_runs_pipeline_never_asks_redis_whether_its_scripts_are_loaded(
        bridge, fake_pumble, monkeypatch):
    """A batch costs two round trips: redis-py would add one (SCRIPT EXISTS) each time a
    pipeline carrying a registered script is executed (bridge.store.scripts.run)."""
    asked = []
    monkeypatch.setattr(Pipeline, "load_scripts", lambda pipe: asked.append(pipe.command_stack))
    b = bridge()
    numbers = range(1001, 1031)
    enqueue_orders(b, numbers)
    b.work()
    assert shown(fake_pumble) == list(numbers)
    assert asked == []
    nothing_left_behind(b, numbers)


def test_a_member_whose_send_is_lost_goes_after_its_backoff_and_the_line_waits(
        bridge, fake_pumble):
    lossy = LossyProxy(fake_pumble.url)
    lossy.drop["sendMessage"] = {3}  # the head's, its run's first, then this one: unanswered
    with LocalServer(lossy.app) as proxy:
        b = bridge(base_url=proxy.url)
        numbers = range(2001, 2021)
        enqueue_orders(b, numbers)
        b.drain()
    assert shown(fake_pumble) == list(numbers)
    assert set(owners(fake_pumble).values()) == {1}  # each posted once
    nothing_left_behind(b, numbers)


class RefusingProxy(LossyProxy):
    """Also answers the chosen requests (the n-th to a path) itself, with a 400."""

    def __init__(self, target: str):
        super().__init__(target)
        self.refuse: dict[str, set[int]] = {}
        self._refused: Counter[str] = Counter()

    def _forward(self, path: str) -> Response:
        self._refused[path] += 1
        if self._refused[path] in self.refuse.get(path, set()):
            return Response('{"error": "Bad request"}', 400, content_type="application/json")
        return super()._forward(path)


def test_a_member_pumble_refuses_goes_back_and_is_decided_by_its_own_job(bridge, fake_pumble):
    refusing = RefusingProxy(fake_pumble.url)
    refusing.refuse["sendMessage"] = {2}  # the run's first send: refused once
    with LocalServer(refusing.app) as proxy:
        b = bridge(base_url=proxy.url)
        numbers = range(3001, 3011)
        enqueue_orders(b, numbers)
        b.drain()
    assert shown(fake_pumble) == list(numbers)  # sent again by its own job, in its turn
    refused = jobs_of(b, numbers)[1]
    assert refused.worker_name and refused.meta["attempts"] == 2
    nothing_left_behind(b, numbers)


def test_a_job_that_is_not_plain_ends_the_run_and_goes_in_its_turn(bridge, fake_pumble):
    b = bridge()
    numbers = range(4001, 4016)
    enqueue_orders(b, numbers)
    retried = jobs_of(b, numbers)[6]
    retried.meta["attempts"] = 1  # an earlier attempt failed: its own job decides what is next
    retried.save_meta()
    b.drain()
    assert shown(fake_pumble) == list(numbers)
    assert Job.fetch(retried.id, connection=b.rq.connection).worker_name  # rq ran it
    nothing_left_behind(b, numbers)


REFUSED_AS_FULL = ("return redis.error_reply(\"OOM command not allowed when used memory > "
                   "'maxmemory'.\")")


def test_a_run_whose_record_redis_refuses_writes_it_once_redis_takes_writes(
        bridge, fake_pumble, monkeypatch):
    """Redis full mid-run: a member's record is refused in the round trip that claims the next
    batch, and the claim goes through. The run waits for Redis, records the member and hands
    back what it claimed: every order posted once, in order, by one worker's one pass (none
    left to wait for its fallback)."""
    finish, refused = Finisher.finish, []

    def refusing(self, pipe, job, *args):
        if refused:
            return finish(self, pipe, job, *args)
        refused.append(job.id)
        pipe.eval(REFUSED_AS_FULL, 0)  # as Redis refuses the record's script when full
        return None

    monkeypatch.setattr(Finisher, "finish", refusing)
    b = bridge()
    numbers = range(7001, 7021)
    enqueue_orders(b, numbers)
    b.work()  # one burst worker, once
    assert refused == [jobs_of(b, numbers)[1].id]
    assert shown(fake_pumble) == list(numbers)
    assert set(owners(fake_pumble).values()) == {1}
    nothing_left_behind(b, numbers)


def run_of(b, number: int) -> Run:
    """The run the job of order ``number`` would make, in this process."""
    connection = connect(b.redis_url)
    deliverer = Deliverer(b.config, connection, b.clock, b.metrics)
    head = jobs_of(b, range(number, number + 1))[0]
    return Run(Attempt(deliverer, head, Notification.from_payload(head.args[0])))


def claimed_after(b, head: int, numbers: range) -> tuple[Run, list]:
    """Order ``head`` posted alone, then ``numbers`` queued: the run ``head`` makes of them,
    and the jobs it claimed, in this process."""
    enqueue_orders(b, range(head, head + 1))
    b.work()
    enqueue_orders(b, numbers)
    run = run_of(b, head)
    return run, run._claim(100)


def test_a_run_whose_worker_dies_leaves_its_jobs_to_rqs_scheduler(bridge, fake_pumble):
    """Taken, the first of them posted but not yet recorded, then the worker is gone: no
    handover moves them meanwhile; at their fallback each runs as a job of its own, the posted
    one finds its post, and the channel reads every order once, in order."""
    b = bridge()
    numbers = range(5002, 5011)
    run, taken = claimed_after(b, 5001, numbers)
    assert [job.id for job, _ in taken] == [job.id for job in jobs_of(b, numbers)]
    assert len(b.rq) == 0  # all parked
    assert run._post(run._members(taken)[:1])[0] == 1  # posted; its record never written
    assert b.queue.backlog.leave(run.head.notification) == 0  # no handover wakes them
    b.work()
    assert shown(fake_pumble) == [5001, 5002]
    b.clock.sleep(b.config.delivery.job_timeout + HEARTBEAT_GRACE)  # the run's fallback
    b.drain()
    assert shown(fake_pumble) == [5001, *numbers]
    assert set(owners(fake_pumble).values()) == {1}
    nothing_left_behind(b, numbers, dead_run=True)


def test_the_jobs_a_run_did_not_post_go_back_in_order_unless_no_longer_its(
        bridge, fake_pumble):
    b = bridge()
    numbers = range(6002, 6007)
    run, taken = claimed_after(b, 6001, numbers)
    assert len(taken) == 5
    assert run_of(b, 6001)._claim(100) == []  # marked: no other run takes them
    ids = [job.id for job, _ in taken]
    b.rq.connection.delete(b.queue.backlog.keys.in_run(ids[1]))  # its mark ran out
    run._end(taken)
    assert b.rq.get_job_ids() == [ids[0], *ids[2:]]
    assert b.rq.scheduled_job_registry.get_job_ids() == [ids[1]]  # rq's scheduler's now
    b.clock.sleep(b.config.delivery.job_timeout + HEARTBEAT_GRACE)
    b.drain()
    assert shown(fake_pumble) == [6001, *numbers]


def fill_the_window(b, slots_left: int) -> None:
    """The message limit's window used up but for ``slots_left``, as other workers would."""
    limiter = RateLimiter(b.rq.connection, b.config.redis.queue,
                          limits_per_minute(b.config.delivery.rate_limits))
    key, per_minute = limiter.key("default", "messages"), limiter.limits["messages"].per_minute
    now = float(b.rq.connection.time()[0]) * 1_000_000
    taken = b.rq.connection.zcard(key)
    b.rq.connection.zadd(key, {f"other-{k}": now - k
                               for k in range(per_minute - slots_left - taken)})


def test_a_run_whose_slots_run_out_sends_what_it_can_and_counts_no_other(bridge, fake_pumble):
    """Slots taken by others between its claim and its sends: what it did not send goes back
    unmarked, as it was, and goes in its turn."""
    b = bridge({"rate_limits": {"messages": 6}, "job_timeout": 2})
    numbers = range(7002, 7006)
    run, taken = claimed_after(b, 7001, numbers)
    fill_the_window(b, 1)
    assert run._post(run._members(taken))[0] == 1  # the first; the second's slot refused
    run._end(taken[1:])
    assert shown(fake_pumble) == [7001, 7002]
    assert all(not job.meta for job in jobs_of(b, numbers[1:]))  # not marked, not counted
    assert b.rq.get_job_ids() == [job.id for job in jobs_of(b, numbers[1:])]
    b.drain(rounds=400)
    assert shown(fake_pumble) == [7001, *numbers]
    assert [job.meta["attempts"] for job in jobs_of(b, numbers)] == [1] * len(numbers)
    assert stats(fake_pumble)["rate_limited"] == 0


def test_a_run_takes_none_while_more_wait_than_the_slots_left(bridge, fake_pumble):
    """As a head would send a digest then (bridge.delivery.steps, _claim): its run leaves
    them to the next head."""
    b = bridge({"rate_limits": {"messages": 20}})
    enqueue_orders(b, range(1, 7))  # a head and 5 behind it
    fill_the_window(b, 4)  # fewer slots than wait behind it
    assert run_of(b, 1)._claim(100) == []
    b.rq.connection.delete(RateLimiter(b.rq.connection, b.config.redis.queue).key(
        "default", "messages"))
    assert len(run_of(b, 1)._claim(100)) == 5


def test_a_run_takes_no_more_once_its_line_is_a_burst(bridge, fake_pumble):
    """A run claims what waits behind its head while it and what its line posted a moment ago
    fit in the slots left; once they would not, it claims no more: the next head digests them
    (bridge.delivery.deliverer, ``bursting``)."""
    b = bridge({"rate_limits": {"messages": 80}})
    enqueue_orders(b, range(1, 12))  # a head and 10 behind it
    run = run_of(b, 1)

    def claimed_and_posted() -> int:
        taken = run._claim(4)
        run._post(run._members(taken))
        return len(taken)

    assert claimed_and_posted() == 4
    enqueue_orders(b, range(12, 82))  # 70 more at once
    assert claimed_and_posted() == 4  # its last look was before they came
    assert run._claim(4) == []  # 8 posted and 72 waiting: more than the 72 slots left
    run._end([])


def test_a_run_claims_no_more_than_may_go_one_by_one_before_a_burst(bridge, fake_pumble):
    """40 slots: 4 posted, 14 waiting: 18 and half as much again to come is 27, and 36 are
    left: 9 more may go one by one, so a batch of 32 takes 9."""
    b = bridge({"rate_limits": {"messages": 40}})
    enqueue_orders(b, range(1, 20))  # a head and 18 behind it
    run = run_of(b, 1)
    taken = run._claim(4)
    assert run._post(run._members(taken))[0] == 4
    taken = run._claim(32)
    assert len(taken) == 9
    run._end(taken)


def test_a_run_posts_an_orders_later_messages_in_the_thread_it_began(bridge, fake_pumble):
    """The same order's first event delivered again and again (a shop re-creating it, or a
    benchmark): the first begins its thread, each later one replies in it, as its own job
    would have, though all go in one run."""
    b = bridge()
    numbers = range(8001, 8011)
    for number in numbers:
        b.enqueue(f"🛒 order #{number}", event_id=f"o-{number}", thread_key="order:8000",
                  starts_thread=True)
        b.clock.sleep(0.01)
    b.work()
    messages = fake_pumble.messages("orders")
    root, *replies = messages
    assert not root["threadReplyInfo"] and "#8001" in root["text"]
    assert [r["threadReplyInfo"]["rootId"] for r in replies] == [root["id"]] * 9
    assert shown(fake_pumble) == list(numbers)
    assert sum(not job.worker_name for job in jobs_of(b, numbers)) >= 9


def test_within_one_batch_a_later_message_replies_in_the_thread_an_earlier_began(
        bridge, fake_pumble):
    b = bridge()
    threads = {9001: "order:1", 9002: "order:2", 9003: "order:3", 9004: "order:3"}
    for number, thread in threads.items():  # the head; a batch of 1; a batch of 2
        b.enqueue(f"🛒 order #{number}", event_id=f"o-{number}", thread_key=thread,
                  starts_thread=True)
        b.clock.sleep(0.01)
    b.work()
    messages = {int(m["text"].split("#")[1][:4]): m for m in fake_pumble.messages("orders")}
    assert [n for n, m in messages.items() if not m["threadReplyInfo"]] == [9001, 9002, 9003]
    assert messages[9004]["threadReplyInfo"]["rootId"] == messages[9003]["id"]
    assert sum(not job.worker_name for job in jobs_of(b, range(9001, 9005))) == 3


def test_a_digests_lines_end_in_the_job_that_posted_it(bridge, fake_pumble):
    """Not a job run for each line of a digest: the one that posted it ends them, each with
    its own result."""
    b = bridge({"rate_limits": {"messages": 3}, "job_timeout": 2,
                "digest": {"window": 60, "max_items": 5, "fill_wait": 0}})
    numbers = range(1, 12)
    enqueue_orders(b, numbers)
    b.drain(rounds=400)
    read = order_numbers(fake_pumble)
    assert [n for message in read for n in message] == list(numbers)
    digests = [message for message in read if len(message) > 1]
    assert digests
    for first, *lines in digests:
        owner = jobs_of(b, range(first, first + 1))[0]
        for job in jobs_of(b, lines):
            assert job.get_status() == JobStatus.FINISHED and not job.worker_name
            assert job.return_value() == {"in_digest_of": owner.id}
