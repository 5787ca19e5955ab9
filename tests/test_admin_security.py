"""The admin's sign-in against what an attacker sends: a `next` that is not an admin page, and
guessing the token (throttled per client address, counted in Redis, by an injectable clock)."""

from __future__ import annotations

import httpx
import pytest
from flask import Flask
from markupsafe import escape

from bridge.admin import (
    LOGIN_FAILURES_PER_MINUTE,
    SESSION_COOKIE,
    install_admin,
    rate_limiter,
)
from bridge.local_server import LocalServer
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue, connect
from bridge.reload import Reloader
from tests.conftest import TEST_KEY, TEST_SECRET
from tests.test_admin import TOKEN, admin_app, admin_config

WRONG = TOKEN[:-1] + "x"
BAD_NEXT = [
    "//evil.example/admin/", "https://evil.example/admin/", "/webhooks/shop", "/healthz",
    "/admin/../healthz", "/admin/%2e%2e/healthz", "/admin/login", "/admin/logout",
    "/admin/x\\y", "/admin/x\r\nSet-Cookie: a=b", "/admin/x%0d%0aSet-Cookie:%20a=b",
    "/admin/x\x00", "/admin/x\ty", "/admin/x\u2028y", "/admin/x\u202ey", "/admin/" + "x" * 3000,
    "admin/routes", "javascript:alert(1)",
]


class Clock:
    def __init__(self, now: float = 60 * 16_667 + 20):  # 20 s into a clock minute
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(bridge):
    """A test client of the receiver as served, with the admin token set."""
    return admin_app(admin_config(bridge())).test_client()


@pytest.fixture
def guarded(bridge):
    """The admin blueprint alone, on a clock the test moves, and the clock."""
    b = admin_config(bridge())
    clock = Clock()
    queue = NotificationQueue(connect(b.redis_url), b.config.redis.queue, b.config.delivery)
    app = Flask("admin-test")
    install_admin(app, b.config, queue, Reloader(b.config, Pipeline.from_config),
                  rate_limiter(b.config, queue.rq.connection), clock=clock)
    return app, clock


@pytest.mark.parametrize("target", BAD_NEXT)
def test_a_next_that_is_not_an_admin_page_is_400(client, target):
    assert client.get("/admin/login", query_string={"next": target}).status_code == 400
    answer = client.post("/admin/login", data={"token": TOKEN, "next": target})
    assert answer.status_code == 400 and "Set-Cookie" not in answer.headers


def test_an_admin_page_as_next_is_where_signing_in_goes(client):
    for target in ("/admin/routes", "/admin/dead-letters?done=retried&count=1", "/admin/"):
        client.delete_cookie(SESSION_COOKIE, path="/admin")  # signed out again
        form = client.get("/admin/login", query_string={"next": target})
        assert form.status_code == 200 and f'name="next" value="{escape(target)}"' in form.text
        answer = client.post("/admin/login", data={"token": TOKEN, "next": target})
        assert (answer.status_code, answer.headers["Location"]) == (303, target)


def test_cr_lf_in_the_path_or_next_is_never_a_500(bridge):
    """The finding, over real HTTP: /admin/login?next=/admin/x%0d%0a… then signing in gave a
    500; a page's own path with CR/LF is not offered as the place to go back to."""
    b = admin_config(bridge())
    with LocalServer(admin_app(b)) as server, httpx.Client(base_url=server.url) as http:
        form = http.get("/admin/login?next=/admin/x%0d%0aSet-Cookie:%20a=b")
        assert form.status_code == 400
        page = http.get("/admin/dead-letters/x%0d%0aSet-Cookie:%20a=b")
        assert page.status_code == 401 and 'name="next" value=""' in page.text
        signed_in = http.post("/admin/login", data={"token": TOKEN, "next": ""})
        assert (signed_in.status_code, signed_in.headers["Location"]) == (303, "/admin/")
        refused = http.post("/admin/login",
                            data={"token": TOKEN, "next": "/admin/x\r\nSet-Cookie: a=b"})
        assert refused.status_code == 400 and "a=b" not in str(refused.headers)


def test_wrong_tokens_from_one_address_are_throttled_for_the_rest_of_the_minute(guarded):
    app, clock = guarded
    client = app.test_client()
    for _ in range(LOGIN_FAILURES_PER_MINUTE):
        assert client.post("/admin/login", data={"token": WRONG}).status_code == 401
    clock.now += 10  # 30 s into the minute
    for token in (WRONG, TOKEN):  # the right token too: else guessing would go on unhindered
        answer = client.post("/admin/login", data={"token": token})
        assert (answer.status_code, answer.headers["Retry-After"]) == (429, "30")
        assert "Set-Cookie" not in answer.headers
    bearer = client.get("/admin/queue", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (bearer.status_code, bearer.headers["Retry-After"]) == (429, "30")
    assert bearer.json == {"error": "too many wrong tokens; try again later"}
    assert client.get("/admin/login").status_code == 200  # the form itself is still shown

    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert other.post("/admin/login", data={"token": TOKEN}).status_code == 303

    clock.now += 30  # the next minute
    assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303


def test_wrong_bearer_tokens_count_as_failures_too(guarded):
    app, clock = guarded
    client = app.test_client()
    for _ in range(LOGIN_FAILURES_PER_MINUTE):
        wrong = client.get("/admin/queue", headers={"Authorization": f"Bearer {WRONG}"})
        assert wrong.status_code == 401
    answer = client.post("/admin/login", data={"token": TOKEN})
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "40")
    clock.now += 40
    assert client.get("/admin/queue", headers={"Authorization": f"Bearer {TOKEN}"}) \
        .status_code == 200


def test_guessing_over_real_http_is_throttled_and_the_counts_hold_no_secret(bridge):
    b = admin_config(bridge())
    with LocalServer(admin_app(b)) as server, httpx.Client(base_url=server.url) as http:
        answers = [http.post("/admin/login", data={"token": f"guess-{n:016d}"}).status_code
                   for n in range(LOGIN_FAILURES_PER_MINUTE + 5)]
        right = http.post("/admin/login", data={"token": TOKEN})
    if right.status_code == 303:  # the clock minute turned during the test: start again later
        assert answers[:LOGIN_FAILURES_PER_MINUTE] == [401] * LOGIN_FAILURES_PER_MINUTE
        return
    assert answers == [401] * LOGIN_FAILURES_PER_MINUTE + [429] * 5
    assert right.status_code == 429 and 1 <= int(right.headers["Retry-After"]) <= 60
    redis = b.queue.rq.connection
    keys = list(redis.scan_iter(match=f"pumble-bridge:{b.config.redis.queue}:admin:*"))
    assert keys and all(b"login-failures" in key for key in keys)
    for key in keys:
        stored = key + redis.get(key)
        for secret in (TOKEN, TEST_KEY, TEST_SECRET, "guess-"):
            assert secret.encode() not in stored


def test_metrics_are_public_without_admin_listen_and_show_no_secret(bridge):
    b = admin_config(bridge())
    with LocalServer(admin_app(b)) as server:
        answer = httpx.get(f"{server.url}/metrics")
    assert answer.status_code == 200 and "pumble_bridge_" in answer.text
    for secret in (TOKEN, TEST_KEY, TEST_SECRET):
        assert secret not in answer.text
