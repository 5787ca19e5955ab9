"""What a worker process sends with, built once from the config the worker was given."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from bridge.alerts_sender import Alerter, Watch
from bridge.clock import Clock
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.mutes import Mutes, intervals_of
from bridge.pumble import AuthError, PumbleClient
from bridge.queue import RESULT_TTL, NotificationQueue
from bridge.ratelimit import RateLimiter, limits_per_minute
from bridge.retry import Backoff
from bridge.store.runs import Finisher

# Seconds past a job's timeout until a job whose worker died is given up as abandoned: its
# heartbeat (bridge.worker) and the fallback of the jobs its run took (bridge.delivery.run).
HEARTBEAT_GRACE = 10
# A line's demand: the messages posted in the last BURST_SECONDS and what waits. Less than
# BURST_MIN is never a burst. A burst is a demand that, with half as much again to come, would
# take more messages than the slots left: a fast worker keeps a burst's line short, and would
# otherwise spend the window's slots on its first orders one by one.
BURST_SECONDS = 5
BURST_MIN = 8
BURST_TO_COME = 0.5


@dataclass(frozen=True)
class Slots:
    """The message limit's window for an account, now."""

    left: int  # messages it may still post in the window
    recent: int  # messages posted in the last BURST_SECONDS


class Deliverer:
    """A worker process's config, one Pumble client per account, the Redis-backed shared state
    (rate limits, thread roots, digests, mutes), its jobs' backoff, the clock it goes by and
    the alerter."""

    def __init__(self, config: Config, connection: redis.Redis, clock: Clock,
                 metrics: Metrics):
        self.config = config
        self.settings = config.delivery
        self.clock = clock
        self.metrics = metrics
        self.queue = NotificationQueue(connection, config.redis.queue, config.delivery)
        self.finisher = Finisher(self.queue.rq, RESULT_TTL,  # the jobs of its runs and digests
                                 self.queue.backlog.keys.in_digest_prefix())
        self.limits = limits_per_minute(self.settings.rate_limits)
        self.limiter = RateLimiter(connection, config.redis.queue, self.limits, clock=clock,
                                   metrics=metrics)
        self.backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap)
        self._clients: dict[str, PumbleClient] = {}
        self.routes = {route.name: route for route in config.routes}
        self.intervals = intervals_of(config)
        self.mutes = Mutes(connection, config.redis.queue)
        self.alerter = Alerter(config.alerts, connection, config.redis.queue, self.client,
                               metrics)
        self.watch = Watch(config, self.alerter, self.queue.rq, clock)  # maintenance's checks

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

    def slots(self, account: str) -> Slots:
        """The message limit's window for ``account`` (the limiter every worker shares): what
        a head's line can spend one message a notification on, and how fast it is spent."""
        state = self.limiter.state(account, recent=BURST_SECONDS)["messages"]
        return Slots(max(0, self.limits["messages"].per_minute - state["used"]),
                     state["recent"])

    def slots_left(self, account: str) -> int:
        return self.slots(account).left

    @staticmethod
    def singles_left(slots: Slots, waiting: int) -> float:
        """How many more of a line with ``waiting`` notifications may go one by one before it
        is in a burst (see ``BURST_TO_COME``); below zero, it is in one."""
        demand = slots.recent + waiting
        if demand < BURST_MIN:
            return float(slots.left)
        return slots.left - demand * (1 + BURST_TO_COME)

    def bursting(self, slots: Slots, waiting: int) -> bool:
        """Whether a line with ``waiting`` notifications is in a burst: then its slots go to
        digests even while fewer wait than the slots left."""
        return self.singles_left(slots, waiting) < 0

    @property
    def abandoned_after(self) -> int:
        """Seconds after a job started until, its worker dead, its jobs run again."""
        return self.settings.job_timeout + HEARTBEAT_GRACE

    @property
    def max_slot_wait(self) -> float:
        """How long a job may wait for a rate-limit slot and still finish its send in time."""
        pumble = self.config.pumble
        return max(0.0, self.settings.job_timeout - pumble.connect_timeout
                   - pumble.read_timeout - 2)

    def take_slot(self, account: str, kind: str, waited: float = 0.0) -> None:
        """A slot of the rate limiter every worker shares, for one call of ``kind``; the job
        has ``waited`` seconds already (for a digest to fill), which its slot wait may not."""
        self.limiter.acquire(account, kind, max_wait=max(0.0, self.max_slot_wait - waited))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
