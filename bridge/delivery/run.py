"""A run: the job at the head of a line of new messages, its own message posted, posts the next
ones of its line too, in the same rq job, before it leaves the line.

Why: rq's own bookkeeping costs a job about 18 Redis round trips and more CPU than its send
(bench/worker.py). A run pays it once for up to ``RUN_MAX`` messages, taken in batches that
double up to ``BATCH_MAX``; a batch costs three round trips (the limit's window read; claimed
and read with the records of the batch before; its slots and "may have been sent" marks taken)
besides its sends.

It stays as safe as a job of its own:
- The jobs are claimed atomically (scripts.CLAIM_RUN): those right behind it in the line, in
  order, each still waiting (queued, or parked for its turn). Each is parked again with a
  fallback (its job timeout and the heartbeat's grace ahead) and marked as the run's, so no
  other worker takes it and no handover wakes it. A worker that dies mid-run leaves them to
  rq's scheduler: at the fallback each runs as a job of its own, and one that may have been
  sent looks for its post first (bridge.delivery.steps).
- Only the plain case is posted in a run: a first attempt, not muted, not too old, no reaction
  to add, a slot free at once (one whose thread a later event began is posted in that thread,
  as its own job would). Anything else ends the run: that job and the rest of its batch go back
  to the front of the queue (scripts.HAND_BACK) and run as jobs of their own, through every
  step. A send Pumble refuses ends it too; one to try again (5xx, 429, no answer) is parked for
  its backoff first, as the job itself would have been.
- Redis refusing a round trip of the run (full, read-only, out of reach) stops it where it is:
  once Redis takes writes, the members posted are recorded and the rest handed back
  (``Run._ride_out``), rather than left to their fallback.
- A run never makes a digest: none is claimed while as many wait behind it as would make its
  head send one (more than the slots left, or than the limit posts in the digest window).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from redis.client import Pipeline
from rq.job import Job
from rq.utils import current_timestamp, now, utcformat

from bridge.delivery.attempt import Attempt, DeadLetter
from bridge.digest import HANDOVER_MARGIN
from bridge.mutes import HELD, muted_now
from bridge.notification import Notification
from bridge.pumble import AmbiguousError, PumbleError
from bridge.retry import REDIS_UNAVAILABLE, REDIS_UNAVAILABLE_ERRORS
from bridge.store import runs, scripts
from bridge.threads import Root

log = logging.getLogger(__package__)

RUN_MAX = 400  # jobs a run takes at most
RUN_SECONDS = 2.0  # no new send after this: a warm shutdown waits for the run
BATCH_MAX = 32  # members whose slots and marks are taken in one round trip


def deliver_its_run(a: Attempt) -> None:
    """The step: a new message just posted from its line's head takes the next ones along."""
    if a.notification.reply or a.members or not a.deliverer.queue.backlog.key(a.notification):
        return
    Run(a).deliver()


