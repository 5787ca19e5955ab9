"""The steps of a delivery, run in order (``STEPS``); each reads the attempt's actions.

A step returns None to go on, or an outcome that ends this run (its result, or a "run again
later"); it raises DeadLetter for a notification that will not be sent, and lets a PumbleError
through for bridge.delivery.job to decide on. The steps that send (``SEND``) run only for a
notification not posted yet; one an earlier run posted goes on from what was still due.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

from rq.job import Job, JobStatus

from bridge.delivery.attempt import Attempt, DeadLetter, Outcome
from bridge.delivery.run import deliver_its_run
from bridge.digest import Claim, digest_text, digestible
from bridge.marker import marked_by
from bridge.mutes import HELD, muted_now
from bridge.notification import Notification
from bridge.pumble import (
    AmbiguousError,
    Message,
    MessageRef,
    NotFoundError,
    PumbleClient,
    PumbleError,
    PumbleValidationError,
)
from bridge.ratelimit import RateLimitTimeout
from bridge.retry import run_again_in
from bridge.threads import Root

log = logging.getLogger(__package__)

Step = Callable[[Attempt], Outcome | None]

WAIT_INTERVAL = 2  # seconds between looks while a reply waits for its thread root
LINE_WAIT = 10  # at most, seconds between looks while earlier notifications of its line wait
LINE_LOOK = 20  # how many of those are read at a time
NEXT_IN_LINE_WAIT = 2.0  # seconds the next in its line waits in the worker for the one before
NEXT_IN_LINE_LOOK = 0.05  # seconds between its looks
FILL_LOOK = 0.1  # seconds between a head's looks at its line while a digest fills
# Seconds a new message not at its line's head stays parked: its estimated turn, within these.
# It is handed the turn as soon as the one before it leaves (bridge.digest), so the fallback only
# runs when a handover was lost or not possible; above HANDOVER_MARGIN, so a handover can move it.
PARK_MIN = 10
PARK_MAX = 120
CLOCK_SKEW = 120.0  # seconds of slack between our clock and Pumble's when looking for a post
# Seconds past our own timeouts before an unanswered post is looked for: Pumble may still apply
# a request our client gave up on.
LATE_WRITE = 10
LOOK_BACK_PAGES = 20  # of 100 messages: how far back a channel (a thread) is searched
MUTED_LOOK_AGAIN = 86400  # seconds a notification muted with no end in sight waits between looks


def run_steps(steps: Sequence[Step], attempt: Attempt) -> Outcome | None:
    """Each step in turn, until one ends the run."""
    for step in steps:
        outcome = step(attempt)
        if outcome is not None:
            return outcome
    return None


# -- before sending -------------------------------------------------------------------------------

def held_while_muted(a: Attempt) -> Outcome | None:
    """Its route muted now (a time interval, or ``pumble-bridge mute``): held until the mute
    ends (not an attempt; the held time does not count toward max_age), or dropped with
    ``when_muted: drop``. Not once posted: what was still due goes on."""
    d, n, now = a.deliverer, a.notification, a.deliverer.clock.time()
    route = d.routes.get(n.route)
    muted = route and not a.meta.get("sent") and muted_now(
        route, d.intervals, d.mutes.get(n.route, now), now)
    if not muted:
        held_since = a.meta.pop(HELD, None)
        if held_since is not None:  # released: the time held is not its age
            a.meta["held_seconds"] = float(a.meta.get("held_seconds", 0)) + now - held_since
            a.age -= now - held_since
            a.job.save_meta()
        return None
    if route.when_muted == "drop":
        return a.dropped(muted.reason)
    if HELD not in a.meta:
        a.meta[HELD] = now
        a.job.save_meta()
    until = muted.until.timestamp() if muted.until else now + MUTED_LOOK_AGAIN
    return a.held(muted.reason, max(1, math.ceil(until - now)))


def too_old(a: Attempt) -> None:
    max_age = a.deliverer.settings.max_age
    if a.notification.received_at and a.age > max_age:
        raise DeadLetter(f"not delivered within delivery.max_age ({max_age} s)")


def already_in_a_digest(a: Attempt) -> Outcome | None:
    owner = a.deliverer.queue.backlog.taken_by(a.notification, a.job.id)
    return a.in_digest(owner) if owner else None


def thread_root(a: Attempt) -> Outcome | None:
    """A reply waits while its thread's first message is expected, and up to thread_wait for
    one never announced; then it goes alone (and becomes the root). A first event arriving once
    its thread was begun by a later one joins that thread: never a second top-level message."""
    thread = a.actions.thread
    if thread is None:
        return None
    known = a.deliverer.queue.roots.get(a.notification)
    thread_wait = a.deliverer.settings.thread_wait
    if thread.reply and (known is True or (known is None and a.age < thread_wait)):
        return a.waiting(WAIT_INTERVAL)
    if isinstance(known, Root) and known.message_id != (a.meta.get("sent") or {}).get("id"):
        a.root = known
    return None


def its_turn(a: Attempt) -> Outcome | None:
    """A message waits while one before it in its line is not posted: a reply, one of its
    thread whose event came first; a new message, one that arrived first (``its_place``)."""
    if a.meta.get("sent"):
        return None
    if not (a.actions.thread and a.actions.thread.reply):
        return its_place(a)
    clock = a.deliverer.clock
    ahead, until = _replies_ahead(a), clock.time() + NEXT_IN_LINE_WAIT
    # Next in line, it first waits here a moment: the one before it is most likely being
    # posted by another worker, and a wait rescheduled by rq (in whole seconds) would hold the
    # line below the rate limit's pace.
    while ahead == 1 and clock.time() < until:
        clock.sleep(NEXT_IN_LINE_LOOK)
        ahead = _replies_ahead(a)
    if not ahead:
        return None
    return a.waiting(max(1, min(LINE_WAIT, math.ceil(ahead * _spacing(a)))))


def its_place(a: Attempt) -> Outcome | None:
    """A new message goes only from its line's head (arrival order): the head waits for its
    rate-limit slot, and a digest takes the next ones in line. Right behind one being sent, it
    waits here a moment for the handover; else it parks, and the one before it hands it the
    turn when it leaves the line (bridge.digest), or its fallback, its estimated turn, runs it."""
    waiting, more = _waiting_ahead(a)
    if len(waiting) == 1 and not more and waiting[0].get_status(refresh=False) == \
            JobStatus.STARTED:
        clock, backlog = a.deliverer.clock, a.deliverer.queue.backlog
        until = clock.time() + NEXT_IN_LINE_WAIT
        while backlog.ahead(a.notification, a.job.id, 1)[0] and clock.time() < until:
            clock.sleep(NEXT_IN_LINE_LOOK)
        owner = backlog.taken_by(a.notification, a.job.id)  # into the digest of the one before
        if owner:
            return a.in_digest(owner)
        waiting, more = _waiting_ahead(a)
    ahead = len(waiting) + more
    if not ahead:
        return None
    return a.waiting(max(PARK_MIN, min(PARK_MAX, math.ceil(ahead * _spacing(a)))))


def _spacing(a: Attempt) -> float:
    """Seconds between two messages at the message limit's pace."""
    return 60 / a.deliverer.limits["messages"].per_minute


