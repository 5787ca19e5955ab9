"""When a route is muted: by its time intervals (config) or by hand (``pumble-bridge mute``).

A mute by hand is a hash in Redis (``Keys.mute``: route, who, why, until) that expires by
itself when the mute ends. A notification due while its route is muted is held (run again when
the mute ends) or, with the route's ``when_muted: drop``, dropped (bridge.delivery.steps).
``unmute`` releases the held ones at once, each moved from rq's scheduled registry to the queue
in one transaction (``release_held``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis
from rq.job import Job
from rq.queue import Queue

from bridge.config import Config, RouteSettings
from bridge.intervals import TimeInterval, muted_until, parse_interval
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

# Each part a number and a unit: "2m", "1h30m", "2d", "45s".
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
HELD = "held_since"  # in a held job's meta: when it was first held (released ones lose it)
LIST_BATCH = 100  # keys read per SCAN while listing mutes
RELEASE_TRIES = 10  # transactions tried per held job while other jobs change the registry


def parse_duration(text: str) -> int:
    """Seconds in ``2m``, ``1h30m``, ``2d``; ValueError with one clear line otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 2m, 1h30m, 2d)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 1:
        raise ValueError(f"{text!r} is no time at all")
    return seconds


@dataclass(frozen=True)
class Mute:
    """A mute set by hand."""

    route: str
    by: str
    why: str
    until: float  # unix time


class Mutes:
    """The mutes set by hand on one bridge (its queue's namespace)."""

    def __init__(self, connection: redis.Redis, namespace: str):
        self.connection = connection
        self.keys = Keys(namespace)

    def mute(self, route: str, until: float, by: str, why: str = "") -> Mute:
        key = self.keys.mute(route)
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={"route": route, "by": by, "why": why, "until": until})
            pipe.expireat(key, math.ceil(until))
            pipe.execute()
        return Mute(route, by, why, until)

    def unmute(self, route: str) -> bool:
        return bool(self.connection.delete(self.keys.mute(route)))

    def get(self, route: str, now: float) -> Mute | None:
        return _mute(self.connection.hgetall(self.keys.mute(route)), now)

    def all(self, now: float) -> list[Mute]:
        """Every mute in force, the one ending first first."""
        found = []
        for key in self.connection.scan_iter(match=self.keys.mute_prefix() + "*",
                                             count=LIST_BATCH):
            mute = _mute(self.connection.hgetall(key), now)
            if mute is not None:
                found.append(mute)
        return sorted(found, key=lambda m: (m.until, m.route))


def _mute(fields: Mapping[bytes, bytes], now: float) -> Mute | None:
    """The mute in a hash; None when there is none, or it has ended (Redis expires it in whole
    seconds)."""
    if not fields:
        return None
    text = {k.decode(): v.decode() for k, v in fields.items()}
    until = float(text.get("until", 0))
    return Mute(text.get("route", ""), text.get("by", ""), text.get("why", ""),
                until) if until > now else None


def release_held(queue: Queue, route: str) -> int:
    """Move the route's held notifications from rq's scheduled registry to the queue, to be
    sent now, oldest first; how many moved. One another caller moved first is skipped."""
    ids = queue.scheduled_job_registry.get_job_ids()
    jobs = [job for job in Job.fetch_many(ids, connection=queue.connection,
                                          serializer=queue.serializer)
            if job is not None and HELD in job.meta and job.args[0].get("route") == route]
    # Oldest first, as they arrived: the first one sent takes the others behind it in its
    # route's line into a digest (bridge.digest) when many wait.
    jobs.sort(key=lambda job: job.args[0].get("received_at", 0))
    return sum(_release(queue, job) for job in jobs)


def _release(queue: Queue, job: Job) -> bool:
    """One held job out of the scheduled registry and onto the queue in one transaction, with
    rq's own calls (as rq's scheduler moves a due job); WATCH makes "still scheduled?" and the
    move one step, so two callers never both move it. False when it was no longer scheduled."""
    registry = queue.scheduled_job_registry
    with queue.connection.pipeline() as pipe:
        for _ in range(RELEASE_TRIES):
            try:
                pipe.watch(registry.key)
                if pipe.zscore(registry.key, job.id) is None:
                    return False
                pipe.multi()
                registry.remove(job, pipeline=pipe)
                queue.enqueue_job(job, pipeline=pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                continue  # the registry changed meanwhile (any job): look again
    log.warning("job %s: the scheduled registry kept changing; it is sent when its mute "
                "would have ended", job.id)
    return False


# -- whether a route is muted at a moment --------------------------------------------------------

@dataclass(frozen=True)
class MutedNow:
    """Why a route is muted now, and until when (None: no end within the intervals' horizon)."""

    reason: str
    until: dt.datetime | None

    def describe(self, zone: dt.tzinfo) -> str:
        """``interval nights, until 07:00 Europe/Berlin``: the end in the route's own zone."""
        if self.until is None:
            return f"{self.reason}, with no end in sight"
        local = self.until.astimezone(zone)
        return f"{self.reason}, until {local:%Y-%m-%d %H:%M} {zone}"


def intervals_of(config: Config) -> dict[str, TimeInterval]:
    """The config's time intervals, parsed (load_config has checked they parse)."""
    return {entry.name: parse_interval(entry.name, entry.time_intervals)
            for entry in config.time_intervals}


def muted_now(route: RouteSettings, intervals: Mapping[str, TimeInterval],
              mute: Mute | None, now: float) -> MutedNow | None:
    """Whether ``route`` is muted at ``now``, by hand or by its time intervals; the mute that
    ends last decides when it is over."""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    mute_by = [intervals[n] for n in route.mute_time_intervals if n in intervals]
    active = [intervals[n] for n in route.active_time_intervals if n in intervals]
    end = muted_until(moment, mute_by, active)
    by_interval = None if end == moment else MutedNow(_interval_reason(route, moment, mute_by),
                                                       end)
    by_hand = mute and MutedNow(f"muted by {mute.by}" + (f" ({mute.why})" if mute.why else ""),
                                dt.datetime.fromtimestamp(mute.until, dt.UTC))
    found = [m for m in (by_interval, by_hand) if m]
    return max(found, key=lambda m: m.until or dt.datetime.max.replace(tzinfo=dt.UTC),
               default=None)


def _interval_reason(route: RouteSettings, moment: dt.datetime,
                     mute_by: Sequence[TimeInterval]) -> str:
    inside = [i.name for i in mute_by if i.contains(moment)]
    if inside:
        return f"interval {', '.join(inside)}"
    return f"outside its active intervals ({', '.join(route.active_time_intervals)})"


def zone_of(route: RouteSettings, intervals: Mapping[str, TimeInterval],
            default: dt.tzinfo) -> dt.tzinfo:
    """The zone a route's mute is best told in: its first interval's ``location``."""
    for name in (*route.mute_time_intervals, *route.active_time_intervals):
        interval = intervals.get(name)
        if interval and interval.periods:
            return interval.periods[0].location
    return default
