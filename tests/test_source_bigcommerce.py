import base64
import copy
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask, jsonify, request
from pydantic import ValidationError

from bridge.config import SourceSettings, load_config
from bridge.local_server import LocalServer
from bridge.sources import PayloadError, SignatureError, WebhookRequest
from bridge.sources.bigcommerce import BigCommerceSource
from bridge.web import create_app

SECRET = "bc-shared-header-secret-7f3a"
TOKEN = "bc-api-token-do-not-leak-91d2"
PAYLOADS = Path(__file__).parent / "payloads" / "bigcommerce"
# BigCommerce's documented store API answers (their README says where each is from).
DOCUMENTED = Path(__file__).parent / "real_payloads" / "bigcommerce-api"


def load(name: str) -> Any:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def documented(name: str) -> Any:
    return json.loads((DOCUMENTED / f"{name}.json").read_text())


def make_source(secret: str | list[str] = SECRET, **options: Any) -> BigCommerceSource:
    return BigCommerceSource("bc", SourceSettings(type="bigcommerce", secret=secret, **options))


def delivery(payload: Any, secret: str | None = SECRET, header: str = "X-Webhook-Secret",
             body: bytes | None = None) -> WebhookRequest:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[header] = secret
    return WebhookRequest.of(headers, body if body is not None else json.dumps(payload).encode())


@pytest.fixture
def source() -> BigCommerceSource:
    return make_source()


# --- verification: a shared secret in a custom header -------------------------------------------

def test_right_header_value_is_accepted(source):
    source.verify(delivery(load("order_created")))


def test_wrong_header_value_is_refused(source):
    with pytest.raises(SignatureError, match="X-Webhook-Secret does not match"):
        source.verify(delivery(load("order_created"), secret="someone-else"))


def test_missing_header_is_refused(source):
    with pytest.raises(SignatureError, match="missing X-Webhook-Secret header"):
        source.verify(delivery(load("order_created"), secret=None))


def test_header_name_is_case_insensitive(source):
    source.verify(delivery(load("order_created"), header="x-webhook-SECRET"))


def test_a_configured_header_name_is_checked_instead():
    custom = make_source(header="X-BC-Auth")
    custom.verify(delivery(load("order_created"), header="X-BC-Auth"))
    with pytest.raises(SignatureError, match="missing X-BC-Auth header"):
        custom.verify(delivery(load("order_created")))


def test_any_of_several_secrets_verifies_during_rotation():
    rotating = make_source(secret=["new-one", SECRET])
    rotating.verify(delivery(load("order_created")))
    rotating.verify(delivery(load("order_created"), secret="new-one"))
    with pytest.raises(SignatureError):
        rotating.verify(delivery(load("order_created"), secret="retired"))


def test_a_prefix_of_the_secret_is_refused(source):
    with pytest.raises(SignatureError):
        source.verify(delivery(load("order_created"), secret=SECRET[:-1]))


def test_tampered_body_is_not_detectable_because_bigcommerce_signs_nothing(source):
    # Documented caveat: only the header is checked; a tampered body with the right header passes,
    # and a body never rescues a wrong header.
    source.verify(delivery(None, body=b'{"scope": "store/order/created", "data": {"id": 999}}'))
    with pytest.raises(SignatureError):
        source.verify(delivery(load("order_created"), secret=SECRET + "x"))


# --- verification: BigCommerce's Standard Webhooks signature --------------------------------------

CLIENT_SECRET = "bc-app-client-secret-5e1d"
NOW = 1795600000


def standard_signed(payload: Any, secret: str = CLIENT_SECRET, sent_at: int = NOW,
                    msg_id: str = "msg_bc_1") -> WebhookRequest:
    # Signed by the published standardwebhooks library, keyed as BigCommerce's docs show: the
    # base64 of the client secret is the library's secret.
    from standardwebhooks.webhooks import Webhook

    body = json.dumps(payload).encode()
    library_secret = base64.b64encode(secret.encode()).decode()
    signature = Webhook(library_secret).sign(msg_id, datetime.fromtimestamp(sent_at, UTC),
                                             body.decode())
    return WebhookRequest.of({"webhook-id": msg_id, "webhook-timestamp": str(sent_at),
                              "webhook-signature": signature}, body)


