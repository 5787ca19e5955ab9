"""Match an event against the ordered ``routes:`` list.

The first matching route wins unless it says ``continue: true``, as in Alertmanager's tree. A route
matches when its source and event globs match and its ``when`` condition (a Jinja expression,
compiled once, evaluated in the sandbox) is true. A condition that cannot be evaluated for an
event (``order.total >= 500`` on a customer event) is false for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import jinja2

from bridge import sandbox
from bridge.config import RouteSettings
from bridge.events import Event

log = logging.getLogger(__name__)


class Router:
    def __init__(self, env: jinja2.Environment, routes: Sequence[RouteSettings]):
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
                problems.append(f"route {route.name!r}: when: {exc.message}")
        if problems:
            raise ValueError("\n".join(problems))

    def match(self, event: Event) -> list[RouteSettings]:
        matched = []
        context = sandbox.context(event)
        for route in self.routes:
            if (_any(route.match.source, event.source.name) and _any(route.match.event, event.type)
                    and self._holds(route, context, event)):
                matched.append(route)
                if not route.continue_:
                    break
        return matched

    def _holds(self, route: RouteSettings, context: dict[str, Any], event: Event) -> bool:
        condition = self._conditions.get(route.name)
        if condition is None:
            return True
        try:
            return bool(condition(**context))
        except Exception as exc:  # missing fields, wrong types: the condition does not hold
            log.debug("event %s: route %s: when is false: %s", event.id, route.name, exc)
            return False


def _any(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)
