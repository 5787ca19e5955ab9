"""Match an event against the ordered ``routes:`` list.

The first matching route wins unless it says ``continue: true``, as in Alertmanager's tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from bridge.config import RouteSettings
from bridge.events import Event


def match_routes(routes: Sequence[RouteSettings], event: Event) -> list[RouteSettings]:
    matched = []
    for route in routes:
        if _any(route.match.source, event.source.name) and _any(route.match.event, event.type):
            matched.append(route)
            if not route.continue_:
                break
    return matched


def _any(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)
