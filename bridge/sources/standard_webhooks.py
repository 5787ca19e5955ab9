"""Standard Webhooks (https://www.standardwebhooks.com; Svix and others send these).

Headers ``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``: a
space-separated list of ``v1,<base64>`` entries (several while the sender rotates secrets; other
versions are ignored). Each is base64(HMAC-SHA256(key, ``{id}.{timestamp}.`` + raw body)). The
secret is ``whsec_`` + base64(key); a secret without the prefix is taken as the base64 of the key.
A timestamp further than ``tolerance`` seconds from now, either way, is refused (replays).

The body's event type sits at ``event_type_path`` (default ``type``), its object under ``data``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge.config import SourceSettings
from bridge.events import CANONICAL_TYPES, Customer, Event, LineItem, Order, Payment, SourceRef
from bridge.sources import fields
from bridge.sources.base import (
    PayloadError,
    SignatureError,
    Source,
    WebhookRequest,
    matches_any,
)

SECRET_PREFIX = "whsec_"
# Types whose money is a payment rather than an order.
PAYMENT_PREFIXES = ("payment.", "invoice.", "dispute.")


class StandardWebhooksSource(Source):
    platform = "standard-webhooks"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        tolerance: int = Field(300, ge=0)  # seconds either side of now
        event_type_path: str = Field("type", min_length=1)  # dotted path in the JSON body
        types: dict[str, str] = {}  # sender type -> canonical type

    def __init__(self, name: str, settings: SourceSettings, *,
                 clock: Callable[[], float] = time.time):
        super().__init__(name, settings)
        self._keys = tuple(decode_secret(secret.decode()) for secret in self._secrets)
        self._clock = clock  # injectable so tests need no sleeps

    def verify(self, request: WebhookRequest) -> None:
        check_signature(request, self._keys, self._clock(), self.options.tolerance)

    def parse(self, request: WebhookRequest) -> Event:
        payload = request.json()
        sender_type = fields.text(fields.dig(payload, self.options.event_type_path))
        if not sender_type:
            raise PayloadError(f"no event type at {self.options.event_type_path!r} in the body")
        event_type = self.options.types.get(sender_type) or (
            sender_type if sender_type in CANONICAL_TYPES else f"{self.platform}.{sender_type}")
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        order, payment = _money(data, event_type)
        return Event(
            id=request.header("webhook-id") or request.body_digest(),
            type=event_type,
            source=SourceRef(self.name, self.platform),
            occurred_at=fields.timestamp(payload.get("timestamp"))
            or fields.timestamp(fields.integer(request.header("webhook-timestamp"))),
            order=order,
            customer=_customer(data),
            payment=payment,
            raw=payload,
        )


def check_signature(request: WebhookRequest, keys: tuple[bytes, ...], now: float,
                    tolerance: int) -> None:
    """Raise SignatureError unless the request carries a fresh ``v1`` signature by one of
    ``keys`` (the HMAC keys themselves, already decoded)."""
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not request.header(name):
            raise SignatureError(f"missing {name} header")
    msg_id, stamp = request.header("webhook-id"), request.header("webhook-timestamp")
    try:
        sent_at = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not unix seconds") from None
    age = now - sent_at
    if age > tolerance:
        raise SignatureError(f"webhook-timestamp is too old (outside the {tolerance} s "
                             "tolerance)")
    if age < -tolerance:
        raise SignatureError(f"webhook-timestamp is too new (outside the {tolerance} s "
                             "tolerance)")
    given = [sig for version, _, sig in (
        entry.partition(",") for entry in request.header("webhook-signature").split())
        if version == "v1" and sig]
    if not given:
        raise SignatureError("webhook-signature holds no v1 signature")
    expected = [sign(key, msg_id, stamp, request.body) for key in keys]
    if not any(matches_any(sig, expected) for sig in given):
        raise SignatureError("webhook-signature does not match the body")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (or of a bare base64 one)."""
    encoded = secret.removeprefix(SECRET_PREFIX).rstrip("=")
    try:  # senders often drop the padding
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # The message never holds the secret; pipeline reports it as a config problem.
        raise ValueError(
            "secret: is not a Standard Webhooks secret (whsec_ followed by base64)") from None
    if not key:
        raise ValueError("secret: the key after whsec_ is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """One signature as it appears after ``v1,`` in ``webhook-signature``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()


def _money(data: dict[str, Any], event_type: str) -> tuple[Order | None, Payment | None]:
    """An order when ``data`` has an order number; a payment when it has only an amount (or
    the event is a payment, invoice or dispute)."""
    number = fields.text(data.get("order_number") or data.get("number"))
    total = fields.amount(data.get("total") if data.get("total") is not None
                          else data.get("amount"))
    currency = fields.text(data.get("currency"))
    status = fields.text(data.get("status"))
    order = payment = None
    if number:
        order = Order(
            id=fields.text(data.get("id")) or number, number=number,
            name=fields.text(data.get("name")) or f"#{number}", total=total,
            subtotal=fields.amount(data.get("subtotal")), currency=currency, status=status,
            items=_items(data.get("items") or data.get("line_items")),
            admin_url=fields.text(data.get("admin_url") or data.get("url")),
            tags=fields.tags(data.get("tags")))
    if total is not None and (not number or event_type.startswith(PAYMENT_PREFIXES)):
        payment = Payment(amount=total, currency=currency, status=status,
                          reason=fields.text(data.get("reason")),
                          id=fields.text(data.get("id")))
    return order, payment


def _items(value: Any) -> tuple[LineItem, ...]:
    return tuple(
        LineItem(name=fields.text(item.get("name") or item.get("title")),
                 quantity=fields.integer(item.get("quantity")) or 1,
                 sku=fields.text(item.get("sku")), price=fields.amount(item.get("price")))
        for item in (value if isinstance(value, list) else [])
        if isinstance(item, dict)
    )


def _customer(data: dict[str, Any]) -> Customer | None:
    customer = data.get("customer") if isinstance(data.get("customer"), dict) else {}
    name = fields.text(customer.get("name")) or " ".join(
        str(part) for part in (customer.get("first_name"), customer.get("last_name")) if part
    ) or fields.text(data.get("fullName"))  # the specification's own contact example
    email = fields.text(customer.get("email") or data.get("email"))
    if not (name or email):
        return None
    return Customer(name=name, email=email, tags=fields.tags(customer.get("tags")))
