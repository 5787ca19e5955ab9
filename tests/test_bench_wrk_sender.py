"""bench/wrk_sender.py: the flash-sale benchmark's sender outside Python (wrk and a Lua script)
sends every order once, signed, with its own delivery id, never before it is due, and reports
each answer against its order."""

from __future__ import annotations

import hmac
import json
import threading
from pathlib import Path

import pytest
from flask import Flask, Response, request

from bench import stack, wrk_sender
from bridge.local_server import LocalServer


def test_the_log_gives_each_order_its_due_time_send_and_answer() -> None:
    ids, numbers = ["w-1", "w-2", "w-3"], [101, 102, 103]
    log = "\n".join([
        "start 1000.000000 3 4.0",
        "sent 1 1000.001000", "sent 2 1000.300000",
        "ack w-2 1000.350000 202", "ack w-1 1000.400000 202",
        "ack - 1000.500000 503",  # an answer that names no order
        "filler 1000.600000",
    ])
    outcome = wrk_sender.read_log(log, ids, numbers, ended=1100.0)
    first, second, third = outcome.sent
    assert (first.number, first.due, first.sent, first.acked, first.status) == (
        101, 1000.0, 1000.001, 1000.4, 202)
    assert (second.due, second.acked, second.status) == (1000.25, 1000.35, 202)
    # Never sent nor answered: status 0, its latency running to the end.
    assert (third.due, third.sent, third.acked, third.status) == (1000.5, 1100.0, 1100.0, 0)
    assert outcome.unmatched == {"503": 1}
    assert outcome.fillers == 1
    assert stack.answer_counts(outcome.sent) == {"202": 2, "0": 1}


def test_an_order_answered_twice_keeps_its_first_answer() -> None:
    log = "start 10.0 1 1.0\nsent 1 10.1\nack w-1 10.2 202\nack w-1 10.3 200\n"
    (only,) = wrk_sender.read_log(log, ["w-1"], [7], ended=20.0).sent
    assert (only.acked, only.status, only.attempts) == (10.2, 202, 1)


def test_a_header_with_a_line_break_is_refused(tmp_path: Path) -> None:
    prepared = {1: (b"{}", {"X-Shopify-Webhook-Id": "a\nb"})}
    with pytest.raises(ValueError, match="line break"):
        wrk_sender.write_requests(tmp_path / "orders.req", prepared)


class Shop:
    """A receiver that checks each order's signature and answers 202 naming it, as ours does."""

    def __init__(self) -> None:
        self.received: list[tuple[str, int, bool]] = []  # (delivery id, order number, signed)
        self._lock = threading.Lock()
        self.app = Flask(__name__)
        self.app.add_url_rule("/webhooks/shop", "hook", self.hook, methods=["POST"])

    def hook(self) -> Response:
        body = request.get_data()
        expected = stack.sign(body)
        signed = hmac.compare_digest(expected, request.headers["X-Shopify-Hmac-Sha256"])
        webhook_id = request.headers["X-Shopify-Webhook-Id"]
        with self._lock:
            self.received.append((webhook_id, json.loads(body)["order_number"], signed))
        return Response(json.dumps({"event_id": webhook_id, "duplicate": False}), 202,
                        content_type="application/json")


@pytest.mark.skipif(not wrk_sender.available(), reason="wrk is not on PATH (apt-get install wrk)")
def test_wrk_sends_every_order_once_signed_and_never_before_it_is_due(tmp_path: Path) -> None:
    numbers = range(5001, 5041)
    prepared = stack.Shop.prepare(numbers, "test")
    shop = Shop()
    with LocalServer(shop.app) as server:
        outcome = wrk_sender.send(f"{server.url}/webhooks/shop", prepared, 200.0, tmp_path,
                                  connections=4)
    assert sorted(shop.received) == sorted(
        (f"bench-test-{n}", n, True) for n in numbers)  # each once, signed, its own id
    assert [s.number for s in outcome.sent] == list(numbers)
    assert {s.status for s in outcome.sent} == {202}
    assert outcome.unmatched == {} and outcome.exit_code == 0
    for index, s in enumerate(outcome.sent):
        assert s.due == pytest.approx(outcome.start + index / 200.0)
        assert s.sent >= s.due - 0.001  # the schedule: never early (wrk's timers are in ms)
        assert s.acked >= s.sent
    assert outcome.cpu_s > 0


def test_order_number_is_in_the_body() -> None:
    """The fake shop above reads the number from the body: the bench's orders carry it."""
    body = json.loads(stack.order_body(5001))
    assert body["order_number"] == 5001 and len(stack.order_body(5001)) == stack.BODY_BYTES
