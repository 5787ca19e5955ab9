"""Time intervals, in Alertmanager's shape: the times a route is muted (or active) in.

A named time interval is a list of periods; a moment is in it when it is in any of them. A period
matches a moment when every field it gives matches; a field left out matches every moment:

- ``times``: ``[{start_time: "HH:MM", end_time: "HH:MM"}]`` (two digits each, as Alertmanager
  reads them), start included, end excluded (``"24:00"`` ends the day); a range that wraps
  midnight is two ranges;
- ``weekdays``: ``["monday:friday", "sunday"]`` (as in Alertmanager, the week starts on Sunday:
  ``sunday:saturday`` is every day, ``saturday:sunday`` is refused);
- ``days_of_month``: ``["1:5", "-1", "1:-1"]`` (a negative day counts back from the month's
  last; as in Alertmanager, a negative start needs a negative end);
- ``months``: ``["january:march", "12"]``; ``years``: ``["2026:2027"]``;
- ``location``: the IANA time zone the fields are read in (default UTC).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
FIELDS = ("times", "weekdays", "days_of_month", "months", "years", "location")
HORIZON_DAYS = 400  # how far ahead the end of a mute is looked for; past it, "not in sight"

Ranges = tuple[tuple[int, int], ...]  # inclusive bounds; empty: every value


@dataclass(frozen=True)
class Period:
    """One entry of a time interval, parsed: every bound a number, the zone loaded."""

    times: Ranges  # minutes of the day, [start, end)
    weekdays: Ranges  # 0 = Sunday, as in Alertmanager
    days_of_month: Ranges  # may be negative: -1 is the month's last day
    months: Ranges
    years: Ranges
    location: ZoneInfo

    def contains(self, moment: dt.datetime) -> bool:
        local = moment.astimezone(self.location)
        last_day = calendar.monthrange(local.year, local.month)[1]
        minute = local.hour * 60 + local.minute
        return (_within(self.weekdays, (local.weekday() + 1) % 7)
                and _within(self.months, local.month) and _within(self.years, local.year)
                and _within(tuple((_day(a, last_day), _day(b, last_day))
                                  for a, b in self.days_of_month), local.day)
                and (not self.times or any(a <= minute < b for a, b in self.times)))

    def changes(self, start: dt.datetime, days: int) -> Iterator[dt.datetime]:
        """The moments from ``start`` on where being in this period may change: each local
        midnight, and each time range's start and end."""
        day = start.astimezone(self.location).date()
        marks = sorted({0, *(m for r in self.times for m in r if m < 24 * 60)})
        for offset in range(days + 1):
            for minute in marks:
                yield dt.datetime.combine(day + dt.timedelta(days=offset),
                                          dt.time(minute // 60, minute % 60), self.location)


@dataclass(frozen=True)
class TimeInterval:
    name: str
    periods: tuple[Period, ...]

    def contains(self, moment: dt.datetime) -> bool:
        return any(period.contains(moment) for period in self.periods)


def parse_interval(name: str, periods: Sequence[Mapping[str, Any]]) -> TimeInterval:
    """A named interval from its config entries; ``ValueError`` says what is wrong, and where."""
    parsed = []
    for index, spec in enumerate(periods):
        try:
            parsed.append(parse_period(spec))
        except ValueError as exc:
            raise ValueError(f"time interval {name!r}, entry {index + 1}: {exc}") from None
    return TimeInterval(name, tuple(parsed))


def parse_period(spec: Mapping[str, Any]) -> Period:
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    return Period(
        times=tuple(_time_range(t) for t in spec.get("times") or ()),
        weekdays=tuple(_range(w, "weekday", _named(WEEKDAYS, 0)) for w in
                       spec.get("weekdays") or ()),
        days_of_month=tuple(_day_range(d) for d in spec.get("days_of_month") or ()),
        months=tuple(_range(m, "month", _named(MONTHS, 1)) for m in spec.get("months") or ()),
        years=tuple(_range(y, "year", _year) for y in spec.get("years") or ()),
        location=_zone(spec.get("location") or "UTC"),
    )


def muted_at(moment: dt.datetime, mute: Sequence[TimeInterval],
             active: Sequence[TimeInterval]) -> bool:
    """In one of ``mute``, or outside every one of ``active`` (when a route names any)."""
    return (any(i.contains(moment) for i in mute)
            or (bool(active) and not any(i.contains(moment) for i in active)))


def muted_until(moment: dt.datetime, mute: Sequence[TimeInterval],
                active: Sequence[TimeInterval]) -> dt.datetime | None:
    """When a mute in force at ``moment`` ends (``moment`` itself when none is), or None when
    it does not end within ``HORIZON_DAYS``."""
    if not muted_at(moment, mute, active):
        return moment
    periods = [p for interval in (*mute, *active) for p in interval.periods]
    candidates = sorted({c for p in periods for c in p.changes(moment, HORIZON_DAYS)
                         if c > moment})
    return next((c for c in candidates if not muted_at(c, mute, active)), None)


def _within(ranges: Ranges, value: int) -> bool:
    return not ranges or any(a <= value <= b for a, b in ranges)


def _day(day: int, last_day: int) -> int:
    return last_day + 1 + day if day < 0 else day


def _range(text: Any, what: str, parse: Any) -> tuple[int, int]:
    first, _, last = str(text).strip().lower().partition(":")
    low, high = parse(first), parse(last or first)
    if low > high:
        raise ValueError(f"{what} range {text!r} ends before it starts")
    return low, high


def _named(names: tuple[str, ...], first: int) -> Any:
    def parse(text: str) -> int:
        if text in names:
            return names.index(text) + first
        if first and text.isdigit() and first <= int(text) < first + len(names):
            return int(text)
        raise ValueError(f"{text!r} is not one of {', '.join(names)}")
    return parse


def _day_range(text: Any) -> tuple[int, int]:
    """As Alertmanager reads one: a negative start needs a negative end, and a range that ends
    before it starts in a 28-day month is refused (``1:-1``, every day, is fine)."""
    first, _, last = str(text).strip().lower().partition(":")
    low, high = _day_number(first), _day_number(last or first)
    if low < 0 < high:
        raise ValueError(f"day of month range {text!r}: a negative start needs a negative end")
    if (low % 28 if low < 0 else low) > (high % 28 if high < 0 else high):
        raise ValueError(f"day of month range {text!r} ends before it starts")
    return low, high


def _day_number(text: str) -> int:
    if text.lstrip("-").isdigit() and 1 <= abs(int(text)) <= 31:
        return int(text)
    raise ValueError(f"{text!r} is not a day of the month (1 to 31, or -1 to -31)")


def _year(text: str) -> int:
    if text.isdigit():
        return int(text)
    raise ValueError(f"{text!r} is not a year")


def _time_range(spec: Any) -> tuple[int, int]:
    if not isinstance(spec, Mapping) or set(spec) != {"start_time", "end_time"}:
        raise ValueError("each of times is {start_time: \"HH:MM\", end_time: \"HH:MM\"}")
    start, end = _minute(spec["start_time"]), _minute(spec["end_time"])
    if start >= end:
        raise ValueError(f"times: {spec['start_time']} is not before {spec['end_time']} "
                         "(a range over midnight is two ranges)")
    return start, end


def _minute(text: Any) -> int:
    hours, _, minutes = str(text).partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(hours) == len(minutes) == 2):
        raise ValueError(f"{text!r} is not a time of day (HH:MM)")
    minute = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or minute > 24 * 60:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 24:00)")
    return minute


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"location {name!r} is not an IANA time zone "
                         "(e.g. Europe/Berlin)") from None
