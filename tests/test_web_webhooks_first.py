"""``POST /webhooks/<source>`` is answered before Flask's machinery (bridge.web's
``_WebhooksFirst``): every answer, its headers and its count in the metrics must be Flask's own.
Each request here is sent twice, once through the app and once through Flask's ``wsgi_app``
alone, and the two compared."""

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

import bridge.web
from bridge.config import load_config
from bridge.metrics import PREFIX
from bridge.web import create_app, receiver_of
from tests.conftest import signed_order

LIMIT = 1024 * 1024  # the test config's receiver.max_body_bytes (its default)


@pytest.fixture
def app(write_config, redis_url, queue_name, rq_queue) -> Flask:
    config = load_config(write_config(redis_url=redis_url, queue=queue_name), {})
    return create_app(config, redis_url)


def counts(app: Flask) -> dict[tuple[str, ...], float]:
    """The webhooks counted so far, by their labels."""
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in receiver_of(app).metrics.registry.collect()
            if family.name == PREFIX + "events_received"
            for sample in family.samples if sample.name.endswith("_total")}


def answer(app: Flask, through: Callable[..., Any], **request: Any) -> tuple[Any, ...]:
    """Status, headers and body of one request, and what it added to the counts."""
    before = counts(app)
    body, status, headers = run_wsgi_app(through, EnvironBuilder(**request).get_environ(),
                                         buffered=True)
    added = {labels: value - before.get(labels, 0) for labels, value in counts(app).items()
             if value != before.get(labels, 0)}
    return status, list(headers.items()), b"".join(body), added


def same_as_flask(app: Flask, **request: Any) -> tuple[Any, ...]:
    ours = answer(app, app.wsgi_app, **request)
    assert ours == answer(app, lambda *a: Flask.wsgi_app(app, *a), **request)
    return ours


def order(webhook_id: str | None = None, **changes: Any) -> dict[str, Any]:
    body, headers = signed_order(1001, webhook_id=webhook_id)
    return {"method": "POST", "path": "/webhooks/shop", "data": body, "headers": headers,
            **changes}


@pytest.mark.parametrize("request_", [
    pytest.param(order(headers={}), id="401 unsigned"),
    pytest.param(order(content_type="text/plain"), id="400 not json"),
    pytest.param(order(path="/webhooks/nope"), id="404 unknown source"),
    pytest.param(order(path="/webhooks/sh%C3%B6p"), id="404 a source name not ascii"),
    pytest.param(order(path="/webhooks/shop/"), id="404 trailing slash"),
    pytest.param(order(method="GET"), id="405"),
    pytest.param(order(data=b"x" * (LIMIT + 1)), id="413 by its length"),
    pytest.param(order(data=b"x" * (LIMIT + 1), environ_overrides={
        "wsgi.input_terminated": True}), id="413 as it is read"),
])
def test_an_answer_not_about_an_event_is_flasks(app, request_):
    same_as_flask(app, **request_)


def test_an_accepted_webhook_and_its_redelivery_are_answered_as_flask_would(app, rq_queue):
    ours = answer(app, app.wsgi_app, **order("wh-ours-"))
    flasks = answer(app, lambda *a: Flask.wsgi_app(app, *a), **order("wh-flask"))
    assert ours[0] == flasks[0] == "202 ACCEPTED"
    assert (ours[1], ours[3]) == (flasks[1], flasks[3])
    assert ours[2] == flasks[2].replace(b"wh-flask", b"wh-ours-")
    assert same_as_flask(app, **order("wh-ours-"))[0] == "200 OK"  # the re-delivery
    assert rq_queue.count == 2


def test_a_body_the_server_ends_is_read_to_its_length(app, rq_queue):
    """gunicorn ends the input at the body's end (``wsgi.input_terminated``): the body is read
    at once, its Content-Length of it (PEP 3333: never more), and verifies as sent."""
    terminated = {"wsgi.input_terminated": True}
    ours = answer(app, app.wsgi_app, **order("wh-ended-", environ_overrides=terminated))
    flasks = answer(app, lambda *a: Flask.wsgi_app(app, *a),
                    **order("wh-flask", environ_overrides=terminated))
    assert ours[0] == flasks[0] == "202 ACCEPTED"
    assert rq_queue.count == 2
    cut = {**terminated, "CONTENT_LENGTH": "100"}  # the rest is never read: not what was signed
    assert answer(app, app.wsgi_app, **order(environ_overrides=cut))[0] == "401 UNAUTHORIZED"


def test_a_bug_is_flasks_500_counted(app, monkeypatch):
    def broken(*_args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(bridge.web, "accept", broken)
    status, _, _, added = same_as_flask(app, **order())
    assert status == "500 INTERNAL SERVER ERROR"
    assert list(added.values()) == [1]


def test_a_sources_headers_are_werkzeugs_lower_cased():
    from werkzeug.datastructures import EnvironHeaders

    from bridge.sources import WebhookRequest
    from bridge.web import _headers

    environ = EnvironBuilder(method="POST", data=b"{}", content_type="application/json",
                             headers={"X-Shopify-Topic": "orders/create", "X_Odd": "1",
                                      "Content-Type": "ignored"}).get_environ()
    environ.update({"HTTP_CONTENT_LENGTH": "9", "CONTENT_LENGTH": ""})
    assert _headers(environ) == WebhookRequest.of(EnvironHeaders(environ), b"").headers
