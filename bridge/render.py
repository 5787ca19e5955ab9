"""Render a route's channel and message text from an event, in a sandboxed Jinja environment.

Every template is compiled once, when the config is loaded, so a syntax error or a missing file is
reported by ``pumble-bridge check`` rather than by the first order of the day.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jinja2

from bridge import sandbox
from bridge.config import RouteSettings
from bridge.events import Event


class RenderError(Exception):
    """A template failed for this event (the event is fine; the template is not)."""


@dataclass(frozen=True)
class RenderedMessage:
    channel: str
    text: str


FALLBACK_TEMPLATE = "generic.j2"
# Pumble documents no limit; messages past this are cut cleanly, with a marker, so a giant order
# is still readable and never refused.
MAX_TEXT = 12_000
CUT_MARKER = "\n… (message cut: too long)"


def template_for(event_type: str) -> str:
    """The template a route without ``template``/``text`` uses: ``order.paid`` -> order_paid.j2."""
    return event_type.replace(".", "_") + ".j2"


class Renderer:
    """The compiled templates of every route, and every template file, compiled once."""

    def __init__(self, env: jinja2.Environment, routes: Iterable[RouteSettings]):
        self._env = env
        self._channels: dict[str, jinja2.Template] = {}
        self._bodies: dict[str, jinja2.Template] = {}
        self._files: dict[str, jinja2.Template] = {}
        problems = []
        for name in env.list_templates(extensions=["j2"]):
            try:
                self._files[name] = env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(_syntax(f"template {name!r}", exc))
        for route in routes:
            where = f"route {route.name!r}"
            try:
                self._channels[route.name] = env.from_string(route.channel)
                if route.text is not None:
                    self._bodies[route.name] = env.from_string(route.text)
                elif route.template is not None:
                    self._bodies[route.name] = env.get_template(route.template)
            except jinja2.TemplateNotFound as exc:
                searched = ", ".join(env.loader.searchpath)
                problems.append(f"{where}: template {exc.name!r} not found "
                                f"(searched {searched})")
            except jinja2.TemplateSyntaxError as exc:
                problems.append(_syntax(where, exc))
        if FALLBACK_TEMPLATE not in self._files and len(self._bodies) < len(self._channels):
            problems.append(f"the fallback template {FALLBACK_TEMPLATE} is missing")
        if problems:
            raise ValueError("\n".join(problems))

    def render(self, route: RouteSettings, event: Event) -> RenderedMessage:
        context = sandbox.context(event)
        body = self._bodies.get(route.name) or self._files.get(
            template_for(event.type)) or self._files[FALLBACK_TEMPLATE]
        try:
            channel = self._channels[route.name].render(context).strip()
            text = body.render(context).strip()
        except Exception as exc:  # a template or a filter failing on this event's data
            raise RenderError(f"route {route.name!r}: {type(exc).__name__}: {exc}") from None
        if not channel:
            raise RenderError(f"route {route.name!r}: the channel rendered empty")
        if not text:
            raise RenderError(f"route {route.name!r}: the message rendered empty")
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT - len(CUT_MARKER)].rstrip() + CUT_MARKER
        return RenderedMessage(channel=channel, text=text)


def _syntax(where: str, exc: jinja2.TemplateSyntaxError) -> str:
    place = f"{exc.name}:{exc.lineno}" if exc.name else f"line {exc.lineno}"
    return f"{where}: template syntax error at {place}: {exc.message}"
