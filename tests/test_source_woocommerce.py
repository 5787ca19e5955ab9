import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest

from bridge.config import SourceSettings
from bridge.sources import PayloadError, SignatureError, WebhookRequest
from bridge.sources.woocommerce import WooCommerceSource

SECRET = "wc-webhook-secret-0123456789"
SHOP = "https://shop.example.com/"
PAYLOADS = Path(__file__).parent / "payloads" / "woocommerce"


def load(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def body_of(payload: dict[str, Any]) -> bytes:
    # WooCommerce sends wp_json_encode output: compact, slashes escaped.
    return json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()


def source_with(**options: Any) -> WooCommerceSource:
    return WooCommerceSource("woo", SourceSettings(type="woocommerce", secret=SECRET, **options))


@pytest.fixture
def source() -> WooCommerceSource:
    return source_with()


def headers(topic: str = "order.created", delivery: str = "d41d8cd98f00b204e9800998ecf8427e",
            shop: str = SHOP) -> dict[str, str]:
    resource, _, event = topic.partition(".")
    return {"Content-Type": "application/json",
            "User-Agent": "WooCommerce/9.4.2 Hookshot (WordPress/6.7)",
            "X-WC-Webhook-Source": shop, "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource, "X-WC-Webhook-Event": event,
            "X-WC-Webhook-ID": "12", "X-WC-Webhook-Delivery-ID": delivery}


def signed(body: bytes, secret: str = SECRET, **kwargs: str) -> WebhookRequest:
    # Computed here independently of bridge's own signing code.
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return WebhookRequest.of({**headers(**kwargs),
                              "X-WC-Webhook-Signature": base64.b64encode(digest).decode()}, body)


def event_of(source: WooCommerceSource, name: str, topic: str, **kwargs: str):
    request = signed(body_of(load(name)), topic=topic, **kwargs)
    source.verify(request)
    return source.parse(request)


# --- signatures -------------------------------------------------------------------------------

def test_good_signature_is_accepted(source):
    source.verify(signed(body_of(load("order_created"))))


def test_signature_with_another_secret_is_refused(source):
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(signed(body_of(load("order_created")), secret="someone-else"))


def test_missing_signature_is_refused(source):
    request = WebhookRequest.of(headers(), body_of(load("order_created")))
    with pytest.raises(SignatureError, match="missing X-WC-Webhook-Signature"):
        source.verify(request)


def test_tampered_body_is_refused(source):
    request = signed(body_of(load("order_created")))
    tampered = WebhookRequest(request.headers, request.body.replace(b'"142.90"', b'"1.90"'))
    assert tampered.body != request.body
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(tampered)


def test_signature_is_over_the_raw_bytes_not_reencoded_json(source):
    pretty = json.dumps(load("order_created"), indent=2).encode()
    request = signed(pretty)
    source.verify(request)
    compact = WebhookRequest(request.headers, body_of(load("order_created")))
    with pytest.raises(SignatureError):
        source.verify(compact)


def test_any_of_several_secrets_verifies_during_rotation():
    rotating = WooCommerceSource("woo", SourceSettings(type="woocommerce",
                                                       secret=["new-one", SECRET]))
    body = body_of(load("order_created"))
    rotating.verify(signed(body))
    rotating.verify(signed(body, secret="new-one"))
    with pytest.raises(SignatureError):
        rotating.verify(signed(body, secret="retired"))


def test_secret_copied_with_html_entities_still_verifies():
    # WordPress stores "<" as "&lt;" and signs with the decoded secret (wp_specialchars_decode).
    typed = WooCommerceSource("woo", SourceSettings(type="woocommerce", secret="ab&lt;cd&amp;"))
    body = body_of(load("order_created"))
    typed.verify(signed(body, secret="ab<cd&"))
    with pytest.raises(SignatureError):
        typed.verify(signed(body, secret="ab<cd"))


def test_error_messages_do_not_contain_the_secret(source):
    with pytest.raises(SignatureError) as caught:
        source.verify(signed(b"{}", secret="wrong"))
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(source)


# --- ping ---------------------------------------------------------------------------------------

def test_creation_ping_is_recognised(source):
    ping = WebhookRequest.of({"Content-Type": "application/x-www-form-urlencoded",
                              "User-Agent": "WooCommerce/9.4.2 Hookshot (WordPress/6.7)"},
                             b"webhook_id=12")
    assert source.is_ping(ping)
    assert source.is_ping(WebhookRequest.of({}, b"webhook_id=7"))


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b"webhook_id=12"),
    ("application/x-www-form-urlencoded", b"webhook_id=12&x=1"),
    ("application/x-www-form-urlencoded", b"webhook_id="),
    ("application/x-www-form-urlencoded", b"webhook_id=abc"),
    ("application/json", b'{"webhook_id": 12}'),
])
def test_other_bodies_are_not_pings(source, content_type, body):
    assert not source.is_ping(WebhookRequest.of({"Content-Type": content_type}, body))


def test_a_real_delivery_is_not_a_ping(source):
    assert not source.is_ping(signed(body_of(load("order_created"))))


# --- orders -------------------------------------------------------------------------------------

