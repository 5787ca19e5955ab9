"""The admin page: off without a token, guarded by it, CSRF-proof, and never showing a secret."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from bridge.admin import SESSION_COOKIE
from bridge.web import create_app, receiver_of
from tests.conftest import TEST_KEY, TEST_SECRET, Bridge, signed_order

TOKEN = "admin-token-7d1f0c9e4b2a6583"
ACCOUNT_KEY = "other-account-key-5f3e9c1d2b7a4e60"  # a key the fake Pumble does not know
OTHER_SECRET = "second-source-secret-8d6c4b2a1e0f"
SECRETS = (TOKEN, TEST_KEY, ACCOUNT_KEY, TEST_SECRET, OTHER_SECRET)
ORDERS_AND_MISSING = [
    {"name": "orders", "match": {"event": "order.created"}, "channel": "orders",
     "text": "order {{ order.number }}", "continue": True},
    {"name": "lost", "match": {"event": "order.created"}, "channel": "missing",
     "text": "order {{ order.number }} for missing"},
]


@dataclass
class Admin:
    bridge: Bridge
    app: Flask
    client: FlaskClient

    def webhook(self, number: int, webhook_id: str | None = None) -> dict[str, Any]:
        body, headers = signed_order(number, webhook_id=webhook_id or f"adm-{number}")
        answer = self.client.post("/webhooks/shop", data=body, headers=headers)
        assert answer.status_code == 202, answer.json
        return answer.json

    def sign_in(self) -> str:
        """Signs the test client in; returns the session's CSRF token."""
        answer = self.client.post("/admin/login", data={"token": TOKEN})
        assert answer.status_code == 303, answer.text
        return csrf_of(self.client.get("/admin/dead-letters").text)


def admin_config(b: Bridge, *, token: str | None = TOKEN) -> Bridge:
    """The bridge's config with an admin token and a second source (each with a secret the admin
    must never show)."""
    config = yaml.safe_load(b.path.read_text())
    if token is not None:
        config["admin"] = {"token": token}
    config["sources"]["shop2"] = {"type": "shopify", "secret": [OTHER_SECRET, TEST_SECRET]}
    b.path.write_text(yaml.safe_dump(config))
    return Bridge(b.path, b.redis_url, b.rq)


def admin_app(b: Bridge) -> Flask:
    """The receiver, as served: create_app registers the admin pages."""
    return create_app(b.config, b.redis_url, watch=False)


@pytest.fixture
def admin(bridge):
    def make(routes=None, token: str | None = TOKEN) -> Admin:
        b = admin_config(bridge(routes=routes, accounts={"other": {"api_key": ACCOUNT_KEY}}),
                         token=token)
        app = admin_app(b)
        return Admin(b, app, app.test_client())

    return make


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def test_off_without_a_token(admin):
    a = admin(token=None)
    for path in ("/admin", "/admin/", "/admin/login", "/admin/routes", "/admin/queue",
                 "/admin/dead-letters"):
        assert a.client.get(path).status_code == 404, path
    assert a.client.post("/admin/login", data={"token": TOKEN}).status_code == 404
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert a.client.get("/admin/queue", headers=bearer).status_code == 404


def test_a_token_shorter_than_16_characters_is_refused(bridge):
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="too short"):
        admin_config(bridge(), token="short")


def test_sign_in_with_the_token_and_out_again(admin):
    a = admin()
    first = a.client.get("/admin/routes")
    assert first.status_code == 401
    assert 'name="token"' in first.text and "new-orders" not in first.text
    assert 'name="next" value="/admin/routes"' in first.text

    wrong = a.client.post("/admin/login", data={"token": TOKEN[:-1] + "x"})
    assert wrong.status_code == 401
    assert "not right" in wrong.text and "Set-Cookie" not in wrong.headers
    assert a.client.get("/admin/routes").status_code == 401

    answer = a.client.post("/admin/login", data={"token": TOKEN, "next": "/admin/routes"})
    assert (answer.status_code, answer.headers["Location"]) == (303, "/admin/routes")
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=43200"):
        assert attribute in cookie
    assert TOKEN not in cookie
    session_id = cookie.split(";")[0].split("=", 1)[1]
    page = a.client.get("/admin/routes")
    assert page.status_code == 200 and "new-orders" in page.text

    out = a.client.post("/admin/logout", data={"csrf": csrf_of(page.text)})
    assert (out.status_code, out.headers["Location"]) == (303, "/admin/login")
    assert a.client.get("/admin/routes").status_code == 401
    # The session is gone from Redis too: the old cookie, replayed, opens nothing.
    a.client.set_cookie(SESSION_COOKIE, session_id, path="/admin")
    assert a.client.get("/admin/routes").status_code == 401


