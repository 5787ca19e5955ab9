"""The job the worker runs: send one notification to Pumble, then decide what a failure means.

Each run of the job (an *attempt*, recorded in the job's meta) goes through these steps:

1. **Too old?** Past ``delivery.max_age`` after receipt it is dead-lettered.
2. **Thread.** A reply (route ``thread: true``) waits while its conversation's first message is
   expected but not yet posted, and at most ``delivery.thread_wait`` seconds for one that was
   never announced; then it is posted alone and becomes the thread's first message. A first
   message whose thread was begun so (it arrived late) is posted in that thread.
3. **Its turn.** A reply waits while one of its thread whose event came first (``event_order``)
   is not posted (its line, bridge.digest); a top-level message goes in the queue's order, not
   held behind the ones before it. Then, if its route's line is longer than
   the rate limit can post in the digest window, it sends one digest for itself and the next
   waiting ones; a job already in another's digest ends there.
4. **Look before sending again.** If an earlier attempt may have posted (an ambiguous failure:
   timeout after sending, connection dropped before the answer, or a worker killed mid-send),
   the channel (for a reply, the thread) is searched first, once a late write would have
   landed, back to that attempt (up to ``LOOK_BACK_PAGES`` pages); only a message carrying this
   notification's own mark (bridge.marker) counts as this one, never one with the same text.
5. **Send** after taking a slot from the rate limiter shared by every worker, once, with the
   notification's mark at the end of the text.
   ``create_channel: true`` creates a channel Pumble does not know and sends again.
6. **React** to the thread's first message when the route maps this event type to a reaction.

Failures: 5xx, 429, refused connections, timeouts and ambiguous answers are tried again with
exponential backoff and full jitter (at least the server's Retry-After), up to
``delivery.max_attempts`` sends; everything else Pumble refuses (key, validation, unknown
channel) is dead-lettered at once with its reason. Waiting (for a thread root, its turn, a
rate-limit slot) is not an attempt.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Retry, get_current_job
from rq.job import Job, JobStatus

from bridge.clock import Clock
from bridge.config import Config, config_path, load_config
from bridge.digest import Claim, digest_text
from bridge.marker import mark, marked_by
from bridge.metrics import Metrics
from bridge.notification import Notification
from bridge.pumble import (
    AmbiguousError,
    AuthError,
    Message,
    MessageRef,
    NotFoundError,
    PumbleClient,
    PumbleError,
    PumbleValidationError,
    RateLimitedError,
)
from bridge.queue import NotificationQueue
from bridge.ratelimit import RateLimiter, RateLimitTimeout, limits_per_minute
from bridge.threads import Root

log = logging.getLogger(__name__)

WAIT_INTERVAL = 2  # seconds between looks while a reply waits for its thread root
LINE_WAIT = 10  # at most, seconds between looks while earlier notifications of its line wait
LINE_LOOK = 20  # how many of those are read at a time
NEXT_IN_LINE_WAIT = 2.0  # seconds the next in its line waits in the worker for the one before
NEXT_IN_LINE_LOOK = 0.05  # seconds between its looks
MAX_RETURNED_RETRIES = 10**6  # our own attempt count and max age bound the retries, not rq's
CLOCK_SKEW = 120.0  # seconds of slack between our clock and Pumble's when looking for a post
# Seconds past our own timeouts before an unanswered post is looked for: Pumble may still apply
# a request our client gave up on.
LATE_WRITE = 10
LOOK_BACK_PAGES = 20  # of 100 messages: how far back a channel (a thread) is searched


class DeadLetter(Exception):
    """This notification will not be sent again automatically; the message is the reason."""


class Deliverer:
    """What a worker process needs to send: its config, one Pumble client per account, the
    Redis-backed shared state (rate limits, thread roots, digests) and the clock it goes by."""

    def __init__(self, config: Config, connection: redis.Redis, clock: Clock, metrics: Metrics):
        self.config = config
        self.settings = config.delivery
        self.clock = clock
        self.metrics = metrics
        self.queue = NotificationQueue(connection, config.redis.queue, config.delivery)
        self.limits = limits_per_minute(self.settings.rate_limits)
        self.limiter = RateLimiter(connection, config.redis.queue, self.limits, clock=clock,
                                   metrics=metrics)
        self._clients: dict[str, PumbleClient] = {}

    def client(self, account: str) -> PumbleClient:
        """The account's client, made once: its connections stay open between sends."""
        if account not in self._clients:
            pumble = self.config.pumble
            credentials = pumble.account(account)
            if credentials is None:
                raise AuthError(f"no key for Pumble account {account!r} in this worker's config")
            key, base_url = credentials
            self._clients[account] = PumbleClient(
                key, base_url, connect_timeout=pumble.connect_timeout,
                read_timeout=pumble.read_timeout)
        return self._clients[account]

    @property
    def digest_threshold(self) -> int:
        """Others waiting that make a digest: as many as the message limit posts in the window."""
        per_minute = self.limits["messages"].per_minute
        return max(1, per_minute * self.settings.digest.window // 60)

    @property
    def max_slot_wait(self) -> float:
        """How long a job may wait for a rate-limit slot and still finish its send in time."""
        pumble = self.config.pumble
        return max(0.0, self.settings.job_timeout - pumble.connect_timeout
                   - pumble.read_timeout - 2)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


_deliverer: Deliverer | None = None


def configure(config: Config, connection: redis.Redis, clock: Clock | None = None,
              metrics: Metrics | None = None) -> Deliverer:
    """Set the config (and clock, and metrics) this process delivers with (the worker does it
    at start-up)."""
    global _deliverer
    if _deliverer is not None:
        _deliverer.close()
    _deliverer = Deliverer(config, connection, clock or Clock(), metrics or Metrics())
    return _deliverer


def deliver(payload: dict[str, Any]) -> dict[str, Any] | Retry:
    """The RQ job. Returns Pumble's ids for the record, or a Retry to run again later."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("deliver() runs inside an RQ job")
    deliverer = _deliverer or configure(load_config(config_path(None)), job.connection)
    return Attempt(deliverer, job, Notification.from_payload(payload)).run()


@dataclass
class Attempt:
    deliverer: Deliverer
    job: Job
    notification: Notification
    answered_at: float = 0.0  # when Pumble answered this attempt's send, if it sent

    @property
    def meta(self) -> dict[str, Any]:
        return self.job.meta

    @property
    def metrics(self) -> Metrics:
        return self.deliverer.metrics

    def context(self, **more: Any) -> dict[str, Any]:
        """Fields for the log lines (``extra=``): one event can be followed to its message."""
        n = self.notification
        return {"event_id": n.event_id, "event_type": n.event_type, "source": n.source,
                "route": n.route, "job_id": self.job.id, **more}

    def run(self) -> dict[str, Any] | Retry:
        try:
            try:
                return self._run()
            except PumbleError as exc:
                if exc.retryable or isinstance(exc, AmbiguousError):
                    return self._later(exc)
                raise DeadLetter(f"refused by Pumble: {type(exc).__name__}: {exc}") from None
        except DeadLetter as exc:
            self._dead(str(exc))
            raise
        except RateLimitTimeout as exc:
            log.info("job %s (route %s): %s; trying again shortly", self.job.id,
                     self.notification.route, exc, extra=self.context())
            self.metrics.delivery(self.notification.route, "waiting")
            return self._wait(max(1, math.ceil(exc.retry_after)))
        except Exception:
            self.metrics.delivery(self.notification.route, "error")  # rq's crash retries take over
            raise

    # -- the steps -------------------------------------------------------------------------------

    def _run(self) -> dict[str, Any] | Retry:
        n = self.notification
        d = self.deliverer
        age = d.clock.time() - n.received_at
        if n.received_at and age > d.settings.max_age:
            raise DeadLetter(f"not delivered within delivery.max_age ({d.settings.max_age} s)")
        owner = d.queue.backlog.taken_by(n, self.job.id)
        if owner:
            return self._in_digest(owner)

        sent = self.meta.get("sent")
        root, wait = self._thread(age, sent)
        if not wait and not sent:
            wait = self._turn_in()
        if wait:
            self.metrics.delivery(n.route, "waiting")
            return self._wait(wait)

        if sent:  # an earlier run posted it; a later step (the reaction) is what is left
            ref, members = MessageRef(**sent), self._members(self._claim(root).members)
        else:
            early = self._too_early_to_look()
            if early:
                return self._wait(early)
            self._give_up_when_spent()
            # The slot first: a job waiting for one stays in its route's backlog, where it
            # counts toward a digest.
            d.limiter.acquire(n.account, "replies" if root else "messages",
                              max_wait=d.max_slot_wait)
            claim = self._claim(root)
            if claim.owner:  # taken into a digest while this one waited for its slot
                return self._in_digest(claim.owner)
            members = self._members(claim.members)
            ref = self._send(digest_text([n, *members]) if members else n.text, root)
        d.queue.backlog.leave(n, self.job.id)  # posted: the next in its line may go
        if not root:
            for member in (n, *members):  # the first message about each becomes its root
                d.queue.roots.claim(member, ref.id, ref.channel_id)
        if n.reaction and not self.meta.get("reacted"):
            self._react(root or d.queue.roots.get(n), ref)
        result: dict[str, Any] = {"message_id": ref.id, "channel_id": ref.channel_id}
        if members:
            result["digest"] = len(members) + 1
        log.info("event %s (route %s) delivered to #%s as message %s%s", n.event_id, n.route,
                 n.channel, ref.id, f" (digest of {len(members) + 1})" if members else "",
                 extra=self.context(message_id=ref.id))
        self.metrics.delivery(n.route, "sent")
        if self.answered_at:
            for member in (n, *members):
                self.metrics.end_to_end(n.route, member.received_at, self.answered_at)
        return result

    def _give_up_when_spent(self) -> None:
        """Checked after a failed send and again before the next (a re-run after a crash)."""
        attempts = int(self.meta.get("attempts", 0))
        if attempts >= self.deliverer.settings.max_attempts:
            raise DeadLetter(f"gave up after {attempts} attempts: {self.meta.get('last_error')}")

    def _claim(self, root: Root | None) -> Claim:
        """Its digest, if it sends one; a message posted in a thread never is one. Once a
        message may have been posted, only the digest already claimed: nothing joins it then."""
        if root:
            return Claim()
        d = self.deliverer
        fresh = not self.meta.get("sent") and not self.meta.get("maybe_sent_at")
        return d.queue.backlog.claim(self.notification, self.job.id, d.digest_threshold,
                                     d.settings.digest.max_items if fresh else 1)

    def _thread(self, age: float, sent: dict[str, str] | None) -> tuple[Root | None, int]:
        """The thread root to post in (None: a message of its own), and the seconds to wait
        first for one (0: none)."""
        n, d = self.notification, self.deliverer
        if not n.thread_key or not (n.reply or n.starts_thread):
            return None, 0
        known = d.queue.roots.get(n)
        if n.reply and (known is True or (known is None and age < d.settings.thread_wait)):
            return None, WAIT_INTERVAL
        # A first event arriving once its thread was begun by a later one (after thread_wait)
        # joins that thread: never a second top-level message for it.
        if isinstance(known, Root) and known.message_id != (sent or {}).get("id"):
            return known, 0
        return None, 0

    def _turn_in(self) -> int:
        """Seconds to wait for its turn in its line (0: now), as many slots as are before it.
        Next in line, it first waits here a moment: the one before it is most likely being
        posted by another worker, and a wait rescheduled by rq (in whole seconds) would hold
        the line below the rate limit's pace."""
        if not self.notification.reply:
            # A top-level message goes in the queue's order (arrival) and is not held behind the
            # ones before it: held through rq's rescheduling, a backlog of hundreds drained at
            # a few a second (bench/soak.py), far below the rate limit.
            return 0
        clock = self.deliverer.clock
        ahead, until = self._ahead(), clock.time() + NEXT_IN_LINE_WAIT
        while ahead == 1 and clock.time() < until:
            clock.sleep(NEXT_IN_LINE_LOOK)
            ahead = self._ahead()
        if not ahead:
            return 0
        spacing = 60 / self.deliverer.limits["messages"].per_minute
        return max(1, min(LINE_WAIT, math.ceil(ahead * spacing)))

    def _ahead(self) -> int:
        """How many replies of its thread's line must be posted before this one: those whose
        event came first (``event_order``). A job that vanished, failed for good or finished
        leaves the line here."""
        n, backlog = self.notification, self.deliverer.queue.backlog
        ids, more = backlog.ahead(n, self.job.id, LINE_LOOK)
        jobs = Job.fetch_many(ids, connection=self.job.connection,
                              serializer=self.job.serializer) if ids else []
        waiting = [job for job in jobs if job is not None and job.get_status(refresh=False)
                   not in (JobStatus.FAILED, JobStatus.FINISHED)]
        backlog.leave(n, *(set(ids) - {job.id for job in waiting}))
        before = [Notification.from_payload(job.args[0]) for job in waiting]
        return sum(event_order(b) < event_order(n) for b in before) + more

    def _in_digest(self, owner: str) -> dict[str, Any]:
        log.info("job %s (route %s): delivered in job %s's digest", self.job.id,
                 self.notification.route, owner, extra=self.context())
        self.metrics.delivery(self.notification.route, "in_digest")
        return {"in_digest_of": owner}

    def _too_early_to_look(self) -> int:
        """Seconds until an earlier attempt's post, if Pumble applies it late (after our
        timeout), would be in the channel: looking sooner could miss it and post twice."""
        maybe_sent_at = self.meta.get("maybe_sent_at")
        if not maybe_sent_at:
            return 0
        pumble = self.deliverer.config.pumble
        look_at = maybe_sent_at + pumble.connect_timeout + pumble.read_timeout + LATE_WRITE
        return max(0, math.ceil(look_at - self.deliverer.clock.time()))

    def _members(self, job_ids: tuple[str, ...]) -> list[Notification]:
        if not job_ids:
            return []
        jobs = Job.fetch_many(list(job_ids), connection=self.job.connection,
                              serializer=self.job.serializer)
        # A member whose job has vanished (purged by hand) is left out, not guessed.
        return [Notification.from_payload(job.args[0]) for job in jobs if job is not None]

    def _send(self, text: str, root: Root | None) -> MessageRef:
        """Post once, with the slot already taken; first look for an earlier attempt's post."""
        n = self.notification
        d = self.deliverer
        client = d.client(n.account)
        maybe_sent_at = self.meta.get("maybe_sent_at")
        if maybe_sent_at:
            d.limiter.acquire(n.account, "requests", max_wait=d.max_slot_wait)
            # Replies are not listed in the channel: a reply is looked for in its thread.
            messages = (client.iter_replies(root.message_id, channel_id=root.channel_id,
                                            max_pages=LOOK_BACK_PAGES) if root else
                        client.iter_messages(n.channel, limit=100, max_pages=LOOK_BACK_PAGES))
            # A thread's order is not documented: it is read whole, not up to the attempt.
            found = find_posted(messages, self.job.id, None if root else maybe_sent_at,
                                f"the thread of message {root.message_id}" if root
                                else f"#{n.channel}")
            if found:
                log.info("job %s: an earlier attempt did post it (message %s): not sending "
                         "again", self.job.id, found.id, extra=self.context(message_id=found.id))
                return self._sent(found)

        attempts = int(self.meta.get("attempts", 0))
        self.meta.update(attempts=attempts + 1, maybe_sent_at=d.clock.time())
        self.job.save_meta()  # before sending: a worker killed mid-send leaves this behind
        try:
            ref = self._post_or_create(client, text, root)
        except AmbiguousError:
            raise  # maybe_sent_at stays: the next attempt looks first
        except PumbleError:
            self.meta.pop("maybe_sent_at", None)  # certainly not posted
            raise
        self.answered_at = d.clock.time()
        return self._sent(ref)

    def _post_or_create(self, client: PumbleClient, text: str, root: Root | None) -> MessageRef:
        """Post; with ``create_channel``, create a channel Pumble does not know and post again."""
        try:
            return self._post(client, text, root)
        except NotFoundError:
            if not self.notification.create_channel or root:
                raise
            self._create_channel(client)
            return self._post(client, text, root)

    def _post(self, client: PumbleClient, text: str, root: Root | None) -> MessageRef:
        n = self.notification
        text = mark(text, self.job.id)
        if root:
            return client.send_reply(root.message_id, text, channel_id=root.channel_id,
                                     as_bot=n.as_bot)
        return client.send_message(n.channel, text, as_bot=n.as_bot)

    def _create_channel(self, client: PumbleClient) -> None:
        n = self.notification
        self.deliverer.limiter.acquire(n.account, "channels",
                                       max_wait=self.deliverer.max_slot_wait)
        try:
            client.create_channel(n.channel)
            log.info("created channel #%s (route %s: create_channel)", n.channel, n.route,
                     extra=self.context())
        except PumbleValidationError:
            pass  # another worker created it a moment ago: the name is taken
        self.deliverer.limiter.acquire(n.account, "messages",
                                       max_wait=self.deliverer.max_slot_wait)

    def _sent(self, ref: MessageRef) -> MessageRef:
        self.meta.pop("maybe_sent_at", None)
        self.meta["sent"] = {"id": ref.id, "channel_id": ref.channel_id}
        # At once: a worker killed before rq records the job as done must not leave it to a
        # look in the channel, which a busy channel can outrun.
        self.job.save_meta()
        return ref

    def _react(self, target: Root | bool | None, ref: MessageRef) -> None:
        n = self.notification
        message_id, channel_id = (target.message_id, target.channel_id) if isinstance(
            target, Root) else (ref.id, ref.channel_id)
        self.deliverer.limiter.acquire(n.account, "reactions",
                                       max_wait=self.deliverer.max_slot_wait)
        self.deliverer.client(n.account).add_reaction(message_id, n.reaction,
                                                      channel_id=channel_id)
        self.meta["reacted"] = True
        self.job.save_meta()

    # -- outcomes --------------------------------------------------------------------------------

    def _later(self, error: PumbleError) -> Retry:
        """Run again after a backoff, or dead-letter once attempts run out."""
        settings = self.deliverer.settings
        attempts = int(self.meta.get("attempts", 0))
        self.meta["last_error"] = f"{type(error).__name__}: {error}"
        self._give_up_when_spent()
        delay = random.uniform(0, min(settings.backoff_cap,
                                      settings.backoff_base * 2**attempts))  # full jitter
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            delay = max(delay, error.retry_after + 1)  # rq's scheduler works in whole seconds
        self.job.save_meta()
        log.warning("job %s (route %s): %s; attempt %d of %d in %ds", self.job.id,
                    self.notification.route, self.meta["last_error"], attempts + 1,
                    settings.max_attempts, math.ceil(delay), extra=self.context())
        self.metrics.delivery(self.notification.route, "retry")
        self.metrics.retry(self.notification.route, type(error).__name__)
        return self._wait(max(1, math.ceil(delay)))

    def _wait(self, seconds: int) -> Retry:
        # A returned Retry is rq's way to choose the delay per run; its own count
        # is not ours, so it is set out of reach.
        return Retry(max=MAX_RETURNED_RETRIES, interval=seconds)

    def _dead(self, reason: str) -> None:
        """Record why; rq keeps the job in its failed-job registry (the dead letters)."""
        n = self.notification
        self.meta["dead_reason"] = reason
        self.job.retries_left = 0  # not rq's crash-retry either: this is final
        self.job.save_meta()
        queue = self.deliverer.queue
        queue.keep_event(n.source, n.event_id)
        if n.starts_thread and not self.meta.get("sent"):
            queue.roots.give_up(n)  # replies waiting for this one go out alone
        queue.backlog.leave(n, self.job.id)  # the next in its line goes
        log.error("job %s (event %s, route %s) dead-lettered: %s", self.job.id, n.event_id,
                  n.route, reason, extra=self.context())
        self.metrics.delivery(n.route, "dead_lettered")
        self.metrics.dead_lettered(n.route)


def event_order(notification: Notification) -> tuple[float, float, str]:
    """When its event happened (the platform's time, else arrival); then arrival."""
    return (notification.occurred_at or notification.received_at, notification.received_at,
            notification.event_id)


def find_posted(messages: Iterable[Message], owner: str, since: float | None,
                where: str) -> MessageRef | None:
    """The message of ``messages`` that carries ``owner``'s mark: the earlier attempt's post, if
    it was made. With ``since``, ``messages`` are newest first and the walk stops at ones older
    than that (less clock skew). A place too busy to reach that far within ``LOOK_BACK_PAGES``
    cannot be checked: the notification becomes a dead letter rather than risk a second post.

    The same text is no evidence (two refunds may both read "Refund issued"); the mark is, as no
    payload value can put one in a message (bridge.marker)."""
    oldest = since - CLOCK_SKEW if since is not None else 0.0
    seen = 0
    for message in messages:
        seen += 1
        if message.timestamp_milli and message.timestamp_milli / 1000 < oldest:
            return None  # newest first: the rest are older still
        if marked_by(message.text, owner):
            return MessageRef(message.id, message.channel_id)
    if seen >= LOOK_BACK_PAGES * 100:
        raise DeadLetter(f"an earlier attempt may have posted this (no answer from Pumble) and "
                         f"{where} has had more than {seen} messages since: it cannot be "
                         "checked; look there, and post it by hand if it is missing")
    return None
