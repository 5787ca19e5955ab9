"""Posting alerts about the bridge (bridge.alerts writes them), and watching for the conditions
only time reveals.

An alert goes straight to Pumble with the alerts account's client, not through the queue: an
alert about a stalled queue must still arrive. At most one per condition and subject every
``ALERT_EVERY`` seconds (a Redis ``SET NX EX``, shared by every worker); one that cannot be
posted is logged and counted (``alerts_total{outcome="failed"}``), never retried: the next
occurrence after the pause tries again.

``Watch`` is run by the worker's maintenance (bridge.worker): bad signatures counted by the
receiver (``count_bad_signature``), the oldest waiting notification, silent sources.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from rq.job import Job
from rq.queue import Queue

from bridge import alerts
from bridge.alerts import ALERT_EVERY, Alert
from bridge.clock import Clock
from bridge.config import SIGNATURE_WINDOW, AlertsSettings, Config
from bridge.metrics import Metrics
from bridge.pumble import PumbleClient, PumbleError
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

MAX_COUNTED_FAILURES = 1000  # bad signatures kept per source: past any useful threshold


class Alerter:
    """Posts the alerts the config asks for, each subject at most once per ``ALERT_EVERY``."""

    def __init__(self, settings: AlertsSettings | None, connection: redis.Redis, namespace: str,
                 client: Callable[[str], PumbleClient], metrics: Metrics):
        self.settings = settings
        self.connection = connection
        self.keys = Keys(namespace)
        self.client = client  # the Pumble client of an account name
        self.metrics = metrics

    def wants(self, condition: str) -> bool:
        return self.settings is not None and bool(getattr(self.settings, condition))

    def post(self, alert: Alert) -> bool:
        """Post ``alert`` unless its condition is off or one about its subject went out within
        ``ALERT_EVERY`` s. True when posted."""
        settings = self.settings
        if settings is None or not self.wants(alert.condition):
            return False
        key = self.keys.alert_sent(alert.condition, alert.subject)
        try:
            if not self.connection.set(key, 1, nx=True, ex=ALERT_EVERY):
                return False
            self.client(settings.account).send_message(settings.channel, alert.text,
                                                       as_bot=True)
        except (PumbleError, redis.RedisError) as exc:
            # Never raised into what it reports on (a dead letter, the maintenance loop).
            log.warning("alert %s about %s could not be posted to #%s (account %s): %s: %s",
                        alert.condition, alert.subject, settings.channel, settings.account,
                        type(exc).__name__, exc)
            self.metrics.alert(alert.condition, "failed")
            return False
        log.info("alert %s about %s posted to #%s", alert.condition, alert.subject,
                 settings.channel)
        self.metrics.alert(alert.condition, "posted")
        return True


def count_bad_signature(connection: redis.Redis, namespace: str, source: str,
                        now: float) -> None:
    """The receiver's note of a webhook with a bad signature from ``source`` (those of the last
    ``SIGNATURE_WINDOW`` seconds, at most ``MAX_COUNTED_FAILURES``, are kept)."""
    key = Keys(namespace).signature_failures(source)
    with connection.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {f"{now:.6f}": now})
        pipe.zremrangebyscore(key, "-inf", now - SIGNATURE_WINDOW)
        pipe.zremrangebyrank(key, 0, -MAX_COUNTED_FAILURES - 1)
        pipe.expire(key, SIGNATURE_WINDOW)
        pipe.execute()


class Watch:
    """The conditions the worker's maintenance looks for, against the injectable clock."""

    def __init__(self, config: Config, alerter: Alerter, queue: Queue, clock: Clock):
        self.config = config
        self.alerter = alerter
        self.queue = queue
        self.clock = clock
        self.keys = Keys(config.redis.queue)

    def check(self) -> None:
        settings = self.config.alerts
        if settings is None:
            return
        now = self.clock.time()
        if settings.signature_failures:
            self._signature_failures(now, settings.signature_failures.count,
                                     settings.signature_failures.within)
        if settings.queue_stalled:
            self._queue_stalled(now, settings.queue_stalled.older_than)
        if settings.source_silent:
            self._sources_silent(now, settings.source_silent.after)

    def _signature_failures(self, now: float, count: int, within: int) -> None:
        connection = self.alerter.connection
        for source in self.config.sources:
            failures = connection.zcount(self.keys.signature_failures(source), now - within,
                                         "+inf")
            if failures >= count:
                self.alerter.post(alerts.signature_failures(source, failures, within))

    def _queue_stalled(self, now: float, older_than: int) -> None:
        oldest = self.queue.get_job_ids(0, 1)
        job = Job.fetch_many(oldest, connection=self.queue.connection,
                             serializer=self.queue.serializer)[0] if oldest else None
        received_at = job.args[0].get("received_at", 0) if job is not None else 0
        if received_at and now - received_at > older_than:
            self.alerter.post(alerts.queue_stalled(now - received_at, older_than))

    def _sources_silent(self, now: float, after: int) -> None:
        connection = self.alerter.connection
        for source in self.config.sources:
            key = self.keys.heard_from(source)
            connection.hsetnx(key, "at", now)  # watched from now on when never heard from
            at, heard = connection.hmget(key, "at", "heard")
            silent_for = now - float(at or now)
            if silent_for > after:
                self.alerter.post(alerts.source_silent(source, silent_for if heard else None))
