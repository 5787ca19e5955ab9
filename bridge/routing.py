"""Match an event against the ordered ``routes:`` list.

The first matching route wins unless it says ``continue: true``, as in Alertmanager's tree. A route
matches when its source and event globs match and its ``when`` condition (a Jinja expression,
compiled once, evaluated in the sandbox) is true. A condition that cannot be evaluated for an
event (``order.total >= 500`` on a customer event) is false for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import jinja2

from bridge import sandbox
from bridge.config import RouteSettings
from bridge.events import Event
from bridge.render import Locate, name_route

log = logging.getLogger(__name__)


class Router:
    def __init__(self, env: jinja2.Environment, routes: Sequence[RouteSettings],
                 locate: Locate = name_route):
        """Compile every ``when``; ValueError lists each one that does not compile."""
        self.routes = list(routes)
        self._conditions: dict[str, Callable[..., Any]] = {}
        problems = []
        for route in self.routes:
            if route.when is None:
                continue
            try:
                self._conditions[route.name] = env.compile_expression(
                    route.when, undefined_to_none=False)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"{locate(route, 'when')}: {exc.message}")
        if problems:
            raise ValueError("\n".join(problems))

    def match(self, event: Event) -> list[RouteSettings]:
        return [decision.route for decision in self.explain(event) if decision.matched]

    def explain(self, event: Event) -> list[Decision]:
        """Every route's verdict for this event, in order, with the reason (for the tools)."""
        decisions = []
        context = sandbox.context(event)
        stopped_by = ""
        for route in self.routes:
            if stopped_by:
                decisions.append(Decision(route, False, f"not reached: route {stopped_by!r} "
                                                         "matched first (no continue)"))
                continue
            reason = self._mismatch(route, context, event)
            decisions.append(Decision(route, not reason, reason or "matched"))
            if not reason and not route.continue_:
                stopped_by = route.name
        return decisions

    def _mismatch(self, route: RouteSettings, context: dict[str, Any], event: Event) -> str:
        """Why the route does not match, or "" when it does."""
        if not _any(route.match.source, event.source.name):
            return f"source {event.source.name!r} is not in {route.match.source}"
        if not _any(route.match.event, event.type):
            return f"event type {event.type!r} is not in {route.match.event}"
        condition = self._conditions.get(route.name)
        if condition is None:
            return ""
        try:
            return "" if condition(**context) else f"when is false: {route.when}"
        except Exception as exc:  # missing fields, wrong types: the condition does not hold
            log.debug("event %s: route %s: when is false: %s", event.id, route.name, exc)
            return f"when cannot be evaluated for this event ({type(exc).__name__}: {exc})"


@dataclass(frozen=True)
class Decision:
    route: RouteSettings
    matched: bool
    reason: str


def _any(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)
