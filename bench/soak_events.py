"""The soak's webhooks: one source per platform, signed as each platform signs, with a delivery id
of the soak's own so every notification at the fake can be matched back to its event.

Each event is built once (its body never changes: a re-delivery is byte for byte the same body);
its headers are made at each send, so Stripe, Standard Webhooks and the HMAC source carry a fresh
timestamp on every retry, as those platforms re-sign their retries. A *forged* event is sent with
a signature that does not verify (a wrong secret, or a body changed after signing) and must be
answered 401 and never reach the channel.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import samples
from bridge.sources import generic_hmac, shopify, standard_webhooks, stripe, woocommerce

PAYLOADS = Path(__file__).resolve().parent.parent / "tests" / "payloads"

SHOPIFY_SECRET = "soak-shopify-secret"
WOO_SECRET = "soak-woo-secret"
STRIPE_SECRET = "whsec_soakStripeSecret0123456789"
BIGCOMMERCE_SECRET = "soak-bigcommerce-secret"
STANDARD_KEY = b"soak-standard-webhooks-key-0123"
STANDARD_SECRET = "whsec_" + base64.b64encode(STANDARD_KEY).decode()
HMAC_SECRET = "soak-hmac-secret"
WRONG = b"not-the-secret"

# Source name -> its config (beside the route, which sends everything to one channel per source).
SOURCES: dict[str, dict[str, Any]] = {
    "shopify": {"type": "shopify", "secret": SHOPIFY_SECRET},
    "woocommerce": {"type": "woocommerce", "secret": WOO_SECRET},
    "stripe": {"type": "stripe", "secret": STRIPE_SECRET},
    # No api_token: no enrichment, so the receiver never calls a store API.
    "bigcommerce": {"type": "bigcommerce", "secret": BIGCOMMERCE_SECRET},
    "standard": {"type": "standard-webhooks", "secret": STANDARD_SECRET},
    "hmac": {"type": "hmac", "secret": HMAC_SECRET, "header": "X-Soak-Signature",
             "prefix": "sha256=", "signed_payload": "{timestamp}.{body}",
             "timestamp_header": "X-Soak-Timestamp", "event_type_path": "event",
             "delivery_id_header": "X-Soak-Delivery"},
}
# Every notification's text names its source and event id: "soak <source> <event id> <type>".
# A digest lists each notification's first line, so the same pattern finds digested ones too.
ROUTE_TEXT = "soak {{ source.name }} {{ event.id }} {{ event.type }}"
CHANNEL = "soak-{{ source.name }}"


def channels() -> list[str]:
    return [f"soak-{name}" for name in SOURCES]


@dataclass
class Webhook:
    """One event as the shop sends it (every copy and retry alike)."""

    index: int
    source: str
    event_id: str  # what the bridge will take as the delivery id, hence in the text
    body: bytes
    sign: Callable[[bytes, bool], dict[str, str]]  # (body, forged) -> headers, made per send
    forged: bool = False
    tamper: bool = False  # forged by changing the body after signing (else: a wrong secret)
    answers: list[str] = field(default_factory=list)  # "202", "200", "503", "conn:…", per send

    def request(self) -> tuple[bytes, dict[str, str]]:
        if self.forged and self.tamper:  # signed right, then changed on the way
            return _tampered(self.body), self.sign(self.body, False)
        return self.body, self.sign(self.body, self.forged)

    @property
    def accepted(self) -> bool:
        return any(a in ("200", "202") for a in self.answers)


def _tampered(body: bytes) -> bytes:
    """The body with one character changed after it was signed."""
    at = body.index(b":") + 1
    return body[:at] + b" " + body[at:]


def _load(platform: str) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in
            sorted((PAYLOADS / platform).glob("*.json"))}


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class Factory:
    """Builds the soak's events from the sample payloads, deterministically from the seed."""

    def __init__(self, seed: int, run: str):
        self.rng = random.Random(seed)
        self.run = run  # in every delivery id, so two runs never dedupe each other
        self.woo = _load("woocommerce")
        self.stripe = _load("stripe")
        self.bigcommerce = {k: v for k, v in _load("bigcommerce").items()
                            if "scope" in v}  # the api_* files are store API answers
        self.standard = _load("standard_webhooks")
        self.hmac = _load("generic_hmac")["homemade_order"]

    def make(self, index: int, forged: bool) -> Webhook:
        source = list(SOURCES)[index % len(SOURCES)]
        ref = f"{self.run}{index:05d}"
        webhook = getattr(self, "_" + source)(index, ref)
        webhook.forged = forged
        webhook.tamper = forged and self.rng.random() < 0.5 and source != "bigcommerce"
        return webhook

    def _shopify(self, index: int, ref: str) -> Webhook:
        topic = self.rng.choice(["orders/create", "orders/paid", "orders/fulfilled",
                                 "orders/cancelled", "orders/updated"])
        body = samples.body_of(samples.shopify_order(100_000 + index))
        delivery = f"soak-{ref}"

        def sign(body: bytes, forged: bool) -> dict[str, str]:
            headers = samples.shopify_headers(topic, webhook_id=delivery)
            secret = WRONG if forged else SHOPIFY_SECRET.encode()
            headers["X-Shopify-Hmac-Sha256"] = shopify.sign(secret, body)
            return headers

        return Webhook(index, "shopify", delivery, body, sign)

    def _woocommerce(self, index: int, ref: str) -> Webhook:
        name = self.rng.choice(sorted(self.woo))
        payload = copy.deepcopy(self.woo[name])
        resource, action = name.split("_")[:2]
        if resource in ("order", "product", "customer"):
            payload["id"] = 10_000 + index
        delivery = f"soak-{ref}"

        def sign(body: bytes, forged: bool) -> dict[str, str]:
            key = WRONG if forged else WOO_SECRET.encode()
            return {"Content-Type": "application/json",
                    "X-WC-Webhook-Source": "https://shop.example.com/",
                    "X-WC-Webhook-Topic": f"{resource}.{action}",
                    "X-WC-Webhook-Resource": resource, "X-WC-Webhook-Event": action,
                    "X-WC-Webhook-ID": "12", "X-WC-Webhook-Delivery-ID": delivery,
                    "X-WC-Webhook-Signature": woocommerce.sign(key, body)}

        return Webhook(index, "woocommerce", delivery, _body(payload), sign)

    def _stripe(self, index: int, ref: str) -> Webhook:
        payload = copy.deepcopy(self.stripe[self.rng.choice(sorted(self.stripe))])
        payload["id"] = f"evt_soak{ref}"

        def sign(body: bytes, forged: bool) -> dict[str, str]:
            secret = WRONG if forged else STRIPE_SECRET.encode()
            return {"Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": stripe.sign(secret, body, int(time.time()))}

        return Webhook(index, "stripe", payload["id"], _body(payload), sign)

    def _bigcommerce(self, index: int, ref: str) -> Webhook:
        payload = copy.deepcopy(self.bigcommerce[self.rng.choice(sorted(self.bigcommerce))])
        payload["created_at"] = int(time.time())
        # The delivery id, as BigCommerce's current deliveries carry it (its body's hash is the
        # SHA-1 of the data, the same for every update of one order).
        delivery = f"soak{ref}"

        def sign(body: bytes, forged: bool) -> dict[str, str]:
            return {"Content-Type": "application/json", "webhook-id": delivery,
                    "X-Webhook-Secret": WRONG.decode() if forged else BIGCOMMERCE_SECRET}

        return Webhook(index, "bigcommerce", delivery, _body(payload), sign)

    def _standard(self, index: int, ref: str) -> Webhook:
        payload = copy.deepcopy(self.standard[self.rng.choice(sorted(self.standard))])
        msg_id = f"msg_soak{ref}"

        def sign(body: bytes, forged: bool) -> dict[str, str]:
            stamp = str(int(time.time()))
            key = WRONG if forged else STANDARD_KEY
            return {"Content-Type": "application/json", "webhook-id": msg_id,
                    "webhook-timestamp": stamp,
                    "webhook-signature": "v1," + standard_webhooks.sign(key, msg_id, stamp,
                                                                        body)}

        return Webhook(index, "standard", msg_id, _body(payload), sign)

    def _hmac(self, index: int, ref: str) -> Webhook:
        payload = copy.deepcopy(self.hmac)
        payload["delivery"] = delivery = f"dlv_soak{ref}"
        payload["order"]["number"] = f"S-{index}"

        def sign(body: bytes, forged: bool) -> dict[str, str]:
            stamp = str(int(time.time()))
            secret = WRONG if forged else HMAC_SECRET.encode()
            signed = generic_hmac.signed_bytes("{timestamp}.{body}", body, stamp)
            return {"Content-Type": "application/json", "X-Soak-Delivery": delivery,
                    "X-Soak-Timestamp": stamp,
                    "X-Soak-Signature": "sha256=" + generic_hmac.sign(secret, signed)}

        return Webhook(index, "hmac", delivery, _body(payload), sign)
