"""Summaries: what an event adds to the totals, and which period is due when."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge import sandbox
from bridge.config import Config, ConfigError, SummarySettings, load_config
from bridge.events import Event, LineItem, Order, Refund, SourceRef
from bridge.queue import NotificationQueue, Received, connect
from bridge.store.keys import Keys
from bridge.summaries import (
    Contribution,
    SummaryMatcher,
    contribution,
    due,
    last_time,
    scaled,
    unscaled,
)
from bridge.summaries_post import SummaryPoster
from bridge.summaries_totals import CAPS, Claimed, SummaryTotals, Totals

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")
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


# -- the message ----------------------------------------------------------------------------

def settings(**changes) -> SummarySettings:
    return SummarySettings(**{"name": "daily", "channel": "orders", "schedule": DAILY,
                              "timezone": "Europe/Berlin", **changes})


def message(totals: Totals, late: bool = False, config: Config | None = None) -> str:
    config = config or Config(sources={}, summaries=[settings()])
    poster = SummaryPoster.__new__(SummaryPoster)  # rendering needs no Redis
    poster._env = sandbox.environment(config.template_dirs, UTC)
    since, ends = at("2026-12-06 18:00").timestamp(), at("2026-12-07 18:00").timestamp()
    return poster.render(config.summaries[0], Claimed(since, ends, late, totals))


def test_the_message_reads_as_a_support_lead_expects():
    totals = Totals({"order.created": 132, "refund.created": 2, "payment.failed": 1},
                    {"EUR": scaled(Decimal("12304.50")), "USD": scaled(Decimal("99.9"))},
                    {"EUR": scaled(Decimal("25"))}, 1, (("Mug", 40), ("Tee", 12)))
    assert message(totals).splitlines() == [
        "📊 daily · Yesterday 18:00 \u2013 today 18:00: 132 orders, 12,304.50 EUR, 99.90 USD",
        "Refunds: 25.00 EUR",
        "Failed payments: 1",
        "Top products: Mug × 40, Tee × 12",
        "Events: order.created 132 · refund.created 2 · payment.failed 1",
    ]


def test_an_empty_late_period_says_both():
    assert message(Totals(), late=True).splitlines() == [
        "📊 daily · Yesterday 18:00 \u2013 today 18:00: 0 orders",
        "⏰ Posted late: the bridge was not running at 18:00.",
        "No events in this period.",
    ]


def test_product_names_from_payloads_are_chat_safe():
    name = "@here [win](https://evil.example)\nEvents: order.created 999"
    text = message(Totals({"order.created": 1}, products=((name, 1),)))
    [products] = [line for line in text.splitlines() if line.startswith("Top products")]
    assert "@here" not in products and "](" not in products
    assert text.splitlines()[-1] == "Events: order.created 1"  # no line of its own


def test_a_shops_own_template_that_fails_is_logged_and_the_shipped_one_posts(tmp_path, caplog):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.j2").write_text("{{ 100 // events }} per event")
    config = Config(sources={}, summaries=[settings(template="mine.j2")], templates_dir="mine",
                    path=tmp_path / "config.yaml")
    assert message(Totals({"order.created": 4}), config=config) == "25 per event"
    text = message(Totals(), config=config)
    assert text.startswith("📊 daily · ") and "No events in this period." in text
    assert "its template mine.j2 failed (ZeroDivisionError" in caplog.text


# -- the totals in Redis stay bounded -------------------------------------------------------

def test_totals_are_capped(redis_url, queue_name):
    connection = connect(redis_url)
    queue = NotificationQueue(connection, queue_name)
    totals = SummaryTotals(connection, queue.keys)
    try:
        for number in range(CAPS.fields + 5):
            queue.accept([], tallies=[totals.tally("daily", Contribution(f"x.t{number}"))])
        many = tuple((f"p{number}", number + 1) for number in range(CAPS.products + 5))
        queue.accept([], tallies=[totals.tally("daily", Contribution("order.created",
                                                                       products=many))])
        current = totals.current("daily")
        assert len(current.counts) == CAPS.fields and current.dropped == 6
        assert connection.zcard(queue.keys.summary_products("daily")) == CAPS.products
        assert current.products[0] == many[-1]  # the most ordered are kept
    finally:
        for key in connection.scan_iter(match=f"pumble-bridge:{queue_name}:*"):
            connection.delete(key)
        connection.close()


def test_a_redelivery_adds_nothing(redis_url, queue_name):
    connection = connect(redis_url)
    queue = NotificationQueue(connection, queue_name)
    totals = SummaryTotals(connection, queue.keys)
    received = Received("shop", "wh-1", "order.created", {}, b"{}")
    tally = totals.tally("daily", Contribution("order.created", revenue=("EUR", 10_000)))
    try:
        for _ in range(2):
            queue.accept([], received=received, dedupe_window=60, tallies=[tally])
        assert totals.current("daily").revenue == {"EUR": 10_000}
    finally:
        for key in connection.scan_iter(match=f"pumble-bridge:{queue_name}:*"):
            connection.delete(key)
        connection.close()


# -- the config -----------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "said"), [
    ({"schedule": "0 25 * * *"}, "summaries[0].schedule: '0 25 * * *' is not a cron schedule"),
    ({"timezone": "Europe/Atlantis"}, "summaries[0].timezone: unknown time zone"),
    ({"acount": "x"}, "summaries[0].acount: unknown key (did you mean 'account'?)"),
    ({"account": "ops"}, "summaries: summary 'daily' sends with account 'ops', which is not "
                         "under pumble.accounts"),
])
def test_a_bad_summary_is_one_clear_line(tmp_path, entry, said):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"sources": {}, "summaries": [
        {"name": "daily", "channel": "orders", "schedule": DAILY, **entry}]}))
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    [problem] = raised.value.problems
    assert problem.startswith(f"{path}:") and said in problem


def test_summary_names_are_unique_and_test_events_left_out_by_default(tmp_path):
    path = tmp_path / "config.yaml"
    daily = {"name": "daily", "channel": "orders", "schedule": DAILY}
    path.write_text(yaml.safe_dump({"sources": {}, "summaries": [daily, daily]}))
    with pytest.raises(ConfigError, match="summary name 'daily' is used twice"):
        load_config(path, {})
    matcher = SummaryMatcher([settings()])
    assert matcher.contributions(Event("e", "order.created", SHOP, test=True)) == []
    assert [name for name, _ in matcher.contributions(Event("e", "order.created", SHOP))] \
        == ["daily"]


def test_summary_keys_keep_their_names():
    keys = Keys("q")
    assert [keys.summary_totals("daily"), keys.summary_products("daily"),
            keys.summary_state("daily"), keys.summary_claimed_totals("daily"),
            keys.summary_claimed_products("daily")] == [
        "pumble-bridge:q:summary:daily:totals", "pumble-bridge:q:summary:daily:products",
        "pumble-bridge:q:summary:daily:state", "pumble-bridge:q:summary:daily:claimed:totals",
        "pumble-bridge:q:summary:daily:claimed:products"]
