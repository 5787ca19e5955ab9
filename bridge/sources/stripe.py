"""Stripe: ``Stripe-Signature: t=TS,v1=HEX[,v1=HEX…]``.

Each ``v1`` is the hex HMAC-SHA256 of ``f"{TS}."`` + the raw body, keyed with the endpoint's
signing secret used as is (the whole ``whsec_…`` string). Stripe sends several ``v1`` while it
rolls the endpoint secret; ``v0`` entries are a legacy test scheme and are ignored. A delivery
whose ``t`` is further than ``tolerance`` seconds from now is refused, so a captured delivery
cannot be replayed later. The event type is the body's ``type``, the delivery id its ``id``
(``evt_…``, the same on Stripe's retries). Amounts are integers of the currency's minor unit.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge import events
from bridge.config import SourceSettings
from bridge.events import (
    Address,
    Customer,
    Event,
    LineItem,
    Order,
    Payment,
    Refund,
    Shipping,
    SourceRef,
)
from bridge.sources import fields
from bridge.sources.base import (
    PayloadError,
    SignatureError,
    Source,
    WebhookRequest,
    matches_any,
)

TOPICS = {
    "checkout.session.completed": events.ORDER_PAID,
    "payment_intent.succeeded": events.PAYMENT_SUCCEEDED,
    "payment_intent.payment_failed": events.PAYMENT_FAILED,
    "charge.succeeded": events.PAYMENT_SUCCEEDED,
    "charge.failed": events.PAYMENT_FAILED,
    "charge.refunded": events.REFUND_CREATED,
    "refund.created": events.REFUND_CREATED,
    "charge.dispute.created": events.DISPUTE_CREATED,
    "charge.dispute.closed": events.DISPUTE_CLOSED,
    "invoice.paid": events.INVOICE_PAID,
    "invoice.payment_failed": events.INVOICE_FAILED,
    "customer.subscription.created": events.SUBSCRIPTION_CREATED,
    "customer.subscription.deleted": events.SUBSCRIPTION_CANCELLED,
}

# Stripe's currencies whose minor unit is not the cent (https://docs.stripe.com/currencies).
ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
                          "ugx", "vnd", "vuv", "xaf", "xof", "xpf"})
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


class StripeSource(Source):
    platform = "stripe"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        # Seconds a delivery's timestamp may differ from now; 0 turns the check off.
        tolerance: int = Field(default=300, ge=0)

    def __init__(self, name: str, settings: SourceSettings):
        super().__init__(name, settings)
        # Injectable so tests can fix "now" instead of sleeping.
        self.clock: Callable[[], float] = time.time

    def verify(self, request: WebhookRequest) -> None:
        header = request.header("Stripe-Signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        timestamp, given = _parse_header(header)
        expected = [_digest(secret, timestamp, request.body) for secret in self._secrets]
        # A list, not a generator: every v1 is compared, whichever one matches.
        if not any([matches_any(signature, expected) for signature in given]):
            raise SignatureError("Stripe-Signature does not match the body")
        tolerance = self.options.tolerance
        if tolerance and abs(self.clock() - timestamp) > tolerance:
            raise SignatureError(
                f"Stripe-Signature timestamp outside the tolerance ({tolerance} s)")

    def parse(self, request: WebhookRequest) -> Event:
        payload = request.json()
        topic = fields.text(payload.get("type"))
        if not topic:
            raise PayloadError("missing event type")
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        obj = obj if isinstance(obj, dict) else {}
        livemode = bool(payload.get("livemode", obj.get("livemode", True)))
        return Event(
            id=fields.text(payload.get("id")) or request.body_digest(),
            type=TOPICS.get(topic, f"stripe.{topic}"),
            source=SourceRef(self.name, self.platform),
            test=not livemode,
            occurred_at=fields.timestamp(payload.get("created")),
            raw=payload,
            **_parts(topic, obj, Dashboard(livemode)),
        )


@dataclass(frozen=True)
class Dashboard:
    """Links into the Stripe dashboard, of live or test mode."""

    livemode: bool

    def url(self, kind: str, object_id: str) -> str:
        mode = "" if self.livemode else "test/"
        return f"https://dashboard.stripe.com/{mode}{kind}/{object_id}" if object_id else ""


def _parts(topic: str, obj: dict[str, Any], dashboard: Dashboard) -> dict[str, Any]:
    """The canonical parts an event's object fills."""
    if topic == "checkout.session.completed":
        details = fields.mapping(obj.get("collected_information"))
        return {"order": _order(obj, dashboard), "customer": _customer(obj.get("customer_details")),
                "shipping": _shipping(obj.get("shipping_details")
                                      or details.get("shipping_details"))}
    if topic.startswith("payment_intent."):
        # A failed intent received nothing: its amount is what was asked for.
        payment = _payment(obj, obj.get("amount_received") or obj.get("amount"), _error(obj),
                           dashboard.url("payments", fields.text(obj.get("id"))))
        email = fields.text(obj.get("receipt_email"))
        return {"payment": payment, "customer": Customer(email=email) if email else None,
                "shipping": _shipping(obj.get("shipping"))}
    if topic.startswith("charge.dispute."):
        due_by = fields.mapping(obj.get("evidence_details")).get("due_by")
        payment = _payment(obj, obj.get("amount"), fields.text(obj.get("reason")),
                           dashboard.url("disputes", fields.text(obj.get("id"))))
        return {"payment": replace(payment, due_at=fields.timestamp(due_by))}
    if topic.startswith("charge."):  # refunded, succeeded, failed…
        paid = dashboard.url("payments", fields.text(obj.get("payment_intent") or obj.get("id")))
        return {"refund": _refund(obj) if topic == "charge.refunded" else None,
                "payment": _payment(obj, obj.get("amount"), _failure(obj), paid),
                "customer": _customer(obj.get("billing_details"))}
    if topic.startswith("refund."):
        currency = fields.text(obj.get("currency"))
        paid_with = fields.text(obj.get("payment_intent") or obj.get("charge"))
        return {"refund": Refund(id=fields.text(obj.get("id")),
                                 amount=_money(obj.get("amount"), currency),
                                 currency=currency.upper(), reason=fields.text(obj.get("reason"))),
                "payment": Payment(id=paid_with, admin_url=dashboard.url("payments", paid_with))}
    if topic.startswith("invoice."):
        return {"payment": _invoice(obj, topic == "invoice.paid", dashboard),
                "customer": _customer({"name": obj.get("customer_name"),
                                       "email": obj.get("customer_email")})}
    if topic.startswith("customer.subscription."):
        reason = fields.mapping(obj.get("cancellation_details")).get("reason")
        # Older API versions put the currency only on the items' prices (and the plan).
        currency = obj.get("currency") or next(
            (price.get("currency") for price in _prices(obj) if price.get("currency")), "")
        return {"payment": _payment(obj | {"currency": currency}, _recurring_amount(obj),
                                    fields.text(reason),
                                    dashboard.url("subscriptions", fields.text(obj.get("id"))))}
    # Any other type (a payout, a top-up…): its amount, for the fallback message.
    if obj.get("amount") is not None:
        return {"payment": _payment(obj, obj.get("amount"))}
    return {}


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The Stripe-Signature value Stripe sends for ``body`` at ``timestamp``."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp, signatures = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = fields.integer(value.strip())
        elif key == "v1" and value.strip():
            signatures.append(value.strip())
    if timestamp is None:
        raise SignatureError("Stripe-Signature has no valid timestamp (t=)")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1 signature")
    return timestamp, signatures


