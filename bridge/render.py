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


class Renderer:
    """The compiled templates of every route."""

    def __init__(self, env: jinja2.Environment, routes: Iterable[RouteSettings]):
        self._env = env
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
                searched = ", ".join(self._env.loader.searchpath)
                problems.append(f"route {route.name!r}: template {exc.name!r} not found "
                                f"(searched {searched})")
            except jinja2.TemplateSyntaxError as exc:
                where = f"{exc.name}:{exc.lineno}" if exc.name else f"line {exc.lineno}"
                problems.append(f"route {route.name!r}: template syntax error at {where}: "
                                f"{exc.message}")
        if problems:
            raise ValueError("\n".join(problems))

    def render(self, route: RouteSettings, event: Event) -> RenderedMessage:
        context = sandbox.context(event)
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
