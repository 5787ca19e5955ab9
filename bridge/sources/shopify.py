"""Shopify: base64 HMAC-SHA256 of the raw body in ``X-Shopify-Hmac-Sha256``.

Topic in ``X-Shopify-Topic``, delivery id in ``X-Shopify-Webhook-Id`` (the same on Shopify's
retries), shop in ``X-Shopify-Shop-Domain``. The signature covers the body alone: these headers
can be changed on a captured delivery, so a configured ``shop_domain`` is the shop, and a
delivery naming another one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from bridge import events
from bridge.events import (
    Address,
    Customer,
    Event,
    LineItem,
    Order,
    Payment,
    Product,
    Refund,
    Shipment,
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
    "orders/create": events.ORDER_CREATED,
    "orders/updated": events.ORDER_UPDATED,
    "orders/paid": events.ORDER_PAID,
    "orders/fulfilled": events.ORDER_FULFILLED,
    "orders/partially_fulfilled": events.ORDER_PARTIALLY_FULFILLED,
    "orders/cancelled": events.ORDER_CANCELLED,
    "refunds/create": events.REFUND_CREATED,
    "orders/edited": events.ORDER_EDITED,
    "orders/delete": events.ORDER_DELETED,
    "draft_orders/create": events.DRAFT_ORDER_CREATED,
    "fulfillments/create": events.SHIPMENT_CREATED,
    "returns/request": events.RETURN_REQUESTED,
    "disputes/create": events.DISPUTE_CREATED,
    "customers/create": events.CUSTOMER_CREATED,
    "customers/update": events.CUSTOMER_UPDATED,
    "products/create": events.PRODUCT_CREATED,
    "products/update": events.PRODUCT_UPDATED,
    # Shopify sends no "abandoned" event: a checkout is abandoned when no order follows it.
    # These say a checkout was started or changed; route them with a delay in mind.
    "checkouts/create": events.CHECKOUT_CREATED,
    "checkouts/update": events.CHECKOUT_UPDATED,
    "inventory_levels/update": events.INVENTORY_UPDATED,
    # order_transactions/create: payment.succeeded or payment.failed by the transaction's status.
    # disputes/update: dispute.closed once the dispute is decided.
}
CLOSED_DISPUTES = frozenset({"won", "lost", "accepted", "charge_refunded"})
DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


class ShopifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # inventory_levels/update at or below this many available is inventory.low.
    low_stock_threshold: int = 5
    # The shop's *.myshopify.com domain. Set, it is what admin links are built from and a
    # delivery whose X-Shopify-Shop-Domain names another shop is refused.
    shop_domain: str = ""

    @field_validator("shop_domain")
    @classmethod
    def _a_bare_domain(cls, value: str) -> str:
        domain = normalised_domain(value)
        if domain and not DOMAIN.fullmatch(domain):
            raise ValueError(f"{value!r} is not a shop domain (e.g. my-shop.myshopify.com)")
        return domain


class ShopifySource(Source):
    platform = "shopify"
    Options = ShopifyOptions

    def verify(self, request: WebhookRequest) -> None:
        given = request.header("X-Shopify-Hmac-Sha256")
        if not given:
            raise SignatureError("missing X-Shopify-Hmac-Sha256 header")
        if not matches_any(given, (sign(secret, request.body) for secret in self._secrets)):
            raise SignatureError("X-Shopify-Hmac-Sha256 does not match the body")
        named = request.header("X-Shopify-Shop-Domain")
        if self.options.shop_domain and normalised_domain(named) != self.options.shop_domain:
            raise SignatureError(f"X-Shopify-Shop-Domain {named!r} is not this source's "
                                 "shop_domain")

    def parse(self, request: WebhookRequest) -> Event:
        topic = request.header("X-Shopify-Topic")
        if not topic:
            raise PayloadError("missing X-Shopify-Topic header")
        payload = request.json()
        shop = self.options.shop_domain or request.header("X-Shopify-Shop-Domain")
        event_type = TOPICS.get(topic, f"shopify.{topic}")
        parts = _parts(topic, payload, shop)
        product = parts.get("product")
        if topic == "inventory_levels/update" and product.stock is not None and (
                product.stock <= self.options.low_stock_threshold):
            event_type = events.INVENTORY_LOW
        elif topic == "order_transactions/create":
            event_type = _transaction_type(parts["payment"]) or event_type
        elif topic == "disputes/update" and parts["payment"].status in CLOSED_DISPUTES:
            event_type = events.DISPUTE_CLOSED
        return Event(
            id=request.header("X-Shopify-Webhook-Id") or request.body_digest(),
            type=event_type,
            source=SourceRef(self.name, self.platform),
            test=payload.get("test") is True,
            occurred_at=fields.timestamp(payload.get("updated_at") or payload.get("created_at")),
            raw=payload,
            **parts,
        )


def _parts(topic: str, payload: dict[str, Any], shop: str) -> dict[str, Any]:
    """The canonical parts a topic's body fills."""
    resource = topic.partition("/")[0]
    order_ref = _order_ref(fields.text(payload.get("order_id")), shop)
    if topic == "orders/edited":
        order_edit = fields.mapping(payload.get("order_edit"))
        return {"order": _order_ref(fields.text(order_edit.get("order_id")), shop)}
    if topic == "orders/delete":  # the body is the id alone; the order page is gone
        return {"order": Order(id=fields.text(payload.get("id")))}
    if resource in ("orders", "checkouts", "draft_orders"):
        lines = fields.records(payload.get("shipping_lines"))
        order = _order(payload, shop)
        if resource == "draft_orders":
            order = replace(order, admin_url=_admin_url(shop, order.id, "draft_orders"))
        return {"order": order, "customer": _customer(payload),
                "shipping": Shipping(_address(payload.get("shipping_address")),
                                     fields.text(lines[0].get("title")) if lines else "")}
    if topic == "refunds/create":
        return {"refund": _refund(payload), "order": order_ref}
    if resource == "customers":
        return {"customer": _customer({"customer": payload})}
    if topic == "inventory_levels/update":  # names the inventory item, not the product
        return {"product": Product(id=fields.text(payload.get("inventory_item_id")),
                                   stock=fields.integer(payload.get("available")))}
    if resource == "products":
        return {"product": Product(id=fields.text(payload.get("id")),
                                   name=fields.text(payload.get("title")))}
    if resource == "fulfillments":
        return {"order": order_ref, "shipment": _shipment(payload),
                "customer": Customer(email=fields.text(payload.get("email"))),
                "shipping": Shipping(_address(payload.get("destination")))}
    if resource in ("disputes", "order_transactions"):
        return {"order": order_ref, "payment": _payment(payload)}
    if resource == "returns":
        return {"order": _order_ref(fields.text(fields.dig(payload, "order.id")), shop)}
    # Any other topic: what it is about, when the body says, for the fallback message.
    has_amount = fields.amount(payload.get("amount")) is not None
    return {"order": order_ref, "payment": _payment(payload) if has_amount else None}


