import hashlib
import hmac
import json
import time
from decimal import Decimal
from pathlib import Path

import pydantic
import pytest
import stripe

from bridge.config import SourceSettings
from bridge.sources import PayloadError, SignatureError, WebhookRequest
from bridge.sources import stripe as stripe_source
from bridge.sources.stripe import StripeSource

SECRET = "whsec_test_5f2b9c0e8d7a6b5c4d3e2f1a0b9c8d7e"
PAYLOADS = Path(__file__).parent / "payloads" / "stripe"
NOW = 1_764_064_800  # the fixed clock of these tests


def body(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def make_source(secret: str | list[str] = SECRET, **options: object) -> StripeSource:
    source = StripeSource("stripe", SourceSettings(type="stripe", secret=secret, **options))
    source.clock = lambda: NOW
    return source


@pytest.fixture
def source() -> StripeSource:
    return make_source()


def stripe_signed(payload: bytes, secret: str = SECRET, t: int = NOW) -> WebhookRequest:
    # Signed by Stripe's own library, independently of bridge's signing code.
    signature = stripe.WebhookSignature._compute_signature(f"{t}.{payload.decode()}", secret)
    return WebhookRequest.of({"Stripe-Signature": f"t={t},v1={signature}"}, payload)


def hmac_hex(payload: bytes, secret: str, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()


def with_header(payload: bytes, header: str) -> WebhookRequest:
    return WebhookRequest.of({"Stripe-Signature": header}, payload)


# Signatures


def test_signature_made_by_the_stripe_library_is_accepted(source):
    source.verify(stripe_signed(body("checkout_session_completed")))


def test_header_from_stripe_generate_signature_header_is_accepted(source):
    payload = body("invoice_paid")
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), SECRET, NOW)
    source.verify(with_header(payload, header))


def test_stripe_library_accepts_a_header_signed_the_way_the_bridge_expects():
    payload = body("payment_intent_succeeded")
    t = int(time.time())
    for header in (stripe_source.sign(SECRET.encode(), payload, t),
                   f"t={t},v1={hmac_hex(payload, SECRET, t)}"):
        event = stripe.Webhook.construct_event(payload, header, SECRET)
        assert event.id == "evt_3QxPayIntent0001Ok"
    # The same bridge-made header passes the bridge too, with its clock at that moment.
    bridge = make_source()
    bridge.clock = lambda: t
    bridge.verify(with_header(payload, stripe_source.sign(SECRET.encode(), payload, t)))


def test_stripe_library_refuses_what_the_bridge_refuses():
    payload = body("payment_intent_succeeded")
    t = int(time.time())
    header = stripe_source.sign(b"whsec_someone_else", payload, t)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, SECRET)
    bridge = make_source()
    bridge.clock = lambda: t
    with pytest.raises(SignatureError, match="does not match"):
        bridge.verify(with_header(payload, header))


def test_signature_with_another_secret_is_refused(source):
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(stripe_signed(body("invoice_paid"), secret="whsec_someone_else"))


def test_missing_header_is_refused(source):
    with pytest.raises(SignatureError, match="missing Stripe-Signature"):
        source.verify(WebhookRequest.of({}, body("invoice_paid")))


def test_tampered_body_is_refused(source):
    request = stripe_signed(body("checkout_session_completed"))
    tampered = WebhookRequest(request.headers, request.body.replace(b"7450", b"7451"))
    assert tampered.body != request.body
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(tampered)


def test_header_name_is_case_insensitive(source):
    request = stripe_signed(body("invoice_paid"))
    source.verify(WebhookRequest.of({"STRIPE-SIGNATURE": request.header("stripe-signature")},
                                    request.body))


def test_expired_delivery_is_refused_even_though_correctly_signed(source):
    old = NOW - 301
    with pytest.raises(SignatureError, match="timestamp outside the tolerance"):
        source.verify(stripe_signed(body("invoice_paid"), t=old))
    source.verify(stripe_signed(body("invoice_paid"), t=NOW - 300))  # the edge still passes


def test_future_dated_delivery_beyond_tolerance_is_refused(source):
    with pytest.raises(SignatureError, match="timestamp outside the tolerance"):
        source.verify(stripe_signed(body("invoice_paid"), t=NOW + 301))
    source.verify(stripe_signed(body("invoice_paid"), t=NOW + 300))