def exponent(currency: str) -> int:
    """Digits of the currency's minor unit as Stripe counts them: 0 for JPY, 3 for KWD."""
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def _money(value: Any, currency: str) -> Decimal | None:
    return fields.minor_units(value, exponent(currency))


def _order(session: dict[str, Any], dashboard: Dashboard) -> Order:
    session_id = fields.text(session.get("id"))
    currency = fields.text(session.get("currency"))
    metadata = fields.mapping(session.get("metadata"))
    number = fields.text(metadata.get("order_number")) or session_id
    line_items = fields.mapping(session.get("line_items"))  # only there when the sender expanded it
    return Order(
        id=session_id,
        number=number,
        name=f"#{number}" if number != session_id else number,
        total=_money(session.get("amount_total"), currency),
        subtotal=_money(session.get("amount_subtotal"), currency),
        currency=currency.upper(),
        status=fields.text(session.get("status")),
        financial_status=fields.text(session.get("payment_status")),
        items=tuple(
            LineItem(
                name=fields.text(item.get("description")),
                quantity=fields.integer(item.get("quantity")) or 1,
                sku=fields.text(fields.mapping(item.get("price")).get("id")),
                price=_money(fields.mapping(item.get("price")).get("unit_amount"), currency),
            )
            for item in fields.records(line_items.get("data"))
        ),
        admin_url=dashboard.url("payments", fields.text(session.get("payment_intent"))),
    )


