"""Order: replies in an order's thread follow its events, whatever order the webhooks arrive and
the retries run; a late first event never makes a second top-level message. Webhooks over real
HTTP to the receiver, a real Redis, real (burst) workers, the fake Pumble over HTTP with its
faults."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from bridge.local_server import LocalServer
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources.shopify import sign
from bridge.web import create_app
from tests.conftest import TEST_SECRET, FakePumble
from tests.test_delivery import THREAD_ROUTES
from tests.test_identity import LossyProxy

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
