"""The worker's decisions, over real parts: a real Redis, real RQ workers (in-process and as
separate processes) and the fake Pumble over HTTP, with its faults."""

from __future__ import annotations

import time
import zlib

import httpx
import pytest
import yaml

from bridge.config import load_config
from bridge.delivery import deliverer
from bridge.delivery.steps import LATE_WRITE
from bridge.fake_pumble import create_fake_pumble
from bridge.local_server import LocalServer
from bridge.notification import Notification
from bridge.queue import FAILURE_TTL, Received, job_id
from tests.conftest import TEST_KEY, Bridge, FakePumble, faults, stats, texts, wait_until

# -- retries --------------------------------------------------------------------------------------

def test_5xx_is_sent_again_until_it_succeeds_once(bridge, fake_pumble, rq_queue):
    b = bridge()
    faults(fake_pumble, fail_next={"count": 2, "status": 503})
    b.enqueue("order #1")
    b.drain()
    assert texts(fake_pumble) == ["order #1"]
    [job_id] = rq_queue.finished_job_registry.get_job_ids()
    job = rq_queue.fetch_job(job_id)
    assert job.meta["attempts"] == 3
    assert "HTTP 503" in job.meta["last_error"]


def test_429_waits_at_least_retry_after(bridge, fake_pumble, rq_queue):
    b = bridge({"rate_limits": {"messages": 1000, "requests": 1000}})  # let Pumble refuse
    faults(fake_pumble, rate_limit={"per_minute": 1, "retry_after": 4})
    b.enqueue("first")
    b.enqueue("second")
    b.work()
    assert texts(fake_pumble) == ["first"]
    [(_job_id, due)] = rq_queue.connection.zrange(rq_queue.scheduled_job_registry.key, 0, -1,
                                                  withscores=True)
    assert due >= time.time() + 3  # Retry-After 4, +1 for rq's whole seconds, minus our time
    httpx.delete(f"{fake_pumble.url}/_fake/faults")
    b.drain()
    assert texts(fake_pumble) == ["first", "second"]


def test_attempts_run_out_into_the_dead_letters(bridge, fake_pumble, rq_queue):
    b = bridge({"max_attempts": 2})
    faults(fake_pumble, fail_next={"count": 5, "status": 502})
    b.enqueue("never")
    b.drain()
    [record] = b.dead.list()
    assert record.attempts == 2
    assert record.reason.startswith("gave up after 2 attempts: TransientError")
    assert stats(fake_pumble)["failed"] == 2
    assert texts(fake_pumble) == []


def test_too_old_is_dead_lettered_without_sending(bridge, fake_pumble):
    b = bridge({"max_age": 60})
    b.enqueue("stale", received_at=b.clock.time() - 61)
    b.drain()
    [record] = b.dead.list()
    assert "max_age" in record.reason
    assert stats(fake_pumble)["requests"] == 0


# -- permanent failures, dead letters -------------------------------------------------------------

def test_unknown_channel_is_dead_lettered_at_once_then_retried_from_the_cli(
        bridge, fake_pumble, rq_queue):
    from tests.test_e2e import clean_env, cli

    b = bridge()
    notification = b.enqueue("to nowhere", channel="no-such-channel")
    b.drain()
    [record] = b.dead.list()
    assert record.attempts == 1
    assert "Could not find channel" in record.reason
    assert record.notification == notification

    listed = cli("--config", str(b.path), "dlq", "list", env=clean_env())
    assert record.id in listed.stdout and "1 dead letter(s)" in listed.stdout
    shown = cli("--config", str(b.path), "dlq", "show", record.id, env=clean_env())
    assert "Could not find channel" in shown.stdout and "to nowhere" in shown.stdout

    httpx.post(f"{fake_pumble.url}/_fake/channels", json={"name": "no-such-channel"})
    retried = cli("--config", str(b.path), "dlq", "retry", record.id, env=clean_env())
    assert retried.returncode == 0, retried.stderr
    assert b.dead.list() == []
    b.drain()
    assert texts(fake_pumble, "no-such-channel") == ["to nowhere"]
    assert cli("--config", str(b.path), "dlq", "retry", record.id,
               env=clean_env()).returncode == 1


