import base64
import hashlib
import hmac
from decimal import Decimal

import pydantic
import pytest

from bridge.config import SourceSettings
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources import PayloadError, SignatureError, WebhookRequest
from bridge.sources.shopify import ShopifySource

SECRET = "shpss_example_secret"


@pytest.fixture
def source() -> ShopifySource:
    return ShopifySource("shop", SourceSettings(type="shopify", secret=SECRET))


def signed(body: bytes, secret: str = SECRET, **headers: str) -> WebhookRequest:
    # Computed here independently of bridge's own signing code.
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return WebhookRequest.of({**shopify_headers(), **headers,
                              "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode()}, body)


def test_good_signature_is_accepted(source):
    source.verify(signed(body_of(shopify_order(1001))))


def test_signature_with_another_secret_is_refused(source):
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(signed(body_of(shopify_order(1001)), secret="someone-else"))


def test_missing_signature_is_refused(source):
    request = WebhookRequest.of(shopify_headers(), body_of(shopify_order(1001)))
    with pytest.raises(SignatureError, match="missing X-Shopify-Hmac-Sha256"):
        source.verify(request)


def test_tampered_body_is_refused(source):
    request = signed(body_of(shopify_order(1001)))
    tampered = WebhookRequest(request.headers, request.body.replace(b'"#1001"', b'"#1002"'))
    assert tampered.body != request.body
    with pytest.raises(SignatureError):
        source.verify(tampered)


def test_header_names_are_case_insensitive(source):
    request = signed(body_of(shopify_order(1001)))
    shouting = WebhookRequest.of({k.upper(): v for k, v in request.headers.items()}, request.body)
    source.verify(shouting)


def test_error_messages_do_not_contain_the_secret(source):
    with pytest.raises(SignatureError) as caught:
        source.verify(signed(b"{}", secret="wrong"))
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(source)


def test_order_is_normalised(source):
    request = signed(body_of(shopify_order(1001)), **{"X-Shopify-Webhook-Id": "wh-42"})
    event = source.parse(request)
    assert event.id == "wh-42"
    assert event.type == "order.created"
    assert (event.source.name, event.source.platform) == ("shop", "shopify")
    order = event.order
    assert (order.number, order.name) == ("1001", "#1001")
    assert (order.total, order.subtotal) == (Decimal("368.40"), Decimal("368.40"))
    assert order.currency == "EUR"
    assert (order.status, order.financial_status) == ("open", "paid")
    assert event.customer.name == "Ada Lovelace"
    assert event.customer.tags == ("vip",)
    assert len(order.items) == 7
    assert order.items[0].name == "Merino Wool Sweater - Forest Green / M"
    assert (order.items[0].quantity, order.items[0].price) == (2, Decimal("89.00"))
    assert order.admin_url == "https://admin.shopify.com/store/demo-shop/orders/5000000001001"
    assert str(event.shipping.address) == "Ada Lovelace, 1 Main Street, N1 9GU London, GB"
    assert event.raw["id"] == 5000000001001


def test_guest_checkout_takes_the_name_from_the_address(source):
    payload = shopify_order(1001)
    del payload["customer"]
    event = source.parse(signed(body_of(payload)))
    assert event.customer.name == "Ada Lovelace"


def test_unknown_topic_keeps_the_platform_name(source):
    event = source.parse(signed(b'{"id": 1}', **{"X-Shopify-Topic": "app/uninstalled"}))
    assert event.type == "shopify.app/uninstalled"
    assert event.order is None


@pytest.mark.parametrize("body", [b"not json", b'{"id": NaN}', b'{"id": Infinity}',
                                  b'{"note": "\\ud800"}', b'{"id": 1} trailing'])
def test_body_that_is_not_json_is_a_payload_error(source, body):
    with pytest.raises(PayloadError, match="not valid JSON"):
        source.parse(signed(body))


def test_an_integer_past_64_bits_is_still_read():
    """JSON numbers have no size limit; the parser reads a huge one (as a float) rather than
    refusing an authentic webhook for it."""
    assert WebhookRequest.of({}, b'{"id": 1, "total": 123456789012345678901234567890}').json() == {
        "id": 1, "total": 1.2345678901234568e29}


def test_refund_sums_its_transactions(source):
    payload = {"id": 9, "order_id": 5, "note": "damaged", "created_at": "2026-11-25T10:00:00Z",
               "transactions": [{"amount": "10.10", "currency": "EUR", "kind": "refund"},
                                {"amount": "0.20", "currency": "EUR", "kind": "refund"}]}
    event = source.parse(signed(body_of(payload), **{"X-Shopify-Topic": "refunds/create"}))
    assert event.type == "refund.created"
    assert (event.refund.amount, event.refund.currency) == (Decimal("10.30"), "EUR")
    assert event.refund.reason == "damaged"
    assert event.occurred_at.isoformat() == "2026-11-25T10:00:00+00:00"


def test_refund_names_its_order_and_falls_back_to_the_shops_currency(source):
    # Shopify's own example: transactions with "currency": null, the shop's money in USD.
    payload = {"id": 9, "order_id": 820982911946154500, "note": "Things were damaged",
               "refund_line_items": [{"subtotal_set": {"shop_money": {
                   "amount": "89.99", "currency_code": "USD"}}}],
               "transactions": [{"amount": "75.00", "currency": None, "kind": "refund"},
                                {"amount": "10.00", "currency": None, "kind": "refund"}]}
    event = source.parse(signed(body_of(payload), **{"X-Shopify-Topic": "refunds/create"}))
    assert (event.refund.amount, event.refund.currency) == (Decimal("85.00"), "USD")
    assert (event.order.id, event.order.number, event.order.name) == (
        "820982911946154500", "", "")
    assert event.order.admin_url.endswith("/orders/820982911946154500")


def test_an_order_body_without_a_number_gets_no_bare_hash(source):
    event = source.parse(signed(body_of({"id": 820982911946154500}),
                                **{"X-Shopify-Topic": "orders/updated"}))
    assert (event.order.id, event.order.number, event.order.name) == (
        "820982911946154500", "", "")


def test_any_of_several_secrets_verifies_during_rotation():
    rotating = ShopifySource("shop", SourceSettings(type="shopify", secret=["new-one", SECRET]))
    rotating.verify(signed(body_of(shopify_order(1001))))
    rotating.verify(signed(body_of(shopify_order(1001)), secret="new-one"))
    with pytest.raises(SignatureError):
        rotating.verify(signed(body_of(shopify_order(1001)), secret="retired"))


def test_checkout_carries_the_cart_and_the_recovery_link(source):
    payload = {
        "id": 3012, "token": "c1", "email": "grace@example.com", "currency": "USD",
        "total_price": "59.80", "subtotal_price": "59.80", "completed_at": None,
        "abandoned_checkout_url": "https://demo-shop.myshopify.com/123/checkouts/c1/recover",
        "customer": {"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.com"},
        "line_items": [{"title": "Organic Cotton Tee", "quantity": 2, "price": "29.90",
                        "sku": "TE-1"}],
        "updated_at": "2026-11-25T09:00:00-05:00",
    }
    event = source.parse(signed(body_of(payload), **{"X-Shopify-Topic": "checkouts/update"}))
    assert event.type == "checkout.updated"
    assert (event.order.total, event.order.currency) == (Decimal("59.80"), "USD")
    assert event.order.items[0].name == "Organic Cotton Tee"
    assert event.order.admin_url.endswith("/checkouts/c1/recover")
    assert event.customer.name == "Grace Hopper"


@pytest.mark.parametrize(("available", "expected"), [(3, "inventory.low"), (5, "inventory.low"),
                                                     (6, "inventory.updated")])
def test_inventory_level_at_or_below_the_threshold_is_low(source, available, expected):
    payload = {"inventory_item_id": 271878346596, "location_id": 24826418,
               "available": available, "updated_at": "2026-11-25T09:00:00-05:00"}
    event = source.parse(signed(body_of(payload),
                                **{"X-Shopify-Topic": "inventory_levels/update"}))
    assert event.type == expected
    assert (event.product.id, event.product.stock) == ("271878346596", available)


def test_low_stock_threshold_is_an_option():
    source = ShopifySource("shop", SourceSettings(type="shopify", secret=SECRET,
                                                  low_stock_threshold=0))
    payload = {"inventory_item_id": 1, "available": 3}
    event = source.parse(signed(body_of(payload),
                                **{"X-Shopify-Topic": "inventory_levels/update"}))
    assert event.type == "inventory.updated"


def test_a_test_order_is_a_test_event(source):
    topic = {"X-Shopify-Topic": "orders/create"}
    assert source.parse(signed(body_of(shopify_order(1) | {"test": True}), **topic)).test
    assert not source.parse(signed(body_of(shopify_order(1)), **topic)).test


@pytest.mark.parametrize(("status", "kind", "expected"), [
    ("success", "authorization", "payment.succeeded"),
    ("success", "capture", "payment.succeeded"),
    ("failure", "sale", "payment.failed"),
    ("error", "capture", "payment.failed"),
    ("success", "refund", "shopify.order_transactions/create"),
    ("pending", "sale", "shopify.order_transactions/create"),
])
def test_order_transactions_are_payments_by_status_and_kind(source, status, kind, expected):
    payload = {"id": 1, "order_id": 5, "kind": kind, "status": status, "amount": "10.00",
               "currency": "USD", "message": "Card declined" if status != "success" else None}
    event = source.parse(signed(body_of(payload), **{"X-Shopify-Topic":
                                                     "order_transactions/create"}))
    assert event.type == expected
    assert (event.order.id, event.payment.amount, event.payment.kind) == ("5", Decimal("10.00"),
                                                                         kind)


def test_a_decided_dispute_is_closed_and_one_under_review_is_not(source):
    dispute = {"id": 1, "order_id": 5, "amount": "11.50", "currency": "CAD",
               "reason": "fraudulent", "evidence_due_by": "2021-12-30T19:00:00-05:00"}
    topic = {"X-Shopify-Topic": "disputes/update"}
    assert source.parse(signed(body_of(dispute | {"status": "lost"}), **topic)).type == (
        "dispute.closed")
    review = source.parse(signed(body_of(dispute | {"status": "under_review"}), **topic))
    assert review.type == "shopify.disputes/update"
    assert review.payment.due_at.isoformat() == "2021-12-30T19:00:00-05:00"


# -- shop_domain: the signature covers the body alone, not X-Shopify-Shop-Domain ----------------

def with_shop_domain(domain: str) -> ShopifySource:
    return ShopifySource("shop", SourceSettings(type="shopify", secret=SECRET,
                                                shop_domain=domain))


def test_a_delivery_naming_another_shop_is_refused_when_shop_domain_is_set():
    source = with_shop_domain("demo-shop.myshopify.com")
    replayed = signed(body_of(shopify_order(1001)), **{"X-Shopify-Shop-Domain": "evil.example"})
    with pytest.raises(SignatureError, match=r"'evil\.example' is not this source's shop_domain"):
        source.verify(replayed)
    with pytest.raises(SignatureError, match="'' is not"):
        source.verify(signed(body_of(shopify_order(1001)), **{"X-Shopify-Shop-Domain": ""}))


def test_shop_domain_is_compared_normalised_and_builds_the_admin_link():
    source = with_shop_domain("https://Demo-Shop.myshopify.com/")
    request = signed(body_of(shopify_order(1001)),
                     **{"X-Shopify-Shop-Domain": "DEMO-SHOP.myshopify.com"})
    source.verify(request)
    assert source.parse(request).order.admin_url == (
        "https://admin.shopify.com/store/demo-shop/orders/5000000001001")


def test_without_shop_domain_the_header_names_the_shop(source):
    request = signed(body_of(shopify_order(1001)), **{"X-Shopify-Shop-Domain": "other.example"})
    source.verify(request)
    assert source.parse(request).order.admin_url.startswith("https://other.example/admin/")


@pytest.mark.parametrize("domain", ["demo shop", "https://demo.myshopify.com/admin", "localhost"])
def test_a_shop_domain_that_is_not_a_domain_is_refused(domain):
    with pytest.raises(pydantic.ValidationError, match="is not a shop domain"):
        with_shop_domain(domain)
