import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from bridge import sandbox
from bridge.config import RouteSettings, SourceSettings, shipped_templates_dir
from bridge.render import Renderer
from bridge.routing import Router
from bridge.sources import PayloadError, SignatureError, WebhookRequest
from bridge.sources.generic_hmac import HmacSource

PAYLOADS = Path(__file__).parent / "payloads" / "generic_hmac"
NOW = 1795600000  # a fixed "now" for the injected clock
SECRET = "pdl_ntfset_01hv8wtpsf3xh0ryv8a9pjd8b7_example"
OTHER = "someone-else"

PADDLE = {
    "header": "Paddle-Signature",
    "signature_pattern": r"h1=([0-9a-fA-F]+)",
    "timestamp_pattern": r"ts=(\d+)",
    "signed_payload": "{timestamp}:{body}",
    "event_type_path": "event_type",
    "delivery_id_path": "event_id",
    "types": {"transaction.completed": "order.paid"},
}
LEMON = {
    "header": "X-Signature",
    "event_type_header": "X-Event-Name",
    "types": {"order_created": "order.created"},
}
GITHUB = {
    "header": "X-Hub-Signature-256",
    "prefix": "sha256=",
    "event_type_header": "X-GitHub-Event",
    "delivery_id_header": "X-GitHub-Delivery",
}


