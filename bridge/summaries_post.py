"""Posting summaries: which are due (by the injectable clock), claimed once, queued as a message.

The worker's maintenance calls ``post_due`` (bridge/worker.py); ``pumble-bridge summary`` calls
``post_now`` or ``preview``. A due period is claimed atomically (bridge.summaries_totals), so
however many workers look, one posts it; the message goes through the normal delivery path as a
Notification whose job id is derived from the summary and its period, so queueing it again (a
worker that died after queueing, before settling) is a no-op. Retries, the account's identity,
rate limits and dead letters apply as to any message.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from zoneinfo import ZoneInfo

from bridge import sandbox
from bridge.clock import Clock
from bridge.config import Config, SummarySettings
from bridge.notification import Notification
from bridge.queue import NotificationQueue
from bridge.summaries import DEFAULT_TEMPLATE, due, last_time, unscaled
from bridge.summaries_totals import Claimed, SummaryTotals, Totals, as_time

log = logging.getLogger(__name__)

SOURCE = "summary"  # a summary's notification names this as its source, and its route
EVENT_TYPE = "summary"


class UnknownSummary(ValueError):
    """The config has no summary of that name."""


class SummaryPoster:
    """The configured summaries of one bridge, posted to its queue."""

    def __init__(self, config: Config, queue: NotificationQueue, clock: Clock | None = None):
        self.config = config
        self.queue = queue
        self.clock = clock or Clock()
        self.totals = SummaryTotals(queue.rq.connection, queue.keys)
        self._env = sandbox.environment(config.template_dirs, ZoneInfo(config.timezone),
                                        config.delivery.max_message_chars)

    def named(self, name: str) -> SummarySettings:
        """The summary called ``name``; UnknownSummary (one line, for a person) if none is."""
        summary = next((s for s in self.config.summaries if s.name == name), None)
        if summary is None:
            known = ", ".join(s.name for s in self.config.summaries) or "none"
            raise UnknownSummary(f"no summary named {name!r} in {self.config.path} "
                                 f"(configured: {known})")
        return summary

    def post_due(self) -> list[str]:
        """Queue every summary whose period has ended and is not yet posted; the names."""
        return [summary.name for summary in self.config.summaries if self.post_if_due(summary)]

    def post_if_due(self, summary: SummarySettings) -> bool:
        """Queue the summary's period that has ended, if one has and nobody posted it."""
        finished = self._queue_claimed(summary)  # one a worker claimed, then died
        zone, now = ZoneInfo(summary.timezone), self._now(summary)
        first = last_time(summary.schedule, zone, now).timestamp()
        last_end = as_time(self.totals.last_end(summary.name, first), zone)
        period = due(summary.schedule, zone, last_end, now)
        if period is None or not self.totals.claim(summary.name, period.ends.timestamp(),
                                                   period.late, first):
            return finished
        return self._queue_claimed(summary)

    def post_now(self, name: str) -> bool:
        """Close summary ``name``'s period now and queue its message. False when another
        claim of it is under way."""
        summary = self.named(name)
        self._queue_claimed(summary)
        now = self._now(summary)
        first = last_time(summary.schedule, ZoneInfo(summary.timezone), now).timestamp()
        if not self.totals.claim(name, now.timestamp(), False, first):
            return False
        return self._queue_claimed(summary)

    def preview(self, name: str) -> str:
        """The message summary ``name`` would post now; nothing is claimed or sent."""
        summary = self.named(name)
        zone, now = ZoneInfo(summary.timezone), self._now(summary)
        first = last_time(summary.schedule, zone, now).timestamp()
        since = self.totals.posted_until(name) or first
        return self.render(summary, Claimed(since, now.timestamp(), False,
                                            self.totals.current(name)))

    def render(self, summary: SummarySettings, claimed: Claimed) -> str:
        """The message, from ``summary.j2`` (or the summary's ``template``) in the sandbox
        every template renders in: every value written out is chat-safe."""
        names = {**self._env.globals, **message_names(summary, claimed)}
        try:
            template = self._env.get_template(summary.template or DEFAULT_TEMPLATE)
            return sandbox.render(template, names).strip()
        except Exception as exc:  # a shop's own template or filter failing on these totals
            if summary.template is None:
                raise
            log.error("summary %s: its template %s failed (%s: %s); posted with %s",
                      summary.name, summary.template, type(exc).__name__, exc, DEFAULT_TEMPLATE)
            return sandbox.render(self._env.get_template(DEFAULT_TEMPLATE), names).strip()

    def _queue_claimed(self, summary: SummarySettings) -> bool:
        """Queue the message of the period claimed, if there is one, then settle the claim."""
        claimed = self.totals.claimed(summary.name)
        if claimed is None:
            return False
        notification = Notification(
            source=SOURCE, event_id=f"{summary.name}@{int(claimed.ends)}",
            event_type=EVENT_TYPE, route=f"{SOURCE}:{summary.name}", channel=summary.channel,
            text=self.render(summary, claimed), account=summary.account,
            received_at=self.clock.time(), digest=False)
        written = self.queue.accept([notification]).written
        self.totals.settle(summary.name, claimed.ends)
        log.info("summary %s: %s for the period ending %s%s", summary.name,
                 "queued" if any(written) else "already queued",
                 as_time(claimed.ends, ZoneInfo(summary.timezone)).isoformat(),
                 " (late)" if claimed.late else "")
        return True

    def _now(self, summary: SummarySettings) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.time(), ZoneInfo(summary.timezone))


def message_names(summary: SummarySettings, claimed: Claimed) -> dict[str, Any]:
    """What summary.j2 sees: the period, and the totals with exact amounts."""
    zone = ZoneInfo(summary.timezone)
    since, until = as_time(claimed.since, zone), as_time(claimed.ends, zone)
    totals: Totals = claimed.totals
    return {
        "summary": summary.name,
        "since": since,
        "until": until,
        "period": _period(since, until),
        "late": claimed.late,
        "events": totals.events,
        "orders": totals.counts.get("order.created", 0),
        "counts": sorted(totals.counts.items(), key=lambda item: (-item[1], item[0])),
        "revenue": [(currency, unscaled(amount)) for currency, amount in
                    sorted(totals.revenue.items())],
        "refunds": [(currency, unscaled(amount)) for currency, amount in
                    sorted(totals.refunds.items())],
        "failed_payments": totals.failed_payments,
        "products": list(totals.products),
        "dropped": totals.dropped,
    }


def _period(since: dt.datetime, until: dt.datetime) -> str:
    """'Yesterday 18:00 to today 18:00' (an en dash between), as a support lead reads it
    when it is posted."""
    text = f"{_day(since, until)} {since:%H:%M} \u2013 {_day(until, until)} {until:%H:%M}"
    return text[:1].upper() + text[1:]


def _day(moment: dt.datetime, posted: dt.datetime) -> str:
    """'Today', 'Yesterday' (as seen when the summary is posted), else the date."""
    days = (posted.date() - moment.date()).days
    return {0: "today", 1: "yesterday"}.get(days, f"{moment:%a %-d %b}")