class Run:
    def __init__(self, head: Attempt):
        self.head = head
        self.deliverer = head.deliverer
        self.pipe: Pipeline = head.job.connection.pipeline(transaction=False)
        self.line = self.deliverer.queue.backlog.key(head.notification)
        self.rq = self.deliverer.queue.rq
        # The threads a member of this run begins (by their roots' keys), and the members that
        # join one of them: their jobs would find its root by then, and reply in it.
        self.begun: dict[str, Root] = {}
        self.joining: dict[str, str] = {}
        self.behind = 0  # waiting behind it after its last claim: a burst ends the run
        # Members posted whose records are on the pipeline, not yet executed: written again
        # if Redis refuses them (_ride_out).
        self.unconfirmed: list[tuple[Attempt, dict[str, Any], datetime]] = []

    def deliver(self) -> None:
        """Batches of the next jobs of the line, each claimed in the round trip that records
        the batch before, until the line is done, a job is not plain, or time is up."""
        d = self.deliverer
        if self._muted():
            return
        deadline, batch, posted, taken = d.clock.time() + RUN_SECONDS, 1, 0, []
        try:
            while posted < RUN_MAX and d.clock.time() <= deadline:
                taken = self._claim(min(batch, RUN_MAX - posted))
                sent, slowest = self._post(self._members(taken))
                posted += sent
                del taken[:sent]
                if taken or not sent:
                    break
                # Twice as many next time, each sent within half the limiter's margin of its
                # slot (bridge.ratelimit).
                batch = max(1, min(2 * batch, BATCH_MAX,
                                   int(d.limiter.margin / 2 / max(slowest, 1e-3))))
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self._ride_out(exc)
            taken = []  # handed back
        finally:
            self._end(taken)
        log.debug("job %s: posted %d more of its line in its run", self.head.job.id, posted,
                  extra=self.head.context())

    def _muted(self) -> bool:
        d, n, now_ = self.deliverer, self.head.notification, self.deliverer.clock.time()
        route = d.routes.get(n.route)  # gone from the config: never muted (held_while_muted)
        return bool(route and muted_now(route, d.intervals, d.mutes.get(n.route, now_), now_))

    def _claim(self, most: int) -> list[tuple[Job, dict[str, Any]]]:
        """Up to ``most`` of the next jobs, claimed with the writes still pending; none in a
        burst (its next head digests it)."""
        d, head, keys = self.deliverer, self.head.job, self.deliverer.queue.backlog.keys
        fallback, slots = d.abandoned_after, d.slots(self.head.notification.account)
        singles_left = d.singles_left(slots, self.behind)
        if singles_left < 0:
            return []
        most = min(most, max(1, int(singles_left)))  # none past the line's turn to a burst
        # As a head would: none goes alone while more wait than the slots left (bridge.delivery
        # .steps, _claim), or than the limit posts in the digest window.
        threshold = min(d.digest_threshold, slots.left + 1)
        # The marks end before the fallback: a job rq's scheduler moves then is not the run's.
        self.pipe.eval(
            scripts.CLAIM_RUN, 3, self.line, self.rq.key, self.rq.scheduled_job_registry.key,
            head.id, most, fallback, keys.in_run_prefix(), fallback - HANDOVER_MARGIN,
            HANDOVER_MARGIN, threshold, Job.redis_job_namespace_prefix)
        behind, *answer = self._execute()[-1]
        claimed = runs.decode(head.connection, head.serializer, answer)
        self.behind = behind - len(claimed)
        for gone in (job_id for job_id, job in claimed if job is None):
            self.pipe.zrem(self.line, gone)  # deleted by hand: out of its line
            self.pipe.zrem(self.rq.scheduled_job_registry.key, gone)
            self.pipe.delete(keys.in_run(gone))
        return [job for _, job in claimed if job is not None]

    def _members(self, taken: list[tuple[Job, dict[str, Any]]]) -> list[Attempt]:
        """Each job's attempt, up to the first that is not plain (see the module); one whose
        thread a later event began is posted in that thread, as its job would."""
        attempts = [Attempt(self.deliverer, job, Notification.from_payload(payload))
                    for job, payload in taken]
        roots = iter(self.deliverer.queue.roots.get_many([a.notification for a in attempts
                                                          if a.actions.thread]))
        plain, beginning = [], set()
        for a in attempts:
            root = next(roots) if a.actions.thread else None
            if not _plain(a):
                break
            a.root = root if isinstance(root, Root) else None
            if a.actions.thread and not a.root:
                key = self.deliverer.queue.roots.key(a.notification)
                if key in beginning:
                    self.joining[a.job.id] = key
                beginning.add(key)
            plain.append(a)
        return plain

    def _post(self, batch: list[Attempt]) -> tuple[int, float]:
        """Post a batch of members, their slots and marks taken in one round trip. Returns how
        many were posted, and the slowest send's seconds; fewer than the batch ends the run (a
        send to try again is parked, the rest go back)."""
        d, before = self.deliverer, [a.meta.copy() for a in batch]
        slots = []
        for a in batch:
            slots.append(len(self.pipe))
            replies = a.root or a.job.id in self.joining
            d.limiter.try_acquire_on(self.pipe, a.notification.account,
                                     "replies" if replies else "messages")
            a.meta.update(attempts=1, maybe_sent_at=d.clock.time())
            runs.write_meta(self.pipe, a.job)  # before sending: a worker killed mid-send
        answers = self._execute() if batch else []  # leaves it
        slowest, posted, tried, unrecorded = 0.0, 0, 0, []
        for a, slot in zip(batch, slots, strict=True):
            if d.limiter.seconds_until(answers[slot]) > 0:
                break
            tried += 1
            took = self._send(a, unrecorded)
            if took is None:
                break
            slowest, posted = max(slowest, took), posted + 1
        self._record(unrecorded)
        for a, meta in list(zip(batch, before, strict=True))[tried:]:
            a.job.meta = meta  # not sent: as it was
            runs.write_meta(self.pipe, a.job)
        return posted, slowest

    def _send(self, a: Attempt, unrecorded: list[tuple[Attempt, datetime]]) -> float | None:
        """One member's send: the seconds it took, or None if it did not go (``_failed``).
        The members posted before it are recorded while Pumble takes this one; then it joins
        them, posted and not recorded yet."""
        d, n, job = self.deliverer, a.notification, a.job
        started_at, sending = now(), d.clock.time()
        if job.id in self.joining:
            a.root = self.begun[self.joining[job.id]]
        try:
            answer = a.start_send(d.client(n.account), a.actions.post.text)
            self._record(unrecorded)
            ref = answer()
        except PumbleError as exc:
            self._record(unrecorded)
            self._failed(a, exc)
            return None
        a.answered_at = d.clock.time()
        job.meta.pop("maybe_sent_at")
        job.meta["sent"] = {"id": ref.id, "channel_id": ref.channel_id}
        a.posted = ref
        if a.actions.thread and not a.root:
            self.begun[d.queue.roots.key(n)] = Root(ref.id, ref.channel_id)
        unrecorded.append((a, started_at))
        return a.answered_at - sending

    def _record(self, posted: list[tuple[Attempt, datetime]]) -> None:
        """Members posted: finished as delivered, each one beginning a thread its root, queued
        on the run's pipeline (sent with the next round trip)."""
        for a, started_at in posted:
            self.unconfirmed.append((a, a.delivered(), started_at))
            self._queue_record(*self.unconfirmed[-1])
        posted.clear()

    def _queue_record(self, a: Attempt, result: dict[str, Any], started_at: datetime) -> None:
        d = self.deliverer
        d.finisher.finish(self.pipe, a.job, result, started_at, self.line,
                          d.queue.backlog.keys.in_run(a.job.id))
        if a.actions.thread and not a.root:
            d.queue.roots.claim_on(self.pipe, a.notification, a.message.id, a.message.channel_id)

    def _execute(self) -> list[Any]:
        """The run's pipeline, in one round trip; the records on it are written then."""
        answers = self.pipe.execute()
        self.unconfirmed.clear()
        return answers

    def _ride_out(self, exc: Exception) -> None:
        """Redis refused a round trip of the run's (full, read-only) or is out of reach: its
        writes may be applied in part (each script wholly or not at all). Once Redis takes
        writes again: the members posted are recorded, and every job still marked as the run's
        goes back to the queue's front, those of a claim whose answer was lost too. (Left to
        their fallback, they would hold their line for the job timeout; recorded only by their
        own jobs, posted ones would be looked for, or sent again.)"""
        d, failures = self.deliverer, 0
        log.warning("job %s: Redis is unavailable mid-run (%s): waiting for it",
                    self.head.job.id, type(exc).__name__, extra=self.head.context())
        while True:
            failures += 1
            d.clock.sleep(REDIS_UNAVAILABLE.steady_delay(failures))
            for record in self.unconfirmed:
                self._queue_record(*record)
            self.pipe.zrange(self.line, 0, RUN_MAX + BATCH_MAX)
            try:
                waiting = [job_id.decode() for job_id in self._execute()[-1]]
                self._hand_back(waiting)
                self._execute()
            except REDIS_UNAVAILABLE_ERRORS:
                continue
            log.warning("job %s: Redis is available again: resuming (its run ends here)",
                        self.head.job.id, extra=self.head.context())
            return

    def _failed(self, a: Attempt, error: PumbleError) -> None:
        """A send to try again is parked for its backoff, out of the run; any other goes back
        (its own job dead-letters it)."""
        if not isinstance(error, AmbiguousError):
            a.meta.pop("maybe_sent_at", None)  # certainly not posted
        if not (error.retryable or isinstance(error, AmbiguousError)):
            runs.write_meta(self.pipe, a.job)
            return
        try:
            delay = a.backoff_after(error)
        except DeadLetter:
            return
        self.pipe.zadd(self.rq.scheduled_job_registry.key,
                       {a.job.id: current_timestamp() + delay})  # rq's scores: its clock
        self.pipe.delete(self.deliverer.queue.backlog.keys.in_run(a.job.id))

    def _end(self, waiting: list[tuple[Job, dict[str, Any]]]) -> None:
        """The last writes; the jobs not posted back to the queue's front."""
        self._hand_back([job.id for job, _ in waiting])
        self._execute()

    def _hand_back(self, ids: list[str]) -> None:
        """Those of ``ids`` (in line order) still marked as the run's, back to the queue's
        front, on the pipeline."""
        if ids:
            keys = self.deliverer.queue.backlog.keys
            self.pipe.eval(scripts.HAND_BACK, 2, self.rq.key, self.rq.scheduled_job_registry.key,
                           self.head.job.id, keys.in_run_prefix(), Job.redis_job_namespace_prefix,
                           utcformat(now()), *ids)


def _plain(a: Attempt) -> bool:
    """Posted in a run as a job of its own would post it, with nothing else to do first."""
    meta, settings = a.meta, a.deliverer.settings
    return not (a.notification.reply or a.actions.react
                or meta.get("attempts") or meta.get("sent") or HELD in meta
                or (a.notification.received_at and a.age > settings.max_age))