def test_retry_gives_a_dead_letter_fresh_attempts(bridge, fake_pumble):
    b = bridge({"max_attempts": 1})
    faults(fake_pumble, fail_next={"count": 1, "status": 500})
    b.enqueue("second chance")
    b.drain()
    [record] = b.dead.list()
    assert b.dead.retry(record.id)
    b.drain()
    assert texts(fake_pumble) == ["second chance"]


def test_purge(bridge, fake_pumble):
    b = bridge()
    for _ in range(3):
        b.enqueue(channel="nowhere")
    b.drain()
    ids = [r.id for r in b.dead.list()]
    assert len(ids) == 3
    assert b.dead.purge(ids[0]) == 1
    assert b.dead.purge() == 2
    assert b.dead.list() == []


def test_create_channel_makes_the_missing_channel(bridge, fake_pumble):
    b = bridge()
    b.enqueue("hello new channel", channel="flash-sale", create_channel=True)
    b.drain()
    assert texts(fake_pumble, "flash-sale") == ["hello new channel"]
    assert b.dead.list() == []


def test_a_dead_letter_keeps_the_webhook_it_came_from(bridge, fake_pumble):
    b = bridge()
    notification = Notification(source="shop", event_id="e-kept", event_type="order.created",
                                route="r", channel="nowhere", text="order #1",
                                received_at=time.time())
    received = Received("shop", "e-kept", "order.created", {}, b'{"id": 42}')
    assert b.queue.accept([notification], received=received).written == (True,)
    b.drain()
    [record] = b.dead.list()
    assert b.dead.get(record.id).event["body"] == '{"id": 42}'


# -- ambiguous failures ---------------------------------------------------------------------------

def test_accept_then_drop_posts_exactly_once(bridge, fake_pumble, rq_queue):
    b = bridge()
    faults(fake_pumble, drop_next=1)  # stored by Pumble, answer lost: the duplicate-maker
    b.enqueue("order #77 · 12.00 EUR")
    b.enqueue("order #78 · 13.00 EUR")
    b.drain()
    assert stats(fake_pumble)["dropped"] == 1
    assert texts(fake_pumble) == ["order #77 · 12.00 EUR", "order #78 · 13.00 EUR"]
    jobs = [rq_queue.fetch_job(i) for i in rq_queue.finished_job_registry.get_job_ids()]
    posted = {m["id"] for m in fake_pumble.messages()}
    assert {job.return_value()["message_id"] for job in jobs} == posted


def test_a_maybe_sent_message_that_was_not_posted_is_sent(bridge, fake_pumble, rq_queue):
    b = bridge()
    b.enqueue("lost on the way")
    [job] = rq_queue.get_jobs()
    job.meta["maybe_sent_at"] = b.clock.time() - 5  # as a worker killed before it sent
    job.save_meta()
    b.drain()
    assert texts(fake_pumble) == ["lost on the way"]


def test_the_look_pages_back_through_a_busy_channel(bridge, fake_pumble):
    b = bridge(read_timeout=1, connect_timeout=1)
    faults(fake_pumble, drop_next=1)
    b.enqueue("order #4000 · 40.00 EUR")
    b.work()  # posted, answer lost: scheduled again
    for number in range(150):  # the channel moves on before the retry looks
        fake_pumble.http.post(f"{fake_pumble.url}/sendMessage", headers={"ApiKey": TEST_KEY},
                              json={"channel": "orders", "text": f"other {number}",
                                    "asBot": True})
    b.drain()
    assert texts(fake_pumble).count("order #4000 · 40.00 EUR") == 1


