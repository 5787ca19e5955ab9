"""The recent events and each delivery's state, as the admin page shows them; searching them."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson

from bridge.activity import Activity, Filters
from bridge.events import Customer, Event, Order, Payment, Refund, SourceRef
from bridge.local_server import LocalServer
from bridge.notification import Notification
from bridge.web import create_app
from tests.conftest import signed_order


def test_recent_events_follow_each_delivery_to_its_message(bridge, fake_pumble):
    routes = [{"name": "orders", "channel": "orders", "text": "order {{ order.number }}",
               "continue": True},
              {"name": "lost", "channel": "nowhere", "text": "order {{ order.number }}"}]
    b = bridge(routes=routes)
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as receiver:
        for number in (1, 2):
            body, headers = signed_order(number, webhook_id=f"act-{number}")
            httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
        httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)  # again
        activity = Activity(b.queue)
        assert [d.state for d in activity.recent()[1].deliveries] == ["queued", "queued"]
        b.drain()

    again, second, first = activity.recent()
    assert again.duplicate and again.deliveries == [] and again.event_id == "act-2"
    assert (second.event_id, first.event_id) == ("act-2", "act-1")
    sent, lost = first.deliveries
    [message] = [m for m in fake_pumble.messages() if m["text"] == "order 1"]
    assert (sent.route, sent.state, sent.message_id) == ("orders", "finished", message["id"])
    assert (lost.route, lost.state) == ("lost", "failed")
    assert "Could not find channel" in lost.error
    assert (first.ref, first.amount, first.currency, first.customer) == \
        ("#1", "368.40", "EUR", "Ada Lovelace")
    assert first.states == {"sent", "dead", "failed"}


def _event(number: int, test: bool = False, **customer: str) -> Event:
    return Event(id=f"e-{number}", type="order.created", source=SourceRef("shop", "shopify"),
                 order=Order(id=str(number), number=str(number), name=f"#{number}"),
                 customer=Customer(**customer) if customer else None, test=test)


def test_only_the_newest_are_kept(bridge):
    b = bridge()
    activity = Activity(b.queue, keep=3)
    for number in range(5):
        activity.record(_event(number), source="shop", received_at=0.0, notifications=[],
                        failures=[])
    assert [e.event_id for e in activity.recent()] == ["e-4", "e-3", "e-2"]


def test_search_finds_an_order_by_number_customer_email_or_event_id(bridge):
    b = bridge()
    activity = Activity(b.queue)
    people = [("Grace Hopper", "grace@navy.example"), ("Alan Turing", "alan@bletchley.example"),
              ("Ada Lovelace", "ada@engine.example")]
    for number, (name, email) in enumerate(people, start=42855):
        activity.record(_event(number, name=name, email=email), source="shop", received_at=0.0,
                        notifications=[], failures=[])
    activity.record(_event(1, test=True, name="Edsger"), source="other", received_at=0.0,
                    notifications=[], failures=[])

    def found(q: str = "", **filters: str) -> list[str]:
        return [e.event_id for e in activity.search(Filters(q=q, **filters))]

    assert found("42856") == ["e-42856"]
    assert found("#42856") == ["e-42856"]
    assert found("alan TURING") == ["e-42856"]  # any case
    assert found("ADA@engine") == ["e-42857"]
    assert found("e-42855") == ["e-42855"]
    assert found("4285") == ["e-42857", "e-42856", "e-42855"]
    assert found("nobody") == []
    assert found(source="other") == ["e-1"]
    assert [e.test for e in activity.recent()] == [True, False, False, False]
    assert found("4285", type="order.paid") == []
    assert [e.event_id for e in activity.search(Filters(q="4285"), limit=2)] == \
        ["e-42857", "e-42856"]


def test_search_by_pumble_message_id_and_state(bridge, fake_pumble):
    routes = [{"name": "orders", "channel": "orders", "text": "order {{ order.number }}"}]
    b = bridge(routes=routes)
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as receiver:
        for number in (7001, 7002):
            body, headers = signed_order(number, webhook_id=f"st-{number}")
            httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
        activity = Activity(b.queue)
        assert [e.event_id for e in activity.search(Filters(state="waiting"))] == \
            ["st-7002", "st-7001"]
        b.drain()
    [_, second] = sorted(fake_pumble.messages(), key=lambda m: m["text"])
    assert [e.event_id for e in activity.search(Filters(q=second["id"]))] == ["st-7002"]
    assert activity.search(Filters(q="sent")) == []  # a word of the job's meta is no id
    assert [e.event_id for e in activity.search(Filters(state="sent"))] == \
        ["st-7002", "st-7001"]
    assert activity.search(Filters(state="waiting")) == []
    assert activity.search(Filters(state="dead")) == []


def test_the_state_filter_looks_past_the_first_batch(bridge, monkeypatch):
    """With a state filter the script hands back lines in batches; a match beyond the first
    batch is still found."""
    monkeypatch.setattr("bridge.activity.SCAN_BATCH", 3)
    b = bridge()
    activity = Activity(b.queue)
    activity.record(_event(0), source="shop", received_at=0.0, notifications=[],
                    failures=["orders: template failed"])
    for number in range(1, 8):
        activity.record(_event(number), source="shop", received_at=0.0, notifications=[],
                        failures=[])
    assert [e.event_id for e in activity.search(Filters(state="dead"))] == ["e-0"]
    assert [e.event_id for e in activity.search(Filters(state="failed"))] == ["e-0"]


def test_a_line_costs_about_half_a_kilobyte(bridge):
    """What the docs say the index costs: an order's line with two notifications, terms
    included, in Redis."""
    b = bridge()
    activity = Activity(b.queue)
    event = _event(123456, name="Ada Lovelace", email="ada@example.com")
    notifications = [Notification(source="shop", event_id=event.id, event_type=event.type,
                                  route=route, channel="orders", text="x")
                     for route in ("orders", "vip")]
    line = activity.entry(event, source="shop", received_at=1.5, notifications=notifications,
                          failures=[])
    assert "ada lovelace" in orjson.loads(line.entry)["terms"]
    for _ in range(100):
        activity.record(event, source="shop", received_at=1.5, notifications=notifications,
                        failures=[])
    key = f"pumble-bridge:{b.config.redis.queue}:activity"
    per_line = b.queue.rq.connection.memory_usage(key, samples=0) / 100
    assert 200 < per_line < 600, per_line


def test_a_refund_shows_the_refunded_amount_and_its_order(bridge):
    b = bridge()
    activity = Activity(b.queue)
    refund = Event(id="r-1", type="refund.created", source=SourceRef("shop", "shopify"),
                   order=Order(id="9", number="1001", name="#1001", total=Decimal("80.00"),
                               currency="EUR"),
                   refund=Refund(id="rf-7", amount=Decimal("12.50")))
    payment = Event(id="p-1", type="payment.failed", source=SourceRef("pay", "stripe"),
                    payment=Payment(id="pi_1", amount=Decimal("9.99"), currency="USD"))
    for event in (refund, payment):
        activity.record(event, source="shop", received_at=0.0, notifications=[], failures=[])
    assert [(e.ref, e.amount, e.currency) for e in activity.recent()] == \
        [("pi_1", "9.99", "USD"), ("#1001", "12.50", "EUR")]