def test_created_order_is_normalised(source):
    event = event_of(source, "order_created", "order.created")
    assert (event.type, event.id) == ("order.created", "d41d8cd98f00b204e9800998ecf8427e")
    assert (event.source.name, event.source.platform) == ("woo", "woocommerce")
    assert event.occurred_at == datetime(2026, 11, 24, 9, 15, tzinfo=UTC)
    order = event.order
    assert (order.id, order.number, order.name) == ("727", "727", "#727")
    assert (order.total, order.subtotal) == (Decimal("142.90"), Decimal("138.00"))
    assert order.currency == "EUR"
    assert (order.status, order.financial_status, order.fulfillment_status) == (
        "pending", "pending", "")
    assert [(i.name, i.sku, i.quantity, i.price) for i in order.items] == [
        ("Woo Single #1", "WOO-SINGLE-1", 2, Decimal("25")),
        ("Ship Your Idea - Black, L", "SHIP-IDEA-BLK-L", 1, Decimal("88")),
    ]
    assert order.admin_url == "https://shop.example.com/wp-admin/post.php?post=727&action=edit"
    assert (event.customer.name, event.customer.email) == ("Ada Lovelace", "ada@example.com")
    assert str(event.shipping.address) == "Ada Lovelace, 1 Main Street, Flat 2, N1 9GU London, GB"
    assert event.shipping.method == "Flat Rate"
    assert event.payment is None and event.refund is None
    assert event.raw["payment_method_title"] == "Credit Card (Stripe)"


@pytest.mark.parametrize("name, expected", [
    ("order_updated_processing", "order.paid"),
    ("order_updated_completed", "order.fulfilled"),
    ("order_updated_cancelled", "order.cancelled"),
    ("order_updated_refunded", "refund.created"),
])
def test_updated_order_is_typed_by_its_status(source, name, expected):
    assert event_of(source, name, "order.updated").type == expected


def test_other_statuses_stay_order_updated(source):
    payload = load("order_created") | {"status": "on-hold"}
    event = source.parse(signed(body_of(payload), topic="order.updated"))
    assert event.type == "order.updated"
    assert event.order.status == "on-hold"


def test_paid_order_has_a_payment(source):
    event = event_of(source, "order_updated_processing", "order.updated")
    assert event.order.financial_status == "paid"
    assert (event.payment.amount, event.payment.currency) == (Decimal("142.90"), "EUR")
    assert event.payment.id == "ch_3QxYz2"
    assert event.occurred_at == datetime(2026, 11, 24, 9, 16, 5, tzinfo=UTC)


def test_completed_order_is_fulfilled(source):
    event = event_of(source, "order_updated_completed", "order.updated")
    assert (event.order.status, event.order.fulfillment_status) == ("completed", "fulfilled")
    assert event.order.financial_status == "paid"


def test_cancelled_unpaid_order(source):
    event = event_of(source, "order_updated_cancelled", "order.updated")
    assert (event.order.status, event.order.financial_status) == ("cancelled", "pending")


def test_refunded_order_sums_its_refunds(source):
    event = event_of(source, "order_updated_refunded", "order.updated")
    assert (event.refund.amount, event.refund.currency) == (Decimal("142.90"), "EUR")
    assert event.refund.reason == "Arrived damaged"
    assert event.order.financial_status == "refunded"


def test_refund_without_refund_lines_takes_the_order_total(source):
    payload = load("order_updated_refunded") | {"refunds": []}
    event = source.parse(signed(body_of(payload), topic="order.updated"))
    assert event.refund.amount == Decimal("142.90")


def test_hpos_admin_url(source):
    hpos = source_with(admin_url_style="hpos")
    event = hpos.parse(signed(body_of(load("order_created")), shop="https://shop.example.com"))
    assert event.order.admin_url == (
        "https://shop.example.com/wp-admin/admin.php?page=wc-orders&action=edit&id=727")


def test_admin_url_needs_a_web_address(source):
    event = source.parse(signed(body_of(load("order_created")), shop="javascript:alert(1)//"))
    assert event.order.admin_url == ""


def test_custom_order_number_names_the_order(source):
    payload = load("order_created") | {"number": "WC-2026-0042"}
    event = source.parse(signed(body_of(payload)))
    assert (event.order.number, event.order.name) == ("WC-2026-0042", "#WC-2026-0042")
    assert event.order.admin_url.endswith("post=727&action=edit")


def test_virtual_order_has_no_shipping_address(source):
    payload = load("order_created")
    payload["shipping"] = {key: "" for key in payload["shipping"]}
    payload["shipping_lines"] = []
    event = source.parse(signed(body_of(payload)))
    assert event.shipping.address is None and event.shipping.method == ""
    assert event.customer.name == "Ada Lovelace"


def test_deleted_order_carries_only_its_id(source):
    event = source.parse(signed(b'{"id":727}', topic="order.deleted"))
    assert event.type == "order.deleted"
    assert event.order.id == "727"
    assert event.customer is None


# --- customers and products ---------------------------------------------------------------------