def _replies_ahead(a: Attempt) -> int:
    """How many replies of its thread's line must be posted before this one: those whose event
    came first (``event_order``)."""
    n = a.notification
    waiting, more = _waiting_ahead(a)
    before = [Notification.from_payload(job.args[0]) for job in waiting]
    return sum(event_order(b) < event_order(n) for b in before) + more


def _waiting_ahead(a: Attempt) -> tuple[list[Job], int]:
    """The jobs of its line to look at before this one that still wait, and how many more
    there are (bridge.digest's ``ahead``). A job that vanished, failed for good or finished
    leaves the line here."""
    n, backlog = a.notification, a.deliverer.queue.backlog
    ids, more = backlog.ahead(n, a.job.id, LINE_LOOK)
    jobs = Job.fetch_many(ids, connection=a.job.connection,
                          serializer=a.job.serializer) if ids else []
    waiting = [job for job in jobs if job is not None and job.get_status(refresh=False)
               not in (JobStatus.FAILED, JobStatus.FINISHED)]
    gone = set(ids) - {job.id for job in waiting}
    if gone:
        backlog.leave(n, *gone)
    return waiting, more


def event_order(notification: Notification) -> tuple[float, float, str]:
    """When its event happened (the platform's time, else arrival); then arrival."""
    return (notification.occurred_at or notification.received_at, notification.received_at,
            notification.event_id)


