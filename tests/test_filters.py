from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from markupsafe import Markup

from bridge import sandbox
from bridge.config import shipped_templates_dir
from bridge.events import Customer, Event, SourceRef
from bridge.filters import (
    ZERO_WIDTH_SPACE,
    and_more,
    chat_safe,
    finalize,
    money,
    pluralize,
)


def render(text: str, zone: str = "UTC", **context) -> str:
    env = sandbox.environment([shipped_templates_dir()], ZoneInfo(zone))
    return env.from_string(text).render(context)


@pytest.mark.parametrize("hostile", ["@here", "@channel please", "hi <<@5f0c0e1a2b3c>>",
                                     "<<#general>>", "(@everyone)"])
def test_payload_text_cannot_mention(hostile):
    out = render("{{ customer.name }}", customer=Customer(name=hostile))
    assert "@here" not in out and "<<" not in out and "@channel" not in out
    assert out.replace(ZERO_WIDTH_SPACE, "") == hostile  # still readable as written


def test_email_addresses_are_left_alone():
    assert chat_safe("ada@example.com") == "ada@example.com"


def test_template_text_itself_may_mention():
    assert render("<<@U1>> {{ customer.name }}", customer=Customer(name="@here")) \
        == f"<<@U1>> @{ZERO_WIDTH_SPACE}here"


def test_raw_opts_out():
    assert render("{{ note | raw }}", note="@here") == "@here"


def test_objects_are_escaped_too():
    event = Event(id="1", type="x", source=SourceRef("@here", "shopify"))
    assert render("{{ event.source.name }}", event=event) == f"@{ZERO_WIDTH_SPACE}here"


@pytest.mark.parametrize(("count", "expected"), [(1, "1 item"), (0, "0 items"), (7, "7 items"),
                                                 ([1, 2], "2 items")])
def test_pluralize(count, expected):
    assert pluralize(count, "item") == expected


def test_pluralize_irregular():
    assert pluralize(2, "box", "boxes") == "2 boxes"


def test_and_more():
    assert and_more(list(range(12)), 5) == "…and 7 more items"
    assert and_more(list(range(6)), 5) == "…and 1 more item"
    assert and_more(list(range(5)), 5) == ""
    assert and_more(None, 5) == ""


def test_dates_in_the_configured_zone():
    moment = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    assert render("{{ at | datetime }}", "Europe/Berlin", at=moment) == "2026-11-25 10:30 CET"
    assert render("{{ at | datetime('%H:%M') }}", "Asia/Tokyo", at=moment) == "18:30"
    naive = datetime(2026, 11, 25, 9, 30)
    assert render("{{ at | datetime('%H:%M') }}", "Europe/Berlin", at=naive) == "10:30"
    assert render("{{ missing | datetime }}") == ""


def test_numbers_pass_through():
    assert render("{{ n }} {{ d }}", n=3, d=Decimal("1.50")) == "3 1.50"


@pytest.mark.parametrize(("amount", "currency", "expected"), [
    (Decimal("12.5"), "EUR", "12.50 EUR"),
    ("12.5", "EUR", "12.50 EUR"),
    (12, "JPY", "12 JPY"),
    (0.1, "KWD", "0.100 KWD"),
    (Decimal("-0"), "", "-0.00"),
    ("n/a", "EUR", "n/a EUR"),
])
def test_money_takes_decimals_numbers_and_text_alike(amount, currency, expected):
    assert money(amount, currency) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("@here", f"@{ZERO_WIDTH_SPACE}here"),
    (Markup("@here"), Markup("@here")),
    (None, ""),
    (7, 7),
    (Decimal("1.50"), Decimal("1.50")),
    (("@a",), f"{ZERO_WIDTH_SPACE}('@{ZERO_WIDTH_SPACE}a',)"),
])
def test_finalize(value, expected):
    out = finalize(value)
    assert out == expected and type(out) is type(expected)
