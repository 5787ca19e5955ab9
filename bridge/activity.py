"""The recent webhooks and what became of each: the admin page's events, searchable.

The receiver records every event (a capped list in Redis, newest first) with the jobs it
enqueued, in the same step as it enqueues them (``NotificationQueue.accept``); reading it joins
each job's state from rq (queued, scheduled for a retry, sent with Pumble's message id, in a
digest, dead-lettered with the reason).

Each line carries what an operator asks about (the order's reference, amount, customer) and a
lowercased ``terms`` field (event id, order number and name, customer name and email): that list
is the search index. A search runs in Redis, one script over the list (bridge.store.scripts'
``SEARCH_ACTIVITY``), which also matches a Pumble message id against each job's meta (where
delivery records ``sent``). The index is bounded by the list's cap (``KEEP``); it costs about
0.5 kB of Redis memory per event (the line, terms included; measured in tests/test_activity.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
from rq.job import Job

from bridge.events import Event
from bridge.notification import Notification
from bridge.queue import FAILURE_TTL, NotificationQueue, job_id, readable_body
from bridge.store import scripts
from bridge.store.accept import ListEntry
from bridge.threads import Root

KEEP = 2000  # events remembered, and searchable
STATES = ("sent", "waiting", "failed", "dead")  # what ``state=`` filters by
SCAN_BATCH = 200  # lines looked at per round trip when the state filter needs rq's jobs
_WAITING = frozenset({"queued", "started", "scheduled", "deferred"})

@dataclass(frozen=True)
class Filters:
    """What the events list is narrowed to (the admin page's and ``events``' query)."""

    q: str = ""  # order number or name, customer name or email, event id, Pumble message id
    state: str = ""  # one of STATES
    source: str = ""
    type: str = ""

    def __post_init__(self) -> None:
        if self.state and self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")


@dataclass(frozen=True)
class Delivery:
    route: str
    channel: str
    job_id: str
    state: str  # queued, started, scheduled, finished, failed, … (rq's), or "gone"
    message_id: str = ""
    in_digest_of: str = ""
    error: str = ""
    dropped: str = ""  # why it was dropped unsent (its route muted, when_muted: drop)

    @property
    def outcome(self) -> str:
        """The state filter's word for it: sent, waiting, failed (retrying after an error),
        dead; "dropped" (muted); "" once the job has expired."""
        if self.state == "finished":
            return "dropped" if self.dropped else "sent"
        if self.state == "failed":
            return "dead"
        if self.state in _WAITING:
            return "failed" if self.error else "waiting"
        return ""


@dataclass(frozen=True)
class EventActivity:
    event_id: str
    source: str
    type: str
    received_at: float
    duplicate: bool
    deliveries: list[Delivery] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # routes whose template failed
    ref: str = ""  # what it is about, as the shop shows it: "#1001", a refund's id, …
    amount: str = ""
    currency: str = ""
    customer: str = ""
    email: str = ""
    test: bool = False
    replay_of: str = ""  # the event id this line sent again

    @property
    def states(self) -> frozenset[str]:
        """What ``state=`` matches it by: any of its notifications'. A dead one has failed
        too; a template that failed made a dead letter."""
        states = {d.outcome for d in self.deliveries} - {""}
        if self.failures:
            states.add("dead")
        if "dead" in states:
            states.add("failed")
        return frozenset(states)


@dataclass(frozen=True)
class Attempt:
    at: datetime | None
    outcome: str  # rq's word for the run: successful, failed, retried, …
    answer: str  # what came back: Pumble's message id, or the error


@dataclass(frozen=True)
class Posted:
    """One notification in full: the text as it was posted, its attempts, its thread."""

    text: str
    account: str
    attempts: list[Attempt]
    thread: str  # the conversation it belongs to (``order:1234``), "" for none
    thread_root: str  # the conversation's first message's id, once posted
    reaction: str  # the reaction its route adds to the thread's first message
    reacted: bool


@dataclass(frozen=True)
class EventDetail:
    lines: list[EventActivity]  # newest first: the event, its re-deliveries and replays
    webhook: dict[str, Any] | None  # headers (no signature kept) and pretty body, while kept
    posted: dict[str, Posted]  # by job id


class Activity:
    def __init__(self, queue: NotificationQueue, keep: int = KEEP):
        self.queue = queue
        self.keep = keep
        self._key = queue.keys.activity()
        self._search = self.connection.register_script(scripts.SEARCH_ACTIVITY)

    @property
    def connection(self) -> redis.Redis:
        return self.queue.rq.connection

    def entry(self, event: Event, *, source: str, received_at: float,
              notifications: list[Notification], failures: list[str],
              duplicate: bool = False, replay_of: str = "") -> ListEntry:
        """The event's line, for the queue to push as it accepts the event."""
        about = _about(event)
        terms = [event.id, about["ref"], about["customer"], about["email"],
                 *((event.order.number, event.order.name) if event.order else ())]
        entry = {
            "event_id": event.id, "source": source, "type": event.type,
            "received_at": received_at, "duplicate": duplicate, "failures": failures,
            "notifications": [{"route": n.route, "channel": n.channel,
                               "job_id": job_id(self.queue.rq.name, n)} for n in notifications],
            **about, "test": event.test, "replay_of": replay_of,
            "terms": "\n".join(term for term in terms if term).lower(),
        }
        return ListEntry(self._key, orjson.dumps(entry), self.keep)

    def record(self, event: Event, **details: Any) -> None:
        """Push an event's line now (a re-delivery's, which the queue did not accept)."""
        line = self.entry(event, **details)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.lpush(line.key, line.entry)
            pipe.ltrim(line.key, 0, line.keep - 1)
            pipe.execute()

    def recent(self, limit: int = 50) -> list[EventActivity]:
        return self.search(Filters(), limit)

    def search(self, filters: Filters, limit: int = 50, *, event_id: str = "") -> list[
            EventActivity]:
        """The newest ``limit`` events that match, newest first. ``event_id``: only that
        event's lines (the original, its re-deliveries and replays)."""
        found: list[EventActivity] = []
        start = 0
        while start >= 0 and len(found) < limit:
            # Without a state filter every match counts, so the script stops at the limit.
            want = limit - len(found) if not filters.state else SCAN_BATCH
            start, *lines = self._search(keys=[self._key], args=[
                filters.q.strip().lower(), filters.q.strip(), filters.source, filters.type,
                event_id, start, want, self.keep if not filters.state else SCAN_BATCH,
                Job.redis_job_namespace_prefix])
            events = self._joined([json.loads(line) for line in lines])
            found += [e for e in events if not filters.state or filters.state in e.states]
        return found[:limit]

    def original(self, event_id: str) -> EventActivity | None:
        """The line of the event as first accepted (not a re-delivery, not a replay)."""
        return next((e for e in self.search(Filters(), self.keep, event_id=event_id)
                     if e.event_id == event_id and not e.duplicate), None)

    def detail(self, event_id: str) -> EventDetail | None:
        """Everything kept about one event: its lines, the webhook, each notification."""
        lines = self.search(Filters(), self.keep, event_id=event_id)
        if not lines:
            return None
        ids = [d.job_id for line in lines for d in line.deliveries if d.state != "gone"]
        jobs = Job.fetch_many(ids, connection=self.connection,
                              serializer=self.queue.rq.serializer)
        stored = self.queue.load_event(lines[-1].source, event_id)
        webhook = None if stored is None else {"headers": stored.get("headers", {}),
                                               "body": readable_body(stored.get("body") or "")}
        return EventDetail(lines, webhook, {job.id: self._posted(job)
                                            for job in jobs if job is not None})

    def _posted(self, job: Job) -> Posted:
        notification = Notification.from_payload(job.args[0])
        root = self.queue.roots.get(notification)
        return Posted(
            text=notification.text, account=notification.account,
            attempts=[Attempt(result.created_at, result.type.name.lower(),
                              _answer(result.return_value, result.exc_string))
                      for result in reversed(job.results())],
            thread=notification.thread_key,
            thread_root=root.message_id if isinstance(root, Root) else "",
            reaction=notification.reaction, reacted=bool(job.meta.get("reacted")))

    def next_replay(self, source: str, event_id: str) -> int:
        """1 for an event's first replay, 2 for the next, …: part of the replay's delivery id."""
        key = self.queue.keys.replays(source, event_id)
        with self.connection.pipeline() as pipe:
            number, _ = pipe.incr(key).expire(key, FAILURE_TTL).execute()
        return int(number)

    def _joined(self, entries: list[dict[str, Any]]) -> list[EventActivity]:
        ids = [n["job_id"] for entry in entries for n in entry["notifications"]]
        jobs = dict(zip(ids, Job.fetch_many(ids, connection=self.connection,
                                            serializer=self.queue.rq.serializer), strict=True))
        names = {f.name for f in dataclasses.fields(EventActivity)} - {"deliveries"}
        return [EventActivity(
            **{name: entry[name] for name in names if name in entry},
            deliveries=[_delivery(n, jobs.get(n["job_id"])) for n in entry["notifications"]],
        ) for entry in entries]


