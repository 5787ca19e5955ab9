"""Render a route's channel and message text from an event, in a sandboxed Jinja environment.

Every template is compiled once, when the config is loaded, so a syntax error or a missing file is
reported by ``pumble-bridge check`` rather than by the first order of the day.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.config import RouteSettings
from bridge.events import Event

# ISO 4217 currencies whose minor unit is not 1/100.
MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}


class RenderError(Exception):
    """A template failed for this event (the event is fine; the template is not)."""


@dataclass(frozen=True)
class RenderedMessage:
    channel: str
    text: str


def money(amount: Decimal | int | str | None, currency: str = "") -> str:
    """``1234.5, "EUR"`` -> ``1,234.50 EUR``: exact decimals, the currency's own minor units."""
    if amount is None or amount == "" or isinstance(amount, jinja2.Undefined):
        return ""
    currency = "" if isinstance(currency, jinja2.Undefined) else str(currency or "")
    places = MINOR_UNITS.get(currency.upper(), 2)
    try:
        exact = Decimal(str(amount)).quantize(Decimal(1).scaleb(-places),
                                              rounding=ROUND_HALF_EVEN)
    except ArithmeticError:  # not a number, or beyond any real amount's precision
        return f"{amount} {currency}".strip()
    return f"{exact:,} {currency}".strip()


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


def _environment(template_dirs: Sequence[Path]) -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
        undefined=jinja2.ChainableUndefined,  # a missing field renders blank, never crashes
        finalize=_blank_none,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["money"] = money
    return env


class Renderer:
    """The compiled templates of every route."""

    def __init__(self, template_dirs: Sequence[Path], routes: Iterable[RouteSettings]):
        self._env = _environment(template_dirs)
        self._channels: dict[str, jinja2.Template] = {}
        self._bodies: dict[str, jinja2.Template] = {}
        problems = []
        for route in routes:
            try:
                self._channels[route.name] = self._env.from_string(route.channel)
                self._bodies[route.name] = (
                    self._env.get_template(route.template) if route.template is not None
                    else self._env.from_string(route.text or "")
                )
            except jinja2.TemplateNotFound as exc:
                searched = ", ".join(str(d) for d in template_dirs)
                problems.append(f"route {route.name!r}: template {exc.name!r} not found "
                                f"(searched {searched})")
            except jinja2.TemplateSyntaxError as exc:
                where = f"{exc.name}:{exc.lineno}" if exc.name else f"line {exc.lineno}"
                problems.append(f"route {route.name!r}: template syntax error at {where}: "
                                f"{exc.message}")
        if problems:
            raise ValueError("\n".join(problems))

    def render(self, route: RouteSettings, event: Event) -> RenderedMessage:
        context = _context(event)
        try:
            channel = self._channels[route.name].render(context).strip()
            text = self._bodies[route.name].render(context).strip()
        except Exception as exc:  # a template or a filter failing on this event's data
            raise RenderError(f"route {route.name!r}: {type(exc).__name__}: {exc}") from None
        if not channel:
            raise RenderError(f"route {route.name!r}: the channel rendered empty")
        if not text:
            raise RenderError(f"route {route.name!r}: the message rendered empty")
        return RenderedMessage(channel=channel, text=text)


def _context(event: Event) -> dict[str, Any]:
    return {
        "event": event,
        "source": event.source,
        "order": event.order,
        "customer": event.customer,
        "shipping": event.shipping,
        "refund": event.refund,
        "payment": event.payment,
        "product": event.product,
        "raw": event.raw,
    }

