"""Time intervals: which moments are in them, when a mute ends, and what a bad entry says."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from bridge.intervals import muted_at, muted_until, parse_interval

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


NIGHTS = parse_interval("nights", [{"times": [{"start_time": "00:00", "end_time": "07:00"},
                                              {"start_time": "22:00", "end_time": "24:00"}],
                                    "location": "Europe/Berlin"}])
WEEKENDS = parse_interval("weekends", [{"weekdays": ["saturday", "sunday"]}])
OFFICE = parse_interval("office", [{"weekdays": ["monday:friday"],
                                    "times": [{"start_time": "09:00", "end_time": "17:00"}]}])


@pytest.mark.parametrize(("moment", "inside"), [
    ("2026-12-07 22:00", True),  # start included
    ("2026-12-07 21:59", False),
    ("2026-12-08 06:59", True),
    ("2026-12-08 07:00", False),  # end excluded
])
def test_times_are_read_in_the_intervals_location(moment, inside):
    assert NIGHTS.contains(at(moment, BERLIN)) is inside
    assert NIGHTS.contains(at(moment, BERLIN).astimezone(UTC)) is inside


def test_weekday_month_and_negative_day_ranges():
    closing = parse_interval("closing", [{"days_of_month": ["-2:-1"], "months": ["february"],
                                          "years": ["2027"]}])
    assert closing.contains(at("2027-02-27 12:00"))  # 28 days: -2 is the 27th
    assert not closing.contains(at("2027-02-26 12:00"))
    assert not closing.contains(at("2027-03-30 12:00"))
    assert not closing.contains(at("2028-02-28 12:00"))
    assert WEEKENDS.contains(at("2026-12-12 03:00"))  # a Saturday
    assert not WEEKENDS.contains(at("2026-12-11 23:59"))


def test_a_mute_ends_at_the_first_minute_outside_it():
    assert muted_until(at("2026-12-07 23:30", BERLIN), [NIGHTS], []) == at("2026-12-08 07:00",
                                                                          BERLIN)
    # Nights and weekends together: Friday night runs into the weekend, then into Monday's night.
    assert muted_until(at("2026-12-11 23:00"), [NIGHTS, WEEKENDS], []) == at(
        "2026-12-14 07:00", BERLIN)


def test_outside_every_active_interval_is_muted_until_the_next_one_begins():
    assert muted_at(at("2026-12-12 10:00"), [], [OFFICE])  # Saturday
    assert muted_until(at("2026-12-12 10:00"), [], [OFFICE]) == at("2026-12-14 09:00")
    assert not muted_at(at("2026-12-14 09:00"), [], [OFFICE])
    assert muted_until(at("2026-12-14 09:00"), [], [OFFICE]) == at("2026-12-14 09:00")


def test_a_mute_without_an_end_in_sight_says_so():
    always = parse_interval("always", [{}])
    assert muted_until(at("2026-12-07 12:00"), [always], []) is None


def test_daylight_saving_time_keeps_local_hours():
    # Berlin leaves summer time on 2026-10-25: 07:00 local is 06:00 UTC, not 05:00, after it.
    assert muted_until(at("2026-10-25 03:00", BERLIN), [NIGHTS], []) == at("2026-10-25 06:00")


@pytest.mark.parametrize(("spec", "says"), [
    ({"weekday": ["monday"]}, "unknown field 'weekday'"),
    ({"weekdays": ["funday"]}, "'funday' is not one of sunday, monday"),
    ({"weekdays": ["friday:monday"]}, "ends before it starts"),
    ({"weekdays": ["saturday:sunday"]}, "ends before it starts"),  # Alertmanager's week
    ({"times": [{"start_time": "22:00", "end_time": "06:00"}]}, "over midnight is two ranges"),
    ({"times": [{"start_time": "9", "end_time": "10:00"}]}, "'9' is not a time of day"),
    ({"days_of_month": ["32"]}, "not a day of the month"),
    ({"location": "Mars/Olympus"}, "not an IANA time zone"),
])
def test_a_bad_entry_says_what_is_wrong_and_where(spec, says):
    with pytest.raises(ValueError, match=f"time interval 'x', entry 2: .*{says}"):
        parse_interval("x", [{}, spec])


@pytest.mark.parametrize(("spec", "says"), [
    ({"times": [{"start_time": "9:00", "end_time": "10:00"}]}, "'9:00' is not a time of day"),
    ({"days_of_month": ["-1:5"]}, "a negative start needs a negative end"),
    ({"days_of_month": ["25:-5"]}, "ends before it starts"),
])
def test_what_alertmanager_refuses_is_refused(spec, says):
    with pytest.raises(ValueError, match=f"time interval 'x', entry 1: .*{says}"):
        parse_interval("x", [spec])


def test_days_of_month_from_the_first_to_the_last():
    every_day = parse_interval("every-day", [{"days_of_month": ["1:-1"]}])
    assert every_day.contains(at("2027-02-01 00:00")) and every_day.contains(at("2027-02-28 23:59"))
    last_three = parse_interval("last-three", [{"days_of_month": ["-3:-1"]}])
    assert last_three.contains(at("2027-02-26 12:00"))
    assert not last_three.contains(at("2027-02-25 12:00"))


def test_the_week_starts_on_sunday_as_in_alertmanager():
    every_day = parse_interval("all", [{"weekdays": ["sunday:saturday"]}])
    weekend_start = parse_interval("sun-mon", [{"weekdays": ["sunday:monday"]}])
    for day in range(7, 14):  # 2026-12-07 is a Monday
        assert every_day.contains(at(f"2026-12-{day:02d} 12:00"))
    assert weekend_start.contains(at("2026-12-13 12:00"))  # Sunday
    assert weekend_start.contains(at("2026-12-14 12:00"))  # Monday
    assert not weekend_start.contains(at("2026-12-12 12:00"))  # Saturday