def signing_source(now: float = NOW, **options: Any) -> BigCommerceSource:
    settings = SourceSettings(type="bigcommerce", secret=CLIENT_SECRET,
                              verify="standard-webhooks", **options)
    return BigCommerceSource("bc", settings, clock=lambda: now)


def test_standard_webhooks_signature_verifies_and_its_id_dedupes():
    request = standard_signed(load("order_created"))
    source = signing_source()
    source.verify(request)
    assert source.parse(request).id == "msg_bc_1"


@pytest.mark.parametrize(("change", "message"), [
    ({"secret": "another-app"}, "does not match the body"),
    ({"sent_at": NOW - 301}, "too old"),
    ({"sent_at": NOW + 301}, "too new"),
])
def test_standard_webhooks_signature_refuses_a_wrong_key_or_a_stale_time(change, message):
    with pytest.raises(SignatureError, match=message):
        signing_source().verify(standard_signed(load("order_created"), **change))


def test_standard_webhooks_refuses_a_tampered_body_and_a_bare_custom_header():
    request = standard_signed(load("order_created"))
    tampered = WebhookRequest.of(request.headers, request.body.replace(b"250", b"251"))
    with pytest.raises(SignatureError, match="does not match"):
        signing_source().verify(tampered)
    with pytest.raises(SignatureError, match="missing webhook-id"):
        signing_source().verify(delivery(load("order_created"), secret=CLIENT_SECRET))


def test_header_mode_does_not_accept_a_signature_instead_of_its_header(source):
    with pytest.raises(SignatureError, match="missing X-Webhook-Secret"):
        make_source(secret=CLIENT_SECRET).verify(standard_signed(load("order_created")))


def test_errors_and_reprs_do_not_contain_secrets():
    configured = make_source(api_token=TOKEN, store_hash="abc123xyz")
    with pytest.raises(SignatureError) as caught:
        configured.verify(delivery(load("order_created"), secret="wrong"))
    for text in (str(caught.value), repr(configured), repr(configured.options)):
        assert SECRET not in text
        assert TOKEN not in text
    assert configured.options.api_token.get_secret_value() == TOKEN


def test_options_have_documented_defaults_and_reject_unknown_keys(source):
    options = source.options
    assert (options.verify, options.header, options.store_hash, options.api_token) == (
        "header", "X-Webhook-Secret", "", None)
    assert (options.api_base_url, options.enrich_timeout, options.low_stock_threshold) == (
        "https://api.bigcommerce.com", 2.0, 5)
    assert make_source(api_token="").options.api_token is None
    with pytest.raises(ValidationError):
        make_source(api_tokn=TOKEN)


# --- parsing without enrichment ------------------------------------------------------------------

def test_order_created_is_a_thin_order(source):
    event = source.parse(delivery(load("order_created")))
    assert event.type == "order.created"
    assert (event.source.name, event.source.platform) == ("bc", "bigcommerce")
    assert event.occurred_at == datetime(2019, 6, 25, 16, 15, 35, tzinfo=UTC)
    order = event.order
    assert (order.id, order.number, order.name) == ("250", "250", "#250")
    assert order.admin_url == "https://store-abc123xyz.mybigcommerce.com/manage/orders/250"
    assert (order.total, order.currency, order.items) == (None, "", ())
    assert event.customer is None
    assert event.raw == load("order_created")


def test_order_updated(source):
    event = source.parse(delivery(load("order_updated")))
    assert (event.type, event.order.number) == ("order.updated", "250")


def test_status_update_to_shipped_is_fulfilled(source):
    event = source.parse(delivery(load("order_status_updated")))
    assert event.type == "order.fulfilled"
    assert (event.order.name, event.order.status) == ("#250", "Shipped")


@pytest.mark.parametrize(("status_id", "event_type", "status"), [
    (11, "order.paid", "Awaiting Fulfillment"),
    (2, "order.fulfilled", "Shipped"),
    (10, "order.fulfilled", "Completed"),
    (3, "order.partially_fulfilled", "Partially Shipped"),
    (5, "order.cancelled", "Cancelled"),
    (4, "refund.created", "Refunded"),
    (14, "refund.created", "Partially Refunded"),
    (7, "order.updated", "Awaiting Payment"),
    (99, "order.updated", ""),
])
def test_status_ids_map_to_canonical_types(source, status_id, event_type, status):
    payload = load("order_status_updated")
    payload["data"]["status"]["new_status_id"] = status_id
    event = source.parse(delivery(payload))
    assert (event.type, event.order.status) == (event_type, status)


