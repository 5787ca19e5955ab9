"""One run of a delivery job (an *attempt*): what the steps share, and how a run ends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rq import Retry
from rq.job import Job

from bridge import alerts
from bridge.delivery.actions import Actions, actions_of
from bridge.delivery.deliverer import Deliverer
from bridge.digest import Claim
from bridge.marker import mark
from bridge.notification import Notification
from bridge.pumble import MessageRef, PumbleClient, PumbleError
from bridge.retry import run_again_in
from bridge.threads import Root

log = logging.getLogger(__package__)

# What a step ends a run with: the job's result (Pumble's ids), or rq's "run again later".
Outcome = dict[str, Any] | Retry


class DeadLetter(Exception):
    """This notification will not be sent again automatically; the message is the reason."""


@dataclass
class Attempt:
    """The job, its notification and actions, and what the steps have found so far."""

    deliverer: Deliverer
    job: Job
    notification: Notification
    actions: Actions = field(init=False)
    age: float = field(init=False)  # seconds since the receiver accepted it
    root: Root | None = None  # the thread's first message, to post in (None: a message alone)
    members: list[Notification] = field(default_factory=list)  # the others in its digest
    member_ids: tuple[str, ...] = ()  # their jobs
    posted: MessageRef | None = None  # its message, once posted (or found posted)
    answered_at: float = 0.0  # when Pumble answered this attempt's send, if it sent
    in_a_burst: bool = False  # heads a burst (Deliverer.bursting): digests whatever waits

    def __post_init__(self) -> None:
        self.actions = actions_of(self.notification)
        # The time it was held while its route was muted does not count (held_while_muted).
        self.age = (self.deliverer.clock.time() - self.notification.received_at
                    - float(self.meta.get("held_seconds", 0)))

    @property
    def meta(self) -> dict[str, Any]:
        return self.job.meta

    @property
    def message(self) -> MessageRef:
        """Its post, for the steps after it (the steps before post it or end the run)."""
        if self.posted is None:
            raise AssertionError("not posted yet")
        return self.posted

    def context(self, **more: Any) -> dict[str, Any]:
        """Fields for the log lines (``extra=``): one event can be followed to its message."""
        n = self.notification
        return {"event_id": n.event_id, "event_type": n.event_type, "source": n.source,
                "route": n.route, "job_id": self.job.id, **more}

    def join_digest(self, claim: Claim) -> None:
        """The others its digest carries (none: it goes alone)."""
        self.member_ids = claim.members
        if not claim.members:
            self.members = []
            return
        jobs = Job.fetch_many(list(claim.members), connection=self.job.connection,
                              serializer=self.job.serializer)
        # A member whose job has vanished (purged by hand) is left out, not guessed.
        self.members = [Notification.from_payload(job.args[0]) for job in jobs if job is not None]

    def record_posted(self, ref: MessageRef) -> None:
        self.meta.pop("maybe_sent_at", None)
        self.meta["sent"] = {"id": ref.id, "channel_id": ref.channel_id}
        # At once: a worker killed before rq records the job as done must not leave it to a
        # look in the channel, which a busy channel can outrun.
        self.job.save_meta()
        self.posted = ref

    def send(self, client: PumbleClient, text: str) -> MessageRef:
        """Post ``text``, marked as this job's (bridge.marker), in its thread or its channel."""
        return self.start_send(client, text)()

    def start_send(self, client: PumbleClient, text: str) -> Callable[[], MessageRef]:
        """``send``, sent: the returned call waits for Pumble's answer."""
        post, text = self.actions.post, mark(text, self.job.id)
        if self.root:
            return client.start_reply(self.root.message_id, text,
                                      channel_id=self.root.channel_id, as_bot=post.as_bot)
        return client.start_message(post.channel, text, as_bot=post.as_bot)

    def delivered(self) -> dict[str, Any]:
        """Posted (and all else done): logged, counted; the job's result."""
        n, ref, members = self.notification, self.message, self.members
        result: dict[str, Any] = {"message_id": ref.id, "channel_id": ref.channel_id}
        if members:
            result["digest"] = len(members) + 1
        log.info("event %s (route %s) delivered to #%s as message %s%s", n.event_id, n.route,
                 n.channel, ref.id, f" (digest of {len(members) + 1})" if members else "",
                 extra=self.context(message_id=ref.id))
        self.deliverer.metrics.delivery(n.route, "sent")
        if self.answered_at:
            for member in (n, *members):
                self.deliverer.metrics.end_to_end(n.route, member.received_at,
                                                  self.answered_at)
        return result

    def give_up_when_spent(self) -> None:
        """Checked after a failed send and again before the next (a re-run after a crash)."""
        attempts = int(self.meta.get("attempts", 0))
        if attempts >= self.deliverer.settings.max_attempts:
            raise DeadLetter(f"gave up after {attempts} attempts: {self.meta.get('last_error')}")

    # -- how a run ends, besides being delivered ---------------------------------------------

    def waiting(self, seconds: int) -> Retry:
        """Not its time yet (its thread root, its turn): run again; not an attempt."""
        self.deliverer.metrics.delivery(self.notification.route, "waiting")
        return run_again_in(seconds)

    def held(self, reason: str, seconds: int) -> Retry:
        """Its route is muted: run again when the mute ends; not an attempt."""
        log.info("job %s (route %s): held while muted (%s), for %d s", self.job.id,
                 self.notification.route, reason, seconds, extra=self.context())
        self.deliverer.metrics.delivery(self.notification.route, "held")
        return run_again_in(seconds)

    def dropped(self, reason: str) -> dict[str, Any]:
        """Its route is muted with ``when_muted: drop``: ended, not sent, not a dead letter."""
        n, queue = self.notification, self.deliverer.queue
        if self.actions.thread and self.actions.thread.starts:
            queue.roots.give_up(n)  # replies waiting for this one go out alone
        queue.backlog.leave(n, self.job.id)
        log.info("job %s (event %s, route %s): dropped while muted (%s; when_muted: drop)",
                 self.job.id, n.event_id, n.route, reason, extra=self.context())
        self.deliverer.metrics.delivery(n.route, "dropped")
        return {"dropped": reason}

    def in_digest(self, owner: str) -> dict[str, Any]:
        log.info("job %s (route %s): delivered in job %s's digest", self.job.id,
                 self.notification.route, owner, extra=self.context())
        self.deliverer.metrics.delivery(self.notification.route, "in_digest")
        return {"in_digest_of": owner}

    def digest_ended(self, ids: list[str]) -> None:
        """Its digest's jobs ``ids`` ended by this one (bridge.store.runs): as ``in_digest``
        logs and counts each that ends itself."""
        route = self.notification.route
        # The members' events, by job, when none of them vanished (join_digest).
        events = (dict(zip(self.member_ids, self.members, strict=True))
                  if len(self.members) == len(self.member_ids) else {})
        for job_id in ids:
            member = events.get(job_id)
            fields = {"event_id": member.event_id, "event_type": member.event_type,
                      "source": member.source} if member else {}
            log.info("job %s (route %s): delivered in job %s's digest", job_id, route,
                     self.job.id, extra={**fields, "route": route, "job_id": job_id})
            self.deliverer.metrics.delivery(route, "in_digest")

    def failed(self, error: PumbleError) -> Retry:
        """Run again after a backoff, or dead-letter once attempts run out."""
        return run_again_in(self.backoff_after(error))

    def backoff_after(self, error: PumbleError) -> int:
        """Seconds until the next attempt after ``error`` (recorded, logged, counted); raises
        DeadLetter once attempts run out."""
        settings = self.deliverer.settings
        attempts = int(self.meta.get("attempts", 0))
        self.meta["last_error"] = f"{type(error).__name__}: {error}"
        self.give_up_when_spent()
        delay = self.deliverer.backoff.job_delay(attempts, error)
        self.job.save_meta()
        log.warning("job %s (route %s): %s; attempt %d of %d in %ds", self.job.id,
                    self.notification.route, self.meta["last_error"], attempts + 1,
                    settings.max_attempts, delay, extra=self.context())
        self.deliverer.metrics.delivery(self.notification.route, "retry")
        self.deliverer.metrics.retry(self.notification.route, type(error).__name__)
        return delay

    def dead(self, reason: str) -> None:
        """Record why; rq keeps the job in its failed-job registry (the dead letters)."""
        n = self.notification
        self.meta["dead_reason"] = reason
        self.job.retries_left = 0  # not rq's crash-retry either: this is final
        self.job.save_meta()
        queue = self.deliverer.queue
        queue.keep_event(n.source, n.event_id)
        thread = self.actions.thread
        if thread and thread.starts and not self.meta.get("sent"):
            queue.roots.give_up(n)  # replies waiting for this one go out alone
        queue.backlog.leave(n, self.job.id)  # the next in its line goes
        log.error("job %s (event %s, route %s) dead-lettered: %s", self.job.id, n.event_id,
                  n.route, reason, extra=self.context())
        self.deliverer.metrics.delivery(n.route, "dead_lettered")
        self.deliverer.metrics.dead_lettered(n.route)
        self.deliverer.alerter.post(alerts.dead_letter(n.route, n.event_id, reason))
