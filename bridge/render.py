"""Render a route's channel and message text from an event, in a sandboxed Jinja environment.

Every template is compiled once, when the config is loaded, so a syntax error or a missing file is
reported by ``pumble-bridge check`` rather than by the first order of the day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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

# Where a route's key is, for error messages: "config.yaml:12: routes[0].when (route 'big')".
Locate = Callable[[RouteSettings, str], str]


def name_route(route: RouteSettings, key: str) -> str:
    return f"route {route.name!r}: {key}"
# Pumble documents no limit; messages past this are cut cleanly, with a marker, so a giant order
# is still readable and never refused.
MAX_TEXT = 12_000
CUT_MARKER = "\n… (message cut: too long)"


def template_for(event_type: str) -> str:
    """The template a route without ``template``/``text`` uses: ``order.paid`` -> order_paid.j2."""
    return event_type.replace(".", "_") + ".j2"


class Renderer:
    """The compiled templates of every route, and every template file, compiled once."""

    def __init__(self, env: jinja2.Environment, routes: Iterable[RouteSettings],
                 locate: Locate = name_route):
        """Compile everything; ValueError lists each problem, placed by ``locate``."""
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
            for key, compile_it, into in (
                ("channel", lambda r: env.from_string(r.channel), self._channels),
                ("text", lambda r: env.from_string(r.text), self._bodies),
                ("template", lambda r: env.get_template(r.template), self._bodies),
            ):
                if getattr(route, key) is None:
                    continue
                try:
                    into[route.name] = compile_it(route)
                except jinja2.TemplateNotFound as exc:
                    searched = ", ".join(env.loader.searchpath)
                    problems.append(f"{locate(route, key)}: template {exc.name!r} not found "
                                    f"(searched {searched})")
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(_syntax(locate(route, key), exc))
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
