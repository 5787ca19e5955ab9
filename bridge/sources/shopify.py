"""Shopify: base64 HMAC-SHA256 of the raw body in ``X-Shopify-Hmac-Sha256``.

Topic in ``X-Shopify-Topic``, delivery id in ``X-Shopify-Webhook-Id`` (the same on Shopify's
retries), shop in ``X-Shopify-Shop-Domain``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from bridge.events import Customer, Event, LineItem, Money, Order, SourceRef
from bridge.sources.base import PayloadError, SignatureError, Source, WebhookRequest

TOPICS = {
    "orders/create": "order.created",
    "orders/paid": "order.paid",
    "orders/fulfilled": "order.fulfilled",
    "orders/cancelled": "order.cancelled",
    "refunds/create": "refund.created",
}


class ShopifySource(Source):
    platform = "shopify"

    def verify(self, request: WebhookRequest) -> None:
        given = request.header("X-Shopify-Hmac-Sha256")
        if not given:
            raise SignatureError("missing X-Shopify-Hmac-Sha256 header")
        if not hmac.compare_digest(sign(self._secret, request.body), given):
            raise SignatureError("X-Shopify-Hmac-Sha256 does not match the body")

    def parse(self, request: WebhookRequest) -> Event:
        topic = request.header("X-Shopify-Topic")
        if not topic:
            raise PayloadError("missing X-Shopify-Topic header")
        payload = request.json()
        event_type = TOPICS.get(topic, f"shopify.{topic}")
        order = None
        if event_type.startswith("order."):
            order = _order(payload, request.header("X-Shopify-Shop-Domain"))
        return Event(
            id=request.header("X-Shopify-Webhook-Id") or request.body_digest(),
            type=event_type,
            source=SourceRef(self.name, self.platform),
            occurred_at=_timestamp(payload.get("updated_at") or payload.get("created_at")),
            order=order,
            customer=order.customer if order else None,
            data=payload,
        )


def _order(payload: dict[str, Any], shop_domain: str) -> Order:
    order_id = str(payload.get("id") or "")
    currency = str(payload.get("currency") or "")
    return Order(
        id=order_id,
        number=str(payload.get("name") or payload.get("order_number") or order_id),
        total=Money(_decimal(payload.get("total_price")), currency),
        customer=_customer(payload),
        items=tuple(
            LineItem(
                title=str(item.get("name") or item.get("title") or ""),
                quantity=int(item.get("quantity") or 1),
                sku=str(item.get("sku") or ""),
                price=Money(_decimal(item.get("price")), currency),
            )
            for item in payload.get("line_items") or []
            if isinstance(item, dict)
        ),
        admin_url=_admin_url(shop_domain, order_id),
    )


def _customer(payload: dict[str, Any]) -> Customer:
    customer = payload.get("customer") or {}
    name = " ".join(
        part for part in (customer.get("first_name"), customer.get("last_name")) if part
    )
    if not name:  # guest checkouts carry the name only on an address
        address = payload.get("billing_address") or payload.get("shipping_address") or {}
        name = address.get("name") or ""
    return Customer(name=name, email=str(customer.get("email") or payload.get("email") or ""))


def _admin_url(shop_domain: str, order_id: str) -> str:
    if not (shop_domain and order_id):
        return ""
    handle = shop_domain.removesuffix(".myshopify.com")
    if handle != shop_domain:
        return f"https://admin.shopify.com/store/{handle}/orders/{order_id}"
    return f"https://{shop_domain}/admin/orders/{order_id}"


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        raise PayloadError(f"not an amount: {value!r}") from None


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def sign(secret: bytes, body: bytes) -> str:
    """The X-Shopify-Hmac-Sha256 value Shopify sends for ``body``."""
    return base64.b64encode(hmac.digest(secret, body, hashlib.sha256)).decode()
