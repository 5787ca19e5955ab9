"""The recent events and each delivery's state, as the admin page shows them."""

from __future__ import annotations

import httpx

from bridge.activity import Activity
from bridge.local_server import LocalServer
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


def test_only_the_newest_are_kept(bridge):
    b = bridge()
    activity = Activity(b.queue, keep=3)
    for number in range(5):
        activity.record(event_id=f"e-{number}", source="shop", event_type="order.created",
                        received_at=0.0, notifications=[], failures=[])
    assert [e.event_id for e in activity.recent()] == ["e-4", "e-3", "e-2"]
