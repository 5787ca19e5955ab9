"""Render a route's channel and message text from an event, in a sandboxed Jinja environment.

Every template is compiled once, when the config is loaded, so a syntax error or a missing file is
reported by ``pumble-bridge check`` rather than by the first order of the day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jinja2

from bridge import filters, sandbox
from bridge.config import RouteSettings
from bridge.events import Event

log = logging.getLogger(__name__)


class RenderError(Exception):
    """A template failed for this event (the event is fine; the template is not)."""


@dataclass(frozen=True)
class RenderedMessage:
    channel: str
    text: str


FALLBACK_TEMPLATE = "generic.j2"

# A route's channel or text: a template, or the text itself when it has no Jinja syntax.
Renderable = jinja2.Template | str

# Where a route's key is, for error messages: "config.yaml:12: routes[0].when (route 'big')".
Locate = Callable[[RouteSettings, str], str]


def name_route(route: RouteSettings, key: str) -> str:
    return f"route {route.name!r}: {key}"
# Ends a message cut at delivery.max_message_chars: a giant order is still readable, never refused.
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
        self._channels: dict[str, Renderable] = {}
        self._bodies: dict[str, Renderable] = {}
        self._files: dict[str, jinja2.Template] = {}
        problems = []
        for name in env.list_templates(extensions=["j2"]):
            try:
                self._files[name] = env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(_syntax(f"template {name!r}", exc))
        for route in routes:
            for key, compile_it, into in (
                ("channel", lambda r: _compile(env, r.channel), self._channels),
                ("text", lambda r: _compile(env, r.text), self._bodies),
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

    def render(self, route: RouteSettings, event: Event,
               rendered: dict[int, str] | None = None) -> RenderedMessage:
        """``rendered``: texts this event already gave, by template, from other routes; one
        dispatch renders a template that several routes share once (templates are pure)."""
        names = sandbox.scope(self._env, event)
        body = self._bodies.get(route.name)
        if body is None:  # not `or`: a text without Jinja syntax is kept as a str, maybe ""
            body = self._files.get(template_for(event.type)) or self._files[FALLBACK_TEMPLATE]
        try:
            channel = _render(self._channels[route.name], names).strip()
            text = rendered.get(id(body)) if rendered is not None else None
            if text is None:
                text = _render(body, names).strip()
                if rendered is not None:
                    rendered[id(body)] = text
        except (RecursionError, filters.NestedTooDeeply):  # a value written out or walked
            raise RenderError(f"route {route.name!r}: a value is nested too deeply to write "
                              "out") from None
        except Exception as exc:  # a template or a filter failing on this event's data
            raise RenderError(f"route {route.name!r}: {type(exc).__name__}: {exc}") from None
        if not channel:
            raise RenderError(f"route {route.name!r}: the channel rendered empty")
        if not text:
            raise RenderError(f"route {route.name!r}: the message rendered empty")
        limit = self._env.max_chars
        if len(text) > limit:
            log.warning("event %s, route %r: the message is over delivery.max_message_chars "
                        "(%d); it is cut", event.id, route.name, limit)
            text = text[:limit - len(CUT_MARKER)].rstrip() + CUT_MARKER
        return RenderedMessage(channel=channel, text=text)


def _compile(env: jinja2.Environment, source: str) -> Renderable:
    """A route's channel or text: compiled, or already rendered when it has no Jinja syntax at
    all (most channel names), since it then reads the same whatever the event."""
    template = env.from_string(source)
    markers = (env.variable_start_string, env.block_start_string, env.comment_start_string,
               env.line_statement_prefix, env.line_comment_prefix)
    if any(marker and marker in source for marker in markers):
        return template
    return template.render()


def _render(text: Renderable, names: dict[str, Any]) -> str:
    return text if isinstance(text, str) else sandbox.render(text, names)


def _syntax(where: str, exc: jinja2.TemplateSyntaxError) -> str:
    place = f"{exc.name}:{exc.lineno}" if exc.name else f"line {exc.lineno}"
    return f"{where}: template syntax error at {place}: {exc.message}"
