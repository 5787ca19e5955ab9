"""The receiver's work on a webhook as a plain function (bridge.accept), without Flask."""

from __future__ import annotations

import redis

from bridge.accept import Inbound, Store, accept
from bridge.config import load_config
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue, connect
from bridge.sources import WebhookRequest
from tests.conftest import signed_order


def receiving(write_config, redis_url: str, queue_name: str) -> tuple[Pipeline, Store]:
    config = load_config(write_config(redis_url=redis_url, queue=queue_name), {})
    queue = NotificationQueue(connect(redis_url), config.redis.queue, config.delivery)
    return Pipeline.from_config(config), Store.on(queue, config.receiver.dedupe_window,
                                                  Metrics())


def inbound(body: bytes, headers: dict[str, str], mimetype: str | None = "application/json"):
    return Inbound("shop", WebhookRequest.of(headers, body), mimetype, received_at=1.0)


def test_a_signed_order_is_stored_and_answered_202_then_200_as_a_redelivery(
        write_config, redis_url, queue_name, rq_queue):
    pipeline, store = receiving(write_config, redis_url, queue_name)
    body, headers = signed_order(1001, webhook_id="wh-plain")
    first = accept(inbound(body, headers), pipeline.sources["shop"], pipeline, store)
    assert (first.status, first.event_type, first.about_an_event) == (202, "order.created", True)
    assert first.body == {"event_id": "wh-plain", "type": "order.created", "duplicate": False,
                          "notifications": 1, "enqueued": 1, "failed": []}
    again = accept(inbound(body, headers), pipeline.sources["shop"], pipeline, store)
    assert (again.status, again.body["duplicate"], again.body["enqueued"]) == (200, True, 0)
    assert rq_queue.count == 1


def test_a_bad_signature_is_401_and_a_wrong_content_type_400_before_any_parse(
        write_config, redis_url, queue_name, rq_queue):
    pipeline, store = receiving(write_config, redis_url, queue_name)
    body, headers = signed_order(1001)
    source = pipeline.sources["shop"]
    forged = accept(inbound(body + b" ", headers), source, pipeline, store)
    assert (forged.status, forged.event_type, forged.about_an_event) == (401, None, False)
    as_form = accept(inbound(body, headers, "application/x-www-form-urlencoded"), source,
                     pipeline, store)
    assert as_form.status == 400 and "Content-Type" in as_form.body["error"]
    assert rq_queue.count == 0


def test_redis_that_cannot_be_written_is_503_with_retry_after(write_config, redis_url,
                                                                queue_name):
    pipeline, store = receiving(write_config, redis_url, queue_name)
    down = NotificationQueue(redis.Redis(port=1, socket_connect_timeout=0.2), queue_name,
                             store.queue.delivery)
    body, headers = signed_order(1002)
    answer = accept(inbound(body, headers), pipeline.sources["shop"], pipeline,
                    Store.on(down, store.dedupe_window, store.metrics))
    assert (answer.status, answer.headers, answer.event_type) == (
        503, {"Retry-After": "5"}, "order.created")


def test_the_headers_kept_with_a_webhook_hold_no_signature_and_no_secret():
    from bridge.config import SourceSettings
    from bridge.sources import build_source

    source = build_source("shop", SourceSettings.model_validate(
        {"type": "shopify", "secret": ["first-secret-1234", "second-secret-5678"]}))
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": "c2lnbmF0dXJl",
               "X-Forwarded-For": "203.0.113.7", "X-Echo": "a second-secret-5678 inside",
               "X-Part": "first-secret"}
    kept = source.keepable_headers(WebhookRequest.of(headers, b"{}"))
    assert kept == {"x-shopify-topic": "orders/create", "x-forwarded-for": "203.0.113.7",
                    "x-part": "first-secret"}
    plain = {"X-Shopify-Topic": "orders/create", "X-Forwarded-For": "203.0.113.7"}
    assert source.keepable_headers(WebhookRequest.of(plain, b"{}")) == {
        "x-shopify-topic": "orders/create", "x-forwarded-for": "203.0.113.7"}
