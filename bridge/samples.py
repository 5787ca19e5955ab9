"""Realistic sample webhooks, for ``pumble-bridge send-sample``, tests and benchmarks."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

SHOP_DOMAIN = "demo-shop.myshopify.com"


def shopify_order(number: int | None = None) -> dict[str, Any]:
    """An ``orders/create`` payload in Shopify's shape (fields the bridge reads, and some more)."""
    number = number if number is not None else random.randint(1001, 99999)
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
