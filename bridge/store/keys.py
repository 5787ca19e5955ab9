"""Every Redis key the bridge names: its own, all under ``pumble-bridge:<queue>:``, and the one
of rq's that rq gives no method for (a scheduler's record).

The strings are the layout of data already in users' Redis: a key renamed here is data lost
after an upgrade (tests/test_store.py holds them to their literal form). External ids (accounts,
channels, delivery ids) appear only as digests: any text is safe in a key, and none is stored.
"""

from __future__ import annotations

import hashlib

from rq.scheduler import SCHEDULER_KEY_TEMPLATE

PREFIX = "pumble-bridge:"


def digest(*parts: str, errors: str = "strict") -> str:
    """The first 32 hex digits of SHA-256 of the parts joined by NUL."""
    return hashlib.sha256("\0".join(parts).encode("utf-8", errors)).hexdigest()[:32]


def rq_scheduler(name: str) -> str:
    """The record (a hash: hostname, pid, …) of the rq scheduler called ``name``."""
    return SCHEDULER_KEY_TEMPLATE % name


class Keys:
    """The keys of one bridge: ``namespace`` is its queue's name (``redis.queue``), so bridges
    sharing a Redis never see each other's state."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._prefix = f"{PREFIX}{namespace}:"

    # -- the receiver's: deliveries seen, webhooks kept, the readiness probe -------------------

    def seen(self, source: str, event_id: str) -> str:
        """The marker that a delivery was accepted, for the dedupe window."""
        return f"{self._prefix}seen:{digest(source, event_id)}"

    def event(self, source: str, event_id: str) -> str:
        """The webhook as received, kept while a notification of it may need it again."""
        return f"{self._prefix}event:{digest(source, event_id)}"

    def writable(self) -> str:
        """What /readyz writes to learn that Redis takes writes."""
        return f"{self._prefix}writable"

    # -- the activity record -------------------------------------------------------------------

    def activity(self) -> str:
        """The capped list of recent webhooks, newest first."""
        return f"{self._prefix}activity"

    def replays(self, source: str, event_id: str) -> str:
        """The counter of an event's replays."""
        return f"{self._prefix}activity:replays:{digest(source, event_id)}"

    # -- delivery state shared by the workers --------------------------------------------------

    def thread_root(self, account: str, channel: str, source: str, thread_key: str) -> str:
        """Where a conversation's first message is (or that one is expected)."""
        return f"{self._prefix}thread:{digest(account, channel, source, thread_key)}"

    def route_line(self, account: str, channel: str, route: str) -> str:
        """The line (a sorted set of job ids) top-level messages of a route wait in."""
        return f"{self._prefix}backlog:{digest(account, channel, route)}"

    def thread_line(self, account: str, channel: str, source: str, thread_key: str) -> str:
        """The line a conversation's replies wait in."""
        return f"{self._prefix}backlog:{digest('thread', account, channel, source, thread_key)}"

    def digest_of(self, job_id: str) -> str:
        """The job ids a job claimed for its digest."""
        return self.digest_of_prefix() + job_id

    def digest_of_prefix(self) -> str:
        """``digest_of`` without the job id, for the claim script, which adds it."""
        return f"{self._prefix}digest:"

    def in_digest(self, job_id: str) -> str:
        """The job whose digest took this one in."""
        return self.in_digest_prefix() + job_id

    def in_digest_prefix(self) -> str:
        """``in_digest`` without the job id, for the claim script, which adds it."""
        return f"{self._prefix}in-digest:"

    def in_run(self, job_id: str) -> str:
        """The job whose run (bridge.delivery.run) took this one, while it does."""
        return self.in_run_prefix() + job_id

    def in_run_prefix(self) -> str:
        """``in_run`` without the job id, for the scripts, which add it."""
        return f"{self._prefix}in-run:"

    def rate_limit(self, account: str, kind: str) -> str:
        """One sliding-window log; the braces make the account's digest a Redis Cluster hash
        tag, so one script can take a slot from all of an account's buckets."""
        return (f"{self._prefix}ratelimit:{{{digest(account, errors='surrogatepass')}}}:"
                f"{kind}")

    # -- the admin page ------------------------------------------------------------------------

    def admin_sessions(self) -> str:
        """Followed by a session's HMAC: its CSRF token."""
        return f"{self._prefix}admin:session:"

    def admin_login_failures(self) -> str:
        """Followed by ``<minute>:<address>``: wrong tokens that minute."""
        return f"{self._prefix}admin:login-failures:"

    # -- summaries (bridge/summaries_totals.py): a summary's name is a config name ([A-Za-z0-9_-])

    def summary_totals(self, name: str) -> str:
        """A hash: the counts and scaled amounts accepted since the summary's last post."""
        return f"{self._prefix}summary:{name}:totals"

    def summary_products(self, name: str) -> str:
        """A sorted set: quantity ordered by product name, since the last post (capped)."""
        return f"{self._prefix}summary:{name}:products"

    def summary_state(self, name: str) -> str:
        """A hash: where the last period ended, and the period claimed but not yet queued."""
        return f"{self._prefix}summary:{name}:state"

    def summary_claimed_totals(self, name: str) -> str:
        """The totals of the period claimed, until its message is queued."""
        return f"{self._prefix}summary:{name}:claimed:totals"

    def summary_claimed_products(self, name: str) -> str:
        return f"{self._prefix}summary:{name}:claimed:products"

    # -- mutes and alerts ----------------------------------------------------------------------

    def mute(self, route: str) -> str:
        """A route muted by hand (a hash: route, by, why, until), expiring when the mute ends."""
        return self.mute_prefix() + digest(route)

    def mute_prefix(self) -> str:
        """``mute`` without the route's digest: every mute is found under it."""
        return f"{self._prefix}mute:"

    def alert_sent(self, condition: str, subject: str) -> str:
        """Set (with an expiry) when an alert about ``subject`` was posted: the next waits."""
        return f"{self._prefix}alert:{digest(condition, subject)}"

    def signature_failures(self, source: str) -> str:
        """The times of a source's recent webhooks with a bad signature (a capped sorted set)."""
        return f"{self._prefix}signature-failures:{digest(source)}"

    def heard_from(self, source: str) -> str:
        """When a source last sent a webhook (a hash: at, heard), for source_silent."""
        return f"{self._prefix}heard-from:{digest(source)}"
