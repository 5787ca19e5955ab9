"""Jinja filters a shop's messages need, and the rule that makes payload values chat-safe.

Every filter is total: odd input gives text, not an error.

``finalize`` applies ``chat_safe`` to every value a template writes out (see bridge/sandbox.py for
how the template's own text and macros are told apart from values), so a value reads as what it
is, a value: it makes no line of its own, no mention, channel reference or link markup.
``{{ value | raw }}`` opts out, for a field the operator trusts; ``{{ note | quote }}`` writes a
multi-line value as a quote, every line of it marked.
"""

from __future__ import annotations

import re
from collections.abc import Sized
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import jinja2
from markupsafe import Markup

# ISO 4217 currencies whose minor unit is not 1/100.
MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}
# The smallest amount of each number of minor units: 1, 0.01, 0.001.
_QUANTUM = {places: Decimal(1).scaleb(-places) for places in {*MINOR_UNITS.values(), 2}}

# What chat_safe changes. A zero-width space keeps a value readable as written but breaks the
# syntax Pumble would act on: mentions and channel references (<<@USER>>, <<#CHANNEL>>, and
# <<!here>> alike), broadcast words (@here, @channel), markdown links ([text](url)).
ZERO_WIDTH_SPACE = "\u200b"
_LINE_BREAK = r"\n\r\v\f\x1c-\x1f\x85\u2028\u2029"  # what str.splitlines splits on, and \x1f
# Controls that print nothing, and the bidi embeddings, overrides and isolates that would turn
# the template's text after a value around.
_HIDDEN = r"\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069"
# Quick to rule out: a value of letters, digits and common punctuation needs nothing done.
_NEEDS_WORK = re.compile(r"[^\w .,'&/:#+%-]")
_CONTROL = re.compile(rf"[{_LINE_BREAK}{_HIDDEN}]")
_LINE_BREAKS = re.compile(rf"[ \t]*[{_LINE_BREAK}]\s*")
_HIDDEN_CHARS = re.compile(rf"[{_HIDDEN}]")
# Where a zero-width space goes: positions, so that re.sub's replacement is a plain string (its
# fast path), and none where a space already is (the rule can run twice). After every "<" of a
# value, or a full-width or small look-alike: with one on either side (the template's, or
# another value's) it could open a mention.
_AFTER_OPENER = re.compile(rf"(?<=[<\uff1c\ufe64])(?!{ZERO_WIDTH_SPACE})")
# After an "@" that starts a word (an e-mail address's does not) or ends the value (the next
# value or the template may go on with "here"), and after a full-width or small "@" anywhere.
_AFTER_AT = re.compile(r"(?<=[@\uff20\ufe6b])(?<![^\W_]@)(?=\w|\Z)")
# Inside a markdown link's "](", and after a "]" that ends the value (the template or the next
# value may go on with "("); chat_safe also puts one before a "(" that starts the value.
_AFTER_BRACKET = re.compile(r"(?<=\])(?=\(|\Z)")


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


def chat_safe(text: str) -> str:
    """Payload text as one value of a chat message: its line breaks collapsed to a space, its
    invisible controls dropped, and a zero-width space after each character that could start a
    mention, a broadcast or a link, alone or joined with whatever stands next to it."""
    if not _NEEDS_WORK.search(text):  # nearly every value: names, numbers, order numbers
        return text
    if _CONTROL.search(text):
        text = _HIDDEN_CHARS.sub("", _LINE_BREAKS.sub(" ", text))
    if "<" in text or "\uff1c" in text or "\ufe64" in text:  # cheaper than a search that fails
        text = _AFTER_OPENER.sub(ZERO_WIDTH_SPACE, text)
    if "@" in text or "\uff20" in text or "\ufe6b" in text:
        text = _AFTER_AT.sub(ZERO_WIDTH_SPACE, text)
    if "]" in text:
        text = _AFTER_BRACKET.sub(ZERO_WIDTH_SPACE, text)
    return ZERO_WIDTH_SPACE + text if text.startswith("(") else text


def raw(value: Any) -> Markup:
    """Written out as it is: for a field the operator trusts (``{{ order.admin_url | raw }}``)."""
    return Markup("" if not _defined(value) else value)


def quote(value: Any) -> Markup:
    """A multi-line value (an order note) as a quote: each of its lines starts with ``> `` and is
    chat-safe, so none can pass for one of the template's own lines."""
    if not _defined(value):
        return Markup("")
    lines = [chat_safe(line).strip() for line in str(value).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return Markup("\n".join(f"> {line}".rstrip() for line in lines))


def escape(value: Any) -> Markup:
    """Jinja's ``e``/``escape`` filter, which would escape for HTML: the chat's rule instead."""
    return value if isinstance(value, Markup) else Markup(chat_safe(_text(value)))


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
    """Applied to every ``{{ … }}`` value: None and missing fields blank, numbers as they are,
    the template's own text (Markup: a macro's output, a ``{% set %}`` block, ``raw``) as it is,
    any other value made chat-safe."""
    if type(value) is str:  # most values: checked first, as this runs for every one
        return chat_safe(value)
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    if isinstance(value, Markup | int | float | Decimal):
        return value
    return chat_safe(_text(_shallow(value)))


# Deeper than this, a value written out is no message but a payload built to exhaust the stack.
# Python's own limit is no guard: 3.11's str() raises RecursionError near 1,000 levels, 3.13's
# writes out 5,000 without complaint.
MAX_NESTING = 100


class NestedTooDeeply(ValueError):
    """A value written out is nested deeper than ``MAX_NESTING``."""


def _shallow(value: Any) -> Any:
    """``value``, once a walk without recursion found no container nested past MAX_NESTING."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth == MAX_NESTING:
            raise NestedTooDeeply("a value is nested too deeply to write out")
        pending.extend((child, depth + 1) for child in children)
    return value


def _text(value: Any) -> str:
    return "" if not _defined(value) else str(value)