def post_unless_posted(a: Attempt) -> Outcome | None:
    """An earlier run posted it (recorded in the job): what was due after the post is what is
    left. Else the steps that send."""
    sent = a.meta.get("sent")
    if not sent:
        return run_steps(SEND, a)
    a.posted = MessageRef(**sent)
    a.join_digest(_claim(a))
    return None


# -- sending --------------------------------------------------------------------------------------

def too_early_to_look(a: Attempt) -> Outcome | None:
    """Until an earlier attempt's post, if Pumble applies it late (after our timeout), would be
    in the channel: looking sooner could miss it and post twice."""
    maybe_sent_at = a.meta.get("maybe_sent_at")
    if not maybe_sent_at:
        return None
    pumble = a.deliverer.config.pumble
    look_at = maybe_sent_at + pumble.connect_timeout + pumble.read_timeout + LATE_WRITE
    early = max(0, math.ceil(look_at - a.deliverer.clock.time()))
    return run_again_in(early) if early else None


def attempts_left(a: Attempt) -> None:
    a.give_up_when_spent()


def rate_limit_slot(a: Attempt) -> None:
    # The slot before the digest's claim: a job waiting for one stays in its route's backlog,
    # where it counts toward a digest.
    try:
        if a.root:
            a.deliverer.take_slot(a.notification.account, "replies")
        else:
            a.deliverer.take_slot(a.notification.account, "messages", waited=_fill_a_digest(a))
    except RateLimitTimeout:
        # Run again when its slot is due (bridge.delivery.job), at the queue's front: behind it
        # in a burst wait thousands of jobs that would only park, and its line would wait for
        # all of them. rq keeps the flag with the job, and its scheduler reads it
        # (tests/test_digest_policy.py pins it).
        a.job.enqueue_at_front_on_retry = True
        raise


def _fill_a_digest(a: Attempt) -> float:
    """A head whose line the slots left cannot post one by one, or that heads a burst
    (``Deliverer.bursting``), will send a digest: with fewer than a full one behind it, it
    first waits (up to ``digest.fill_wait``) for one to fill, so a burst spends the window's
    slots on full digests rather than on its first few orders. A head with slots for every one
    waiting, in no burst, goes at once. Returns the seconds waited."""
    d, n = a.deliverer, a.notification
    settings = d.settings.digest
    if not (digestible(n) and _fresh(a)) or a.meta.get("attempts"):
        return 0.0  # a retry's digest is claimed already: nothing joins it
    backlog, clock, full = d.queue.backlog, d.clock, settings.max_items - 1
    behind, slots = backlog.behind(n, a.job.id), d.slots(n.account)
    a.in_a_burst = d.bursting(slots, behind + 1)
    if not settings.fill_wait or behind >= full or (behind < slots.left and not a.in_a_burst):
        return 0.0
    began = clock.time()
    while behind < full and clock.time() - began < settings.fill_wait:
        clock.sleep(FILL_LOOK)
        behind = backlog.behind(n, a.job.id)
    return clock.time() - began


def digest_claim(a: Attempt) -> Outcome | None:
    claim = _claim(a)
    if claim.owner:  # taken into a digest while this one waited for its slot
        return a.in_digest(claim.owner)
    a.join_digest(claim)
    return None


def _fresh(a: Attempt) -> bool:
    """Not posted, and no attempt may have posted it: a digest it sends may still grow."""
    return not a.meta.get("sent") and not a.meta.get("maybe_sent_at")


def _claim(a: Attempt) -> Claim:
    """Its digest, if it sends one; a message posted in a thread never is one. Once a message
    may have been posted, only the digest already claimed: nothing joins it then. A fresh head
    digests when more wait behind it than the slots left in the message limit's window (they
    cannot all go alone), or than the limit posts in ``digest.window``; a head of a burst,
    when any wait."""
    d, n = a.deliverer, a.notification
    if a.root or not digestible(n):
        return Claim()
    if not _fresh(a):
        return d.queue.backlog.claim(n, a.job.id, d.digest_threshold, 1)
    threshold = 1 if a.in_a_burst else min(d.digest_threshold, d.slots_left(n.account) + 1)
    return d.queue.backlog.claim(n, a.job.id, threshold, d.settings.digest.max_items)


