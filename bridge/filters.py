"""Jinja filters a shop's messages need. Every one is total: odd input gives text, not an error.

Payload text is escaped on output by default (see ``escape_mentions``) so a customer named
``@here`` cannot ping a channel; ``{{ value | raw }}`` opts out.
"""

from __future__ import annotations

import re
from collections.abc import Sized
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import jinja2

# ISO 4217 currencies whose minor unit is not 1/100.
MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}
# The smallest amount of each number of minor units: 1, 0.01, 0.001.
_QUANTUM = {places: Decimal(1).scaleb(-places) for places in {*MINOR_UNITS.values(), 2}}
# Pumble's mention syntax (<<@USER>>, <<#CHANNEL>>) and broadcast words at the start of a word.
# A zero-width space keeps them readable but inert; an email address is left alone.
_MENTION_OPEN = re.compile(r"<<")
_AT_WORD = re.compile(r"(?<![\w.+-])@(?=\w)")
ZERO_WIDTH_SPACE = "\u200b"


class Raw(str):
    """Text a template author vouches for: written out without escaping."""


def _defined(value: Any) -> bool:
    return value is not None and not isinstance(value, jinja2.Undefined)


def money(amount: Any, currency: Any = "") -> str:
    """``1234.5, "EUR"`` -> ``1,234.50 EUR``: exact decimals, the currency's own minor units."""
    if not _defined(amount) or amount == "":
        return ""
    currency = str(currency) if _defined(currency) else ""
    quantum = _QUANTUM[MINOR_UNITS.get(currency.upper(), 2)]
    try:
        number = amount if type(amount) is Decimal else Decimal(str(amount))
        exact = number.quantize(quantum, rounding=ROUND_HALF_EVEN)
    except ArithmeticError:  # not a number, or beyond any real amount's precision
        return f"{amount} {currency}".strip()
    return f"{exact:,} {currency}".strip()


def escape_mentions(text: str) -> str:
    """``@here`` -> ``@\u200bhere``, ``<<@U1>>`` -> ``<\u200b<@U1>>``: shown, never a ping."""
    if "@" not in text and "<<" not in text:
        return text
    text = _MENTION_OPEN.sub("<" + ZERO_WIDTH_SPACE + "<", text)
    return _AT_WORD.sub("@" + ZERO_WIDTH_SPACE, text)


def raw(value: Any) -> Raw:
    return Raw("" if not _defined(value) else value)


def pluralize(count: Any, singular: str, plural: str = "") -> str:
    """``3 | pluralize("item")`` -> ``3 items``; ``1`` -> ``1 item``."""
    try:
        number = int(count) if not isinstance(count, Sized) else len(count)
    except (TypeError, ValueError):
        return f"{count} {plural or singular + 's'}"
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"


def and_more(items: Any, shown: int = 5, singular: str = "item", plural: str = "") -> str:
    """After showing ``items[:shown]``: ``…and 7 more items``, or nothing when all were shown."""
    try:
        hidden = len(items) - shown
    except TypeError:
        return ""
    return f"…and {hidden} more {singular if hidden == 1 else (plural or singular + 's')}" \
        if hidden > 0 else ""


def make_datetime_filter(zone: tzinfo):
    def local_datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
        """A timestamp in the configured time zone (``timezone:`` in the config)."""
        if not isinstance(value, datetime):
            return "" if not _defined(value) else str(value)
        if value.tzinfo is None:  # naive timestamps from payloads are UTC by convention
            value = value.replace(tzinfo=UTC)
        return value.astimezone(zone).strftime(fmt)

    return local_datetime


def finalize(value: Any) -> Any:
    """Applied to every ``{{ … }}`` output: None blank, text escaped unless ``raw``."""
    if type(value) is str:  # most values: checked first, as this runs for every one
        return escape_mentions(value)
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    if isinstance(value, Raw | int | float | Decimal | bool):
        return value
    return escape_mentions(str(value))