def _customer(details: Any) -> Customer | None:
    if not isinstance(details, dict):
        return None
    return Customer(name=fields.text(details.get("name")),
                    email=fields.text(details.get("email")))


def _shipping(details: Any) -> Shipping | None:
    if not isinstance(details, dict) or not isinstance(details.get("address"), dict):
        return None
    address = details["address"]
    return Shipping(Address(
        name=fields.text(details.get("name")),
        line1=fields.text(address.get("line1")),
        line2=fields.text(address.get("line2")),
        city=fields.text(address.get("city")),
        region=fields.text(address.get("state")),
        postal_code=fields.text(address.get("postal_code")),
        country=fields.text(address.get("country")),
    ), fields.text(details.get("carrier")))


def _payment(obj: dict[str, Any], amount: Any, reason: str = "", admin_url: str = "") -> Payment:
    currency = fields.text(obj.get("currency"))
    return Payment(amount=_money(amount, currency), currency=currency.upper(),
                   status=fields.text(obj.get("status")), reason=reason,
                   id=fields.text(obj.get("id")), admin_url=admin_url)


def _invoice(invoice: dict[str, Any], paid: bool, dashboard: Dashboard) -> Payment:
    payment = _payment(invoice, invoice.get("amount_paid" if paid else "amount_due"),
                       admin_url=dashboard.url("invoices", fields.text(invoice.get("id"))))
    return replace(payment, number=fields.text(invoice.get("number")),
                   invoice_url=fields.text(invoice.get("hosted_invoice_url")))


def _failure(charge: dict[str, Any]) -> str:
    return fields.text(charge.get("failure_message") or charge.get("failure_code"))


def _error(intent: dict[str, Any]) -> str:
    error = intent.get("last_payment_error")
    return fields.text(error.get("message")) if isinstance(error, dict) else ""


def _refund(charge: dict[str, Any]) -> Refund:
    currency = fields.text(charge.get("currency"))
    refunds = fields.records(fields.mapping(charge.get("refunds")).get("data"))  # older APIs
    reason = next((fields.text(r.get("reason")) for r in refunds if r.get("reason")), "")
    return Refund(amount=_money(charge.get("amount_refunded"), currency),
                  currency=currency.upper(), reason=reason)


def _recurring_amount(subscription: dict[str, Any]) -> int | None:
    """What the subscription bills each period: the sum of its items' unit price × quantity."""
    amounts = [(fields.integer(fields.mapping(item.get("price")).get("unit_amount")),
                fields.integer(item.get("quantity"))) for item in _items(subscription)]
    if not amounts or any(unit is None for unit, _ in amounts):
        return None  # metered or tiered prices have no fixed amount
    return sum(unit * (1 if quantity is None else quantity) for unit, quantity in amounts)


def _prices(subscription: dict[str, Any]) -> list[dict[str, Any]]:
    """The prices (and, on older API versions, plans) of a subscription's items, then its own
    plan."""
    found = [fields.mapping(item.get(key)) for item in _items(subscription)
             for key in ("price", "plan")]
    return [*found, fields.mapping(subscription.get("plan"))]


def _items(subscription: dict[str, Any]) -> list[dict[str, Any]]:
    return fields.records(fields.mapping(subscription.get("items")).get("data"))
