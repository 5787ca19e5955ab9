"""The admin's events: search and filters (page and JSON), an event's detail, replay."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.cli import main
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources.shopify import sign
from tests.conftest import TEST_SECRET
from tests.test_admin import SECRETS, TOKEN, Admin, admin_app, admin_config, csrf_of

BEARER = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
ORDERS = [{"name": "orders", "match": {"event": "order.created"}, "channel": "orders",
           "text": "order {{ order.number }} for {{ customer.name }}"}]
CUSTOMERS = [("Grace", "Hopper"), ("Alan", "Turing"), ("Katherine", "Johnson")]


@pytest.fixture
def three_orders(bridge) -> Admin:
    """Three orders sent (numbers 42856 to 42858, one customer each) and delivered."""
    b = admin_config(bridge(routes=ORDERS))
    app = admin_app(b)
    a = Admin(b, app, app.test_client())
    for body, headers in three_webhooks():
        assert a.client.post("/webhooks/shop", data=body, headers=headers).status_code == 202
    b.drain()
    return a


def three_webhooks() -> list[tuple[bytes, dict[str, str]]]:
    """Signed Shopify orders 42856 to 42858, each with its own customer, as webhook ev-<n>."""
    webhooks = []
    for number, (first, last) in enumerate(CUSTOMERS, start=42856):
        order = shopify_order(number)
        order["customer"].update(first_name=first, last_name=last,
                                 email=f"{first.lower()}@example.com")
        body = body_of(order)
        headers = shopify_headers(webhook_id=f"ev-{number}")
        headers["X-Shopify-Hmac-Sha256"] = sign(TEST_SECRET.encode(), body)
        webhooks.append((body, headers))
    return webhooks


def listed(a: Admin, query: str) -> list[dict[str, Any]]:
    answer = a.client.get(f"/admin/?{query}", headers=BEARER)
    assert answer.status_code == 200, answer.text
    return answer.json["events"]


def test_search_by_number_shows_that_order_with_its_amount_and_customer(three_orders,
                                                                       fake_pumble):
    a = three_orders
    [event] = listed(a, "q=42857")
    assert (event["event_id"], event["ref"], event["amount"], event["currency"],
            event["customer"], event["states"]) == \
        ("ev-42857", "#42857", "368.40", "EUR", "Alan Turing", ["sent"])
    [message] = fake_pumble.messages("orders")[1:2]
    assert [e["event_id"] for e in listed(a, f"q={message['id']}")] == ["ev-42857"]
    assert [e["event_id"] for e in listed(a, "q=katherine%40example")] == ["ev-42858"]
    assert [e["event_id"] for e in listed(a, "q=GRACE+hopper")] == ["ev-42856"]
    assert len(listed(a, "state=sent&source=shop&type=order.created")) == 3
    assert listed(a, "state=dead") == [] and listed(a, "type=order.paid") == []
    assert listed(a, "source=shop2") == []

    a.sign_in()
    page = a.client.get("/admin/?q=42857").text
    assert "#42857" in page and "368.40 EUR" in page and "Alan Turing" in page
    assert "42856" not in page and "Grace" not in page
    assert 'value="42857"' in page  # the search box keeps the query


def test_bad_filters_get_one_line_errors(three_orders):
    a = three_orders
    answer = a.client.get("/admin/?state=lost", headers=BEARER)
    assert (answer.status_code, answer.json) == \
        (400, {"error": "state must be one of sent, waiting, failed, dead"})
    a.sign_in()
    page = a.client.get("/admin/?state=%3Cscript%3E")
    assert page.status_code == 400 and "<script>" not in page.text
    assert "state must be one of" in page.text


def test_the_events_page_may_run_its_own_script_only(three_orders):
    a = three_orders
    a.sign_in()
    page = a.client.get("/admin/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'; connect-src 'self';" in csp and "unsafe" not in csp
    assert page.text.count("<script") == page.text.count('<script src="/admin/live.js">') == 1
    script = a.client.get("/admin/live.js")
    assert script.mimetype == "text/javascript" and b"getElementById(\"events\")" in script.data
    assert "script-src" not in a.client.get("/admin/events/ev-42857").headers[
        "Content-Security-Policy"]


def test_a_search_is_escaped_in_the_page(three_orders):
    a = three_orders
    a.sign_in()
    page = a.client.get("/admin/?q=%22%3E%3Cscript%3Ealert(1)%3C/script%3E").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "No event matches." in page


def test_detail_shows_the_webhook_and_the_posted_text(three_orders, fake_pumble):
    a = three_orders
    posted = {m["text"]: m["id"] for m in fake_pumble.messages("orders")}
    data = a.client.get("/admin/events/ev-42857", headers=BEARER).json
    [line] = data["lines"]
    [delivery] = line["deliveries"]
    assert delivery["message_id"] == posted["order 42857 for Alan Turing"]
    assert delivery["posted"]["text"] == "order 42857 for Alan Turing"
    assert [(t["outcome"], t["answer"].startswith("message_id ")) for t in
            delivery["posted"]["attempts"]] == [("successful", True)]
    assert delivery["posted"]["thread"] == "order:5000000042857"
    assert delivery["posted"]["thread_root"] == delivery["message_id"]
    headers = {name.lower(): value for name, value in data["webhook"]["headers"].items()}
    assert headers["x-shopify-topic"] == "orders/create"
    assert not any("hmac" in name for name in headers)
    assert '"order_number": 42857' in data["webhook"]["body"]

    a.sign_in()
    page = a.client.get("/admin/events/ev-42857").text
    assert "order 42857 for Alan Turing" in page and "&#34;order_number&#34;: 42857" in page
    assert not any(secret in page for secret in SECRETS)
    assert "Hmac" not in page
    assert a.client.get("/admin/events/nope", headers=BEARER).status_code == 404


def test_replay_posts_it_again_marked_as_a_replay(three_orders, fake_pumble, caplog):
    a = three_orders
    caplog.set_level("INFO", logger="bridge.replay")
    answer = a.client.post("/admin/events/ev-42857/replay", headers=BEARER)
    assert answer.json == {"replayed": "ev-42857:replay:1", "notifications": 1, "failed": []}
    assert "event ev-42857 replayed as ev-42857:replay:1: 1 notification(s)" in caplog.messages
    a.bridge.drain()
    texts = [m["text"] for m in fake_pumble.messages("orders")]
    assert texts.count("order 42857 for Alan Turing") == 2 and len(texts) == 4

    replay, original = listed(a, "q=42857")
    assert (replay["event_id"], replay["replay_of"], replay["states"]) == \
        ("ev-42857:replay:1", "ev-42857", ["sent"])
    assert (original["event_id"], original["replay_of"]) == ("ev-42857", "")
    assert replay["deliveries"][0]["message_id"] != original["deliveries"][0]["message_id"]

    # The page's button: CSRF-protected; a second replay is a new one, never deduplicated.
    csrf = a.sign_in()
    assert a.client.post("/admin/events/ev-42857/replay").status_code == 403
    done = a.client.post("/admin/events/ev-42857/replay", data={"csrf": csrf})
    assert done.status_code == 303 and "done=replayed" in done.location
    page = a.client.get(done.location).text
    assert "Sent again" in page and "ev-42857:replay:2" in page and csrf_of(page) == csrf
    a.bridge.drain()
    assert [m["text"] for m in fake_pumble.messages("orders")].count(
        "order 42857 for Alan Turing") == 3


def test_replay_refuses_what_it_cannot_send(three_orders):
    a = three_orders
    unknown = a.client.post("/admin/events/nope/replay", headers=BEARER)
    assert (unknown.status_code, unknown.json) == \
        (409, {"error": "no event 'nope' among the recent events"})
    no_route = a.client.post("/admin/events/ev-42857/replay", data={"route": "vip"},
                             headers=BEARER)
    assert no_route.status_code == 409
    assert no_route.json["error"] == "event 'ev-42857': no route named 'vip' matches it today"
    a.bridge.queue.rq.connection.delete(
        a.bridge.queue.keys.event("shop", "ev-42856"))  # its webhook has expired
    gone = a.client.post("/admin/events/ev-42856/replay", headers=BEARER)
    assert gone.json == {"error": "event 'ev-42856': its webhook is no longer kept"}


def test_the_cli_lists_what_the_page_lists_and_replays(three_orders, fake_pumble, capsys):
    a = three_orders
    config = ["--config", str(a.bridge.path)]
    assert main(["events", *config, "--q", "42857", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"events": listed(a, "q=42857")}
    assert main(["events", *config, "--state", "sent"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "3 event(s)" and "#42858  368.40 EUR  Katherine Johnson" in lines[0]

    assert main(["replay", *config, "ev-42857"]) == 0
    assert capsys.readouterr().out == \
        "ev-42857 queued again as ev-42857:replay:1 (routes: orders)\n"
    a.bridge.drain()
    assert [m["text"] for m in fake_pumble.messages("orders")].count(
        "order 42857 for Alan Turing") == 2
    assert main(["events", *config, "--q", "42857"]) == 0
    assert "replay of ev-42857" in capsys.readouterr().out.splitlines()[0]

    assert main(["replay", *config, "nope"]) == 1
    assert capsys.readouterr().out == \
        "pumble-bridge replay: no event 'nope' among the recent events\n"
    with pytest.raises(SystemExit):
        main(["events", *config, "--state", "lost"])
    assert "invalid choice: 'lost'" in capsys.readouterr().err
