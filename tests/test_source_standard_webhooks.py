import base64
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.config import SourceSettings
from bridge.sources import PayloadError, SignatureError, WebhookRequest
from bridge.sources.standard_webhooks import StandardWebhooksSource

PAYLOADS = Path(__file__).parent / "payloads" / "standard_webhooks"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the specification's example secret
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-second-key-for-rotation").decode()
NOW = 1795600000  # a fixed "now" for the injected clock
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def body(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def make_source(secret=SECRET, now: float = NOW, **options) -> StandardWebhooksSource:
    settings = SourceSettings(type="standard-webhooks", secret=secret, **options)
    return StandardWebhooksSource("svix", settings, clock=lambda: now)


def signed(payload: bytes, secret: str = SECRET, sent_at: int = NOW,
           msg_id: str = MSG_ID) -> WebhookRequest:
    # Signed by the published standardwebhooks library, not by bridge's code.
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(sent_at, UTC),
                                     payload.decode())
    return WebhookRequest.of({"webhook-id": msg_id, "webhook-timestamp": str(sent_at),
                              "webhook-signature": signature,
                              "content-type": "application/json"}, payload)


def with_header(request: WebhookRequest, name: str, value: str | None) -> WebhookRequest:
    headers = {k: v for k, v in request.headers.items() if k != name}
    if value is not None:
        headers[name] = value
    return WebhookRequest.of(headers, request.body)


def test_library_and_source_agree_on_a_fresh_delivery():
    sent_at = int(datetime.now(UTC).timestamp())
    request = signed(body("order_created"), sent_at=sent_at)
    # The reference implementation accepts what the test signed (it uses the real clock)...
    assert Webhook(SECRET).verify(request.body, dict(request.headers))["type"] == "order.created"
    # ...and so does the source.
    make_source(now=sent_at + 1).verify(request)
    make_source(now=sent_at).verify(request)


def test_library_refuses_what_the_source_refuses():
    request = signed(body("order_created"), secret=OTHER_SECRET,
                     sent_at=int(datetime.now(UTC).timestamp()))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body, dict(request.headers))
    with pytest.raises(SignatureError, match="does not match"):
        make_source(now=int(request.header("webhook-timestamp"))).verify(request)


def test_wrong_secret_is_refused():
    with pytest.raises(SignatureError, match="webhook-signature does not match the body"):
        make_source().verify(signed(body("order_created"), secret=OTHER_SECRET))


def test_tampered_body_is_refused():
    request = signed(body("order_created"))
    tampered = WebhookRequest(request.headers, request.body.replace(b"368.40", b"3.68"))
    assert tampered.body != request.body
    make_source().verify(request)
    with pytest.raises(SignatureError, match="does not match"):
        make_source().verify(tampered)


def test_tampered_id_or_timestamp_is_refused():
    request = signed(body("order_created"))
    with pytest.raises(SignatureError, match="does not match"):
        make_source().verify(with_header(request, "webhook-id", "msg_other"))
    with pytest.raises(SignatureError, match="does not match"):
        make_source().verify(with_header(request, "webhook-timestamp", str(NOW + 1)))


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(header):
    request = with_header(signed(body("order_created")), header, None)
    with pytest.raises(SignatureError, match=f"missing {header} header"):
        make_source().verify(request)


def test_expired_timestamp_is_refused():
    request = signed(body("order_created"), sent_at=NOW - 301)
    with pytest.raises(SignatureError, match="too old"):
        make_source().verify(request)
    make_source().verify(signed(body("order_created"), sent_at=NOW - 300))  # at the edge


def test_future_timestamp_is_refused():
    request = signed(body("order_created"), sent_at=NOW + 301)
    with pytest.raises(SignatureError, match="too new"):
        make_source().verify(request)
    make_source().verify(signed(body("order_created"), sent_at=NOW + 300))


def test_tolerance_is_configurable():
    request = signed(body("order_created"), sent_at=NOW - 60)
    make_source().verify(request)
    with pytest.raises(SignatureError, match="outside the 30 s tolerance"):
        make_source(tolerance=30).verify(request)


def test_timestamp_that_is_not_a_number_is_refused():
    request = with_header(signed(body("order_created")), "webhook-timestamp", "yesterday")
    with pytest.raises(SignatureError, match="not unix seconds"):
        make_source().verify(request)


def test_any_of_several_signatures_in_the_header_verifies():
    good = signed(body("order_created")).header("webhook-signature")
    other = signed(body("order_created"), secret=OTHER_SECRET).header("webhook-signature")
    request = with_header(signed(body("order_created")), "webhook-signature",
                          f"v1a,bm90IHRoaXM= {other} {good}")
    make_source().verify(request)
    only_others = with_header(request, "webhook-signature", f"{other} v1a,bm90IHRoaXM=")
    with pytest.raises(SignatureError, match="does not match"):
        make_source().verify(only_others)


