"""The canonical event: what every source turns a webhook into, and what routes and templates see.

Templates never look at a platform's payload shape; they see these fields, whatever the shop.
``Event.data`` keeps the original payload for the rare template that needs something more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Money:
    """An exact amount in a currency (ISO 4217 code); never a float."""

    amount: Decimal
    currency: str

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


@dataclass(frozen=True)
class Customer:
    name: str = ""
    email: str = ""


@dataclass(frozen=True)
class LineItem:
    title: str
    quantity: int = 1
    sku: str = ""
    price: Money | None = None


@dataclass(frozen=True)
class Order:
    id: str
    number: str  # as the shop shows it, e.g. "#1001"
    total: Money
    customer: Customer = field(default_factory=Customer)
    items: tuple[LineItem, ...] = ()
    admin_url: str = ""  # the order in the shop's admin, for the support team


@dataclass(frozen=True)
class SourceRef:
    name: str  # the config's source name, as in /webhooks/<name>
    platform: str  # "shopify", ...


@dataclass(frozen=True)
class Event:
    """One webhook delivery, verified and normalised.

    ``type`` is canonical (``order.created``, ``order.paid``, ``refund.created``, …); a topic the
    source does not know keeps its platform's name as ``<platform>.<topic>``.
    ``id`` is the platform's delivery id: the same on the platform's retries, so it dedupes.
    """

    id: str
    type: str
    source: SourceRef
    occurred_at: datetime | None = None
    order: Order | None = None
    customer: Customer | None = None
    data: dict[str, Any] = field(default_factory=dict)
