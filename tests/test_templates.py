"""Every shipped template against every sample the repo has, compared with a reviewed snapshot.

``UPDATE_SNAPSHOTS=1 pytest tests/test_templates.py`` rewrites tests/snapshots/ instead of
comparing. Read every changed snapshot before committing it: that review is the point.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge import events, sandbox
from bridge.config import RouteSettings, SourceSettings, shipped_templates_dir
from bridge.events import Event, SourceRef
from bridge.render import FALLBACK_TEMPLATE, Renderer, template_for
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources import WebhookRequest
from bridge.sources.bigcommerce import BigCommerceSource
from bridge.sources.generic_hmac import HmacSource
from bridge.sources.shopify import ShopifySource
from bridge.sources.standard_webhooks import StandardWebhooksSource
from bridge.sources.stripe import StripeSource
from bridge.sources.woocommerce import WooCommerceSource
from bridge.summaries import DEFAULT_TEMPLATE

TESTS = Path(__file__).parent
PAYLOADS = TESTS / "payloads"
SNAPSHOTS = TESTS / "snapshots"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"
SETTINGS = SourceSettings(type="x", secret="s")  # parse() never looks at the secret
ROUTE = RouteSettings(name="r", channel="c")  # no template/text: the event type's template

# Canonical types that deliberately have no template of their own and use generic.j2.
FALLS_BACK_TO_GENERIC: frozenset[str] = frozenset()


def payload(platform: str, name: str) -> bytes:
    return (PAYLOADS / platform / f"{name}.json").read_bytes()


# --- Shopify: bridge.samples' order, and payloads in Shopify's shape for the other topics ---------

def shopify(topic: str, body: dict[str, Any], **options: Any) -> Event:
    source = ShopifySource("shop", SourceSettings(type="shopify", secret="s", **options))
    return source.parse(WebhookRequest.of(shopify_headers(topic, "wh-1"), body_of(body)))


def shopify_order_with(number: int, **changes: Any) -> dict[str, Any]:
    return shopify_order(number) | changes


SHOPIFY_CHECKOUT = {
    "id": 3012, "token": "c1", "email": "grace@example.com", "currency": "USD",
    "total_price": "59.80", "subtotal_price": "59.80", "completed_at": None,
    "abandoned_checkout_url": "https://demo-shop.myshopify.com/123/checkouts/c1/recover",
    "customer": {"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.com"},
    "line_items": [{"title": "Organic Cotton Tee", "quantity": 2, "price": "29.90",
                    "sku": "TE-1"}],
    "updated_at": "2026-11-25T09:00:00-05:00",
}


def shopify_real(topic: str, name: str, **changes: Any) -> Event:
    """A body of the real-payload corpus (tests/real_payloads/shopify), as ``topic``."""
    body = json.loads((TESTS / "real_payloads" / "shopify" / f"{name}.json").read_text(
        encoding="utf-8"))
    return shopify(topic, body | changes)


SHOPIFY = {
    "order_created": lambda: shopify("orders/create", shopify_order(1001)),
    "order_created_test": lambda: shopify("orders/create", shopify_order_with(1007, test=True)),
    "order_edited": lambda: shopify_real("orders/edited", "orders_edited"),
    "order_deleted": lambda: shopify_real("orders/delete", "orders_delete"),
    "draft_order_created": lambda: shopify_real("draft_orders/create", "draft_orders_create"),
    "shipment_created": lambda: shopify_real("fulfillments/create", "fulfillments_create"),
    "return_requested": lambda: shopify_real("returns/request", "returns_request"),
    "dispute_created": lambda: shopify_real("disputes/create", "disputes_create"),
    "dispute_closed": lambda: shopify_real("disputes/update", "disputes_create", status="won",
                                           finalized_on="2022-01-10T12:00:00-05:00"),
    "payment_succeeded": lambda: shopify_real("order_transactions/create",
                                              "order_transactions_create"),
    "customer_updated": lambda: shopify_real("customers/update", "customers_create"),
    "product_created": lambda: shopify_real("products/create", "products_create"),
    "product_updated": lambda: shopify_real("products/update", "products_update"),
    "order_created_bare": lambda: shopify("orders/create", {"id": 1, "order_number": 1}),
    "order_paid": lambda: shopify("orders/paid", shopify_order(1002)),
    "order_fulfilled": lambda: shopify("orders/fulfilled", shopify_order_with(
        1003, fulfillment_status="fulfilled")),
    "order_partially_fulfilled": lambda: shopify("orders/partially_fulfilled", shopify_order_with(
        1004, fulfillment_status="partial")),
    "order_cancelled": lambda: shopify("orders/cancelled", shopify_order_with(
        1005, cancelled_at="2026-11-25T12:00:00+01:00", cancel_reason="customer",
        financial_status="voided")),
    "order_updated": lambda: shopify("orders/updated", shopify_order_with(
        1006, tags="gift, priority, checked")),
    "refund_created": lambda: shopify("refunds/create", {
        "id": 9, "order_id": 5000000001001, "note": "damaged in transit",
        "created_at": "2026-11-25T10:00:00Z",
        "transactions": [{"amount": "89.00", "currency": "EUR", "kind": "refund"}]}),
    "checkout_created": lambda: shopify("checkouts/create", SHOPIFY_CHECKOUT),
    "checkout_updated": lambda: shopify("checkouts/update", SHOPIFY_CHECKOUT | {
        "line_items": [*SHOPIFY_CHECKOUT["line_items"], {"title": "Canvas Tote Bag",
                                                         "quantity": 1, "price": "19.90"}],
        "total_price": "79.70"}),
    "customer_created": lambda: shopify("customers/create", {
        "id": 7001, "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
        "tags": "vip", "orders_count": 0, "created_at": "2026-11-25T10:00:00+01:00"}),
    "inventory_low": lambda: shopify("inventory_levels/update", {
        "inventory_item_id": 271878346596, "location_id": 24826418, "available": 3,
        "updated_at": "2026-11-25T09:00:00-05:00"}),
    "inventory_updated": lambda: shopify("inventory_levels/update", {
        "inventory_item_id": 271878346596, "location_id": 24826418, "available": 42,
        "updated_at": "2026-11-25T09:00:00-05:00"}),
}


# --- WooCommerce -------------------------------------------------------------------------------

def woocommerce(name: str, topic: str) -> Event:
    return WooCommerceSource("woo", SETTINGS).parse(WebhookRequest.of({
        "X-WC-Webhook-Topic": topic, "X-WC-Webhook-Delivery-ID": "d1",
        "X-WC-Webhook-Source": "https://shop.example.com/"}, payload("woocommerce", name)))


WOOCOMMERCE = {
    name: (lambda name=name, topic=topic: woocommerce(name, topic))
    for name, topic in {
        "order_created": "order.created",
        "order_updated_processing": "order.updated",
        "order_updated_completed": "order.updated",
        "order_updated_cancelled": "order.updated",
        "order_updated_refunded": "order.updated",
        "customer_created": "customer.created",
        "product_updated": "product.updated",
        "product_updated_low_stock": "product.updated",
    }.items()
}


# --- Stripe: the body says the type ------------------------------------------------------------

def stripe(name: str) -> Event:
    return StripeSource("stripe", SETTINGS).parse(WebhookRequest.of({}, payload("stripe", name)))


STRIPE = {path.stem: (lambda name=path.stem: stripe(name))
          for path in sorted((PAYLOADS / "stripe").glob("*.json"))}


# --- BigCommerce: thin webhooks, and the same enriched from the samples of the store API --------

def bigcommerce(name: str, enriched: bool = False, api_order: dict[str, Any] | None = None,
                **data: Any) -> Event:
    body = json.loads(payload("bigcommerce", name))
    body["data"].update(data)
    if not enriched:
        return BigCommerceSource("bc", SETTINGS).parse(
            WebhookRequest.of({}, json.dumps(body).encode()))
    source = BigCommerceSource("bc", SourceSettings(type="bigcommerce", secret="s",
                                                    api_token="t"))
    answers = {"/products": "api_order_products", "/shipping_addresses": "api_shipping_addresses"}

    def get(path: str, deadline: float) -> Any:  # the store API, answered from the samples
        found = next((v for k, v in answers.items() if path.endswith(k)), None)
        answer = json.loads(payload("bigcommerce", found or (
            "api_product" if "/catalog/" in path else "api_order")))
        return answer | (api_order or {}) if found is None and "/orders/" in path else answer

    source._get = get
    return source.parse(WebhookRequest.of({}, json.dumps(body).encode()))


REFUNDED = {"status": {"previous_status_id": 2, "new_status_id": 4}}
BIGCOMMERCE = {
    **{path.stem: (lambda name=path.stem: bigcommerce(name))
       for path in sorted((PAYLOADS / "bigcommerce").glob("*.json"))
       if not path.stem.startswith("api_")},
    "order_created_enriched": lambda: bigcommerce("order_created", enriched=True),
    "order_status_updated_enriched": lambda: bigcommerce("order_status_updated", enriched=True),
    "order_status_refunded_enriched": lambda: bigcommerce(
        "order_status_updated", enriched=True, api_order={"refunded_amount": "53.4100"},
        **REFUNDED),
    "inventory_updated_enriched": lambda: bigcommerce("inventory_updated", enriched=True),
}


# --- Standard Webhooks and generic HMAC: as configured in their own tests ------------------------

def standard(name: str, **options: Any) -> Event:
    source = StandardWebhooksSource("svix", SourceSettings(
        type="standard-webhooks", secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", **options))
    return source.parse(WebhookRequest.of({"webhook-id": "msg_1"},
                                          payload("standard_webhooks", name)))


STANDARD_WEBHOOKS = {
    "order_created": lambda: standard("order_created"),
    "payment_succeeded": lambda: standard("payment_succeeded"),
    "checkout_completed": lambda: standard("checkout_completed"),
    "checkout_completed_as_order_paid": lambda: standard(
        "checkout_completed", types={"checkout.completed": "order.paid"}),
    "user_created": lambda: standard("user_created"),
}


def hmac_source(name: str, headers: dict[str, str], **options: Any) -> Event:
    source = HmacSource("shop", SourceSettings(type="hmac", secret="s", header="X-Sig",
                                               **options))
    return source.parse(WebhookRequest.of(headers, payload("generic_hmac", name)))


GENERIC_HMAC = {
    "paddle_transaction_completed": lambda: hmac_source(
        "paddle_transaction_completed", {}, event_type_path="event_type",
        delivery_id_path="event_id", types={"transaction.completed": "order.paid"}),
    "lemon_squeezy_order_created": lambda: hmac_source(
        "lemon_squeezy_order_created", {"X-Event-Name": "order_created"},
        event_type_header="X-Event-Name", types={"order_created": "order.created"}),
    "homemade_order": lambda: hmac_source("homemade_order", {}, event_type_path="event",
                                          delivery_id_path="delivery"),
    "github_ping": lambda: hmac_source("github_ping", {"X-GitHub-Event": "ping"},
                                       event_type_header="X-GitHub-Event"),
}

SAMPLES: dict[str, Callable[[], Event]] = {
    f"{platform}__{name}": build
    for platform, builders in (("shopify", SHOPIFY), ("woocommerce", WOOCOMMERCE),
                               ("stripe", STRIPE), ("bigcommerce", BIGCOMMERCE),
                               ("standard_webhooks", STANDARD_WEBHOOKS),
                               ("generic_hmac", GENERIC_HMAC))
    for name, build in builders.items()
}


# --- rendering ----------------------------------------------------------------------------------

TEMPLATES = shipped_templates_dir()
ENV = sandbox.environment([TEMPLATES], ZoneInfo("UTC"))
RENDERER = Renderer(ENV, [ROUTE])
CANONICAL_TYPES = sorted(value for name, value in vars(events).items()
                         if name.isupper() and isinstance(value, str))
# summary.j2 is rendered from a summary's totals, not from an event (tests/test_summaries.py).
MESSAGE_TEMPLATES = sorted(path.name for path in TEMPLATES.glob("*.j2")
                           if not path.name.startswith("_") and path.name != DEFAULT_TEMPLATE)


def render(event: Event, route: RouteSettings = ROUTE, renderer: Renderer = RENDERER) -> str:
    return renderer.render(route, event).text


def assert_tidy(text: str) -> None:
    """What every message must be, whatever the event carried."""
    assert text.strip(), "empty message"
    for bad in ("None", "{{", "}}", "{%", "%}", "Undefined"):
        assert bad not in text, f"{bad!r} in:\n{text}"
    for line in text.splitlines():
        assert not line.rstrip().endswith(":"), f"dangling label {line!r} in:\n{text}"
        assert line == line.rstrip(), f"trailing space in {line!r}"
    first = text.splitlines()[0]
    assert unicodedata.category(first[0]) == "So", f"no emoji first: {first!r}"
    assert "\n\n\n" not in text, f"two blank lines in:\n{text}"


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_sample_renders_as_its_snapshot(sample):
    event = SAMPLES[sample]()
    text = render(event)
    assert_tidy(text)
    snapshot = SNAPSHOTS / f"{sample}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        snapshot.write_text(text + "\n", encoding="utf-8")
        return
    assert snapshot.is_file(), f"no snapshot {snapshot.name}: run with UPDATE_SNAPSHOTS=1"
    assert text + "\n" == snapshot.read_text(encoding="utf-8")


def test_no_snapshot_is_left_without_its_sample():
    if UPDATE:
        return
    orphans = {path.stem for path in SNAPSHOTS.glob("*.txt")} - set(SAMPLES)
    assert not orphans


def test_every_canonical_type_has_its_own_template():
    for event_type in CANONICAL_TYPES:
        name = template_for(event_type)
        assert (TEMPLATES / name).is_file() != (event_type in FALLS_BACK_TO_GENERIC), name
    assert (TEMPLATES / FALLBACK_TEMPLATE).is_file()


def test_every_message_template_is_for_a_canonical_type_or_the_fallback():
    expected = {template_for(t) for t in CANONICAL_TYPES} | {FALLBACK_TEMPLATE}
    assert set(MESSAGE_TEMPLATES) <= expected


def test_every_canonical_type_is_rendered_from_some_sample():
    covered = {SAMPLES[sample]().type for sample in SAMPLES}
    assert set(CANONICAL_TYPES) - FALLS_BACK_TO_GENERIC <= covered


@pytest.mark.parametrize("template", MESSAGE_TEMPLATES)
def test_template_renders_an_event_with_no_parts(template):
    event_type = next((t for t in CANONICAL_TYPES if template_for(t) == template), "x.unknown")
    route = RouteSettings(name="r", channel="c", template=template)
    bare = Event(id="e-1", type=event_type, source=SourceRef("shop", "shopify"))
    assert_tidy(render(bare, route, Renderer(ENV, [route])))


@pytest.mark.parametrize("template", MESSAGE_TEMPLATES)
def test_template_renders_parts_that_are_present_but_empty(template):
    event_type = next((t for t in CANONICAL_TYPES if template_for(t) == template), "x.unknown")
    route = RouteSettings(name="r", channel="c", template=template)
    hollow = Event(id="e-1", type=event_type, source=SourceRef("shop", "shopify"),
                   order=events.Order(id=""), customer=events.Customer(),
                   shipping=events.Shipping(), refund=events.Refund(),
                   payment=events.Payment(), product=events.Product())
    assert_tidy(render(hollow, route, Renderer(ENV, [route])))


@pytest.mark.parametrize("template", MESSAGE_TEMPLATES)
def test_every_template_marks_a_test_event_on_its_first_line(template):
    event_type = next((t for t in CANONICAL_TYPES if template_for(t) == template), "x.unknown")
    route = RouteSettings(name="r", channel="c", template=template)
    renderer = Renderer(ENV, [route])
    test = Event(id="e-1", type=event_type, source=SourceRef("shop", "shopify"), test=True)
    assert render(test, route, renderer).startswith("🧪 TEST ")
    live = Event(id="e-1", type=event_type, source=SourceRef("shop", "shopify"))
    assert "TEST" not in render(live, route, renderer)


def test_text_from_the_payload_is_still_escaped_through_macros_and_partials():
    event = SAMPLES["shopify__order_created"]()
    hostile = Event(id="e", type=event.type, source=event.source, order=event.order,
                    customer=events.Customer(name="@here", email="<<@U1>>"))
    customer = render(hostile).splitlines()[1]
    assert customer.startswith("Customer: @\u200bhere <")
    assert "<<@" not in customer and "@U1" not in customer
    assert "\u200b\u200b" not in customer  # escaped again on the way out: inert, not doubled


def test_an_unmapped_topic_names_its_order_and_amount():
    event = shopify("tender_transactions/create", {
        "id": 7, "order_id": 450789469, "amount": "250.94", "currency": "USD"})
    assert render(event).splitlines()[0] == (
        "📦 shopify.tender_transactions/create from shop: order 450789469 · 250.94 USD")
    payout = StripeSource("stripe", SETTINGS).parse(WebhookRequest.of({}, json.dumps({
        "id": "evt_1", "type": "payout.paid", "livemode": True,
        "data": {"object": {"id": "po_1", "amount": 120000, "currency": "jpy"}}}).encode()))
    assert render(payout).splitlines()[0] == "📦 stripe.payout.paid from stripe · 120,000 JPY"
