"""Pumble's rate limits, shared through Redis by every delivery worker, per account and kind.

Pumble allows 80 sendMessage calls a minute per app and workspace, 80 replies, 60
createChannel, 60 addReaction, and about 1000 requests a minute per user overall; over a limit it
answers 429. Writes are never retried, so a 429 on a write is a lost or
delayed message: the bridge must not cause one. Every worker process, on every machine, asks
this limiter for a slot before each call to Pumble, per account NAME (the limiter never sees an
API key) and per kind of call: ``messages``, ``replies``, ``reactions``, ``channels``. Every call
also takes a slot from the account's overall ``requests`` bucket; a call of no other kind (a
read) asks for kind ``requests`` alone.

How it is enforced
- A sliding-window log: one Redis sorted set per (namespace, account, kind), whose members are
  the slots taken, scored by the microsecond they were taken at. A slot is free when fewer than
  ``per_minute`` members are younger than the effective window, so no sliding window of that
  length ever holds more than ``per_minute`` slots (a fixed-window counter would allow twice the
  limit across a window boundary).
- One Lua script checks the kind's bucket and the ``requests`` bucket and, only when both have
  room, adds the slot to both: atomically, so concurrent workers can never both take the last
  slot, and a refusal charges neither bucket.
- The clock is Redis's ``TIME``, read inside the script: all workers share one clock, whatever
  their own clocks say. (A test's clock, moved on, shifts it by its offset: bridge.clock.)
- Keys expire (``PEXPIRE`` effective window) whenever a slot is added, so an idle account leaves
  nothing behind.

Why the window has a margin
Our slot is timestamped when the script runs; Pumble counts the request when it arrives, up to
the network (and client) latency later. Two slots ``window`` seconds apart could arrive less
than ``window`` apart if the first was slow and the second fast, and Pumble would see one call
too many in its window. Spacing the log by ``window + margin`` keeps Pumble's view within the
limit as long as no request takes more than ``margin`` seconds (default 1 s) from taking its slot
to reaching Pumble. Take the slot immediately before each HTTP attempt, never before a retry
loop.

Keys (bridge.store.keys): one per namespace, account digest and kind. The account digest is
the first 32 hex digits of SHA-256 of the account name, so any name (colons, braces, a key
pasted by mistake) is safe and is never stored; braces around it make it a Redis Cluster hash
tag, so an account's buckets share a slot and one script can touch them all.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import redis

from bridge.clock import Clock
from bridge.metrics import Metrics
from bridge.store import scripts
from bridge.store.keys import Keys

OVERALL = "requests"
_KIND_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MICROS = 1_000_000

@dataclass(frozen=True)
class Limit:
    """At most ``per_minute`` calls in any sliding ``window`` seconds (60 unless told)."""

    per_minute: int
    window: float = 60.0

    def __post_init__(self) -> None:
        if (not isinstance(self.per_minute, int) or isinstance(self.per_minute, bool)
                or self.per_minute < 1):
            raise ValueError(f"per_minute must be an integer >= 1, not {self.per_minute!r}")
        if (isinstance(self.window, bool) or not isinstance(self.window, int | float)
                or not math.isfinite(self.window) or self.window <= 0):
            raise ValueError(f"window must be a number of seconds > 0, not {self.window!r}")


DEFAULT_LIMITS: Mapping[str, Limit] = MappingProxyType({
    "messages": Limit(80),  # sendMessage: 80/min per app and workspace
    "replies": Limit(80),  # sendReply: 80/min
    "reactions": Limit(60),  # addReaction: 60/min
    "channels": Limit(60),  # createChannel: 60/min
    OVERALL: Limit(1000),  # ~1000 requests/min per user, every call counts
})


def limits_per_minute(overrides: Mapping[str, int]) -> dict[str, Limit]:
    """Pumble's published limits, with the configured ones (``delivery.rate_limits``) instead."""
    return {**DEFAULT_LIMITS, **{kind: Limit(per_minute) for kind, per_minute in
                                 overrides.items()}}


class RateLimitTimeout(TimeoutError):
    """No slot would be free within ``max_wait``; nothing was taken."""

    def __init__(self, account: str, kind: str, retry_after: float, waited: float,
                 max_wait: float):
        super().__init__(
            f"rate limit: no {kind!r} slot for account {account!r} within {max_wait:g} s "
            f"(next in {retry_after:.3f} s, waited {waited:.3f} s)")
        self.account = account
        self.kind = kind
        self.retry_after = retry_after
        self.waited = waited
        self.max_wait = max_wait


