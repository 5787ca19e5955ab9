"""What ``pumble-bridge status`` reports: the queue, the workers, the sources' last webhooks, the
rate limits, the config, the summaries and the mutes; healthy, or degraded and why.

Read from Redis and the config file only: it works whether the bridge runs here or elsewhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from rq import Worker
from rq.job import Job

from bridge.activity import Activity, EventActivity
from bridge.clock import Clock
from bridge.config import Config
from bridge.mutes import Mutes
from bridge.queue import NotificationQueue
from bridge.ratelimit import RateLimiter, limits_per_minute
from bridge.summaries import upcoming
from bridge.summaries_totals import SummaryTotals

STALE_QUEUE = 300  # seconds: a queued job older than this means sending has fallen behind
LOOKED_AT = 500  # recent webhooks read to find each source's last one


@dataclass(frozen=True)
class LastWebhook:
    at: float  # epoch seconds, as the receiver accepted it
    type: str
    outcome: str  # sent, waiting, failed, dead, duplicate, template failed, accepted


@dataclass(frozen=True)
class Status:
    queue: str
    queued: int
    oldest_queued_age: float | None  # seconds; None: nothing queued
    scheduled: int
    dead_letters: int
    workers: list[dict[str, Any]]
    sources: dict[str, LastWebhook | None]  # None: none among the recent webhooks
    rate_limits: dict[str, dict[str, dict[str, Any]]]  # account -> kind -> state
    config: dict[str, Any]
    summaries: list[dict[str, Any]]
    mutes: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)  # why it is degraded; none: healthy

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, **asdict(self)}


def gather(config: Config, connection: redis.Redis, config_problems: list[str],
           clock: Clock | None = None) -> Status:
    """The status of the bridge ``config`` describes. ``config_problems``: why the file on disk
    did not load (then ``config`` holds only what could be read of it)."""
    clock = clock or Clock()
    queue = NotificationQueue(connection, config.redis.queue, config.delivery)
    now = clock.time()
    oldest = _oldest_queued_age(queue, now)
    workers = [{"name": w.name, "state": str(w.get_state()), "host": w.hostname or "",
                "pid": w.pid} for w in Worker.all(queue=queue.rq)]
    status = Status(
        queue=queue.rq.name, queued=len(queue.rq), oldest_queued_age=oldest,
        scheduled=queue.rq.scheduled_job_registry.count,
        dead_letters=queue.rq.failed_job_registry.count, workers=workers,
        sources=last_webhooks(Activity(queue), config.sources),
        rate_limits=_rate_limits(config, connection, clock),
        config={"path": str(config.path), "valid": not config_problems,
                "problems": config_problems, "sources": len(config.sources),
                "routes": len(config.routes), "summaries": len(config.summaries)},
        summaries=_summaries(config, queue, clock),
        mutes=read_mutes(connection, queue, now))
    status.problems.extend(_problems(status))
    return status


def _oldest_queued_age(queue: NotificationQueue, now: float) -> float | None:
    first = queue.rq.get_job_ids(0, 1)
    job = Job.fetch(first[0], connection=queue.rq.connection,
                    serializer=queue.rq.serializer) if first else None
    if job is None or job.enqueued_at is None:
        return None
    return max(0.0, now - job.enqueued_at.replace(tzinfo=dt.UTC).timestamp())


def last_webhooks(activity: Activity, sources: Iterable[str]) -> dict[str, LastWebhook | None]:
    """Each source's newest accepted webhook among the recent ones, and what came of it."""
    last: dict[str, LastWebhook | None] = dict.fromkeys(sources)
    for line in activity.recent(LOOKED_AT):
        if line.source in last and last[line.source] is None:
            last[line.source] = LastWebhook(line.received_at, line.type, _outcome(line))
    return last


def _outcome(line: EventActivity) -> str:
    if line.duplicate:
        return "duplicate"
    if line.failures:
        return "template failed"
    for state in ("dead", "failed", "waiting", "sent"):  # the worst first
        if state in line.states:
            return state
    return "accepted"


def _rate_limits(config: Config, connection: redis.Redis,
                 clock: Clock) -> dict[str, dict[str, dict[str, Any]]]:
    limiter = RateLimiter(connection, config.redis.queue,
                          limits_per_minute(config.delivery.rate_limits), clock=clock)
    accounts = ["default", *config.pumble.accounts]
    return {account: limiter.state(account) for account in accounts}


def _summaries(config: Config, queue: NotificationQueue, clock: Clock) -> list[dict[str, Any]]:
    totals = SummaryTotals(queue.rq.connection, queue.keys)
    return [{"name": coming.name, "channel": coming.channel, "next": coming.at.isoformat(),
             "posted_until": _iso(totals.posted_until(coming.name))}
            for coming in upcoming(config.summaries, clock.time())]


def _iso(stamp: float | None) -> str | None:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat() if stamp is not None else None


def read_mutes(connection: redis.Redis, queue: NotificationQueue,
               now: float) -> list[dict[str, Any]]:
    """The routes muted by hand (bridge/mutes.py): route, by whom, why, until when."""
    return [{"route": m.route, "by": m.by, "why": m.why, "until": _iso(m.until)}
            for m in Mutes(connection, queue.rq.name).all(now)]


def _problems(status: Status) -> list[str]:
    """Why the bridge is degraded, one line each."""
    problems = [f"config {status.config['path']} does not load: {problem}"
                for problem in status.config["problems"]]
    if not status.workers:
        problems.append("no live worker: nothing is being sent")
    if status.oldest_queued_age is not None and status.oldest_queued_age > STALE_QUEUE:
        problems.append(f"the oldest queued message has waited "
                        f"{status.oldest_queued_age:.0f} s (over {STALE_QUEUE} s)")
    if status.dead_letters:
        problems.append(f"{status.dead_letters} dead letter(s): see `pumble-bridge dlq list`")
    return problems