def test_a_post_pumble_applies_after_the_timeout_is_not_doubled(bridge, fake_pumble):
    b = bridge(read_timeout=0.3, connect_timeout=0.3)
    faults(fake_pumble, delay=0.8)  # applied 0.8 s after sending; the client gives up at 0.3 s
    b.enqueue("order #4001 · 41.00 EUR")
    sent_at = time.time()
    b.work()
    httpx.delete(f"{fake_pumble.url}/_fake/faults")
    # Pumble applies it within the time a late write is given ...
    wait_until(lambda: texts(fake_pumble) == ["order #4001 · 41.00 EUR"], "the late write", 5)
    b.drain()
    assert texts(fake_pumble) == ["order #4001 · 41.00 EUR"]
    # ... which the look waited for, past the client's timeouts.
    assert b.clock.time() >= sent_at + 0.3 + 0.3 + LATE_WRITE


# -- threads and reactions ------------------------------------------------------------------------

THREAD_ROUTES = [
    {"name": "created", "match": {"event": ["order.created"]}, "channel": "orders",
     "text": "🛒 order {{ order.number }} created"},
    {"name": "later", "match": {"event": ["order.paid", "order.fulfilled"]}, "channel": "orders",
     "text": "order {{ order.number }}: {{ event.type }}", "thread": True,
     "reactions": {"order.fulfilled": ":white_check_mark:"}},
]


def test_a_thread_created_paid_fulfilled_with_a_reaction_arriving_out_of_order(
        bridge, fake_pumble, rq_queue):
    from bridge.samples import body_of, shopify_headers, shopify_order
    from bridge.sources.shopify import sign
    from bridge.web import create_app
    from tests.conftest import TEST_SECRET

    b = bridge({"thread_wait": 30}, routes=THREAD_ROUTES)
    body = body_of(shopify_order(5005))
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as receiver:
        for topic in ("orders/paid", "orders/fulfilled", "orders/create"):  # out of order
            headers = {**shopify_headers(topic, webhook_id=f"wh-{topic}"),
                       "X-Shopify-Hmac-Sha256": sign(TEST_SECRET.encode(), body)}
            answer = httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            if topic == "orders/paid":  # the reply is worked on before its root even arrives
                b.work()
                assert fake_pumble.messages() == []
    b.drain()
    root, *replies = fake_pumble.messages()
    assert root["text"] == "🛒 order 5005 created"
    assert sorted(r["text"] for r in replies) == ["order 5005: order.fulfilled",
                                                  "order 5005: order.paid"]
    assert all(r["threadReplyInfo"]["rootId"] == root["id"] for r in replies)
    assert [r["code"] for r in root["reactions"]] == [":white_check_mark:"]


def test_a_reply_without_a_root_is_posted_alone_after_the_wait(bridge, fake_pumble):
    b = bridge({"thread_wait": 0}, routes=THREAD_ROUTES)
    b.enqueue("order 9: paid", event_type="order.paid", thread_key="order:9", reply=True)
    b.enqueue("order 9: fulfilled", event_type="order.fulfilled", thread_key="order:9",
              reply=True)
    b.drain()
    first, second = fake_pumble.messages()
    assert first["text"] == "order 9: paid" and first["threadReplyInfo"] is None
    assert second["threadReplyInfo"]["rootId"] == first["id"]  # the first became the root


def test_a_reply_waits_thread_wait_for_a_root_never_announced_then_goes_alone(bridge,
                                                                            fake_pumble):
    b = bridge({"thread_wait": 20}, routes=THREAD_ROUTES)
    enqueued_at = b.clock.time()
    b.enqueue("order 9: paid", event_type="order.paid", thread_key="order:9", reply=True)
    b.work()
    assert fake_pumble.messages() == []  # waiting
    b.drain()
    [message] = fake_pumble.messages()
    assert message["text"] == "order 9: paid" and message["threadReplyInfo"] is None
    assert b.clock.time() - enqueued_at >= 20


def test_a_reply_stops_waiting_when_its_root_is_dead_lettered(bridge, fake_pumble):
    b = bridge({"thread_wait": 600, "max_attempts": 1})
    faults(fake_pumble, fail_next={"count": 1, "status": 503})
    b.enqueue("order 3 created", thread_key="order:3", starts_thread=True)
    b.enqueue("order 3 paid", event_type="order.paid", thread_key="order:3", reply=True)
    b.drain()
    assert texts(fake_pumble) == ["order 3 paid"]
    assert [r.notification.text for r in b.dead.list()] == ["order 3 created"]