def test_created_customer_is_normalised(source):
    event = event_of(source, "customer_created", "customer.created")
    assert event.type == "customer.created"
    assert (event.customer.name, event.customer.email) == ("Grace Hopper", "grace@example.org")
    assert event.order is None
    assert event.occurred_at == datetime(2026, 11, 24, 9, 10, tzinfo=UTC)


def test_low_stock_product_is_inventory_low(source):
    event = event_of(source, "product_updated_low_stock", "product.updated")
    assert event.type == "inventory.low"
    assert (event.product.name, event.product.sku, event.product.stock) == (
        "Woo Single #1", "WOO-SINGLE-1", 3)


def test_created_product_with_low_stock_is_inventory_low(source):
    assert event_of(source, "product_updated_low_stock", "product.created").type == "inventory.low"


def test_stocked_product_is_a_product_update(source):
    event = event_of(source, "product_updated", "product.updated")
    assert event.type == "product.updated"
    assert (event.product.name, event.product.stock) == ("Woo Album #2", 40)


@pytest.mark.parametrize("stock, expected", [
    (5, "inventory.low"), (6, "product.updated"), (0, "inventory.low"),
])
def test_low_stock_threshold_is_inclusive(source, stock, expected):
    payload = load("product_updated") | {"stock_quantity": stock}
    assert source.parse(signed(body_of(payload), topic="product.updated")).type == expected


def test_low_stock_threshold_is_configurable():
    strict = source_with(low_stock_threshold=50)
    event = strict.parse(signed(body_of(load("product_updated")), topic="product.updated"))
    assert event.type == "inventory.low"


def test_unmanaged_stock_is_never_low(source):
    payload = load("product_updated_low_stock") | {"manage_stock": False, "stock_quantity": None}
    event = source.parse(signed(body_of(payload), topic="product.updated"))
    assert event.type == "product.updated"


# --- odd requests -------------------------------------------------------------------------------

def test_unknown_topic_keeps_the_platform_name(source):
    event = source.parse(signed(b'{"id": 4, "code": "WINTER"}', topic="coupon.created"))
    assert event.type == "woocommerce.coupon.created"
    assert event.order is None and event.product is None
    assert event.raw == {"id": 4, "code": "WINTER"}


def test_topic_falls_back_to_resource_and_event(source):
    request = signed(body_of(load("customer_created")), topic="customer.created")
    without_topic = WebhookRequest.of(
        {k: v for k, v in request.headers.items() if k != "x-wc-webhook-topic"}, request.body)
    assert source.parse(without_topic).type == "customer.created"


def test_missing_topic_is_a_payload_error(source):
    with pytest.raises(PayloadError, match="missing X-WC-Webhook-Topic"):
        source.parse(WebhookRequest.of({}, b"{}"))


def test_body_that_is_not_json_is_a_payload_error(source):
    with pytest.raises(PayloadError, match="not valid JSON"):
        source.parse(signed(b"webhook_id=12"))


def test_delivery_id_falls_back_to_the_body_digest(source):
    request = signed(body_of(load("order_created")), delivery="")
    event = source.parse(request)
    assert event.id == request.body_digest()
    assert len(event.id) == 32


def test_unknown_option_is_refused():
    with pytest.raises(pydantic.ValidationError):
        source_with(admin_url_style="classic")
    with pytest.raises(pydantic.ValidationError):
        source_with(low_stock_treshold=3)


def test_html_entities_in_text_fields_are_decoded(source):
    payload = load("order_created")
    payload["line_items"][0]["name"] = "Ship Your Idea &ndash; Color: Black"
    payload["shipping_lines"] = [{"method_title": "Ground Advantage&#8482;"}]
    payload["billing"]["first_name"] = "Jo&amp;Co"
    request = signed(body_of(payload), topic="order.created")
    event = source.parse(request)
    assert event.order.items[0].name == "Ship Your Idea \u2013 Color: Black"
    assert event.shipping.method == "Ground Advantage\u2122"
    assert event.customer.name.startswith("Jo&Co")


# --- site_url: the signature covers the body alone, not X-WC-Webhook-Source ---------------------

def test_a_delivery_naming_another_site_is_refused_when_site_url_is_set():
    source = source_with(site_url="https://shop.example.com")
    with pytest.raises(SignatureError, match=r"'https://evil\.example/' is not this source's"):
        source.verify(signed(body_of(load("order_created")), shop="https://evil.example/"))
    with pytest.raises(SignatureError, match="is not this source's site_url"):
        source.verify(signed(body_of(load("order_created")), shop="https://shop.example.com.evil/"))


def test_site_url_is_compared_normalised_and_builds_the_admin_link():
    source = source_with(site_url="HTTPS://Shop.Example.com/")
    request = signed(body_of(load("order_created")), shop="https://shop.example.com")
    source.verify(request)
    assert source.parse(request).order.admin_url == (
        "https://shop.example.com/wp-admin/post.php?post=727&action=edit")


@pytest.mark.parametrize("url", ["shop.example.com", "javascript:alert(1)", "https://a b"])
def test_a_site_url_that_is_not_a_web_address_is_refused(url):
    with pytest.raises(pydantic.ValidationError, match="is not a web address"):
        source_with(site_url=url)