def _transaction_type(payment: Payment) -> str:
    """A failed transaction is a failed payment; a money-taking one that succeeded, a payment."""
    if payment.status in ("failure", "error"):
        return events.PAYMENT_FAILED
    if payment.status == "success" and payment.kind in ("authorization", "capture", "sale"):
        return events.PAYMENT_SUCCEEDED
    return ""


def normalised_domain(value: str) -> str:
    """A shop domain as compared: lower case, without a scheme or a trailing slash."""
    domain = value.strip().lower()
    return domain.removeprefix("https://").removeprefix("http://").rstrip("/")


def sign(secret: bytes, body: bytes) -> str:
    """The X-Shopify-Hmac-Sha256 value Shopify sends for ``body``."""
    return base64.b64encode(hmac.digest(secret, body, hashlib.sha256)).decode()


def _order_ref(order_id: str, shop_domain: str) -> Order | None:
    """The order a refund, dispute or transaction is about: its id (and link) only."""
    return Order(id=order_id, admin_url=_admin_url(shop_domain, order_id)) if order_id else None


def _order(payload: dict[str, Any], shop_domain: str) -> Order:
    order_id = fields.text(payload.get("id"))
    number = fields.text(payload.get("order_number"))
    return Order(
        id=order_id,
        number=number,
        name=fields.text(payload.get("name")) or (f"#{number}" if number else ""),
        total=fields.amount(payload.get("total_price")),
        subtotal=fields.amount(payload.get("subtotal_price")),
        currency=fields.text(payload.get("currency")),
        status="cancelled" if payload.get("cancelled_at") else (
            "closed" if payload.get("closed_at") else "open"),
        financial_status=fields.text(payload.get("financial_status")),
        fulfillment_status=fields.text(payload.get("fulfillment_status")),
        items=tuple(
            LineItem(
                name=fields.text(item.get("name") or item.get("title")),
                quantity=fields.integer(item.get("quantity")) or 1,
                sku=fields.text(item.get("sku")),
                price=fields.amount(item.get("price")),
            )
            for item in fields.records(payload.get("line_items"))
        ),
        # A checkout's link is the customer's recovery link, the useful one for support.
        admin_url=fields.text(payload.get("abandoned_checkout_url"))
        or _admin_url(shop_domain, order_id),
        tags=fields.tags(payload.get("tags")),
        cancel_reason=fields.text(payload.get("cancel_reason")),
        note=fields.text(payload.get("note")),
    )


