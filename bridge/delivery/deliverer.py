"""What a worker process sends with, built once from the config the worker was given."""

from __future__ import annotations

import redis

from bridge.alerts_sender import Alerter, Watch
from bridge.clock import Clock
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.mutes import Mutes, intervals_of
from bridge.notification import Notification
from bridge.pumble import AuthError, PumbleClient
from bridge.queue import RESULT_TTL, NotificationQueue
from bridge.ratelimit import RateLimiter, limits_per_minute
from bridge.retry import Backoff
from bridge.store.runs import Finisher

# Seconds past a job's timeout until a job whose worker died is given up as abandoned: its
# heartbeat (bridge.worker) and the fallback of the jobs its run took (bridge.delivery.run).
HEARTBEAT_GRACE = 10
# Fewer arrivals than this behind a head, or than half the slots left, are never a burst,
# however close together: orders that came at once but fit go one by one.
BURST_MIN = 8


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

    def slots_left(self, account: str) -> int:
        """Messages the account may post now within the message limit's window (the limiter
        every worker shares): what a head's line can spend one message a notification on."""
        used = self.limiter.state(account)["messages"]["used"]
        return max(0, self.limits["messages"].per_minute - used)

    def bursting(self, head: Notification, arrived: int, slots_left: int) -> bool:
        """Whether ``arrived`` notifications (at least ``BURST_MIN``, and half the slots left)
        came into ``head``'s line after it at a pace that, kept up over the digest window,
        would take more messages than the slots left: then the other half of the slots goes to
        digests even while few wait, not to the burst's first orders one by one."""
        if arrived < max(BURST_MIN, slots_left / 2):
            return False
        since = max(self.clock.time() - head.received_at, 1e-3)
        return arrived * self.settings.digest.window > slots_left * since

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
