"""The canonical event: what every source turns a webhook into, and what routes and templates see.

Templates and ``when`` conditions never look at a platform's payload shape; they see these names,
whatever the shop: ``event.type``, ``event.id``, ``event.test``, ``event.occurred_at``,
``source.name``, ``source.platform``, ``order.id``, ``order.number``, ``order.name``,
``order.total``, ``order.subtotal``, ``order.currency``, ``order.status``,
``order.financial_status``, ``order.cancel_reason``, ``order.note``, ``order.items`` (each
``name``, ``sku``, ``quantity``, ``price``), ``order.admin_url``, ``order.tags``, ``customer.id``,
``customer.name``, ``customer.email``, ``customer.tags``, ``customer.orders_count``,
``shipping.address``, ``shipping.method``, ``shipment.carrier``, ``shipment.tracking_number``,
``shipment.tracking_url``, ``refund.amount``, ``refund.id``, ``payment.amount``,
``payment.kind``, ``payment.number``, ``payment.due_at``, ``payment.admin_url``,
``payment.invoice_url``, ``product.id``, ``product.name``, ``product.stock`` and ``raw``, the
original payload. A part the platform did not send is None, and renders blank. An order a
refund, dispute or shipment is about may be known by its id alone (``order.name`` blank).

Amounts are exact ``Decimal`` in major units (``12.50``), never floats; the currency is an ISO 4217
code beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# Canonical types. A topic a source does not map keeps ``<platform>.<topic>`` so it can be routed.
ORDER_CREATED = "order.created"
ORDER_UPDATED = "order.updated"
ORDER_PAID = "order.paid"
ORDER_FULFILLED = "order.fulfilled"
ORDER_PARTIALLY_FULFILLED = "order.partially_fulfilled"
ORDER_CANCELLED = "order.cancelled"
REFUND_CREATED = "refund.created"
CHECKOUT_CREATED = "checkout.created"
CHECKOUT_UPDATED = "checkout.updated"
CHECKOUT_ABANDONED = "checkout.abandoned"
CUSTOMER_CREATED = "customer.created"
INVENTORY_LOW = "inventory.low"
INVENTORY_UPDATED = "inventory.updated"
PAYMENT_SUCCEEDED = "payment.succeeded"
PAYMENT_FAILED = "payment.failed"
DISPUTE_CREATED = "dispute.created"
INVOICE_PAID = "invoice.paid"
INVOICE_FAILED = "invoice.failed"
SUBSCRIPTION_CREATED = "subscription.created"
SUBSCRIPTION_CANCELLED = "subscription.cancelled"
ORDER_EDITED = "order.edited"
ORDER_DELETED = "order.deleted"
DRAFT_ORDER_CREATED = "draft_order.created"
SHIPMENT_CREATED = "shipment.created"
RETURN_REQUESTED = "return.requested"
DISPUTE_CLOSED = "dispute.closed"
CHECKOUT_COMPLETED = "checkout.completed"
CUSTOMER_UPDATED = "customer.updated"
PRODUCT_CREATED = "product.created"
PRODUCT_UPDATED = "product.updated"
MESSAGE_CREATED = "message.created"  # a message on an order, from the customer or the shop
# Every canonical type above: a sender already using one keeps it (generic sources).
CANONICAL_TYPES = frozenset(
    value for name, value in list(globals().items()) if name.isupper() and isinstance(value, str))


@dataclass(frozen=True)
class Address:
    name: str = ""
    line1: str = ""
    line2: str = ""
    city: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""

    def __str__(self) -> str:
        """One line, the empty parts left out: ``Ada Lovelace, 1 Main St, London, GB``."""
        parts = (self.name, self.line1, self.line2, " ".join(
            p for p in (self.postal_code, self.city) if p), self.region, self.country)
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Customer:
    id: str = ""
    name: str = ""
    email: str = ""
    tags: tuple[str, ...] = ()
    orders_count: int | None = None


@dataclass(frozen=True)
class Shipping:
    address: Address | None = None
    method: str = ""


@dataclass(frozen=True)
class Shipment:
    """A parcel on its way: a fulfilment (Shopify) or shipment (BigCommerce)."""

    id: str = ""  # as the shop shows it, e.g. "#1001.1"
    carrier: str = ""
    tracking_number: str = ""
    tracking_url: str = ""
    status: str = ""


@dataclass(frozen=True)
class LineItem:
    name: str
    quantity: int = 1
    sku: str = ""
    price: Decimal | None = None  # per unit


@dataclass(frozen=True)
class Order:
    id: str
    number: str = ""  # the shop's order number, e.g. "1001"
    name: str = ""  # as the shop shows it, e.g. "#1001"
    total: Decimal | None = None
    subtotal: Decimal | None = None
    currency: str = ""
    status: str = ""  # the platform's overall status (open, processing, cancelled, …)
    financial_status: str = ""  # paid, pending, refunded, …
    fulfillment_status: str = ""
    cancel_reason: str = ""
    note: str = ""  # the customer's note on the order, as they wrote it
    items: tuple[LineItem, ...] = ()
    admin_url: str = ""  # the order in the shop's admin, for the support team
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refund:
    id: str = ""
    amount: Decimal | None = None
    order_id: str = ""  # the refunded order's id, when the platform says
    currency: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Payment:
    """A payment, a failed payment, an invoice or a dispute's money."""

    amount: Decimal | None = None
    currency: str = ""
    status: str = ""
    reason: str = ""  # why it failed, or the dispute's reason
    id: str = ""
    kind: str = ""  # a transaction's: authorization, capture, sale…
    number: str = ""  # an invoice's number, as the customer sees it
    due_at: datetime | None = None  # a dispute's deadline for evidence
    admin_url: str = ""  # the payment, dispute or invoice in the platform's dashboard
    invoice_url: str = ""  # the invoice's page, as the customer sees it