def _shipment(fulfillment: dict[str, Any]) -> Shipment:
    numbers = fields.tags(fulfillment.get("tracking_numbers")) or fields.tags(
        fulfillment.get("tracking_number"))
    urls = fields.tags(fulfillment.get("tracking_urls")) or fields.tags(
        fulfillment.get("tracking_url"))
    return Shipment(id=fields.text(fulfillment.get("name")),
                    carrier=fields.text(fulfillment.get("tracking_company")),
                    tracking_number=", ".join(numbers), tracking_url=urls[0] if urls else "",
                    status=fields.text(fulfillment.get("shipment_status")
                                       or fulfillment.get("status")))


def _payment(payload: dict[str, Any]) -> Payment:
    """A dispute or an order transaction."""
    return Payment(amount=fields.amount(payload.get("amount")),
                   currency=fields.text(payload.get("currency")),
                   status=fields.text(payload.get("status")),
                   reason=fields.text(payload.get("reason") or payload.get("message")
                                      or payload.get("error_code")),
                   id=fields.text(payload.get("id")), kind=fields.text(payload.get("kind")),
                   due_at=fields.timestamp(payload.get("evidence_due_by")))


def _customer(payload: dict[str, Any]) -> Customer:
    customer = fields.mapping(payload.get("customer"))
    name = " ".join(
        fields.text(part) for part in (customer.get("first_name"), customer.get("last_name"))
        if part
    )
    if not name:  # guest checkouts carry the name only on an address
        address = fields.mapping(payload.get("billing_address")) or fields.mapping(
            payload.get("shipping_address"))
        name = fields.text(address.get("name"))
    return Customer(
        name=name,
        email=fields.text(customer.get("email") or payload.get("email")),
        tags=fields.tags(customer.get("tags")),
        orders_count=fields.integer(customer.get("orders_count")),
    )


def _address(value: Any) -> Address | None:
    if not isinstance(value, dict):
        return None
    return Address(
        name=fields.text(value.get("name")),
        line1=fields.text(value.get("address1")),
        line2=fields.text(value.get("address2")),
        city=fields.text(value.get("city")),
        region=fields.text(value.get("province_code") or value.get("province")),
        postal_code=fields.text(value.get("zip")),
        country=fields.text(value.get("country_code") or value.get("country")),
    )


def _refund(payload: dict[str, Any]) -> Refund:
    transactions = fields.records(payload.get("transactions"))
    amounts = [a for a in (fields.amount(t.get("amount")) for t in transactions) if a is not None]
    total = sum(amounts, Decimal(0)) if amounts else None
    # Shopify's transactions may carry "currency": null; the shop's money says it then.
    currency = next((fields.text(t.get("currency")) for t in transactions if t.get("currency")),
                    "") or _shop_currency(payload)
    return Refund(amount=total, currency=currency, reason=fields.text(payload.get("note")),
                  order_id=fields.text(payload.get("order_id")))


def _shop_currency(payload: dict[str, Any]) -> str:
    """The shop's currency, from the first ``…_set.shop_money`` amount of a refund."""
    sets = [payload.get("total_duties_set")] + [
        line.get("subtotal_set") for line in fields.records(payload.get("refund_line_items"))]
    return next((code for code in (fields.text(fields.dig(money, "shop_money.currency_code"))
                                   for money in sets) if code), "")


def _admin_url(shop_domain: str, order_id: str, kind: str = "orders") -> str:
    if not (shop_domain and order_id):
        return ""
    handle = shop_domain.removesuffix(".myshopify.com")
    if handle != shop_domain:
        return f"https://admin.shopify.com/store/{handle}/{kind}/{order_id}"
    return f"https://{shop_domain}/admin/{kind}/{order_id}"