def look_for_an_earlier_post(a: Attempt) -> None:
    """After an attempt that may have posted: its message, by its mark, in the channel (for a
    reply, the thread). Found, it is this notification's post: not sent again."""
    maybe_sent_at = a.meta.get("maybe_sent_at")
    if not maybe_sent_at:
        return
    n, root = a.notification, a.root
    client = a.deliverer.client(n.account)
    a.deliverer.take_slot(n.account, "requests")
    # Replies are not listed in the channel: a reply is looked for in its thread.
    messages = (client.iter_replies(root.message_id, channel_id=root.channel_id,
                                    max_pages=LOOK_BACK_PAGES) if root else
                client.iter_messages(n.channel, limit=100, max_pages=LOOK_BACK_PAGES))
    # A thread's order is not documented: it is read whole, not up to the attempt.
    found = find_posted(messages, a.job.id, None if root else maybe_sent_at,
                        f"the thread of message {root.message_id}" if root else f"#{n.channel}")
    if found:
        log.info("job %s: an earlier attempt did post it (message %s): not sending again",
                 a.job.id, found.id, extra=a.context(message_id=found.id))
        a.record_posted(found)


def post_or_create_channel(a: Attempt) -> None:
    """Post once, with the slot taken, the mark at the end of the text; with ``create_channel``
    a channel Pumble does not know is created and the post sent again."""
    if a.posted:  # found by the look
        return
    d, n = a.deliverer, a.notification
    client = d.client(n.account)
    text = digest_text([n, *a.members]) if a.members else a.actions.post.text
    attempts = int(a.meta.get("attempts", 0))
    a.meta.update(attempts=attempts + 1, maybe_sent_at=d.clock.time())
    a.job.save_meta()  # before sending: a worker killed mid-send leaves this behind
    try:
        try:
            ref = a.send(client, text)
        except NotFoundError:
            if not a.actions.post.create_channel or a.root:
                raise
            _create_channel(a, client)
            ref = a.send(client, text)
    except AmbiguousError:
        raise  # maybe_sent_at stays: the next attempt looks first
    except PumbleError:
        a.meta.pop("maybe_sent_at", None)  # certainly not posted
        raise
    a.answered_at = d.clock.time()
    a.record_posted(ref)


def _create_channel(a: Attempt, client: PumbleClient) -> None:
    n = a.notification
    a.deliverer.take_slot(n.account, "channels")
    try:
        client.create_channel(a.actions.post.channel)
        log.info("created channel #%s (route %s: create_channel)", n.channel, n.route,
                 extra=a.context())
    except PumbleValidationError:
        pass  # another worker created it a moment ago: the name is taken
    a.deliverer.take_slot(n.account, "messages")


# -- after the post -------------------------------------------------------------------------------

def leave_its_line(a: Attempt) -> None:
    """Posted: its digest's others end here, those another worker runs already there (woken,
    if parked: bridge.digest); the next in its line may go."""
    d, ended = a.deliverer, []
    if a.member_ids:
        ended = d.finisher.finish_in_digest(a.job.id, a.member_ids)
        a.digest_ended(ended)
    d.queue.backlog.leave(a.notification, a.job.id,
                          wake=[i for i in a.member_ids if i not in ended])


def become_thread_root(a: Attempt) -> None:
    """The first message about each notification it carries becomes its thread's root."""
    if a.root:
        return
    for member in (a.notification, *a.members):
        a.deliverer.queue.roots.claim(member, a.message.id, a.message.channel_id)


def react(a: Attempt) -> None:
    """To the thread's first message (this very message when it is the first); once."""
    if a.actions.react is None or a.meta.get("reacted"):
        return
    n = a.notification
    target = a.root or a.deliverer.queue.roots.get(n)
    message_id, channel_id = ((target.message_id, target.channel_id) if isinstance(target, Root)
                              else (a.message.id, a.message.channel_id))
    a.deliverer.take_slot(n.account, "reactions")
    a.deliverer.client(n.account).add_reaction(message_id, a.actions.react.reaction,
                                               channel_id=channel_id)
    a.meta["reacted"] = True
    a.job.save_meta()


def record(a: Attempt) -> Outcome:
    return a.delivered()


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


# Not posted yet: look first if an attempt may have posted, else take a slot and post.
SEND: tuple[Step, ...] = (too_early_to_look, attempts_left, rate_limit_slot, digest_claim,
                          look_for_an_earlier_post, post_or_create_channel)
# A delivery, in order.
STEPS: tuple[Step, ...] = (held_while_muted, too_old, already_in_a_digest, thread_root, its_turn,
                           post_unless_posted, become_thread_root, deliver_its_run,
                           leave_its_line, react, record)