def test_replay_with_a_fresh_timestamp_but_the_old_signature_is_refused(source):
    payload = body("invoice_paid")
    old = NOW - 3600
    captured = stripe_signed(payload, t=old).header("Stripe-Signature")
    replayed = captured.replace(f"t={old}", f"t={NOW}")
    assert replayed != captured
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(with_header(payload, replayed))


def test_custom_tolerance_and_zero_disables_the_check():
    week_old = stripe_signed(body("invoice_paid"), t=NOW - 7 * 86400)
    make_source(tolerance=0).verify(week_old)
    with pytest.raises(SignatureError, match="tolerance"):
        make_source(tolerance=60).verify(stripe_signed(body("invoice_paid"), t=NOW - 61))
    make_source(tolerance=60).verify(stripe_signed(body("invoice_paid"), t=NOW - 59))


def test_options_are_checked():
    assert make_source().options.tolerance == 300
    with pytest.raises(pydantic.ValidationError):
        make_source(tolerance=-1)
    with pytest.raises(pydantic.ValidationError):
        make_source(tolerence=10)


def test_any_of_several_v1_signatures_verifies_while_stripe_rolls_the_secret(source):
    payload = body("charge_refunded")
    header = (f"t={NOW},v1={hmac_hex(payload, 'whsec_old_rolled_secret', NOW)},"
              f"v1={hmac_hex(payload, SECRET, NOW)}")
    source.verify(with_header(payload, header))
    only_others = (f"t={NOW},v1={hmac_hex(payload, 'whsec_a', NOW)},"
                   f"v1={hmac_hex(payload, 'whsec_b', NOW)}")
    with pytest.raises(SignatureError, match="does not match"):
        source.verify(with_header(payload, only_others))


def test_v0_entries_are_ignored(source):
    payload = body("charge_refunded")
    good = hmac_hex(payload, SECRET, NOW)
    source.verify(with_header(payload, f"t={NOW},v1={good},v0=6ffbb59b2300aae63f27240"))
    with pytest.raises(SignatureError, match="no v1 signature"):
        source.verify(with_header(payload, f"t={NOW},v0={good}"))


def test_any_of_two_configured_secrets_verifies():
    rotating = make_source(secret=["whsec_new_endpoint_secret", SECRET])
    rotating.verify(stripe_signed(body("invoice_paid")))
    rotating.verify(stripe_signed(body("invoice_paid"), secret="whsec_new_endpoint_secret"))
    with pytest.raises(SignatureError):
        rotating.verify(stripe_signed(body("invoice_paid"), secret="whsec_retired"))


@pytest.mark.parametrize("header, message", [
    ("v1=abc", "no valid timestamp"),
    ("t=yesterday,v1=abc", "no valid timestamp"),
    (f"t={NOW}", "no v1 signature"),
    ("garbage", "no valid timestamp"),
])
def test_malformed_header_is_refused(source, header, message):
    with pytest.raises(SignatureError, match=message):
        source.verify(with_header(body("invoice_paid"), header))


def test_error_messages_do_not_contain_the_secret(source):
    for request in (stripe_signed(b"{}", secret="whsec_wrong"),
                    stripe_signed(b"{}", t=NOW - 999)):
        with pytest.raises(SignatureError) as caught:
            source.verify(request)
        assert SECRET not in str(caught.value)
    assert SECRET not in repr(source)


# Normalisation


def test_checkout_session_completed_is_a_paid_order(source):
    event = source.parse(stripe_signed(body("checkout_session_completed")))
    assert (event.id, event.type) == ("evt_1QxCheckoutDone0001", "order.paid")
    assert (event.source.name, event.source.platform) == ("stripe", "stripe")
    assert event.occurred_at.isoformat() == "2025-11-25T10:00:00+00:00"
    order = event.order
    assert order.id == "cs_test_a1B2c3D4e5F6g7H8i9J0"
    assert (order.number, order.name) == ("1042", "#1042")
    assert (order.total, order.subtotal) == (Decimal("74.50"), Decimal("69.50"))
    assert order.currency == "EUR"
    assert (order.status, order.financial_status) == ("complete", "paid")
    assert order.items == ()  # Stripe leaves line items out of the event
    assert order.admin_url == "https://dashboard.stripe.com/test/payments/pi_3QxPayIntent0001AbCd"
    assert (event.customer.name, event.customer.email) == ("Ada Lovelace", "ada@example.com")
    assert str(event.shipping.address) == "Ada Lovelace, 1 Main Street, Flat 2, N1 9GU London, GB"
    assert event.payment is None
    assert event.raw["data"]["object"]["metadata"] == {"order_number": "1042"}


