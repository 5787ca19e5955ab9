"""Match an event against the ordered ``routes:`` list.

The first matching route wins unless it says ``continue: true``, as in Alertmanager's tree. A route
matches when its source and event globs match, the event is a test event or not as its ``test``
asks, and its ``when`` condition (a Jinja expression, compiled once, evaluated in the sandbox) is
true. A condition that cannot be evaluated for an event (``order.total >= 500`` on a customer
event) is false for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import jinja2
from jinja2.runtime import Context

from bridge import sandbox
from bridge.config import RouteSettings
from bridge.events import Event
from bridge.render import Locate, name_route
from bridge.sandbox import Condition

log = logging.getLogger(__name__)

# The routes whose globs match one (source, event type, test) kind, in order, with their conditions.
Candidates = tuple[tuple[RouteSettings, Condition | None], ...]

# Kinds whose candidates are remembered. A shop sends a few dozen; the bound only keeps a stream of
# odd unmapped topics from growing the memo without end.
MAX_REMEMBERED_KINDS = 1024


class Router:
    def __init__(self, env: jinja2.Environment, routes: Sequence[RouteSettings],
                 locate: Locate = name_route):
        """Compile every ``when``; ValueError lists each one that does not compile."""
        self.routes = list(routes)
        self._env = env
        self._conditions: list[Condition | None] = []
        problems = []
        for route in self.routes:
            condition = None
            if route.when is not None:
                try:
                    condition = Condition(env, route.when)
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(f"{locate(route, 'when')}: {exc.message}")
            self._conditions.append(condition)
        if problems:
            raise ValueError("\n".join(problems))
        # Globs look at nothing but the source, the event type and the test flag, so each kind
        # is matched against every route's globs once, not once per event.
        self._candidates_by_kind: dict[tuple[str, str, bool], Candidates] = {}

    def match(self, event: Event) -> list[RouteSettings]:
        """The routes the event goes to, in order: those ``explain`` says matched."""
        matched = []
        context: Context | None = None  # one for all the event's conditions, made at the first
        for route, condition in self._candidates(event):
            if condition is not None:
                if context is None:
                    context = condition.context(sandbox.scope(self._env, event))
                if _unmet(route, condition, context, event):
                    continue
            matched.append(route)
            if not route.continue_:
                break
        return matched

    def explain(self, event: Event) -> list[Decision]:
        """Every route's verdict for this event, in order, with the reason (for the tools)."""
        decisions = []
        context: Context | None = None
        stopped_by = ""
        for route, condition in zip(self.routes, self._conditions, strict=True):
            if stopped_by:
                decisions.append(Decision(route, False, f"not reached: route {stopped_by!r} "
                                                         "matched first (no continue)"))
                continue
            reason = _glob_mismatch(route, event)
            if not reason and condition is not None:
                if context is None:
                    context = condition.context(sandbox.scope(self._env, event))
                reason = _unmet(route, condition, context, event)
            decisions.append(Decision(route, not reason, reason or "matched"))
            if not reason and not route.continue_:
                stopped_by = route.name
        return decisions

    def _candidates(self, event: Event) -> Candidates:
        kind = (event.source.name, event.type, event.test)
        candidates = self._candidates_by_kind.get(kind)
        if candidates is None:
            if len(self._candidates_by_kind) >= MAX_REMEMBERED_KINDS:
                self._candidates_by_kind.clear()
            candidates = self._candidates_by_kind[kind] = tuple(
                (route, condition)
                for route, condition in zip(self.routes, self._conditions, strict=True)
                if not _glob_mismatch(route, event))
        return candidates


@dataclass(frozen=True)
class Decision:
    route: RouteSettings
    matched: bool
    reason: str


def _unmet(route: RouteSettings, condition: Condition, context: Context, event: Event) -> str:
    """Why the route's ``when`` does not hold for the event, or "" when it does."""
    try:
        return "" if condition(context) else f"when is false: {route.when}"
    except Exception as exc:  # missing fields, wrong types: the condition does not hold
        log.debug("event %s: route %s: when is false: %s", event.id, route.name, exc)
        return f"when cannot be evaluated for this event ({type(exc).__name__}: {exc})"


def _glob_mismatch(route: RouteSettings, event: Event) -> str:
    """Why the route's source or event globs do not match the event, or "" when they do."""
    if not _any(route.match.source, event.source.name):
        return f"source {event.source.name!r} is not in {route.match.source}"
    if not _any(route.match.event, event.type):
        return f"event type {event.type!r} is not in {route.match.event}"
    if route.match.test is not None and route.match.test != event.test:
        return "a test event" if event.test else "not a test event"
    return ""


def _any(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)