# -- digests --------------------------------------------------------------------------------------

def test_a_backlog_beyond_the_limit_becomes_digests_and_loses_nothing(bridge, fake_pumble):
    # 6 messages a minute, a 60 s window: a backlog over 6 is merged, 10 lines a digest.
    b = bridge({"rate_limits": {"messages": 6}, "digest": {"window": 60, "max_items": 10}})
    for number in range(1, 31):
        b.enqueue(f"🛒 order #{number:03d}\nline two", event_id=f"e-{number}")
    b.drain()
    posted = texts(fake_pumble)
    assert len(posted) < 30
    assert stats(fake_pumble)["rate_limited"] == 0
    lines = [line for text in posted for line in text.splitlines()]
    for number in range(1, 31):
        mentions = [line for line in lines if f"#{number:03d}" in line]
        assert len(mentions) == 1, (number, posted)
    assert any(text.startswith("📦 10 notifications (order.created)") for text in posted)


def test_a_job_sending_alone_is_never_taken_into_an_earlier_jobs_digest(bridge):
    """Two workers: the second job claims first and sends alone; the first job's digest,
    claimed a moment later, must not take the second in too (it would be posted twice)."""
    b = bridge()
    first, second, *rest = [b.enqueue(f"order #{number}", event_id=f"al-{number}")
                            for number in range(5)]
    backlog, name = b.queue.backlog, b.queue.rq.name
    assert backlog.claim(second, job_id(name, second), threshold=10, max_items=10).members == ()
    members = backlog.claim(first, job_id(name, first), threshold=1, max_items=10).members
    assert set(members) == {job_id(name, n) for n in rest}


def test_a_digest_run_again_after_its_post_ends_without_posting_again(bridge, fake_pumble,
                                                                       rq_queue):
    """A digest's job whose post is recorded (a worker killed right after it, or a reaction
    left to retry) runs again: it ends with its members, and posts nothing more."""
    b = bridge()
    first, *others = [b.enqueue(f"order #{number}", event_id=f"dg-{number}")
                      for number in range(3)]
    owner = job_id(b.queue.rq.name, first)
    assert len(b.queue.backlog.claim(first, owner, threshold=1, max_items=10).members) == 2
    job = rq_queue.fetch_job(owner)
    job.meta["sent"] = {"id": "m-earlier", "channel_id": "c-orders"}  # as _sent records it
    job.save_meta()
    b.drain()
    assert texts(fake_pumble) == []
    assert rq_queue.fetch_job(owner).return_value() == {
        "message_id": "m-earlier", "channel_id": "c-orders", "digest": 3}
    assert all(rq_queue.fetch_job(job_id(b.queue.rq.name, n)).return_value() == {
        "in_digest_of": owner} for n in others)


def test_a_steady_stream_faster_than_the_limit_becomes_digests(bridge, fake_pumble,
                                                                monkeypatch):
    """Jobs that wait for a rate-limit slot stay in their route's backlog, so a stream that
    outruns the limit is merged (not only a burst that arrives all at once)."""
    from bridge.ratelimit import Limit, limits_per_minute

    monkeypatch.setattr(deliverer, "limits_per_minute", lambda overrides: {
        kind: Limit(limit.per_minute, window=2) for kind, limit in
        limits_per_minute(overrides).items()})  # 2 messages in any 2 (+1) s
    # job_timeout 5 leaves no time to wait for a slot inside a job: it is rescheduled instead.
    b = bridge({"rate_limits": {"messages": 2}, "job_timeout": 5,
                "digest": {"window": 60, "max_items": 10}}, read_timeout=1, connect_timeout=1)
    for number in range(12):
        b.enqueue(f"🛒 order #{number:03d}", event_id=f"stream-{number}")
        b.work()
    b.drain()
    posted = texts(fake_pumble)
    lines = [line for text in posted for line in text.splitlines()]
    for number in range(12):
        assert sum(f"#{number:03d}" in line for line in lines) == 1, posted
    assert len(posted) < 12
    assert any(text.startswith("📦") for text in posted)


