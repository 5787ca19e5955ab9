"""Summaries: what an event adds to the totals, and which period is due when."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from bridge.events import Event, LineItem, Order, Refund, SourceRef
from bridge.summaries import contribution, due, last_time, scaled, unscaled

BERLIN = ZoneInfo("Europe/Berlin")
DAILY = "0 18 * * *"
SHOP = SourceRef("shop", "shopify")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def test_an_order_adds_its_revenue_and_products_exactly():
    order = Order("1", total=Decimal("12304.50"), currency="eur",
                  items=(LineItem("Mug", 2), LineItem("Tee", 1), LineItem("Gift", 0)))
    added = contribution(Event("e1", "order.created", SHOP, order=order))
    assert added.revenue == ("EUR", 123_045_000)
    assert unscaled(added.revenue[1]) == Decimal("12304.5")
    assert added.products == (("Mug", 2), ("Tee", 1))
    # The same order's later events add to the counts only.
    paid = contribution(Event("e2", "order.paid", SHOP, order=order))
    assert (paid.revenue, paid.products) == (None, ())


def test_a_refund_takes_the_orders_currency_when_it_has_none():
    refund = Refund(amount=Decimal("5.25"))
    added = contribution(Event("e3", "refund.created", SHOP, refund=refund,
                               order=Order("1", currency="USD")))
    assert added.refund == ("USD", scaled(Decimal("5.25")))
    assert contribution(Event("e4", "payment.failed", SHOP)).failed_payment


def test_a_period_is_due_once_its_time_has_come_and_only_once():
    posted = last_time(DAILY, BERLIN, at("2026-12-07 09:00"))
    assert posted == at("2026-12-06 18:00")
    assert due(DAILY, BERLIN, posted, at("2026-12-07 17:59")) is None
    period = due(DAILY, BERLIN, posted, at("2026-12-07 18:00:30"))
    assert period is not None and period.ends == at("2026-12-07 18:00") and not period.late
    assert due(DAILY, BERLIN, period.ends, at("2026-12-07 18:01")) is None


def test_periods_missed_while_down_are_one_late_summary():
    period = due(DAILY, BERLIN, at("2026-12-04 18:00"), at("2026-12-07 19:30"))
    assert period is not None and period.ends == at("2026-12-07 18:00") and period.late