def test_status_update_without_a_status_is_order_updated(source):
    payload = load("order_status_updated")
    del payload["data"]["status"]
    assert source.parse(delivery(payload)).type == "order.updated"


def test_customer_created(source):
    event = source.parse(delivery(load("customer_created")))
    assert (event.type, event.order) == ("customer.created", None)
    assert event.raw["data"]["id"] == 32


def test_an_absolute_inventory_change_is_the_new_level_even_without_the_api(source):
    event = source.parse(delivery(load("inventory_updated")))  # method absolute, value 3
    assert (event.type, event.product.id, event.product.stock) == ("inventory.low", "167", 3)
    assert make_source(low_stock_threshold=2).parse(
        delivery(load("inventory_updated"))).type == "inventory.updated"


def test_a_relative_inventory_change_is_no_level(source):
    event = source.parse(delivery(load("inventory_order_updated")))  # method relative, -1
    assert (event.type, event.product.id, event.product.stock) == ("inventory.updated", "167",
                                                                   None)
    assert event.order is None


def test_cart_abandoned_is_checkout_abandoned(source):
    event = source.parse(delivery(load("cart_abandoned")))
    assert event.type == "checkout.abandoned"
    assert event.raw["data"]["id"] == "09346904-4175-44fd-be53-f7e598531b6c"


def test_unknown_scope_keeps_the_platform_name(source):
    payload = load("order_created") | {"scope": "store/order/metafield/created"}
    event = source.parse(delivery(payload))
    assert event.type == "bigcommerce.order/metafield/created"
    assert event.order.name == "#250"


def test_shipment_names_its_order(source):
    event = source.parse(delivery(load("shipment_created")))
    assert event.type == "shipment.created"
    assert (event.order.name, event.shipment.id) == ("#250", "12")


# --- the delivery id: what dedupes BigCommerce's retries, and nothing else ----------------------

def test_webhooks_of_one_order_sharing_a_hash_are_different_deliveries(source):
    # BigCommerce's hash is the SHA-1 of data ({type, id}): the same for an order's created,
    # updated and archived webhooks. Deduping on it dropped every update of a new order.
    created = load("order_created")
    updated = {**created, "scope": "store/order/updated"}
    later = {**created, "created_at": created["created_at"] + 60}
    ids = {source.parse(delivery(body)).id for body in (created, updated, later)}
    assert len(ids) == 3
    assert created["hash"] not in ids


def test_a_retry_of_the_same_body_is_the_same_delivery(source):
    payload = load("order_created")
    reserialised = json.dumps(payload, indent=4, sort_keys=True).encode()
    assert source.parse(delivery(payload)).id == source.parse(
        delivery(None, body=reserialised)).id


def test_webhook_id_is_the_delivery_id_when_sent(source):
    request = delivery(load("order_created"))
    with_id = WebhookRequest.of({**request.headers, "webhook-id": "msg_2b8f"}, request.body)
    assert source.parse(with_id).id == "msg_2b8f"


def test_store_hash_option_wins_over_producer_and_absence_leaves_no_url():
    payload = load("order_created")
    configured = make_source(store_hash="zzz999")
    assert configured.parse(delivery(payload)).order.admin_url == (
        "https://store-zzz999.mybigcommerce.com/manage/orders/250")
    del payload["producer"]
    assert make_source().parse(delivery(payload)).order.admin_url == ""


@pytest.mark.parametrize("producer", ["stores/{store_hash}", "stores/abc.evil.example/x", "abc"])
def test_a_producer_that_is_no_store_hash_makes_no_link(source, producer):
    payload = load("order_created") | {"producer": producer}
    assert source.parse(delivery(payload)).order.admin_url == ""


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"data": {"type": "order", "id": 1}}', "missing scope"),
])
def test_bodies_that_cannot_be_understood_are_payload_errors(source, body, message):
    with pytest.raises(PayloadError, match=message):
        source.parse(delivery(None, body=body))


# --- enrichment over real HTTP against a fake BigCommerce API ------------------------------------