def test_digest_off_for_a_route_sends_each_alone(bridge, fake_pumble):
    b = bridge({"rate_limits": {"messages": 80}, "digest": {"window": 1}})
    for number in range(5):
        b.enqueue(f"order {number}", digest=False)
    b.drain()
    assert texts(fake_pumble) == [f"order {number}" for number in range(5)]


# -- accounts -------------------------------------------------------------------------------------

def test_each_route_sends_with_its_account(write_config, redis_url, queue_name, rq_queue):
    with LocalServer(create_fake_pumble(keys=["key-main"], channels=["orders"])) as main, \
            LocalServer(create_fake_pumble(keys=["key-eu"], channels=["orders"])) as eu, \
            httpx.Client() as http:
        path = write_config(redis_url=redis_url, queue=queue_name, pumble_url=main.url,
                            api_key="key-main")
        accounts = f"  accounts:\n    eu: {{api_key: key-eu, base_url: '{eu.url}'}}\n"
        path.write_text(path.read_text().replace("pumble:\n", "pumble:\n" + accounts))
        b = Bridge(path, redis_url, rq_queue)
        for account in ("default", "eu"):
            b.enqueue(f"via {account}", route=f"r-{account}", account=account)
        b.drain()
        assert texts(FakePumble(main, http)) == ["via default"]
        assert texts(FakePumble(eu, http)) == ["via eu"]


def test_unknown_account_in_a_route_is_a_config_error(write_config):
    from bridge.config import ConfigError

    routes = [{"name": "r", "channel": "c", "text": "t", "account": "nope"}]
    with pytest.raises(ConfigError, match=r"account 'nope', which is not under pumble\.accounts"):
        load_config(write_config(routes=routes), {})


def test_no_key_is_stored_in_redis(bridge, fake_pumble, rq_queue):
    b = bridge()
    b.enqueue("secret-free", channel="nowhere")
    b.drain()
    connection = rq_queue.connection
    stored = b""
    for key in connection.scan_iter(match="rq:job:*"):
        fields = connection.hgetall(key)
        stored += zlib.decompress(fields.pop(b"data")) + b"".join(fields.values())
    assert b"secret-free" in stored  # the jobs were read
    assert TEST_KEY.encode() not in stored


def test_a_template_failing_at_run_time_is_a_dead_letter_retried_once_fixed(
        bridge, fake_pumble, rq_queue):
    from bridge.web import create_app
    from tests.conftest import signed_order
    from tests.test_e2e import clean_env, cli

    broken = [{"name": "broken", "channel": "orders", "text": "{{ order.total / 0 }}"}]
    b = bridge(routes=broken)
    body, headers = signed_order(6006, webhook_id="wh-broken")
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as receiver:
        answer = httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
        again = httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
    assert answer.status_code == 202  # the receiver stays up; the shop need not retry
    [failure] = answer.json()["failed"]
    assert failure.startswith("route 'broken': DivisionByZero")
    assert again.status_code == 200 and again.json()["duplicate"]
    [record] = b.dead.list()  # one, not one a delivery
    assert record.reason.startswith("the template failed: route 'broken'")
    # Its webhook is kept as long as the dead letter, to render it again from.
    event_ttl = rq_queue.connection.ttl(b.queue.keys.event("shop", record.notification.event_id))
    assert event_ttl > FAILURE_TTL - 60
    assert "X-Shopify-Hmac-Sha256".lower() not in b.dead.get(record.id).event["headers"]

    shown = cli("--config", str(b.path), "dlq", "show", record.id, env=clean_env())
    assert shown.returncode == 0, shown.stderr
    assert "webhook body:\n  {\n" in shown.stdout and '    "order_number": 6006' in shown.stdout

    fixed = yaml.safe_load(b.path.read_text())
    fixed["routes"][0]["text"] = "order {{ order.number }} at last"
    b.path.write_text(yaml.safe_dump(fixed))
    retried = cli("--config", str(b.path), "dlq", "retry", record.id, env=clean_env())
    assert retried.returncode == 0, retried.stdout + retried.stderr
    b.drain()
    assert texts(fake_pumble) == ["order 6006 at last"]