@dataclass(frozen=True)
class Product:
    id: str = ""
    name: str = ""
    sku: str = ""
    stock: int | None = None


@dataclass(frozen=True)
class SourceRef:
    name: str  # the config's source name, as in /webhooks/<name>
    platform: str  # "shopify", "woocommerce", …


@dataclass(frozen=True)
class Event:
    """One webhook delivery, verified and normalised.

    ``id`` is the platform's delivery id: the same on the platform's retries, so it dedupes.
    ``test``: the platform says it is a test (Shopify's test orders, Stripe's test mode).
    """

    id: str
    type: str
    source: SourceRef
    test: bool = False
    occurred_at: datetime | None = None
    order: Order | None = None
    customer: Customer | None = None
    shipping: Shipping | None = None
    shipment: Shipment | None = None
    refund: Refund | None = None
    payment: Payment | None = None
    product: Product | None = None
    raw: dict[str, Any] = field(default_factory=dict)


# Events that open a conversation: the first message about an order, checkout or dispute.
THREAD_STARTERS = frozenset({ORDER_CREATED, CHECKOUT_CREATED, CHECKOUT_ABANDONED,
                             DISPUTE_CREATED})


def thread_key(event: Event) -> str:
    """Which conversation an event belongs to (``order:1234``), or "" for none.

    Every event about one order shares a key, so later ones can reply in the first one's
    thread; checkouts and disputes have their own."""
    # A completed checkout names the order it became: it belongs to that order's conversation.
    if event.type.startswith("checkout.") and event.type != CHECKOUT_COMPLETED and (
            event.order and event.order.id):
        return f"checkout:{event.order.id}"
    if event.type.startswith("dispute.") and event.payment and event.payment.id:
        return f"dispute:{event.payment.id}"
    if event.order and event.order.id:
        return f"order:{event.order.id}"
    if event.refund and event.refund.order_id:
        return f"order:{event.refund.order_id}"
    return ""
