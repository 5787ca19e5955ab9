"""The receiver's work on one webhook, as a plain function: verify → parse → route → render → store.

No Flask here: ``bridge.web`` turns a request into an ``Inbound`` and the ``Answer`` into a
response. What each answer means:

202: accepted and stored. 200: a re-delivery of one already accepted (nothing enqueued again),
or a platform's set-up ping. 401: bad or missing signature. 400: wrong content type or a body that
is not valid JSON. 503: Redis cannot be written, so the shop keeps the event and retries.
(404 for an unknown source and 413 for a body too large are the web app's: both are decided
before the body is read, or while it is.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge.activity import Activity
from bridge.alerts_sender import count_bad_signature
from bridge.dlq import DeadLetters
from bridge.events import Event
from bridge.metrics import Metrics
from bridge.pipeline import Dispatch, Pipeline
from bridge.queue import NotificationQueue, Received
from bridge.sources import PayloadError, SignatureError, Source, WebhookRequest
from bridge.store.accept import Tally
from bridge.summaries_totals import SummaryTotals

# The receiver's lines, under the name they have always had (log filters and dashboards use it).
log = logging.getLogger("bridge.web")

RETRY_AFTER_SECONDS = "5"  # what a 503 asks the shop to wait before sending again


@dataclass(frozen=True)
class Inbound:
    """One webhook as it reached the receiver, for the source named ``source``."""

    source: str
    webhook: WebhookRequest
    mimetype: str | None  # the Content-Type's media type; None when the request has none
    received_at: float


@dataclass(frozen=True)
class Answer:
    """What to answer: status, JSON body, extra headers, and the event's type once the body was
    read (None before, and for a set-up ping), which the metrics label the answer with."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    event_type: str | None = None

    @property
    def about_an_event(self) -> bool:
        """A 202 or a re-delivery's 200 (the answers every webhook gets), not an error or ping."""
        return self.status < 400 and self.event_type is not None


@dataclass(frozen=True)
class Store:
    """Where accepted webhooks go: the queue, what is written beside their jobs, and the
    counts of what was stored."""

    queue: NotificationQueue
    dead_letters: DeadLetters
    activity: Activity
    dedupe_window: int
    metrics: Metrics
    summaries: SummaryTotals

    @classmethod
    def on(cls, queue: NotificationQueue, dedupe_window: int, metrics: Metrics) -> Store:
        return cls(queue, DeadLetters(queue), Activity(queue), dedupe_window, metrics,
                   SummaryTotals(queue.rq.connection, queue.keys))


def error(status: int, message: str) -> Answer:
    return Answer(status, {"error": message})


def accept(inbound: Inbound, source: Source, pipeline: Pipeline, store: Store) -> Answer:
    """The answer to one webhook for ``source`` (the pipeline's source of that name), having
    stored what it turned into when it is new and valid."""
    name, webhook = inbound.source, inbound.webhook
    context = {"source": name}
    if source.is_ping(webhook):
        log.info("source %s: set-up ping answered", name, extra=context)
        return Answer(200, {"ping": True})
    try:
        source.verify(webhook)
    except SignatureError as exc:
        log.warning("source %s: rejected: %s", name, exc, extra=context)
        _count_bad_signature(store, name, inbound.received_at)
        return error(401, str(exc))
    if "json" not in (inbound.mimetype or "json"):
        return error(400, f"expected a JSON body, got Content-Type {inbound.mimetype}")
    try:
        event = source.parse(webhook)
    except PayloadError as exc:
        log.warning("source %s: bad payload: %s", name, exc, extra=context)
        return error(400, str(exc))
    except Exception:  # a payload shaped like nothing the normaliser knows: never a 500
        log.exception("source %s: payload could not be read", name, extra=context)
        return error(400, "the payload could not be read")
    dispatch = pipeline.dispatch(event, inbound.received_at)
    received = Received(name, event.id, event.type, source.keepable_headers(webhook),
                        webhook.body, dead_letters=bool(dispatch.failures),
                        received_at=inbound.received_at)
    tallies = [store.summaries.tally(summary, added)
               for summary, added in pipeline.summaries.contributions(event)]
    return _store(inbound, event, received, dispatch, store, tallies)


def _store(inbound: Inbound, event: Event, received: Received, dispatch: Dispatch,
           store: Store, tallies: list[Tally]) -> Answer:
    name = inbound.source
    context = {"source": name, "event_id": event.id, "event_type": event.type}
    failed = [failure.reason for failure in dispatch.failures]
    try:
        if dispatch.failures:
            # Rare (a template failed). Its dead letters are written first, so no crash can
            # leave the delivery marked seen without them; writing one twice is a no-op.
            if store.queue.seen(name, event.id):
                return _redelivery(inbound, event, store)
            for failure in dispatch.failures:
                if store.dead_letters.add(failure.notification, failure.reason):
                    store.metrics.dead_lettered(failure.notification.route)
        accepted = store.queue.accept(
            dispatch.notifications, received=received, dedupe_window=store.dedupe_window,
            activity=store.activity.entry(event, source=name, received_at=inbound.received_at,
                                          notifications=dispatch.notifications, failures=failed),
            tallies=tallies)
        if accepted.duplicate:
            return _redelivery(inbound, event, store)
    except redis.RedisError as exc:
        log.error("event %s: cannot write to Redis (%s); answering 503", event.id,
                  type(exc).__name__, extra=context)
        return Answer(503, {"error": "cannot store the event right now; retry later"},
                      {"Retry-After": RETRY_AFTER_SECONDS}, event.type)
    for notification, written in zip(dispatch.notifications, accepted.written, strict=True):
        if written:
            store.metrics.enqueued(notification.route)
    enqueued = sum(accepted.written)
    log.info("event %s %s from %s: %d notification(s), %d enqueued", event.id, event.type,
             name, len(dispatch.notifications), enqueued, extra=context)
    # Every job already there: a re-delivery that raced the first one, or outlived the
    # dedupe marker but not the jobs.
    duplicate = bool(dispatch.notifications) and enqueued == 0
    return _answer(event, duplicate, len(dispatch.notifications), enqueued, failed)


def _count_bad_signature(store: Store, source: str, now: float) -> None:
    """For the signature_failures alert, checked by the worker (bridge.alerts_sender)."""
    try:
        count_bad_signature(store.queue.rq.connection, store.queue.rq.name, source, now)
    except redis.RedisError as exc:  # the answer is 401 all the same
        log.warning("source %s: could not count the bad signature (%s)", source,
                    type(exc).__name__, extra={"source": source})


def _redelivery(inbound: Inbound, event: Event, store: Store) -> Answer:
    log.info("event %s from %s: re-delivery, already accepted", event.id, inbound.source,
             extra={"source": inbound.source, "event_id": event.id, "event_type": event.type})
    store.activity.record(event, source=inbound.source, received_at=inbound.received_at,
                          notifications=[], failures=[], duplicate=True)
    return _answer(event, duplicate=True)


def _answer(event: Event, duplicate: bool, notifications: int = 0, enqueued: int = 0,
            failed: list[str] | None = None) -> Answer:
    body = {"event_id": event.id, "type": event.type, "duplicate": duplicate,
            "notifications": notifications, "enqueued": enqueued, "failed": failed or []}
    return Answer(200 if duplicate else 202, body, event_type=event.type)