def test_after_sign_in_only_admin_pages_are_returned_to(admin):
    a = admin()
    for target in ("//evil.example/admin/", "https://evil.example/admin/", "/webhooks/shop",
                   "/admin/../healthz\\", "/admin/login"):
        answer = a.client.post("/admin/login", data={"token": TOKEN, "next": target})
        assert answer.status_code == 400 and "Set-Cookie" not in answer.headers, target
    answer = a.client.post("/admin/login", data={"token": TOKEN, "next": ""})
    assert answer.headers["Location"] == "/admin/"


def test_bearer_token_for_scripts(admin):
    a = admin()
    bearer = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    answer = a.client.get("/admin/queue", headers=bearer)
    assert answer.status_code == 200
    assert answer.json["depth"]["queued"] == 0
    assert set(answer.json["rate_limits"]) == {"default", "other"}
    assert answer.json["rate_limits"]["default"]["messages"]["limit"] == 80
    html = a.client.get("/admin/routes", headers={"Authorization": f"Bearer {TOKEN}"})
    assert html.status_code == 200 and "text/html" in html.content_type

    for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", f"bearer  {TOKEN[:-2]}"):
        refused = a.client.get("/admin/queue", headers={"Authorization": wrong,
                                                        "Accept": "application/json"})
        assert (refused.status_code, refused.json) == (401, {"error": "unauthorized"}), wrong
    # A wrong bearer is refused even alongside a good session cookie.
    a.sign_in()
    assert a.client.get("/admin/queue", headers={"Authorization": "Bearer nope"}) \
        .status_code == 401


def test_events_show_each_delivery_state_and_pumble_message_id(admin, fake_pumble):
    a = admin(routes=ORDERS_AND_MISSING)
    a.webhook(4242, "adm-ev-1")
    a.sign_in()
    page = a.client.get("/admin/").text
    assert "order.created" in page and "adm-ev-1" in page and "shop" in page
    assert page.count("queued") >= 2

    a.bridge.drain()
    [sent] = fake_pumble.messages("orders")
    assert sent["text"] == "order 4242"
    page = a.client.get("/admin/").text
    assert sent["id"] in page and ">sent<" in page and "dead letter" in page
    assert "Could not find channel" in page

    data = a.client.get("/admin/", headers={"Accept": "application/json"}).json
    [event] = data["events"]
    states = {d["route"]: (d["state"], d["message_id"]) for d in event["deliveries"]}
    assert states == {"orders": ("finished", sent["id"]), "lost": ("failed", "")}
    assert (event["source"], event["type"], event["event_id"]) == \
        ("shop", "order.created", "adm-ev-1")