def body(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def make_source(options: dict, secret=SECRET, now: float = NOW) -> HmacSource:
    settings = SourceSettings(type="hmac", secret=secret, **options)
    return HmacSource("shop", settings, clock=lambda: now)


# Signatures computed here with hmac/hashlib directly, not with bridge's code.
def digest(secret: str, message: bytes, algorithm=hashlib.sha256) -> bytes:
    return hmac.new(secret.encode(), message, algorithm).digest()


def paddle_request(payload: bytes, secret: str = SECRET, ts: int = NOW,
                   extra_h1: str = "") -> WebhookRequest:
    h1 = digest(secret, f"{ts}:".encode() + payload).hex()
    header = f"ts={ts};h1={h1}" + (f";h1={extra_h1}" if extra_h1 else "")
    return WebhookRequest.of({"Paddle-Signature": header}, payload)


def lemon_request(payload: bytes, secret: str = SECRET,
                  event: str = "order_created") -> WebhookRequest:
    return WebhookRequest.of({"X-Signature": digest(secret, payload).hex(),
                              "X-Event-Name": event}, payload)


def github_request(payload: bytes, secret: str = SECRET) -> WebhookRequest:
    return WebhookRequest.of({
        "X-Hub-Signature-256": "sha256=" + digest(secret, payload).hex(),
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}, payload)


# Paddle Billing: ts=…;h1=… over "ts:body".

def test_paddle_delivery_is_verified_and_normalised():
    source = make_source(PADDLE)
    request = paddle_request(body("paddle_transaction_completed"))
    source.verify(request)
    event = source.parse(request)
    assert event.id == "evt_01hv8x2acma2gz3we3x5vh5a8m"
    assert event.type == "order.paid"
    assert (event.source.name, event.source.platform) == ("shop", "hmac")
    assert event.occurred_at == datetime.fromtimestamp(NOW, UTC)
    assert event.raw["data"]["details"]["totals"]["total"] == "5990"
    assert event.order is None  # the generic source reads no payload shape


def test_paddle_timestamp_is_part_of_what_is_signed():
    request = paddle_request(body("paddle_transaction_completed"))
    moved = WebhookRequest(
        {"paddle-signature": request.header("Paddle-Signature").replace(
            f"ts={NOW}", f"ts={NOW + 1}")}, request.body)
    with pytest.raises(SignatureError, match="Paddle-Signature does not match the body"):
        make_source(PADDLE).verify(moved)


def test_paddle_expired_and_future_timestamps_are_refused():
    payload = body("paddle_transaction_completed")
    with pytest.raises(SignatureError, match="too old"):
        make_source(PADDLE).verify(paddle_request(payload, ts=NOW - 301))
    with pytest.raises(SignatureError, match="too new"):
        make_source(PADDLE).verify(paddle_request(payload, ts=NOW + 301))
    make_source(PADDLE).verify(paddle_request(payload, ts=NOW - 300))
    with pytest.raises(SignatureError, match="outside the 5 s tolerance"):
        make_source({**PADDLE, "tolerance": 5}).verify(paddle_request(payload, ts=NOW - 6))


def test_paddle_header_without_timestamp_is_refused():
    payload = body("paddle_transaction_completed")
    request = WebhookRequest.of({"Paddle-Signature": "h1=" + "0" * 64}, payload)
    with pytest.raises(SignatureError, match="missing timestamp"):
        make_source(PADDLE).verify(request)


def test_paddle_several_h1_during_its_secret_rotation():
    payload = body("paddle_transaction_completed")
    request = paddle_request(payload, secret=OTHER,
                             extra_h1=digest(SECRET, f"{NOW}:".encode() + payload).hex())
    make_source(PADDLE).verify(request)  # the second h1 is ours
    with pytest.raises(SignatureError, match="does not match"):
        make_source(PADDLE).verify(paddle_request(payload, secret=OTHER))


def test_paddle_header_without_any_h1_is_refused():
    request = WebhookRequest.of({"Paddle-Signature": f"ts={NOW}"}, b"{}")
    with pytest.raises(SignatureError, match="no signature matching signature_pattern"):
        make_source(PADDLE).verify(request)


# Lemon Squeezy: hex over the body, event name in X-Event-Name.

def test_lemon_squeezy_delivery_is_verified_and_normalised():
    source = make_source(LEMON)
    request = lemon_request(body("lemon_squeezy_order_created"))
    source.verify(request)
    event = source.parse(request)
    assert event.type == "order.created"
    assert event.id == request.body_digest()  # Lemon Squeezy sends no delivery id
    assert event.occurred_at is None
    assert event.raw["data"]["attributes"]["user_email"] == "ada@example.com"


def test_lemon_squeezy_unmapped_event_keeps_the_platform_name():
    event = make_source(LEMON).parse(lemon_request(body("lemon_squeezy_order_created"),
                                                   event="license_key_created"))
    assert event.type == "hmac.license_key_created"


def test_event_type_already_canonical_is_kept():
    event = make_source(LEMON).parse(lemon_request(b"{}", event="order.refunded"))
    assert event.type == "hmac.order.refunded"  # not a canonical type
    event = make_source(LEMON).parse(lemon_request(b"{}", event="refund.created"))
    assert event.type == "refund.created"


def test_hex_in_capitals_is_accepted():
    payload = body("lemon_squeezy_order_created")
    request = WebhookRequest.of({"X-Signature": digest(SECRET, payload).hex().upper(),
                                 "X-Event-Name": "order_created"}, payload)
    make_source(LEMON).verify(request)


def test_tampered_body_is_refused():
    request = lemon_request(body("lemon_squeezy_order_created"))
    tampered = WebhookRequest(request.headers, request.body.replace(b"1199", b"1"))
    assert tampered.body != request.body
    with pytest.raises(SignatureError, match="X-Signature does not match the body"):
        make_source(LEMON).verify(tampered)


def test_wrong_secret_and_missing_header_are_refused():
    payload = body("lemon_squeezy_order_created")
    with pytest.raises(SignatureError, match="does not match"):
        make_source(LEMON).verify(lemon_request(payload, secret=OTHER))
    with pytest.raises(SignatureError, match="missing X-Signature header"):
        make_source(LEMON).verify(WebhookRequest.of({"X-Event-Name": "order_created"}, payload))


def test_any_of_several_secrets_verifies_during_rotation():
    rotating = make_source(LEMON, secret=["new-secret", SECRET])
    payload = body("lemon_squeezy_order_created")
    rotating.verify(lemon_request(payload))
    rotating.verify(lemon_request(payload, secret="new-secret"))
    with pytest.raises(SignatureError):
        rotating.verify(lemon_request(payload, secret="retired"))


def test_error_messages_do_not_contain_the_secret():
    source = make_source(LEMON)
    with pytest.raises(SignatureError) as caught:
        source.verify(lemon_request(b"{}", secret=OTHER))
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(source)


# GitHub style: "sha256=" prefix, ids in headers.

def test_prefixed_signature_is_verified():
    source = make_source(GITHUB)
    request = github_request(body("github_ping"))
    source.verify(request)
    event = source.parse(request)
    assert (event.type, event.id) == ("hmac.ping", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert event.raw["zen"] == "Design for failure."


def test_signature_without_the_prefix_is_refused():
    request = github_request(body("github_ping"))
    bare = WebhookRequest(
        {**request.headers, "x-hub-signature-256": request.header("X-Hub-Signature-256")
         .removeprefix("sha256=")}, request.body)
    with pytest.raises(SignatureError, match="does not start with 'sha256='"):
        make_source(GITHUB).verify(bare)


# Other algorithms and encodings, a home-made shop with its own timestamp header.

@pytest.mark.parametrize(("algorithm", "encoding", "signature"), [
    ("sha1", "hex", lambda m: digest(SECRET, m, hashlib.sha1).hex()),
    ("sha512", "hex", lambda m: digest(SECRET, m, hashlib.sha512).hex()),
    ("sha256", "base64", lambda m: base64.b64encode(digest(SECRET, m)).decode()),
    ("sha512", "base64",
     lambda m: base64.b64encode(digest(SECRET, m, hashlib.sha512)).decode()),
])
def test_algorithms_and_encodings(algorithm, encoding, signature):
    options = {"header": "X-Shop-Signature", "algorithm": algorithm, "encoding": encoding,
               "event_type_path": "event", "delivery_id_path": "delivery"}
    payload = body("homemade_order")
    request = WebhookRequest.of({"X-Shop-Signature": signature(payload)}, payload)
    make_source(options).verify(request)
    event = make_source(options).parse(request)
    assert (event.type, event.id) == ("order.paid", "dlv_0042")
    # The same signature under another algorithm or encoding does not verify.
    other = {**options, "algorithm": "sha256" if algorithm != "sha256" else "sha1",
             "encoding": encoding}
    with pytest.raises(SignatureError):
        make_source(other).verify(request)


def test_timestamp_header_and_custom_signed_payload():
    options = {"header": "X-Shop-Signature", "timestamp_header": "X-Shop-Timestamp",
               "signed_payload": "v0.{timestamp}.{body}", "event_type_path": "event",
               "delivery_id_header": "X-Shop-Delivery"}
    payload = body("homemade_order")
    headers = {"X-Shop-Signature": digest(SECRET, f"v0.{NOW}.".encode() + payload).hex(),
               "X-Shop-Timestamp": str(NOW), "X-Shop-Delivery": "d-9"}
    request = WebhookRequest.of(headers, payload)
    make_source(options).verify(request)
    assert make_source(options).parse(request).id == "d-9"
    with pytest.raises(SignatureError, match="X-Shop-Timestamp is too old"):
        make_source(options, now=NOW + 1000).verify(request)
    with pytest.raises(SignatureError, match="missing timestamp in X-Shop-Timestamp"):
        make_source(options).verify(WebhookRequest.of(
            {k: v for k, v in headers.items() if k != "X-Shop-Timestamp"}, payload))


def test_literal_braces_in_signed_payload():
    options = {"header": "X-Sig", "signed_payload": "{{v1}}{body}", "event_type_path": "event"}
    payload = body("homemade_order")
    request = WebhookRequest.of({"X-Sig": digest(SECRET, b"{v1}" + payload).hex()}, payload)
    make_source(options).verify(request)


def test_body_that_is_not_json_is_a_payload_error():
    request = lemon_request(b"not json")
    make_source(LEMON).verify(request)
    with pytest.raises(PayloadError, match="not valid JSON"):
        make_source(LEMON).parse(request)


def test_missing_event_type_is_a_payload_error():
    with pytest.raises(PayloadError, match="no event type in X-Event-Name"):
        make_source(LEMON).parse(WebhookRequest.of({}, b"{}"))
    with pytest.raises(PayloadError, match="no event type in 'event_type' in the body"):
        make_source(PADDLE).parse(WebhookRequest.of({}, b'{"data": {}}'))


@pytest.mark.parametrize(("options", "message"), [
    ({"event_type_path": "type"}, "header\n  Field required"),
    ({**LEMON, "algorithm": "md5"}, "Input should be 'sha1', 'sha256' or 'sha512'"),
    ({**LEMON, "encoding": "base32"}, "Input should be 'hex' or 'base64'"),
    ({**LEMON, "signed_payload": "{timestamp}:{body}"},
     "signed_payload uses {timestamp} but neither timestamp_header nor timestamp_pattern"),
    ({**LEMON, "timestamp_header": "X-Time"}, "signed_payload does not contain {timestamp}"),
    ({**LEMON, "signed_payload": "{timestamp}"}, "signed_payload must contain {body}"),
    ({**LEMON, "signed_payload": "{id}.{body}"}, "may use only {body} and {timestamp}, not {id}"),
    ({**LEMON, "signed_payload": "{body"}, "signed_payload is not a valid format"),
    ({"header": "X-Signature"}, "give event_type_header or event_type_path: where the event"),
    ({**LEMON, "event_type_path": "meta.event_name"},
     "give event_type_header or event_type_path, not both"),
    ({**LEMON, "delivery_id_header": "A", "delivery_id_path": "b"},
     "give delivery_id_header or delivery_id_path, not both"),
    ({**PADDLE, "timestamp_header": "X-Time"},
     "give timestamp_header or timestamp_pattern, not both"),
    ({**PADDLE, "signature_pattern": "h1=[0-9a-f]+"},
     "signature_pattern must have exactly one capture group"),
    ({**PADDLE, "timestamp_pattern": "ts=(\\d+"}, "timestamp_pattern is not a valid regular"),
    ({**LEMON, "algoritm": "sha1"}, "algoritm\n  Extra inputs are not permitted"),
])
def test_bad_options_are_refused_with_a_clear_message(options, message):
    with pytest.raises(ValidationError) as caught:
        make_source(options)
    assert message in str(caught.value)


def recipes() -> list[dict]:
    doc = (Path(__file__).parent.parent / "docs" / "platforms" / "hmac.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    return [b for b in blocks if "routes" in b]


@pytest.mark.parametrize(("name", "request_of", "expected"), [
    ("paddle", lambda: paddle_request(body("paddle_transaction_completed")),
     "💰 Paddle sale 325-10566: 59.90 USD"),
    ("lemon", lambda: lemon_request(body("lemon_squeezy_order_created")),
     "🍋 Order #1001 from Ada Lovelace (ada@example.com): 11.99 USD"),
])
def test_recipes_in_the_docs_work(name, request_of, expected):
    recipe = next(r for r in recipes() if name in r["sources"])
    settings = SourceSettings.model_validate({**recipe["sources"][name], "secret": SECRET})
    source = HmacSource(name, settings, clock=lambda: NOW)
    request = request_of()
    source.verify(request)
    event = source.parse(request)
    routes = [RouteSettings.model_validate(r) for r in recipe["routes"]]
    env = sandbox.environment([shipped_templates_dir()], UTC)
    assert Router(env, routes).match(event) == routes
    message = Renderer(env, routes).render(routes[0], event)
    assert (message.channel, message.text) == ("sales", expected)
