"""Send an accepted event again, on purpose: its kept webhook through today's routes and templates.

A replay gets its own delivery id, ``<event_id>:replay:<n>``: its jobs are new jobs (never taken
for the original's, nor deduplicated away), its activity line says which event it replays, and
the worker's identity checks (did an earlier run of this job post already?) never find the
original's message. It is received now, so ``delivery.max_age`` counts from the replay; it stays
in the original's conversation (same thread key), as a reply where its route says so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.activity import Activity
from bridge.notification import Notification
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue
from bridge.sources import PayloadError, WebhookRequest

log = logging.getLogger(__name__)


class ReplayError(Exception):
    """Why an event cannot be replayed, in one line."""


@dataclass(frozen=True)
class Replayed:
    delivery_id: str  # ``<event_id>:replay:<n>``
    notifications: list[Notification]
    failures: list[str]  # routes whose template failed today (not sent)


def replay(queue: NotificationQueue, pipeline: Pipeline, event_id: str, *, route: str = "",
           clock: Callable[[], float] = time.time) -> Replayed:
    """Enqueue the event's notifications again (only ``route``'s, when given). Raises
    ReplayError when it cannot: unknown event, webhook no longer kept, no route matches."""
    activity = Activity(queue)
    original = activity.original(event_id)
    if original is None:
        raise ReplayError(f"no event {event_id!r} among the recent events")
    stored = queue.load_event(original.source, event_id)
    source = pipeline.sources.get(original.source)
    if stored is None:
        raise ReplayError(f"event {event_id!r}: its webhook is no longer kept")
    if source is None:
        raise ReplayError(f"event {event_id!r}: source {original.source!r} is no longer in the "
                          "config")
    try:
        event = source.parse(WebhookRequest.of(stored.get("headers", {}),
                                               stored["body"].encode()))
    except PayloadError as exc:
        raise ReplayError(f"event {event_id!r}: {exc}") from None
    received_at = clock()
    dispatch = pipeline.dispatch(event, received_at)
    notifications = [n for n in dispatch.notifications if route in ("", n.route)]
    failures = [f.reason for f in dispatch.failures if route in ("", f.notification.route)]
    if not notifications:
        unmatched = f"no route named {route!r} matches it today" if route else \
            "no route matches it today"
        raise ReplayError(f"event {event_id!r}: {'; '.join(failures) or unmatched}")
    delivery_id = f"{event_id}:replay:{activity.next_replay(original.source, event_id)}"
    notifications = [dataclasses.replace(n, event_id=delivery_id) for n in notifications]
    queue.accept(notifications, activity=activity.entry(
        dataclasses.replace(event, id=delivery_id), source=original.source,
        received_at=received_at, notifications=notifications, failures=failures,
        replay_of=event_id))
    log.info("event %s replayed as %s: %d notification(s)", event_id, delivery_id,
             len(notifications), extra={"event_id": delivery_id, "replay_of": event_id,
                                        "source": original.source})
    return Replayed(delivery_id, notifications, failures)