class RateLimiter:
    """Slots per (account, kind) from sliding-window logs in Redis, shared by all processes.

    ``limits`` names the kinds; when it has a ``"requests"`` entry, every call of any kind also
    takes a slot from that overall bucket. ``margin`` seconds are added to every window (see the
    module docstring). ``acquire`` waits with ``clock``, whose offset shifts Redis's time.
    """

    def __init__(self, connection: redis.Redis, namespace: str,
                 limits: Mapping[str, Limit] = DEFAULT_LIMITS, *, margin: float = 1.0,
                 clock: Clock | None = None, metrics: Metrics | None = None):
        if not namespace:
            raise ValueError("namespace must not be empty")
        if (isinstance(margin, bool) or not isinstance(margin, int | float)
                or not math.isfinite(margin) or margin < 0):
            raise ValueError(f"margin must be a number of seconds >= 0, not {margin!r}")
        if not limits:
            raise ValueError("limits must name at least one kind")
        for kind, limit in limits.items():
            if not isinstance(kind, str) or not _KIND_NAME.match(kind):
                raise ValueError(f"kind names are letters, digits, '_', '.', '-': {kind!r}")
            if not isinstance(limit, Limit):
                raise TypeError(f"limits[{kind!r}] must be a Limit, not {type(limit).__name__}")
        self.connection = connection
        self.namespace = namespace
        self.limits: Mapping[str, Limit] = MappingProxyType(dict(limits))
        self.margin = float(margin)
        self.clock = clock or Clock()
        self.keys = Keys(namespace)
        self.metrics = metrics  # told each wait for a slot; None: not counted
        self._acquire = connection.register_script(scripts.ACQUIRE_SLOT)
        self._state = connection.register_script(scripts.SLOTS_STATE)

    def key(self, account: str, kind: str) -> str:
        """The Redis key of one bucket (the account name only appears as a digest)."""
        self._limit(kind)
        return self.keys.rate_limit(account, kind)

    def window(self, kind: str) -> float:
        """The effective window of a kind, in seconds: its ``window`` plus the margin."""
        return self._limit(kind).window + self.margin

    def try_acquire(self, account: str, kind: str) -> float:
        """Take one slot of ``kind`` (and of ``"requests"``) for ``account`` if both are free.

        Returns 0.0 when the slot was taken; otherwise the seconds until one would be (the
        longer of the two buckets' waits), and nothing was taken from either bucket.
        """
        return self.seconds_until(self.try_acquire_on(self.connection, account, kind))

    def try_acquire_on(self, client: redis.Redis | redis.client.Pipeline, account: str,
                       kind: str) -> Any:
        """``try_acquire``'s script, run by ``client``: on a pipeline, its answer (for
        ``seconds_until``) is among the pipeline's."""
        keys, args = self._buckets(account, self._kinds(kind))
        return scripts.run(self._acquire, client, keys,
                           [*args, self._offset(), secrets.token_hex(8)])

    @staticmethod
    def seconds_until(answer: Any) -> float:
        """``try_acquire``'s answer from its script's."""
        return int(answer) / _MICROS

    def acquire(self, account: str, kind: str, *, max_wait: float | None = None) -> float:
        """Wait (with the clock) until a slot is taken; return the seconds slept.

        Raises ``RateLimitTimeout``, having taken nothing, as soon as the next free slot is
        further away than the rest of ``max_wait`` (``max_wait=0``: never sleep).
        """
        if max_wait is not None and not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 or None, not {max_wait!r}")
        waited = 0.0
        while True:
            wait = self.try_acquire(account, kind)
            if wait <= 0:
                self._count_wait(kind, waited)
                return waited
            if max_wait is not None and waited + wait > max_wait:
                self._count_wait(kind, waited)  # waited, then gave up: time lost all the same
                raise RateLimitTimeout(account, kind, wait, waited, max_wait)
            self.clock.sleep(wait)
            waited += wait

    def _count_wait(self, kind: str, waited: float) -> None:
        if self.metrics is not None:
            self.metrics.ratelimit_wait(kind, waited)

    def state(self, account: str, *, recent: float = 0.0) -> dict[str, dict[str, Any]]:
        """Each kind's bucket for ``account``, as Redis's clock sees it now.

        ``{kind: {"used": slots taken in the current window, "limit": per_minute,
        "window": effective window in seconds, "wait": seconds until this bucket has a free
        slot (0.0 when it has one now; a call of the kind also needs one in "requests")}}``;
        with ``recent`` seconds, also ``"recent"``: the slots taken in the last ``recent``.
        """
        kinds = list(self.limits)
        keys, args = self._buckets(account, kinds)
        reply = self._state(keys=keys, args=[*args, self._offset(), round(recent * _MICROS)])
        state = {kind: {"used": int(reply[3 * i]),
                        "limit": self.limits[kind].per_minute,
                        "window": self.window(kind),
                        "wait": int(reply[3 * i + 1]) / _MICROS}
                 for i, kind in enumerate(kinds)}
        if recent:
            for i, kind in enumerate(kinds):
                state[kind]["recent"] = int(reply[3 * i + 2])
        return state

    def _offset(self) -> int:
        return round(self.clock.offset * _MICROS)

    def _limit(self, kind: str) -> Limit:
        try:
            return self.limits[kind]
        except KeyError:
            raise ValueError(
                f"unknown rate-limit kind {kind!r}; known: {', '.join(self.limits)}") from None

    def _kinds(self, kind: str) -> list[str]:
        self._limit(kind)
        return [kind] if kind == OVERALL or OVERALL not in self.limits else [kind, OVERALL]

    def _buckets(self, account: str, kinds: list[str]) -> tuple[list[str], list[int]]:
        keys: list[str] = []
        args: list[int] = []
        for kind in kinds:
            keys.append(self.key(account, kind))
            args += [self._limit(kind).per_minute, math.ceil(self.window(kind) * _MICROS)]
        return keys, args
