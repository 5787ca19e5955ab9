"""Periodic summaries: what each accepted event adds to a summary, and when a summary is due.

A summary covers the events accepted since the previous one: counts by event type, revenue per
currency (new orders), refunds per currency, failed payments, and the products ordered most. The
totals live in Redis (the store), added to as events are accepted; this module says what one
event adds and, from the schedule (cron, in the summary's time zone), which period is due.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from croniter import croniter

from bridge.events import INVOICE_FAILED, ORDER_CREATED, PAYMENT_FAILED, REFUND_CREATED, Event

AMOUNT_SCALE = 10_000  # amounts are kept as integers of 1/10,000 of a unit: exact, 4 decimals
LATE_AFTER = dt.timedelta(minutes=5)  # a summary posted later than this past its time says so


@dataclass(frozen=True)
class Contribution:
    """What one event adds to a summary's totals (amounts scaled by ``AMOUNT_SCALE``)."""

    event_type: str
    revenue: tuple[str, int] | None = None  # (currency, amount)
    refund: tuple[str, int] | None = None
    failed_payment: bool = False
    products: tuple[tuple[str, int], ...] = ()  # (name, quantity)


def contribution(event: Event) -> Contribution:
    order = event.order
    revenue = products = None
    if event.type == ORDER_CREATED and order is not None:
        if order.total is not None and order.currency:
            revenue = (order.currency.upper(), scaled(order.total))
        products = tuple((item.name, item.quantity) for item in order.items
                         if item.name and item.quantity > 0)
    refund = event.refund
    refunded = None
    if event.type == REFUND_CREATED and refund is not None and refund.amount is not None:
        currency = refund.currency or (order.currency if order else "")
        if currency:
            refunded = (currency.upper(), scaled(refund.amount))
    return Contribution(event.type, revenue, refunded,
                        event.type in (PAYMENT_FAILED, INVOICE_FAILED), products or ())


def scaled(amount: Decimal) -> int:
    return int((amount * AMOUNT_SCALE).to_integral_value())


def unscaled(amount: int) -> Decimal:
    return (Decimal(amount) / AMOUNT_SCALE).normalize()


def valid_schedule(expression: str) -> bool:
    return croniter.is_valid(expression)


@dataclass(frozen=True)
class Period:
    """The period a summary is due for: since the previous post (or ``start`` of the totals),
    up to the schedule's last time; ``late`` when that time is well past."""

    ends: dt.datetime
    late: bool


def last_time(schedule: str, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
    """The schedule's latest time at or before ``now``: where a new summary's first period
    starts."""
    return croniter(schedule, now.astimezone(zone)).get_prev(dt.datetime)


def next_time(schedule: str, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
    return croniter(schedule, now.astimezone(zone)).get_next(dt.datetime)


def due(schedule: str, zone: ZoneInfo, last_end: dt.datetime, now: dt.datetime) -> Period | None:
    """The period to post now (ending at the schedule's latest time), or None while the one
    posted last (``last_end``) is the latest. Periods missed while nothing ran are posted
    once, as one late summary, never once each."""
    ends = last_time(schedule, zone, now)
    if ends <= last_end:
        return None
    return Period(ends, now - ends > LATE_AFTER)