def _about(event: Event) -> dict[str, str]:
    """What an event is about, in the words the shop shows: its reference, amount, customer."""
    order, payment, refund = event.order, event.payment, event.refund
    ref = ((order.name or (order.number and f"#{order.number}") or order.id) if order
           else (refund and refund.id) or (payment and (payment.number or payment.id))
           or (event.shipment and event.shipment.id) or (event.product and event.product.name)
           or "")
    money = next(((amount, currency) for amount, currency in (  # the money it moves first
        (refund and refund.amount, (refund and refund.currency) or (order and order.currency)),
        (payment and payment.amount, payment and payment.currency),
        (order and order.total, order and order.currency)) if amount is not None),
        (None, ""))
    customer = event.customer
    return {"ref": str(ref), "amount": "" if money[0] is None else str(money[0]),
            "currency": money[1] or "", "customer": customer.name if customer else "",
            "email": customer.email if customer else ""}


def _answer(value: Any, error: str | None) -> str:
    if error:  # a traceback: its last line says what happened
        return error.strip().splitlines()[-1]
    if isinstance(value, dict):
        return ", ".join(f"{name} {part}" for name, part in value.items())
    return "" if value is None else str(value)


def _delivery(notification: dict[str, Any], job: Job | None) -> Delivery:
    if job is None:  # expired (a day after sending) or purged
        return Delivery(notification["route"], notification["channel"], notification["job_id"],
                        "gone")
    state = job.get_status(refresh=False)
    state = getattr(state, "value", state) or "gone"
    result = job.return_value() if state == "finished" else None
    result = result if isinstance(result, dict) else {}
    return Delivery(
        route=notification["route"], channel=notification["channel"], job_id=job.id,
        state=state,
        message_id=result.get("message_id", ""),
        in_digest_of=result.get("in_digest_of", ""),
        dropped=result.get("dropped", ""),
        error=job.meta.get("dead_reason") or job.meta.get("last_error") or "",
    )
