"""Property: no body, header set or size makes the receiver answer 5xx while Redis is up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import load_config
from bridge.sources.shopify import sign
from bridge.sources.stripe import sign as stripe_sign
from bridge.web import create_app
from tests.conftest import TEST_SECRET

# JSON has no NaN or Infinity (Python writes them, no platform does; the receiver answers 400).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
# Payload keys the normalisers read, with values of any JSON shape.
KNOWN_KEYS = ["id", "name", "order_number", "total_price", "subtotal_price", "currency",
              "customer", "line_items", "shipping_address", "billing_address", "shipping_lines",
              "tags", "created_at", "updated_at", "transactions", "email", "cancelled_at",
              "financial_status", "note", "first_name", "last_name", "orders_count"]
payloads = st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=10)
topics = st.sampled_from(["orders/create", "orders/paid", "orders/cancelled", "refunds/create",
                          "customers/create", "products/update", "", "weird topic/∆"])
header_names = st.sampled_from(["Content-Type", "X-Shopify-Topic", "X-Shopify-Webhook-Id",
                                "X-Shopify-Shop-Domain", "X-Shopify-Hmac-Sha256", "X-Other"])
headers = st.dictionaries(header_names, st.text(
    st.characters(min_codepoint=32, max_codepoint=126), max_size=40), max_size=6)


@pytest.fixture(scope="module")
def client(tmp_path_factory, redis_url):
    import uuid

    from redis import Redis

    queue = f"prop-{uuid.uuid4().hex[:10]}"
    path = tmp_path_factory.mktemp("prop") / "config.yaml"
    path.write_text(json.dumps({
        "redis": {"queue": queue},
        "sources": SOURCES,
        "routes": [{"name": "all", "channel": "orders-{{ source.name }}",
                    "template": "order_created.j2"},
                   ]}))
    yield create_app(load_config(path, {}), redis_url).test_client()
    connection = Redis.from_url(redis_url)  # delete only what this module made
    for pattern in (f"rq:*{queue}*", f"pumble-bridge:{queue}:*"):
        for key in connection.scan_iter(match=pattern):
            connection.delete(key)
    for job_key in connection.scan_iter(match="rq:job:n-*"):
        if connection.hget(job_key, "origin") == queue.encode():
            connection.delete(job_key)


SOURCES = {
    "shop": {"type": "shopify", "secret": TEST_SECRET},
    "woo": {"type": "woocommerce", "secret": TEST_SECRET},
    "stripe": {"type": "stripe", "secret": TEST_SECRET},
    "bc": {"type": "bigcommerce", "secret": TEST_SECRET},
    "svix": {"type": "standard-webhooks", "secret": "whsec_" + base64.b64encode(
        TEST_SECRET.encode()).decode()},
    "custom": {"type": "hmac", "secret": TEST_SECRET, "header": "X-Signature",
               "event_type_path": "event"},
}

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(source=st.sampled_from(sorted(SOURCES)), body=st.binary(max_size=2048), extra=headers)
def test_arbitrary_requests_never_5xx(client, source, body, extra):
    response = client.post(f"/webhooks/{source}", data=body, headers=extra)
    assert response.status_code < 500, response.json


def signed_request(source: str, payload: dict, topic: str) -> tuple[bytes, dict[str, str]]:
    """A request each platform would accept, carrying ``payload`` (of any shape)."""
    secret = TEST_SECRET.encode()
    now = int(time.time())
    if source == "stripe":
        body = json.dumps({"id": "evt_1", "type": topic or "charge.refunded",
                           "created": now, "data": {"object": payload}}).encode()
        return body, {"Stripe-Signature": stripe_sign(secret, body, now)}
    if source == "svix":
        body = json.dumps({"type": topic or "order.created", "data": payload}).encode()
        signed = f"msg_1.{now}.".encode() + body
        signature = base64.b64encode(hmac.digest(secret, signed, hashlib.sha256)).decode()
        return body, {"webhook-id": "msg_1", "webhook-timestamp": str(now),
                      "webhook-signature": f"v1,{signature}"}
    if source == "custom":
        body = json.dumps({**payload, "event": topic or "order.created"}).encode()
        return body, {"X-Signature": hmac.new(secret, body, hashlib.sha256).hexdigest()}
    if source == "bc":
        body = json.dumps({"scope": f"store/{topic or 'order/created'}",
                           "data": payload, "producer": "stores/abc"}).encode()
        return body, {"X-Webhook-Secret": TEST_SECRET}
    body = json.dumps(payload).encode()
    if source == "woo":
        return body, {"X-WC-Webhook-Topic": topic or "order.created",
                      "X-WC-Webhook-Signature": base64.b64encode(
                          hmac.digest(secret, body, hashlib.sha256)).decode()}
    return body, {"X-Shopify-Topic": topic or "orders/create",
                  "X-Shopify-Hmac-Sha256": sign(secret, body)}


# Payload keys the normalisers read, across platforms, with values of any JSON shape.
ANY_KEYS = [*KNOWN_KEYS, "number", "status", "total", "billing", "shipping", "date_paid",
            "date_created_gmt", "refunds", "stock_quantity", "manage_stock", "amount",
            "amount_total", "amount_subtotal", "amount_refunded", "amount_paid", "amount_due",
            "customer_details", "shipping_details", "last_payment_error", "payment_intent",
            "items", "metadata", "livemode", "reason", "type", "status", "order_number", "data"]
any_payloads = st.dictionaries(st.sampled_from(ANY_KEYS), json_values, max_size=10)
any_topics = st.sampled_from(["", "order.updated", "order/statusUpdated", "product.updated",
                              "checkout.session.completed", "payment_intent.payment_failed",
                              "invoice.paid", "customer.subscription.created", "refunds/create",
                              "customer/created", "product/inventory/updated"])


@SETTINGS
@given(source=st.sampled_from(sorted(SOURCES)), payload=any_payloads, topic=any_topics)
def test_every_platform_accepts_authentic_payloads_of_any_shape(client, source, payload, topic):
    body, request_headers = signed_request(source, payload, topic)
    response = client.post(f"/webhooks/{source}", data=body,
                           headers={**request_headers, "Content-Type": "application/json"})
    assert response.status_code in (200, 202), (source, response.json)


@SETTINGS
@given(payload=payloads, topic=topics, extra=headers)
def test_signed_payloads_of_any_shape_never_5xx(client, payload, topic, extra):
    body = json.dumps(payload).encode()
    request_headers = {**extra, "Content-Type": "application/json", "X-Shopify-Topic": topic,
                       "X-Shopify-Hmac-Sha256": sign(TEST_SECRET.encode(), body)}
    response = client.post("/webhooks/shop", data=body, headers=request_headers)
    assert response.status_code < 500, response.json
    if topic:  # a valid signature, JSON object and topic: accepted
        assert response.status_code in (200, 202), response.json


@settings(max_examples=5, deadline=None)
@given(size=st.integers(min_value=1024 * 1024 + 1, max_value=3 * 1024 * 1024))
def test_oversized_bodies_are_413(client, size):
    assert client.post("/webhooks/shop", data=b"{" * size).status_code == 413
