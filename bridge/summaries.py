"""Periodic summaries: what each accepted event adds to a summary, and when a summary is due.

A summary covers the events accepted since the previous one: counts by event type, revenue per
currency (new orders), refunds per currency, failed payments, and the products ordered most. The
totals live in Redis (the store), added to as events are accepted; this module says what one
event adds and, from the schedule (cron, in the summary's time zone), which period is due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

import jinja2
from croniter import croniter

from bridge.config import Config, SummaryMatch, SummarySettings
from bridge.events import INVOICE_FAILED, ORDER_CREATED, PAYMENT_FAILED, REFUND_CREATED, Event

AMOUNT_SCALE = 10_000  # amounts are kept as integers of 1/10,000 of a unit: exact, 4 decimals
LATE_AFTER = dt.timedelta(minutes=5)  # a summary posted later than this past its time says so
DEFAULT_TEMPLATE = "summary.j2"  # shipped in templates/


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


@dataclass(frozen=True)
class Upcoming:
    """A summary's next post, for the admin page and ``status``."""

    name: str
    channel: str
    at: dt.datetime  # in the summary's time zone


def upcoming(summaries: Sequence[SummarySettings], now: float) -> list[Upcoming]:
    """Each summary's next post after ``now`` (epoch seconds), soonest first."""
    times = [Upcoming(s.name, s.channel, next_time(
                 s.schedule, ZoneInfo(s.timezone),
                 dt.datetime.fromtimestamp(now, ZoneInfo(s.timezone))))
             for s in summaries]
    return sorted(times, key=lambda coming: coming.at)


def due(schedule: str, zone: ZoneInfo, last_end: dt.datetime, now: dt.datetime) -> Period | None:
    """The period to post now (ending at the schedule's latest time), or None while the one
    posted last (``last_end``) is the latest. Periods missed while nothing ran are posted
    once, as one late summary, never once each."""
    ends = last_time(schedule, zone, now)
    if ends <= last_end:
        return None
    return Period(ends, now - ends > LATE_AFTER)


class SummaryMatcher:
    """The configured summaries an accepted event counts in (``match:``, as a route's)."""

    def __init__(self, summaries: Sequence[SummarySettings]):
        self.summaries = tuple(summaries)

    def contributions(self, event: Event) -> list[tuple[str, Contribution]]:
        """(summary name, what the event adds to it), for each summary it matches."""
        matched = [summary.name for summary in self.summaries if _matches(summary.match, event)]
        if not matched:
            return []
        added = contribution(event)
        return [(name, added) for name in matched]


def _matches(match: SummaryMatch, event: Event) -> bool:
    return (any(fnmatchcase(event.source.name, pattern) for pattern in match.source)
            and any(fnmatchcase(event.type, pattern) for pattern in match.event)
            and (match.test is None or match.test == event.test))


def summary_problems(config: Config, env: jinja2.Environment) -> list[str]:
    """What in ``summaries:`` cannot work, found at load time: a template missing or broken,
    a source that is not configured."""
    problems = []
    for index, summary in enumerate(config.summaries):
        def where(key: str, at: int = index, name: str = summary.name) -> str:
            return f"{config.locate('summaries', at, key)} (summary {name!r})"

        try:
            env.get_template(summary.template or DEFAULT_TEMPLATE)
        except jinja2.TemplateNotFound as exc:
            problems.append(f"{where('template')}: template {exc.name!r} not found")
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{where('template')}: template syntax error at "
                            f"{exc.name}:{exc.lineno}: {exc.message}")
        problems.extend(f"{where('match')}: source {pattern!r} is not under sources:"
                        for pattern in summary.match.source
                        if not any(ch in pattern for ch in "*?[")
                        and pattern not in config.sources)
    return problems