def test_zero_decimal_checkout_in_live_mode_with_older_shipping_details(source):
    event = source.parse(stripe_signed(body("checkout_session_completed_jpy")))
    order = event.order
    assert (order.number, order.name) == ("cs_live_b9Y8x7W6v5U4t3S2r1Q0",) * 2
    assert (order.total, order.subtotal, order.currency) == (Decimal(4980), Decimal(4480), "JPY")
    assert order.admin_url == "https://dashboard.stripe.com/payments/pi_3QxPayIntentJp01XyZ"
    assert [(i.name, i.quantity, i.sku, i.price) for i in order.items] == [
        ("Sencha Tea 100g", 2, "price_1QxSencha", Decimal(1500)),
        ("Yunomi Cup", 1, "price_1QxYunomi", Decimal(1480))]
    assert event.customer.name == "Yamada Hanako"
    address = event.shipping.address
    assert (address.line1, address.city, address.region, address.postal_code,
            address.country) == ("1-2-3 Jingumae", "Shibuya-ku", "Tokyo", "150-0001", "JP")


@pytest.mark.parametrize("currency, minor, major", [
    ("usd", 1999, Decimal("19.99")), ("jpy", 1999, Decimal("1999")),
    ("krw", 50000, Decimal("50000")), ("kwd", 1999, Decimal("1.999")),
    ("bhd", 10, Decimal("0.010")), ("eur", 5, Decimal("0.05")),
])
def test_amounts_use_the_currency_exponent(source, currency, minor, major):
    payload = json.dumps({"id": "evt_x", "type": "payment_intent.succeeded", "created": NOW,
                          "data": {"object": {"id": "pi_x", "amount": minor,
                                              "amount_received": minor,
                                              "currency": currency}}}).encode()
    payment = source.parse(stripe_signed(payload)).payment
    assert (payment.amount, payment.currency) == (major, currency.upper())
    assert str(payment.amount) == str(major)


def test_payment_intent_succeeded(source):
    event = source.parse(stripe_signed(body("payment_intent_succeeded")))
    assert (event.id, event.type) == ("evt_3QxPayIntent0001Ok", "payment.succeeded")
    payment = event.payment
    assert (payment.amount, payment.currency) == (Decimal("74.50"), "EUR")
    assert (payment.status, payment.id, payment.reason) == (
        "succeeded", "pi_3QxPayIntent0001AbCd", "")
    assert event.customer.email == "ada@example.com"
    assert event.shipping.method == "Royal Mail"
    assert event.order is None


def test_payment_intent_payment_failed_gives_the_reason(source):
    event = source.parse(stripe_signed(body("payment_intent_payment_failed")))
    assert (event.id, event.type) == ("evt_3QxPayIntent0002No", "payment.failed")
    payment = event.payment
    assert (payment.amount, payment.currency) == (Decimal("25.99"), "USD")
    assert payment.reason == "Your card has insufficient funds."
    assert (payment.status, payment.id) == ("requires_payment_method", "pi_3QxPayIntent0002EfGh")
    assert event.customer is None


def test_charge_refunded(source):
    event = source.parse(stripe_signed(body("charge_refunded")))
    assert (event.id, event.type) == ("evt_3QxChargeRefund01", "refund.created")
    assert (event.refund.amount, event.refund.currency) == (Decimal("25.00"), "EUR")
    assert event.refund.reason == "requested_by_customer"
    assert (event.payment.amount, event.payment.id) == (Decimal("74.50"), "ch_3QxPayIntent0001Ch")
    assert (event.customer.name, event.customer.email) == ("Ada Lovelace", "ada@example.com")


