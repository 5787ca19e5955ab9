"""WooCommerce: base64 HMAC-SHA256 of the raw body in ``X-WC-Webhook-Signature``.

The key is the webhook's secret after WordPress decodes HTML entities in it
(``wp_specialchars_decode``), so both the secret as typed and its decoded form are tried.
Topic in ``X-WC-Webhook-Topic`` (or ``-Resource`` + ``-Event``), delivery id in
``X-WC-Webhook-Delivery-ID``, shop URL in ``X-WC-Webhook-Source``. The signature covers the
body alone: these headers can be changed on a captured delivery, so a configured ``site_url`` is
the shop, and a delivery naming another one is refused. When a webhook is created WooCommerce
posts an unsigned form body ``webhook_id=N`` (see ``is_ping``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from bridge import events
from bridge.config import SourceSettings
from bridge.events import (
    Address,
    Customer,
    Event,
    LineItem,
    Order,
    Payment,
    Product,
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

# order.updated says only that something changed; the order's status says what.
ORDER_STATUS_TYPES = {
    "processing": events.ORDER_PAID,
    "completed": events.ORDER_FULFILLED,
    "cancelled": events.ORDER_CANCELLED,
    "refunded": events.REFUND_CREATED,
}
CUSTOMER_TYPES = {"created": events.CUSTOMER_CREATED, "updated": events.CUSTOMER_UPDATED}
PRODUCT_TYPES = {"created": events.PRODUCT_CREATED, "updated": events.PRODUCT_UPDATED}
PING = re.compile(rb"webhook_id=\d+")
FORM = "application/x-www-form-urlencoded"
WEB_ADDRESS = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")


class WooCommerceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low_stock_threshold: int = 5
    admin_url_style: Literal["post", "hpos"] = "post"  # hpos: High-Performance Order Storage
    # The shop's address (WordPress's home URL). Set, it is what admin links are built from
    # and a delivery whose X-WC-Webhook-Source names another site is refused.
    site_url: str = ""

    @field_validator("site_url")
    @classmethod
    def _a_web_address(cls, value: str) -> str:
        url = normalised_url(value)
        if url and not WEB_ADDRESS.fullmatch(url):
            raise ValueError(f"{value!r} is not a web address (e.g. https://shop.example)")
        return url


class WooCommerceSource(Source):
    platform = "woocommerce"
    Options = WooCommerceOptions

    def __init__(self, name: str, settings: SourceSettings):
        super().__init__(name, settings)
        keys: list[bytes] = []
        for secret in self._secrets:
            for key in (secret, html.unescape(secret.decode()).encode()):
                if key not in keys:
                    keys.append(key)
        self._keys = tuple(keys)

    def is_ping(self, request: WebhookRequest) -> bool:
        """True for the unsigned ``webhook_id=N`` post WooCommerce sends when a webhook is
        created; it must be answered 200 (exactly) and routed nowhere."""
        content_type = request.header("Content-Type").split(";")[0].strip().lower()
        return content_type in ("", FORM) and PING.fullmatch(request.body) is not None

    def verify(self, request: WebhookRequest) -> None:
        given = request.header("X-WC-Webhook-Signature")
        if not given:
            raise SignatureError("missing X-WC-Webhook-Signature header")
        if not matches_any(given, (sign(key, request.body) for key in self._keys)):
            raise SignatureError("X-WC-Webhook-Signature does not match the body")
        named = request.header("X-WC-Webhook-Source")
        if self.options.site_url and normalised_url(named) != self.options.site_url:
            raise SignatureError(f"X-WC-Webhook-Source {named!r} is not this source's site_url")

    def parse(self, request: WebhookRequest) -> Event:
        topic = request.header("X-WC-Webhook-Topic")
        resource_header = request.header("X-WC-Webhook-Resource")
        if not topic and resource_header:
            topic = f"{resource_header}.{request.header('X-WC-Webhook-Event')}"
        if not topic:
            raise PayloadError("missing X-WC-Webhook-Topic header")
        payload = request.json()
        resource, _, action = topic.partition(".")
        event_type = f"woocommerce.{topic}"
        order = customer = shipping = refund = payment = product = None
        if resource == "order":
            shop_url = self.options.site_url or request.header("X-WC-Webhook-Source")
            order = self._order(payload, shop_url)
            if action == "created":
                event_type = events.ORDER_CREATED
            elif action == "updated":
                event_type = ORDER_STATUS_TYPES.get(order.status, events.ORDER_UPDATED)
            elif action == "deleted":
                event_type = events.ORDER_DELETED
            if action != "deleted":  # a deleted order's payload is its id alone
                customer = _order_customer(payload)
                shipping = _shipping(payload)
                payment = _payment(payload, order)
            if order.status == "refunded":
                refund = _refund(payload, order)
        elif resource == "customer" and action != "deleted":
            customer = _customer(payload)
            event_type = CUSTOMER_TYPES.get(action, event_type)
        elif resource == "product" and action != "deleted":
            product = Product(id=_text(payload.get("id")), name=_text(payload.get("name")),
                              sku=_text(payload.get("sku")),
                              stock=fields.integer(payload.get("stock_quantity")))
            event_type = PRODUCT_TYPES.get(action, event_type)
            if action in ("created", "updated") and self._is_low(payload, product):
                event_type = events.INVENTORY_LOW
        return Event(
            # A hash of webhook id + send time: WooCommerce has no retry that reuses it.
            id=request.header("X-WC-Webhook-Delivery-ID") or request.body_digest(),
            type=event_type,
            source=SourceRef(self.name, self.platform),
            occurred_at=_gmt(payload.get("date_modified_gmt") or payload.get("date_created_gmt")),
            order=order,
            customer=customer,
            shipping=shipping,
            refund=refund,
            payment=payment,
            product=product,
            raw=payload,
        )

    def _is_low(self, payload: dict[str, Any], product: Product) -> bool:
        # A variation whose stock its parent manages says "parent" and carries the parent's count.
        managed = payload.get("manage_stock") in (True, "parent")
        return managed and product.stock is not None and (
            product.stock <= self.options.low_stock_threshold)

    def _order(self, payload: dict[str, Any], shop_url: str) -> Order:
        order_id = _text(payload.get("id"))
        number = _text(payload.get("number") or order_id)
        status = _text(payload.get("status"))
        items = fields.records(payload.get("line_items"))
        subtotals = [a for a in (fields.amount(i.get("subtotal")) for i in items) if a is not None]
        paid = payload.get("date_paid_gmt") or payload.get("date_paid")
        return Order(
            id=order_id,
            number=number,
            name=f"#{number}" if number else "",
            total=fields.amount(payload.get("total")),
            subtotal=sum(subtotals, Decimal(0)) if subtotals else None,
            currency=_text(payload.get("currency")),
            status=status,
            financial_status="refunded" if status == "refunded" else (
                "paid" if paid else "pending"),
            fulfillment_status="fulfilled" if status == "completed" else "",
            items=tuple(
                LineItem(
                    name=_text(item.get("name")),
                    quantity=fields.integer(item.get("quantity")) or 1,
                    sku=_text(item.get("sku")),
                    price=fields.amount(item.get("price")),
                )
                for item in items
            ),
            admin_url=self._admin_url(shop_url, order_id),
            note=_text(payload.get("customer_note")),
        )

    def _admin_url(self, shop_url: str, order_id: str) -> str:
        # The header is not covered by the signature: accept only a plain web address.
        if not (order_id and shop_url.startswith(("https://", "http://"))):
            return ""
        base = shop_url if shop_url.endswith("/") else shop_url + "/"
        if self.options.admin_url_style == "hpos":
            return f"{base}wp-admin/admin.php?page=wc-orders&action=edit&id={order_id}"
        return f"{base}wp-admin/post.php?post={order_id}&action=edit"


def normalised_url(value: str) -> str:
    """A site address as compared: without a trailing slash, its scheme and host lower case
    (WordPress sends its home URL with one; an operator may write it either way)."""
    url = value.strip().rstrip("/")
    scheme, separator, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{separator}{host.lower()}{slash}{path}"


def sign(key: bytes, body: bytes) -> str:
    """The X-WC-Webhook-Signature value WooCommerce sends for ``body``."""
    return base64.b64encode(hmac.digest(key, body, hashlib.sha256)).decode()


def _text(value: Any) -> str:
    """A text field as WooCommerce writes it: HTML entities decoded (``&amp;`` -> ``&``,
    ``&#8482;`` -> ``™``), since WordPress stores names and titles HTML-encoded."""
    return html.unescape(fields.text(value))


def _gmt(value: Any) -> datetime | None:
    """WooCommerce's ``*_gmt`` fields are UTC without an offset."""
    moment = fields.timestamp(value)
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def _name(part: Any) -> str:
    if not isinstance(part, dict):
        return ""
    return " ".join(p for p in (_text(part.get("first_name")).strip(),
                                _text(part.get("last_name")).strip()) if p)


def _order_customer(payload: dict[str, Any]) -> Customer:
    billing = payload.get("billing") if isinstance(payload.get("billing"), dict) else {}
    return Customer(name=_name(billing) or _name(payload.get("shipping")),
                    email=_text(billing.get("email")))


def _customer(payload: dict[str, Any]) -> Customer:
    billing = payload.get("billing") if isinstance(payload.get("billing"), dict) else {}
    return Customer(
        id=_text(payload.get("id")),
        name=_name(payload) or _name(billing),
        email=_text(payload.get("email") or billing.get("email")),
        orders_count=fields.integer(payload.get("orders_count")),  # legacy API only
    )


def _shipping(payload: dict[str, Any]) -> Shipping:
    value = payload.get("shipping")
    address = None
    if isinstance(value, dict):
        address = Address(
            name=_name(value),
            line1=_text(value.get("address_1")),
            line2=_text(value.get("address_2")),
            city=_text(value.get("city")),
            region=_text(value.get("state")),
            postal_code=_text(value.get("postcode")),
            country=_text(value.get("country")),
        )
        if not str(address):  # virtual goods: WooCommerce sends every field empty
            address = None
    lines = payload.get("shipping_lines")
    method = ""
    if isinstance(lines, list) and lines and isinstance(lines[0], dict):
        method = _text(lines[0].get("method_title"))
    return Shipping(address, method)


def _payment(payload: dict[str, Any], order: Order) -> Payment | None:
    if order.financial_status == "pending":
        return None
    return Payment(amount=order.total, currency=order.currency, status=order.financial_status,
                   id=_text(payload.get("transaction_id")))


def _refund(payload: dict[str, Any], order: Order) -> Refund:
    # Refund totals are negative in the order's "refunds" list; without one, all was refunded.
    refunds = fields.records(payload.get("refunds"))
    amounts = [abs(a) for a in (fields.amount(r.get("total")) for r in refunds) if a is not None]
    reason = next((_text(r.get("reason")) for r in refunds if r.get("reason")), "")
    total = sum(amounts, Decimal(0)) if amounts else order.total
    return Refund(amount=total, currency=order.currency, reason=reason)