def test_dead_letter_retry_needs_the_csrf_token_and_same_site(admin, fake_pumble):
    a = admin(routes=ORDERS_AND_MISSING)
    a.webhook(5151)
    a.bridge.drain()
    [letter] = a.bridge.dead.ids()
    csrf = a.sign_in()
    listing = a.client.get("/admin/dead-letters").text
    assert letter in listing and "#missing" in listing and "Could not find channel" in listing
    detail = a.client.get(f"/admin/dead-letters/{letter}").text
    assert "order 5151 for missing" in detail and "&#34;order_number&#34;: 5151" in detail

    retry = f"/admin/dead-letters/{letter}/retry"
    assert a.client.post(retry).status_code == 403  # no token
    assert a.client.post(retry, data={"csrf": csrf[:-1] + "x"}).status_code == 403
    for cross_site in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                       {"Origin": "https://evil.example"}, {"Origin": "null"}):
        assert a.client.post(retry, data={"csrf": csrf}, headers=cross_site).status_code \
            == 403, cross_site
    assert a.bridge.dead.ids() == [letter]  # nothing was done

    httpx.post(f"{fake_pumble.url}/_fake/channels", json={"name": "missing"}).raise_for_status()
    answer = a.client.post(retry, data={"csrf": csrf},
                           headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"})
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/admin/dead-letters?done=retried&count=1"
    assert "1 dead letter(s) back on the queue" in a.client.get(answer.headers["Location"]).text
    assert a.bridge.dead.ids() == []
    a.bridge.drain()
    assert [m["text"] for m in fake_pumble.messages("missing")] == ["order 5151 for missing"]
    # Done already: a second press finds nothing.
    again = a.client.post(retry, data={"csrf": csrf})
    assert again.headers["Location"].endswith("done=gone&count=0")


def test_purge_one_and_all_and_retry_all(admin, fake_pumble):
    a = admin(routes=ORDERS_AND_MISSING)
    for number in (1, 2, 3):
        a.webhook(number)
    a.bridge.drain()
    first, *rest = sorted(a.bridge.dead.ids())
    csrf = a.sign_in()
    assert a.client.post(f"/admin/dead-letters/{first}/purge").status_code == 403
    answer = a.client.post(f"/admin/dead-letters/{first}/purge", data={"csrf": csrf})
    assert answer.headers["Location"].endswith("done=purged&count=1")
    assert sorted(a.bridge.dead.ids()) == rest

    # purge-all asks for a ticked box
    a.client.post("/admin/dead-letters/purge-all", data={"csrf": csrf})
    assert len(a.bridge.dead.ids()) == 2
    assert a.client.post("/admin/dead-letters/retry-all").status_code == 403
    answer = a.client.post("/admin/dead-letters/retry-all", data={"csrf": csrf})
    assert answer.headers["Location"].endswith("done=retried&count=2")
    a.bridge.drain()  # still no channel: dead again
    assert len(a.bridge.dead.ids()) == 2
    assert a.client.post("/admin/dead-letters/purge-all", data={"confirm": "yes"}) \
        .status_code == 403
    answer = a.client.post("/admin/dead-letters/purge-all", data={"csrf": csrf,
                                                                  "confirm": "yes"})
    assert answer.headers["Location"].endswith("done=purged&count=2")
    assert a.bridge.dead.ids() == []
    assert "No dead letters" in a.client.get("/admin/dead-letters").text


def test_a_script_retries_with_the_bearer_token_alone(admin, fake_pumble):
    a = admin(routes=ORDERS_AND_MISSING)
    a.webhook(77)
    a.bridge.drain()
    [letter] = a.bridge.dead.ids()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    listing = a.client.get("/admin/dead-letters",
                           headers={**bearer, "Accept": "application/json"}).json
    assert [d["id"] for d in listing["dead_letters"]] == [letter]
    answer = a.client.post(f"/admin/dead-letters/{letter}/retry", headers=bearer)
    assert (answer.status_code, answer.json) == (200, {"retried": 1})
    # ...but not from another site, even with it.
    answer = a.client.post("/admin/dead-letters/purge-all", data={"confirm": "yes"},
                           headers={**bearer, "Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 403


def test_a_template_dead_letter_is_rendered_again_by_the_live_config(admin, fake_pumble):
    broken = [{"name": "broken", "channel": "orders", "text": "{{ order.total / 0 }}"}]
    a = admin(routes=broken)
    assert a.webhook(6006)["failed"] and a.webhook(6007)["failed"]
    by_event = {a.bridge.dead.get(i).notification.event_id: i for i in a.bridge.dead.ids()}
    letter, newer = by_event["adm-6006"], by_event["adm-6007"]
    csrf = a.sign_in()
    still = a.client.post(f"/admin/dead-letters/{letter}/retry", data={"csrf": csrf})
    assert still.status_code == 409 and "Not retried" in still.text
    assert "DivisionByZero" in still.text or "division" in still.text.lower()
    assert still.text.index(newer) < still.text.index(letter)  # newest first, as on the page
    a.client.post(f"/admin/dead-letters/{newer}/purge", data={"csrf": csrf})

    fixed = yaml.safe_load(a.bridge.path.read_text())
    fixed["routes"][0]["text"] = "order {{ order.number }} at last"
    a.bridge.path.write_text(yaml.safe_dump(fixed))
    assert receiver_of(a.app).pipelines.reload_if_changed()
    answer = a.client.post(f"/admin/dead-letters/{letter}/retry", data={"csrf": csrf})
    assert answer.status_code == 303
    a.bridge.drain()
    assert [m["text"] for m in fake_pumble.messages("orders")] == ["order 6006 at last"]


def test_routes_and_queue_pages(admin):
    a = admin(routes=[{"name": "big", "match": {"source": "shop", "event": "order.*"},
                       "channel": "vip", "when": "order.total >= 500", "thread": True,
                       "digest": False, "account": "other"}])
    a.bridge.enqueue("waiting")
    a.sign_in()
    routes = a.client.get("/admin/routes", headers={"Accept": "application/json"}).json
    [route] = routes["routes"]
    assert {k: route[k] for k in ("name", "source", "event", "channel", "when", "thread",
                                  "digest", "account")} == {
        "name": "big", "source": ["shop"], "event": ["order.*"], "channel": "vip",
        "when": "order.total >= 500", "thread": True, "digest": False, "account": "other"}
    html = a.client.get("/admin/routes").text
    assert "order.total &gt;= 500" in html and "#vip" in html and "shop2" in html
    queue = a.client.get("/admin/queue", headers={"Accept": "application/json"}).json
    assert queue["depth"]["queued"] == 1
    assert 'id="depth-queued"><b>1</b>' in a.client.get("/admin/queue").text


def test_no_secret_in_any_admin_response(admin, fake_pumble):
    routes = [*ORDERS_AND_MISSING,
              {"name": "elsewhere", "channel": "orders", "account": "other",
               "text": "via other {{ order.number }}", "match": {"event": "order.*"}}]
    routes[1] = {**routes[1], "continue": True}
    a = admin(routes=routes)
    a.webhook(9001)
    a.bridge.drain()
    letters = a.bridge.dead.ids()
    assert len(letters) == 2  # the missing channel, and the account whose key Pumble refuses
    responses = [a.client.get("/admin/"), a.client.get("/admin/login"),
                 a.client.post("/admin/login", data={"token": "wrong-token-but-long"}),
                 a.client.get(f"/admin/dead-letters/{letters[0]}")]
    csrf = a.sign_in()
    pages = ["/admin/", "/admin/dead-letters", "/admin/routes", "/admin/queue",
             *(f"/admin/dead-letters/{letter}" for letter in letters), "/admin/nope",
             "/admin/dead-letters/n-0000"]
    for path in pages:
        responses.append(a.client.get(path))
        responses.append(a.client.get(path, headers={"Accept": "application/json"}))
    responses.append(a.client.post("/admin/dead-letters/retry-all", data={"csrf": csrf}))
    responses.append(a.client.post("/admin/dead-letters/retry-all",
                                   headers={"Authorization": f"Bearer {TOKEN}"}))
    assert any("Invalid API key" in r.text for r in responses)  # the refused key's letter
    for response in responses:
        dump = response.text + str(response.headers)
        for secret in SECRETS:
            assert secret not in dump, (response.request.path, secret)


def test_unauthenticated_callers_see_nothing(admin, fake_pumble):
    a = admin(routes=ORDERS_AND_MISSING)
    a.webhook(31337)
    a.bridge.drain()
    [letter] = a.bridge.dead.ids()
    for path in ("/admin/", "/admin/dead-letters", f"/admin/dead-letters/{letter}",
                 "/admin/routes", "/admin/queue"):
        for headers in ({}, {"Accept": "application/json"}):
            answer = a.client.get(path, headers=headers)
            assert answer.status_code == 401
            for leak in ("31337", "missing", "Could not find", "new-orders", "orders"):
                assert leak not in answer.text, (path, leak)
    for path in (f"/admin/dead-letters/{letter}/retry", f"/admin/dead-letters/{letter}/purge",
                 "/admin/dead-letters/retry-all", "/admin/dead-letters/purge-all"):
        assert a.client.post(path, data={"confirm": "yes"}).status_code == 401
    assert a.bridge.dead.ids() == [letter]


def test_limits_and_headers(admin):
    a = admin()
    big = a.client.post("/admin/login", data={"token": "x" * 40_000})
    assert big.status_code == 413
    a.sign_in()
    page = a.client.get("/admin/queue")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp and "<script" not in page.text
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert f'<style nonce="{nonce}">' in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external asset
    # The receiver itself is untouched by the admin's headers.
    assert "Content-Security-Policy" not in a.client.get("/healthz").headers
