"""A summary's totals in Redis: added to at accept, claimed once per period, read for a preview.

The receiver adds each matching event's contribution (bridge.summaries) in its one atomic accept
(``scripts.ACCEPT``), so a webhook is counted with its notifications or not at all, and never
for a re-delivery. A period is claimed by one atomic step (``scripts.CLAIM_SUMMARY``) that moves
the totals aside and records the period, so one worker, and one only, gets it; the message is
queued from the totals moved aside, which are dropped only once it is (``SETTLE_SUMMARY``): a
worker dying between the two leaves the claim for the next one to finish.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import redis

from bridge.store import scripts
from bridge.store.accept import Tally, TallyCaps
from bridge.store.keys import Keys
from bridge.summaries import Contribution

# The totals stay small whatever arrives: a few dozen event types and currencies, and the
# products ordered most (the least ordered are dropped first, with their counts).
CAPS = TallyCaps(fields=200, products=500)
TOP_PRODUCTS = 5  # in a summary's message
PRODUCT_NAME_CHARS = 100

COUNT, REVENUE, REFUNDS, FAILED, DROPPED = "count:", "revenue:", "refunds:", "failed", "dropped"


def increments(contribution: Contribution) -> tuple[tuple[str, int], ...]:
    """The totals' fields one event adds to, with how much (amounts scaled)."""
    added = [(COUNT + contribution.event_type, 1)]
    if contribution.revenue is not None:
        added.append((REVENUE + contribution.revenue[0], contribution.revenue[1]))
    if contribution.refund is not None:
        added.append((REFUNDS + contribution.refund[0], contribution.refund[1]))
    if contribution.failed_payment:
        added.append((FAILED, 1))
    return tuple(added)


@dataclass(frozen=True)
class Totals:
    """What a period's events added up to (amounts scaled by summaries.AMOUNT_SCALE)."""

    counts: dict[str, int] = field(default_factory=dict)  # by event type
    revenue: dict[str, int] = field(default_factory=dict)  # by currency
    refunds: dict[str, int] = field(default_factory=dict)
    failed_payments: int = 0
    products: tuple[tuple[str, int], ...] = ()  # the most ordered first
    dropped: int = 0  # additions past the cap on fields, not counted

    @classmethod
    def read(cls, fields: dict[bytes, bytes], products: Iterable[tuple[bytes, float]]) -> Totals:
        by_prefix: dict[str, dict[str, int]] = {COUNT: {}, REVENUE: {}, REFUNDS: {}}
        for raw_name, raw_value in fields.items():
            prefix, colon, rest = raw_name.decode().partition(":")
            if colon and prefix + colon in by_prefix:
                by_prefix[prefix + colon][rest] = int(raw_value)
        return cls(by_prefix[COUNT], by_prefix[REVENUE], by_prefix[REFUNDS],
                   int(fields.get(FAILED.encode(), 0)),
                   tuple((name.decode(), int(quantity)) for name, quantity in products),
                   int(fields.get(DROPPED.encode(), 0)))

    @property
    def events(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Claimed:
    """A period claimed for posting, and its totals."""

    since: float  # epoch seconds
    ends: float
    late: bool
    totals: Totals


class SummaryTotals:
    """The totals and state of a bridge's summaries (its queue's keys)."""

    def __init__(self, connection: redis.Redis, keys: Keys):
        self.connection = connection
        self.keys = keys
        self._claim = connection.register_script(scripts.CLAIM_SUMMARY)
        self._settle = connection.register_script(scripts.SETTLE_SUMMARY)

    def tally(self, name: str, contribution: Contribution) -> Tally:
        """What the receiver's accept adds to summary ``name`` for one event."""
        quantities = tuple((product[:PRODUCT_NAME_CHARS], quantity)
                           for product, quantity in contribution.products)
        return Tally(self.keys.summary_totals(name), self.keys.summary_products(name),
                     increments(contribution), quantities)

    def last_end(self, name: str, first: float) -> float:
        """Where the last period posted ended; a summary never posted starts at ``first``."""
        self.connection.hsetnx(self.keys.summary_state(name), "ends", _stamp(first))
        return float(self.connection.hget(self.keys.summary_state(name), "ends") or first)

    def posted_until(self, name: str) -> float | None:
        """Where the last period ended (None: never posted, nor started); read only."""
        ends = self.connection.hget(self.keys.summary_state(name), "ends")
        return float(ends) if ends is not None else None

    def claim(self, name: str, ends: float, late: bool, first: float) -> bool:
        """Claim the period ending at ``ends`` (a summary never posted starts at ``first``):
        True for the one caller that gets it."""
        return bool(self._claim(keys=self._claim_keys(name),
                                args=[_stamp(ends), "1" if late else "", _stamp(first)]))

    def claimed(self, name: str) -> Claimed | None:
        """The period claimed and not yet settled, if any."""
        state = self.connection.hgetall(self.keys.summary_state(name))
        if b"claimed_ends" not in state:
            return None
        totals = Totals.read(
            self.connection.hgetall(self.keys.summary_claimed_totals(name)),
            self.connection.zrevrange(self.keys.summary_claimed_products(name), 0,
                                      TOP_PRODUCTS - 1, withscores=True))
        return Claimed(float(state[b"claimed_since"]), float(state[b"claimed_ends"]),
                       bool(state.get(b"claimed_late")), totals)

    def settle(self, name: str, ends: float) -> bool:
        """The claimed period's message is queued: its totals go."""
        return bool(self._settle(keys=self._claim_keys(name), args=[_stamp(ends)]))

    def current(self, name: str) -> Totals:
        """The totals since the last period (a preview; nothing is claimed)."""
        return Totals.read(
            self.connection.hgetall(self.keys.summary_totals(name)),
            self.connection.zrevrange(self.keys.summary_products(name), 0, TOP_PRODUCTS - 1,
                                      withscores=True))

    def _claim_keys(self, name: str) -> list[str]:
        k = self.keys
        return [k.summary_totals(name), k.summary_products(name), k.summary_state(name),
                k.summary_claimed_totals(name), k.summary_claimed_products(name)]


def _stamp(at: float) -> str:
    """Epoch seconds as the state keeps them: whole seconds, one spelling (a claim is settled
    by comparing it)."""
    return str(int(at))


def as_time(stamp: float, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, zone)