def test_charge_dispute_created(source):
    event = source.parse(stripe_signed(body("charge_dispute_created")))
    assert (event.id, event.type) == ("evt_1QxDisputeNew0001", "dispute.created")
    payment = event.payment
    assert (payment.amount, payment.currency) == (Decimal("74.50"), "EUR")
    assert (payment.reason, payment.status, payment.id) == (
        "fraudulent", "needs_response", "dp_1QxDispute0001")


def test_invoice_paid(source):
    event = source.parse(stripe_signed(body("invoice_paid")))
    assert (event.id, event.type) == ("evt_1QxInvoicePaid01", "invoice.paid")
    assert (event.payment.amount, event.payment.currency) == (Decimal("12.00"), "GBP")
    assert (event.payment.status, event.payment.id) == ("paid", "in_1QxInvoice0001")
    assert (event.customer.name, event.customer.email) == ("Ada Lovelace", "ada@example.com")


def test_invoice_payment_failed_reports_the_amount_due(source):
    event = source.parse(stripe_signed(body("invoice_payment_failed")))
    assert (event.id, event.type) == ("evt_1QxInvoiceFail01", "invoice.failed")
    assert event.raw["data"]["object"]["amount_paid"] == 0
    assert (event.payment.amount, event.payment.currency) == (Decimal("12.00"), "GBP")
    assert (event.payment.status, event.payment.id) == ("open", "in_1QxInvoice0002")
    assert (event.customer.name, event.customer.email) == ("Grace Hopper", "grace@example.com")


def test_subscription_created(source):
    event = source.parse(stripe_signed(body("customer_subscription_created")))
    assert (event.id, event.type) == ("evt_1QxSubCreated001", "subscription.created")
    payment = event.payment
    assert (payment.amount, payment.currency) == (Decimal("12.00"), "GBP")  # 2 × 6.00
    assert (payment.status, payment.id, payment.reason) == ("active", "sub_1QxSubscr0001", "")


def test_subscription_deleted_is_cancelled(source):
    event = source.parse(stripe_signed(body("customer_subscription_deleted")))
    assert (event.id, event.type) == ("evt_1QxSubDeleted001", "subscription.cancelled")
    assert (event.payment.status, event.payment.reason) == ("canceled", "cancellation_requested")
    assert event.occurred_at.isoformat() == "2026-01-25T09:00:00+00:00"


def test_unknown_type_keeps_the_platform_name(source):
    payload = b'{"id": "evt_1QxProduct01", "type": "product.updated", "created": 1764064800,' \
              b' "data": {"object": {"id": "prod_1", "object": "product"}}}'
    event = source.parse(stripe_signed(payload))
    assert (event.id, event.type) == ("evt_1QxProduct01", "stripe.product.updated")
    assert (event.order, event.payment, event.refund) == (None, None, None)
    assert event.raw["data"]["object"]["id"] == "prod_1"


def test_delivery_without_id_falls_back_to_the_body_digest(source):
    request = stripe_signed(b'{"type": "invoice.paid", "data": {"object": {}}}')
    assert source.parse(request).id == request.body_digest()


def test_body_that_is_not_json_is_a_payload_error(source):
    with pytest.raises(PayloadError, match="not valid JSON"):
        source.parse(stripe_signed(b"not json"))


def test_body_without_a_type_is_a_payload_error(source):
    with pytest.raises(PayloadError, match="missing event type"):
        source.parse(stripe_signed(b'{"id": "evt_1", "data": {}}'))


def test_a_subscription_without_its_own_currency_takes_its_prices(source):
    payload = json.loads(body("customer_subscription_created"))
    subscription = payload["data"]["object"]
    subscription.pop("currency", None)
    for item in subscription["items"]["data"]:
        item["price"]["currency"] = "eur"
    event = source.parse(stripe_signed(json.dumps(payload).encode()))
    assert event.payment.currency == "EUR"


def test_test_mode_events_are_test_events(source):
    payload = json.loads(body("payment_intent_succeeded"))
    assert source.parse(stripe_signed(json.dumps(payload | {"livemode": False}).encode())).test
    assert not source.parse(stripe_signed(json.dumps(payload | {"livemode": True}).encode())).test