# -- the job ---------------------------------------------------------------------------------------

def test_jobs_queued_by_the_previous_version_are_delivered(bridge, fake_pumble, rq_queue):
    """A job's payload as this and earlier versions queue it (the route's options as flat
    fields; before occurred_at, without it) is read after an upgrade: a thread's first
    message, then a reply in its thread with the reaction the route asked for."""
    from bridge.queue import DELIVER
    from bridge.retry import CRASH_RETRIES

    b = bridge({"thread_wait": 0})
    old = {"source": "shop", "event_type": "order.created", "route": "r", "channel": "orders",
           "as_bot": True, "account": "default", "received_at": b.clock.time(),
           "thread_key": "order:62", "starts_thread": False, "reply": False, "reaction": "",
           "create_channel": False, "digest": True}
    payloads = [{**old, "event_id": "e-62", "text": "order 62 created", "starts_thread": True},
                {**old, "event_id": "e-63", "event_type": "order.paid", "route": "later",
                 "text": "order 62 paid", "reply": True, "reaction": ":moneybag:",
                 "occurred_at": 0.0}]
    for payload in payloads:
        rq_queue.enqueue(DELIVER, payload, job_id=f"n-{payload['event_id']}",
                         retry=CRASH_RETRIES)
    b.drain()
    root, reply = fake_pumble.messages()
    assert (root["text"], reply["text"]) == ("order 62 created", "order 62 paid")
    assert reply["threadReplyInfo"]["rootId"] == root["id"]
    assert [r["code"] for r in root["reactions"]] == [":moneybag:"]


def test_a_job_run_outside_the_bridges_worker_fails_in_one_line(bridge, fake_pumble, rq_queue,
                                                                  monkeypatch):
    """A worker not given a Deliverer (rq's own, or ours built without one; rq's own takes a
    minute to stop on redis-py 8.2): no config was handed over, and none is guessed
    ($BRIDGE_CONFIG names a working one here, and nothing is sent with it)."""
    from rq.serializers import JSONSerializer

    from bridge.queue import DELIVER
    from bridge.worker import DeliveryWorker

    b = bridge()
    monkeypatch.setenv("BRIDGE_CONFIG", str(b.path))
    notification = Notification(source="shop", event_id="e-elsewhere", event_type="order.created",
                                route="r", channel="orders", text="not through our worker",
                                received_at=b.clock.time())
    job = rq_queue.enqueue(DELIVER, notification.to_payload())
    DeliveryWorker([rq_queue], connection=rq_queue.connection,
                   serializer=JSONSerializer).work(burst=True)
    job = rq_queue.fetch_job(job.id)
    assert job.is_failed
    assert job.latest_result().exc_string.strip().splitlines()[-1] == (
        "RuntimeError: bridge.delivery.deliver runs in the bridge's own worker "
        "(pumble-bridge worker), which gives it its config")
    assert stats(fake_pumble)["requests"] == 0


def test_a_notifications_actions_are_what_its_route_asked_for():
    from bridge.delivery.actions import Post, React, Thread, actions_of

    base = Notification(source="shop", event_id="e-1", event_type="order.paid", route="r",
                        channel="orders", text="paid", as_bot=False)
    alone = actions_of(base)
    assert alone.post == Post(channel="orders", text="paid", as_bot=False, create_channel=False)
    assert alone.thread is None and alone.react is None
    reply = actions_of(Notification(**{**base.to_payload(), "thread_key": "order:1",
                                       "reply": True, "reaction": ":tada:"}))
    assert reply.thread == Thread(starts=False, reply=True)
    assert reply.react == React(":tada:")
    # A reply with no conversation to be in (no order id) is a message of its own.
    assert actions_of(Notification(**{**base.to_payload(), "reply": True})).thread is None