class FakeBigCommerce:
    """Answers the store API paths the source reads; records what arrived."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok | 500 | slow | badjson
        self.order = load("api_order")
        self.product = load("api_product")
        self.addresses = load("api_shipping_addresses")
        self.shipment = documented("order_shipment")
        refund = documented("refund")["data"]  # the webhook's is refund 3; another is listed first
        self.refunds = {"data": [refund | {"id": 2, "total_amount": 10, "reason": ""},
                                 refund | {"id": 3}], "meta": {}}
        self.customers = documented("customers")
        self.seen: list[dict[str, str]] = []
        self.release = threading.Event()  # a "slow" answer waits for this, not for a clock
        self.app = Flask("fake-bigcommerce")
        self.app.add_url_rule("/stores/<store>/v2/orders/<int:order_id>", view_func=self.order_view)
        self.app.add_url_rule("/stores/<store>/v2/orders/<int:order_id>/products",
                              view_func=self.products_view)
        self.app.add_url_rule("/stores/<store>/v2/orders/<int:order_id>/shipping_addresses",
                              view_func=self.addresses_view)
        self.app.add_url_rule("/stores/<store>/v3/catalog/products/<int:product_id>",
                              view_func=self.product_view)
        self.app.add_url_rule("/stores/<store>/v3/carts/<cart_id>", view_func=self.cart_view)
        self.app.add_url_rule(
            "/stores/<store>/v2/orders/<int:order_id>/shipments/<int:shipment_id>",
            view_func=self.shipment_view)
        self.app.add_url_rule("/stores/<store>/v3/orders/<int:order_id>/payment_actions/refunds",
                              view_func=self.refunds_view)
        self.app.add_url_rule("/stores/<store>/v3/customers", view_func=self.customers_view)

    def _answer(self, body: Any):
        self.seen.append({"path": request.path, "token": request.headers.get("X-Auth-Token", ""),
                          "accept": request.headers.get("Accept", ""),
                          "query": dict(request.args)})
        if self.mode == "500":
            return jsonify({"status": 500, "title": "Internal Server Error"}), 500
        if self.mode == "badjson":
            return "<html>maintenance</html>", 200, {"Content-Type": "application/json"}
        if self.mode == "slow":
            self.release.wait(10)
        return jsonify(body)

    def order_view(self, store: str, order_id: int):
        return self._answer(self.order)

    def products_view(self, store: str, order_id: int):
        return self._answer(load("api_order_products"))

    def addresses_view(self, store: str, order_id: int):
        return self._answer(self.addresses)

    def product_view(self, store: str, product_id: int):
        return self._answer(self.product)

    def shipment_view(self, store: str, order_id: int, shipment_id: int):
        return self._answer(self.shipment)

    def refunds_view(self, store: str, order_id: int):
        return self._answer(self.refunds)

    def customers_view(self, store: str):
        return self._answer(self.customers)

    def cart_view(self, store: str, cart_id: str):
        return self._answer({"data": {
            "id": cart_id, "email": "shopper@example.com", "currency": {"code": "EUR"},
            "cart_amount": 59.8, "line_items": {
                "physical_items": [{"name": "Tee", "sku": "TE-1", "quantity": 2,
                                    "sale_price": 29.9}],
                "digital_items": [], "custom_items": [{"name": "Gift wrap", "quantity": 1,
                                                       "list_price": 0}]}}})


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeBigCommerce, str]]:
    fake = FakeBigCommerce()
    with LocalServer(fake.app) as server:
        yield fake, server.url
        fake.release.set()


# A test of a stalled store API waits its budget out: a short one. Otherwise the default (2 s),
# which the fake's answers keep within on a loaded machine too (0.5 s was once out of time).
STALLED_BUDGET = 0.5


@pytest.fixture
def enriching(fake_api) -> BigCommerceSource:
    return make_source(api_token=TOKEN, api_base_url=fake_api[1])


def enriching_within(budget: float, fake_api) -> BigCommerceSource:
    return make_source(api_token=TOKEN, api_base_url=fake_api[1], enrich_timeout=budget)


def test_order_is_enriched_from_the_store_api(enriching, fake_api):
    fake, _ = fake_api
    event = enriching.parse(delivery(load("order_created")))
    assert [s["path"] for s in fake.seen] == [
        "/stores/abc123xyz/v2/orders/250", "/stores/abc123xyz/v2/orders/250/products",
        "/stores/abc123xyz/v2/orders/250/shipping_addresses"]
    assert all(s["token"] == TOKEN and s["accept"] == "application/json" for s in fake.seen)
    assert event.type == "order.created"
    order = event.order
    assert (order.id, order.number, order.name) == ("250", "250", "#250")
    assert (order.total, order.subtotal) == (Decimal("256.1500"), Decimal("245.2500"))
    assert (order.currency, order.status, order.financial_status) == (
        "USD", "Awaiting Fulfillment", "captured")
    assert order.admin_url == "https://store-abc123xyz.mybigcommerce.com/manage/orders/250"
    assert [(i.name, i.sku, i.quantity, i.price) for i in order.items] == [
        ("Fog Linen Chambray Towel - Beige Stripe", "SLCTBS", 2, Decimal("53.4100")),
        ("Orbit Terrarium - Large", "OTL", 1, Decimal("118.8100"))]
    assert (event.customer.name, event.customer.email) == ("Jane Doe", "janedoe@example.com")
    assert str(event.shipping.address) == (
        "Jane Doe, 455 Main Street, Apt 4, 78751 Austin, Texas, US")
    assert event.shipping.method == "Flat Rate"
    assert event.raw == load("order_created")  # the webhook's payload, not the API's


def test_refund_status_carries_the_refunded_amount(enriching, fake_api):
    fake, _ = fake_api
    fake.order = {**copy.deepcopy(fake.order), "status": "Partially Refunded",
                  "refunded_amount": "53.4100", "payment_status": "partially refunded"}
    payload = load("order_status_updated")
    payload["data"]["status"]["new_status_id"] = 14
    event = enriching.parse(delivery(payload))
    assert event.type == "refund.created"
    assert (event.refund.amount, event.refund.currency) == (Decimal("53.4100"), "USD")
    assert (event.order.status, event.order.financial_status) == (
        "Partially Refunded", "partially refunded")


def test_low_stock_becomes_inventory_low(enriching, fake_api):
    fake, _ = fake_api
    event = enriching.parse(delivery(load("inventory_order_updated")))
    assert [s["path"] for s in fake.seen] == ["/stores/abc123xyz/v3/catalog/products/167"]
    assert fake.seen[0]["token"] == TOKEN
    assert event.type == "inventory.low"
    assert (event.product.name, event.product.sku, event.product.stock) == (
        "Orbit Terrarium - Small", "OTS", 3)


def test_stock_above_the_threshold_stays_inventory_updated(fake_api):
    fake, url = fake_api
    strict = make_source(api_token=TOKEN, api_base_url=url, low_stock_threshold=2)
    event = strict.parse(delivery(load("inventory_order_updated")))  # relative: the API's level
    assert (event.type, event.product.stock) == ("inventory.updated", 3)
    fake.product = {"data": {**fake.product["data"], "inventory_level": 2}}
    assert strict.parse(delivery(load("inventory_order_updated"))).type == "inventory.low"


@pytest.mark.parametrize("mode", ["500", "badjson", "slow"])
def test_enrichment_failure_returns_the_thin_event(enriching, fake_api, caplog, mode):
    fake, _ = fake_api
    fake.mode = mode
    source = enriching_within(STALLED_BUDGET, fake_api) if mode == "slow" else enriching
    with caplog.at_level(logging.WARNING, logger="bridge.sources.bigcommerce"):
        event = source.parse(delivery(load("order_created")))
    fake.release.set()
    assert fake.seen, "the fake API was asked"
    assert (event.type, event.order.name, event.order.total, event.customer) == (
        "order.created", "#250", None, None)
    assert event.order.admin_url.endswith("/manage/orders/250")
    assert "order 250 not enriched" in caplog.text
    assert TOKEN not in caplog.text


def test_slow_product_lookup_keeps_inventory_updated(fake_api, caplog):
    fake, _ = fake_api
    fake.mode = "slow"
    with caplog.at_level(logging.WARNING, logger="bridge.sources.bigcommerce"):
        event = enriching_within(STALLED_BUDGET, fake_api).parse(
            delivery(load("inventory_order_updated")))
    assert (event.type, event.product.stock) == ("inventory.updated", None)
    assert "product 167 not enriched" in caplog.text and TOKEN not in caplog.text


def test_unreachable_api_returns_the_thin_event(caplog):
    from tests.conftest import free_port

    nowhere = make_source(api_token=TOKEN, api_base_url=f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="bridge.sources.bigcommerce"):
        event = nowhere.parse(delivery(load("order_created")))
    assert (event.order.number, event.order.total) == ("250", None)
    assert "ConnectError" in caplog.text and TOKEN not in caplog.text


def test_no_token_means_no_api_call(fake_api):
    fake, url = fake_api
    make_source(api_base_url=url).parse(delivery(load("order_created")))
    payload = load("order_created")
    del payload["producer"]  # a token but no store hash: nowhere to ask
    make_source(api_token=TOKEN, api_base_url=url).parse(delivery(payload))
    assert fake.seen == []


def test_api_calls_share_one_kept_alive_client(enriching, fake_api):
    # The fake (werkzeug) closes every connection, so reuse is checked on the client itself.
    fake, _ = fake_api
    enriching.parse(delivery(load("order_created")))
    client = enriching._http()
    enriching.parse(delivery(load("order_updated")))
    assert len(fake.seen) == 6
    assert enriching._http() is client and not client.is_closed


def test_the_apis_none_strings_are_absent_values(enriching, fake_api):
    fake, _ = fake_api
    fake.order = {**copy.deepcopy(fake.order), "payment_status": "None", "currency_code": " "}
    addresses = load("api_shipping_addresses")
    addresses[0]["shipping_method"] = "None"
    fake.addresses = addresses
    event = enriching.parse(delivery(load("order_created")))
    assert (event.shipping.method, event.order.financial_status, event.order.currency) == (
        "", "", "")


def test_an_abandoned_cart_is_enriched_with_its_value_and_items(enriching, fake_api):
    fake, _ = fake_api
    event = enriching.parse(delivery(load("cart_abandoned")))
    cart_id = "09346904-4175-44fd-be53-f7e598531b6c"
    assert [s["path"] for s in fake.seen] == [f"/stores/abc123xyz/v3/carts/{cart_id}"]
    assert (event.type, event.order.id, event.order.total, event.order.currency) == (
        "checkout.abandoned", cart_id, Decimal("59.8"), "EUR")
    assert [(i.name, i.quantity) for i in event.order.items] == [("Tee", 2), ("Gift wrap", 1)]
    assert event.customer.email == "shopper@example.com"
    fake.mode = "500"
    assert enriching.parse(delivery(load("cart_abandoned"))).order.total is None


# --- shipments, refunds and customers: what their webhooks leave to the store API ---------------

def test_a_shipment_is_enriched_with_its_carrier_and_tracking(enriching, fake_api):
    fake, _ = fake_api
    event = enriching.parse(delivery(load("shipment_created")))
    assert [s["path"] for s in fake.seen] == ["/stores/abc123xyz/v2/orders/250/shipments/12"]
    assert fake.seen[0]["token"] == TOKEN
    shipment = event.shipment
    assert (event.type, shipment.id, shipment.carrier, shipment.tracking_number) == (
        "shipment.created", "12", "USPS", "EJ958083578US")
    assert shipment.tracking_url == ("http://trkcnfrm1.smi.usps.com/PTSInternetWeb/"
                                     "InterLabelInquiry.do?strOrigTrackNum=EJ958083578US")
    assert (event.order.name, event.order.admin_url) == (
        "#250", "https://store-abc123xyz.mybigcommerce.com/manage/orders/250")
    assert (event.customer.name, event.customer.email) == ("Jane Doe", "janedoe@example.com")
    assert str(event.shipping.address) == (
        "Trishy Smith, 666 Sussex St, 12345 Anywhere, Some State, US")
    assert event.shipping.method == ""  # the API's "None"


def test_a_shipments_own_tracking_link_wins_and_the_carrier_falls_back(enriching, fake_api):
    fake, _ = fake_api
    fake.shipment = fake.shipment | {
        "shipping_provider_display_name": "", "shipping_provider": "", "tracking_carrier": "dhl",
        "tracking_link": "https://track.example.com/EJ958083578US"}
    shipment = enriching.parse(delivery(load("shipment_created"))).shipment
    assert (shipment.carrier, shipment.tracking_url) == (
        "dhl", "https://track.example.com/EJ958083578US")


def test_a_refund_is_enriched_with_its_amount_reason_and_the_orders_currency(enriching,
                                                                           fake_api):
    fake, _ = fake_api
    event = enriching.parse(delivery(load("order_refund_created")))  # refund 3 of order 250
    assert [s["path"] for s in fake.seen][-1] == (
        "/stores/abc123xyz/v3/orders/250/payment_actions/refunds")
    refund = event.refund
    assert (event.type, refund.id, refund.order_id) == ("refund.created", "3", "250")
    assert (refund.amount, refund.currency, refund.reason) == (
        Decimal("50"), "USD", "Customer requires a refund.")
    assert (event.order.total, event.order.currency) == (Decimal("256.1500"), "USD")


def test_a_refund_its_order_does_not_list_has_no_amount(enriching, fake_api, caplog):
    fake, _ = fake_api
    fake.refunds = {"data": fake.refunds["data"][:1], "meta": {}}  # refund 2 alone
    with caplog.at_level(logging.WARNING, logger="bridge.sources.bigcommerce"):
        refund = enriching.parse(delivery(load("order_refund_created"))).refund
    assert (refund.id, refund.amount, refund.currency) == ("3", None, "USD")
    assert "refund 3 of order 250 not enriched: not among the order's refunds" in caplog.text


def test_a_customer_is_enriched_with_their_name(enriching, fake_api):
    fake, _ = fake_api
    event = enriching.parse(delivery(load("customer_created")))
    assert [(s["path"], s["query"]) for s in fake.seen] == [
        ("/stores/abc123xyz/v3/customers", {"id:in": "32"})]
    customer = event.customer
    assert (event.type, customer.id, customer.name, customer.email) == (
        "customer.created", "32", "Jane Smith", "jane.smith@example.com")
    updated = load("customer_created") | {"scope": "store/customer/updated"}
    assert enriching.parse(delivery(updated)).customer.name == "Jane Smith"
    address = load("customer_created") | {"scope": "store/customer/address/created"}
    enriching.parse(delivery(address))  # its data.id is the address's: no customer to ask for
    assert len(fake.seen) == 2


def test_a_customer_the_api_no_longer_has_keeps_their_id(enriching, fake_api):
    fake, _ = fake_api
    fake.customers = {"data": [], "meta": {}}
    customer = enriching.parse(delivery(load("customer_created"))).customer
    assert (customer.id, customer.name, customer.email) == ("32", "", "")


@pytest.mark.parametrize("mode", ["500", "badjson", "slow"])
@pytest.mark.parametrize("name", ["shipment_created", "order_refund_created", "customer_created"])
def test_a_failing_lookup_gives_the_event_the_payload_alone_gives(enriching, fake_api, caplog,
                                                                 name, mode):
    fake, _ = fake_api
    fake.mode = mode
    source = enriching_within(STALLED_BUDGET, fake_api) if mode == "slow" else enriching
    with caplog.at_level(logging.WARNING, logger="bridge.sources.bigcommerce"):
        event = source.parse(delivery(load(name)))
    fake.release.set()
    assert fake.seen, "the fake API was asked"
    assert event == make_source().parse(delivery(load(name)))
    assert "not enriched" in caplog.text and TOKEN not in caplog.text


def test_a_failing_store_api_still_posts_the_message_with_what_the_payload_has(
        tmp_path, redis_url, queue_name, rq_queue, fake_api):
    fake, url = fake_api
    fake.mode = "500"
    config = {"pumble": {"base_url": "http://127.0.0.1:9", "api_key": "test-key"},
              "redis": {"url": redis_url, "queue": queue_name},
              "sources": {"bc": {"type": "bigcommerce", "secret": SECRET, "api_token": TOKEN,
                                 "api_base_url": url}},
              "routes": [{"name": "everything", "channel": "shop"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    receiver = create_app(load_config(path, {}), redis_url, watch=False).test_client()
    for name in ("shipment_created", "order_refund_created", "customer_created"):
        response = receiver.post("/webhooks/bc", data=json.dumps(load(name)),
                                 headers={"Content-Type": "application/json",
                                          "X-Webhook-Secret": SECRET})
        assert response.status_code == 202, response.json
    link = "Open the order: https://store-abc123xyz.mybigcommerce.com/manage/orders/250"
    assert [job.args[0]["text"] for job in rq_queue.get_jobs()] == [
        f"🚚 Shipped: order #250\nShipment: 12\n\n{link}",
        f"💸 Refund for order #250\nRefund: 3\n\n{link}",
        "👤 New customer #32"]
    assert {s["path"].rsplit("/", 1)[-1] for s in fake.seen} >= {"12", "refunds", "customers"}
