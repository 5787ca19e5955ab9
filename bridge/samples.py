"""Realistic sample webhooks, for ``pumble-bridge send-sample``, tests and benchmarks.

The files under docs/examples/shopify/ are these payloads for order 1001 (a test keeps them
equal).
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

SHOP_DOMAIN = "demo-shop.myshopify.com"
# One order's life, in the order Shopify sends it: the README's picture (the order, then its
# payment, fulfilment and refund as replies in its thread, a check mark for the fulfilment).
LIFECYCLE = ("orders/create", "orders/paid", "orders/fulfilled", "refunds/create")
TOPICS = (*LIFECYCLE, "orders/cancelled")
REFUNDED_ITEM = 2  # the Canvas Tote Bag: one line of the order, sent back


def order_number() -> int:
    """A random order number: each sample a new order, not a re-delivery of the last one."""
    return random.randint(1001, 99999)


def shopify_order(number: int | None = None) -> dict[str, Any]:
    """An ``orders/create`` payload in Shopify's shape (fields the bridge reads, and some more)."""
    number = number if number is not None else order_number()
    order_id = 5_000_000_000_000 + number
    items = [
        ("Merino Wool Sweater", "Forest Green / M", "SW-MER-GRN-M", 2, "89.00"),
        ("Organic Cotton Tee", "White / L", "TE-ORG-WHT-L", 3, "24.50"),
        ("Canvas Tote Bag", "", "BG-CNV-NAT", 1, "19.90"),
        ("Leather Card Holder", "Tan", "AC-LTH-TAN", 1, "35.00"),
        ("Wool Socks 3-Pack", "", "SO-WOL-3PK", 2, "18.00"),
        ("Gift Wrapping", "", "GIFT-WRAP", 1, "4.00"),
        ("Beanie", "Charcoal", "HT-BEA-CHR", 1, "22.00"),
    ]
    line_items = [
        {"id": order_id * 10 + i, "title": title, "variant_title": variant, "sku": sku,
         "name": f"{title} - {variant}" if variant else title, "quantity": qty, "price": price}
        for i, (title, variant, sku, qty, price) in enumerate(items)
    ]
    total = sum(float(i["price"]) * i["quantity"] for i in line_items)
    return {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "name": f"#{number}",
        "order_number": number,
        "email": "ada@example.com",
        "created_at": "2026-11-25T10:15:00+01:00",
        "updated_at": "2026-11-25T10:15:02+01:00",
        "currency": "EUR",
        "total_price": f"{total:.2f}",
        "subtotal_price": f"{total:.2f}",
        "financial_status": "paid",
        "customer": {"id": 7001, "first_name": "Ada", "last_name": "Lovelace",
                     "email": "ada@example.com", "tags": "vip"},
        "tags": "gift, priority",
        "billing_address": {"name": "Ada Lovelace", "city": "London", "country_code": "GB"},
        "shipping_address": {"name": "Ada Lovelace", "address1": "1 Main Street",
                             "city": "London", "zip": "N1 9GU", "country_code": "GB"},
        "shipping_lines": [{"title": "Standard", "price": "4.90"}],
        "line_items": line_items,
    }


def shopify_payload(topic: str, number: int | None = None) -> dict[str, Any]:
    """The payload of one of ``TOPICS`` about order ``number`` (as ``shopify_order``)."""
    order = shopify_order(number)
    if topic == "orders/create":
        return order
    if topic == "orders/paid":
        return {**order, "updated_at": "2026-11-25T10:16:40+01:00"}
    if topic == "orders/fulfilled":
        return {**order, "updated_at": "2026-11-25T15:42:10+01:00",
                "fulfillment_status": "fulfilled",
                "fulfillments": [{"id": order["id"] + 1, "order_id": order["id"],
                                  "status": "success", "tracking_company": "DHL Express",
                                  "tracking_number": "JD014600006281230456"}]}
    if topic == "orders/cancelled":
        return {**order, "updated_at": "2026-11-25T11:02:00+01:00",
                "cancelled_at": "2026-11-25T11:02:00+01:00", "cancel_reason": "customer",
                "financial_status": "refunded"}
    if topic == "refunds/create":
        return shopify_refund(order)
    raise ValueError(f"no sample for topic {topic!r} (samples: {', '.join(TOPICS)})")


def shopify_refund(order: dict[str, Any]) -> dict[str, Any]:
    """A ``refunds/create`` payload: one line of ``order`` returned and paid back."""
    item = order["line_items"][REFUNDED_ITEM]
    return {
        "id": order["id"] + 2,
        "order_id": order["id"],
        "created_at": "2026-11-28T09:30:00+01:00",
        "note": "Returned: arrived damaged",
        "restock": True,
        "refund_line_items": [{"id": item["id"] + 1, "line_item_id": item["id"],
                               "quantity": item["quantity"], "line_item": item}],
        "transactions": [{"id": order["id"] + 3, "order_id": order["id"], "kind": "refund",
                          "status": "success", "amount": item["price"],
                          "currency": order["currency"]}],
    }


def shopify_headers(topic: str = "orders/create", webhook_id: str | None = None) -> dict[str, str]:
    """Shopify's headers, less the signature (the caller signs the exact body it sends)."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Shop-Domain": SHOP_DOMAIN,
        "X-Shopify-API-Version": "2025-10",
    }


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
