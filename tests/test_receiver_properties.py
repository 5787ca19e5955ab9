"""Property: no body, header set or size makes the receiver answer 5xx while Redis is up."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import load_config
from bridge.sources.shopify import sign
from bridge.web import create_app
from tests.conftest import TEST_SECRET

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
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
        "sources": {"shop": {"type": "shopify", "secret": TEST_SECRET}},
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


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(body=st.binary(max_size=2048), extra=headers)
def test_arbitrary_requests_never_5xx(client, body, extra):
    response = client.post("/webhooks/shop", data=body, headers=extra)
    assert response.status_code < 500, response.json


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
