"""Alerts end to end: webhooks over HTTP, a real Redis, workers that go by the test's clock, and
the fake Pumble, whose alerts channel is read back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.fake_pumble import create_fake_pumble
from bridge.local_server import LocalServer
from tests.conftest import TEST_KEY, Bridge, FakePumble, signed_order, texts
from tests.test_mutes import ORDERS, with_config

REVOKED = "revoked-key-0123456789abcdef01234567"  # a key the fake Pumble answers 403 for


@pytest.fixture
def fake_pumble() -> Iterator[FakePumble]:
    """The fake, with an alerts channel beside the orders one."""
    app = create_fake_pumble(keys=[TEST_KEY], channels=["orders", "alerts"])
    with LocalServer(app) as server, httpx.Client() as http:
        yield FakePumble(server, http)


def alerting(bridge, alerts: dict[str, Any], routes=None, **pumble: Any) -> Bridge:
    b = bridge(routes=routes, **pumble)
    return with_config(b, alerts={"channel": "alerts", **alerts})


def post(b: Bridge, *numbers: int, secret: str | None = None) -> list[int]:
    """Signed orders (with ``secret`` instead of the source's, a bad signature), over HTTP."""
    from bridge.web import create_app

    statuses = []
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        for number in numbers:
            body, headers = signed_order(number, webhook_id=f"alert-{number}",
                                         **({"secret": secret} if secret else {}))
            statuses.append(httpx.post(f"{server.url}/webhooks/shop", content=body,
                                       headers=headers).status_code)
    return statuses


def alerts_total(condition: str, outcome: str) -> str:
    return f'pumble_bridge_alerts_total{{condition="{condition}",outcome="{outcome}"}}'


def test_a_key_pumble_refuses_makes_one_alert_on_another_account(bridge, fake_pumble):
    b = alerting(bridge, {"key_rejected": True}, routes=[{**ORDERS, "account": "shop"}],
                 accounts={"shop": {"api_key": REVOKED}})
    assert post(b, 1001, 1002) == [202, 202]

    b.drain()

    assert texts(fake_pumble, "orders") == []
    assert len(b.dead.list()) == 2  # both refused: one alert all the same
    [alert] = texts(fake_pumble, "alerts")
    assert "Pumble refused the API key of account shop (403)" in alert
    assert REVOKED not in alert


def test_a_dead_letter_alert_names_the_route_and_the_reason(bridge, fake_pumble):
    b = alerting(bridge, {"dead_letter": True}, routes=[{**ORDERS, "channel": "nowhere"}])
    post(b, 1001)

    b.drain()

    [alert] = texts(fake_pumble, "alerts")
    assert alert.startswith("⚠️ pumble-bridge: a notification of route new-orders gave up")
    assert "dlq list" in alert


def test_an_alert_that_cannot_be_posted_is_logged_and_counted_not_retried(
        bridge, fake_pumble, caplog):
    b = alerting(bridge, {"dead_letter": True, "account": "alarms"},
                 routes=[{**ORDERS, "channel": "nowhere"}],
                 accounts={"alarms": {"api_key": REVOKED}})
    post(b, 1001, 1002)

    with caplog.at_level(logging.WARNING, logger="bridge.alerts_sender"):
        b.drain()

    assert texts(fake_pumble) == []
    failed = [r.getMessage() for r in caplog.records if r.name == "bridge.alerts_sender"]
    assert len(failed) == 1 and "could not be posted to #alerts (account alarms)" in failed[0]
    assert REVOKED not in failed[0]
    samples = b.metrics.exposition()[0].decode()
    assert alerts_total("dead_letter", "failed") + " 1.0" in samples


def test_bad_signatures_are_counted_by_the_receiver_and_alerted_by_the_worker(
        bridge, fake_pumble):
    b = alerting(bridge, {"signature_failures": {"count": 3, "within": 600}})
    assert post(b, 1, 2, secret="rotated-secret") == [401, 401]
    b.work()
    assert texts(fake_pumble, "alerts") == []  # two: under the count

    post(b, 3, secret="rotated-secret")
    b.work()
    b.work()  # again: within ten minutes, not a second alert

    [alert] = texts(fake_pumble, "alerts")
    assert alert == ("🔏 pumble-bridge: source shop: 3 webhooks with a bad signature in 10 min. "
                     "Was the shop's secret rotated?")


def test_a_stalled_queue_is_alerted_by_the_worker_maintenance(bridge, fake_pumble):
    b = alerting(bridge, {"queue_stalled": {"older_than": 300}},
                 routes=[{"name": "r", "channel": "orders", "text": "x"}])
    b.enqueue("order #1", received_at=b.clock.time() - 1000)

    b.work()  # its maintenance looks first, then it sends

    assert texts(fake_pumble, "alerts") == [
        "⏳ pumble-bridge: the oldest waiting notification is 16 min old (alert after 5 min). "
        "Are the workers running?"]
    assert texts(fake_pumble, "orders") == ["order #1"]


def test_a_silent_source_is_alerted_after_its_time(bridge, fake_pumble):
    b = alerting(bridge, {"source_silent": {"after": 3600}})
    b.work()  # the watch starts
    b.clock.sleep(1800)
    b.work()
    assert texts(fake_pumble, "alerts") == []

    b.clock.sleep(1801)
    b.work()

    [alert] = texts(fake_pumble, "alerts")
    assert alert.startswith("🔇 pumble-bridge: source shop has never sent a webhook.")