def test_signatures_of_other_versions_are_ignored():
    good = signed(body("order_created")).header("webhook-signature")
    # The right bytes, but labelled v2: not a v1 signature.
    request = with_header(signed(body("order_created")), "webhook-signature",
                          good.replace("v1,", "v2,"))
    with pytest.raises(SignatureError, match="no v1 signature"):
        make_source().verify(request)


def test_any_of_several_secrets_verifies_during_rotation():
    rotating = make_source(secret=[OTHER_SECRET, SECRET])
    rotating.verify(signed(body("order_created")))
    rotating.verify(signed(body("order_created"), secret=OTHER_SECRET))
    retired = "whsec_" + base64.b64encode(b"retired").decode()
    with pytest.raises(SignatureError):
        rotating.verify(signed(body("order_created"), secret=retired))


def test_secret_without_prefix_is_the_base64_key():
    bare = SECRET.removeprefix("whsec_")
    make_source(secret=bare).verify(signed(body("order_created")))
    unpadded = "whsec_" + base64.b64encode(b"0123456789abcdef0").decode().rstrip("=")
    make_source(secret=unpadded).verify(signed(body("order_created"), secret=unpadded))


def test_secret_that_is_not_base64_is_a_config_error_without_the_secret():
    with pytest.raises(ValueError, match="not a Standard Webhooks secret") as caught:
        make_source(secret="whsec_not*base64!")
    assert "not*base64" not in str(caught.value)


def test_error_messages_do_not_contain_the_secret():
    source = make_source()
    with pytest.raises(SignatureError) as caught:
        source.verify(signed(body("order_created"), secret=OTHER_SECRET))
    for text in (str(caught.value), repr(source)):
        assert SECRET not in text and SECRET.removeprefix("whsec_") not in text


def test_order_is_normalised():
    event = make_source().parse(signed(body("order_created")))
    assert event.id == MSG_ID
    assert event.type == "order.created"  # already canonical: kept as is
    assert (event.source.name, event.source.platform) == ("svix", "standard-webhooks")
    assert event.occurred_at == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    order = event.order
    assert (order.id, order.number, order.name) == ("ord_8f2k1q", "1001", "#1001")
    assert (order.total, order.subtotal) == (Decimal("368.40"), Decimal("340.00"))
    assert (order.currency, order.status) == ("EUR", "open")
    assert order.admin_url == "https://shop.example.com/admin/orders/ord_8f2k1q"
    assert order.tags == ("vip", "wholesale")
    assert [(i.name, i.sku, i.quantity, i.price) for i in order.items] == [
        ("Merino Wool Sweater - Forest Green / M", "MWS-FG-M", 2, Decimal("89.00")),
        ("Gift wrap", "", 1, Decimal("4.5")),
    ]
    assert (event.customer.name, event.customer.email) == ("Ada Lovelace", "ada@example.com")
    assert event.payment is None
    assert event.raw == json.loads(body("order_created"))


def test_payment_is_normalised():
    event = make_source().parse(signed(body("payment_succeeded"), msg_id="msg_pay"))
    assert (event.id, event.type) == ("msg_pay", "payment.succeeded")
    assert event.order is None
    payment = event.payment
    assert (payment.amount, payment.currency) == (Decimal("49.9"), "USD")
    assert (payment.status, payment.id) == ("succeeded", "pay_2Zk81")
    assert (event.customer.name, event.customer.email) == ("", "grace@example.com")


def test_sender_types_can_be_mapped_to_canonical_ones():
    source = make_source(types={"checkout.completed": "order.paid"})
    event = source.parse(signed(body("checkout_completed")))
    assert event.type == "order.paid"
    assert (event.order.number, event.order.name) == ("2042", "#2042")
    assert (event.order.total, event.order.currency) == (Decimal("120"), "GBP")
    assert event.customer.name == "Grace Hopper"
    canonical = make_source().parse(signed(body("checkout_completed")))
    assert canonical.type == "checkout.completed"  # already a canonical name: kept


def test_unknown_type_keeps_the_platform_name():
    event = make_source().parse(signed(body("user_created")))
    assert event.type == "standard-webhooks.user.created"
    assert (event.order, event.customer, event.payment) == (None, None, None)
    assert event.raw["data"]["username"] == "ada"


def test_event_type_path_is_configurable():
    payload = json.dumps({"event": {"name": "order.cancelled"}, "data": {}}).encode()
    event = make_source(event_type_path="event.name").parse(signed(payload))
    assert event.type == "order.cancelled"
    # Without a timestamp in the body, the signed header's time is the event's.
    assert event.occurred_at == datetime.fromtimestamp(NOW, UTC)


def test_body_without_event_type_is_a_payload_error():
    with pytest.raises(PayloadError, match="no event type at 'type'"):
        make_source().parse(signed(b'{"data": {}}'))


def test_body_that_is_not_json_is_a_payload_error():
    request = signed(b"not json")
    make_source().verify(request)  # authentic, but not understood
    with pytest.raises(PayloadError, match="not valid JSON"):
        make_source().parse(request)


def test_unknown_option_is_refused():
    with pytest.raises(ValidationError, match="tolerence"):
        make_source(tolerence=60)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        make_source(tolerance=-1)
