"""Prometheus metrics: what the receiver and the workers count, served by ``GET /metrics``.

Every name starts with ``pumble_bridge_``. Labels only ever carry names from the config (source,
route), canonical event types, Pumble call kinds and fixed outcome words: never event ids, job
ids or channels (a channel may be rendered from the payload, so it is unbounded).

Counted where it happens (each process records its own; see "Several processes" below):

- ``events_received_total{source, type, outcome}``: webhooks answered by the receiver. outcome:
  ``accepted`` (202), ``duplicate`` (200, a re-delivery), ``ping`` (200, a set-up ping),
  ``bad_signature`` (401), ``rejected`` (any other 4xx), ``unavailable`` (503, Redis could not
  be written), ``error`` (any other 5xx). source is ``unknown`` for a name the config does not
  have, type is ``unknown`` until the body was read.
- ``ack_latency_seconds{outcome}``: histogram, from the request reaching the receiver to its
  answer, 1 ms to 5 s buckets.
- ``notifications_enqueued_total{route}``: jobs stored by the receiver (a re-delivery's are not).
- ``deliveries_total{route, outcome}``: how each run of a delivery job ended: ``sent``,
  ``in_digest`` (sent in another job's digest), ``retry`` (failed, scheduled again),
  ``waiting`` (for its thread's first message or a rate-limit slot; not an attempt),
  ``dead_lettered``, ``error`` (an unexpected exception; rq's crash retries take over),
  ``held`` (its route muted: run again when the mute ends; not an attempt), ``dropped`` (its
  route muted with ``when_muted: drop``).
- ``delivery_retries_total{route, error}``: failed attempts that will be tried again, by the
  Pumble error's class (``TransientError``, ``RateLimitedError``, ``AmbiguousError``, …).
- ``dead_lettered_total{route}``: notifications that became dead letters (in the worker, or at
  receipt when a template failed).
- ``alerts_total{condition, outcome}``: alerts about the bridge (bridge.alerts_sender):
  ``posted``, or ``failed`` (Pumble refused or did not answer; logged, not retried).
- ``ratelimit_wait_seconds{kind}``: histogram, time a worker waited for a rate-limit slot
  (``messages``, ``replies``, ``reactions``, ``channels``, ``requests``), 0 when one was free.
- ``end_to_end_seconds{route}``: histogram, from the receiver accepting the webhook to
  Pumble's answer to the send (each notification of a digest counts).
- ``config_valid``: gauge, 1 while the receiver's config file and templates as they are on disk
  are in force, 0 once a change to them was refused (the last valid config serves; the log
  and ``/readyz`` say why). Set by the process that checks the files: gunicorn's master under
  ``serve`` (the most recent value wins across processes).

Read from Redis when scraped (one round trip of O(1)/O(log n) commands; the scrape still
answers when Redis does not, with ``redis_up 0`` and without these):

- ``queue_depth{state}``: jobs ``queued`` (waiting for a worker), ``scheduled`` (retries and
  waits), ``started`` (being worked on).
- ``dead_letters``: the failed-job registry now (what ``pumble-bridge dlq list`` lists).
- ``redis_up``: 1 when the scrape could read them.

Several processes (prometheus-client's multiprocess mode)
---------------------------------------------------------
Each process makes one ``Metrics`` and hands it to what counts (the receiver's app, its
config reloader, the worker's deliverer and rate limiter); nothing here is made at import.
``serve`` runs several gunicorn workers and ``worker`` processes run beside them; a scrape is
answered by one gunicorn worker but must add up all of them. So ``serve``, ``worker`` and
``run`` use ``Metrics.shared(directory)`` (``directory()``: ``PROMETHEUS_MULTIPROC_DIR`` if
set, else ``<BRIDGE_DATA_DIR>/metrics``). prometheus_client takes that directory from the
process's environment only, when it is first imported (this module imports it only when a
``Metrics`` is made): the CLI puts it there first thing, where gunicorn's forked workers and
the subprocesses of ``run`` find it too, and ``Metrics.shared`` refuses a directory other than
the one prometheus_client counts into. Each process then writes its values to its own files
there (``counter_<pid>.db``, …) and ``/metrics`` sums every file. A plain ``Metrics()`` (a
library use, the tests' in-process receiver and workers) keeps its counts in the process, and
``/metrics`` shows those.

Cleaning up. A dead process's counter and histogram files must stay while anything else runs:
their counts are part of the totals, and removing them would make counters go backwards. They
are removed when nothing uses the directory any more, at the next start: every process that
shares the directory holds a shared ``flock`` on ``<dir>/.lock`` for its whole life (gunicorn's
workers and rq's scheduler share their parent's by fork); a starting process first tries for it
exclusively, without waiting, and only if it gets it (so no other live process uses the
directory) deletes the ``*.db`` files before taking its shared lock. The kernel drops a
process's lock when it dies, even by SIGKILL, so a crash never leaves the directory "in use",
and a restart of one process (a worker, while ``serve`` runs) never wipes what the others count.
A full restart does, which Prometheus reads as a counter reset. gunicorn's ``child_exit`` hook
calls ``mark_process_dead`` for each worker that exits, which removes its "live" gauge files
(none today: the gauges are read from Redis at scrape time). Give the bridge a directory of its
own: files of other programs in it would be summed in, and removed by that wipe.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Concatenate, ParamSpec

import redis

if TYPE_CHECKING:
    from rq import Queue

log = logging.getLogger(__name__)
P = ParamSpec("P")

ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE = ".lock"
PREFIX = "pumble_bridge_"

DELIVERY_OUTCOMES = ("sent", "in_digest", "retry", "waiting", "dead_lettered", "error", "held",
                     "dropped")
ALERT_OUTCOMES = ("posted", "failed")
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                      3600.0, 4 * 3600.0, 24 * 3600.0)
UNKNOWN = "unknown"
# Canonical types look like order.created; a signed sender's own type names (a generic HMAC
# source may pass them through) are kept while they look like names, else "other".
_TYPE_LABEL = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


# -- the directory -------------------------------------------------------------------------------

def directory(environ: Mapping[str, str], data: Path) -> Path:
    """``PROMETHEUS_MULTIPROC_DIR`` if ``environ`` sets it, else ``<data>/metrics``."""
    return Path(environ.get(ENV) or data / "metrics").resolve()


@dataclass
class Claim:
    """A process's hold on a metrics directory (see the module docstring): until released, or
    the process ends."""

    path: Path
    wiped: bool  # it deleted the files of earlier runs: no other live process held the directory
    lock: IO[str]

    def release(self) -> None:
        self.lock.close()


def claim(path: Path) -> Claim:
    """Hold ``path`` as in use by this process; first delete the files of earlier runs if no
    other live process (or other claim of this one) holds it."""
    path = Path(path)
    lock = (path / LOCK_FILE).open("a")  # held open for as long as the claim lasts
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        wiped = False
    else:
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        wiped = True
    fcntl.flock(lock, fcntl.LOCK_SH)  # waits while another starting process wipes
    return Claim(path, wiped, lock)


def _counted_into() -> Path | None:
    """The directory prometheus_client counts into in this process; None in its in-process
    mode. Before it is imported: the one it will count into."""
    if "prometheus_client" in sys.modules:
        from prometheus_client import values

        if not getattr(values.ValueClass, "_multiprocess", False):
            return None
    named = os.environ.get(ENV)
    return Path(named).resolve() if named else None


# -- the metrics -------------------------------------------------------------------------------

def _never_raises(
        record: Callable[Concatenate[Metrics, P], None]) -> Callable[Concatenate[Metrics, P], None]:
    """Counting must never fail a webhook or a send (a metrics directory deleted under a
    running process, a full disk): the failure is logged once and the count is lost."""

    @functools.wraps(record)
    def guarded(self: Metrics, *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            record(self, *args, **kwargs)
        except Exception:
            if not self.failed:
                self.failed = True
                log.exception("metrics: cannot record %s; further failures are not logged",
                              record.__name__)

    return guarded


class Metrics:
    """What one process counts. ``Metrics()`` keeps the counts in the process;
    ``Metrics.shared(directory)`` adds them up with every process counting into that directory.
    Make one a process (two in one multiprocess directory would overwrite each other's counts)
    and hand it to whatever counts."""

    def __init__(self, claimed: Claim | None = None) -> None:
        from prometheus_client import CollectorRegistry, disable_created_metrics

        disable_created_metrics()  # as in multiprocess mode, which has no _created series
        self.claimed = claimed  # the shared directory, held for as long as this lives
        self.failed = False  # a count was lost (and logged)
        self.registry = CollectorRegistry(auto_describe=True)
        self._define(self.registry)

    @classmethod
    def shared(cls, path: Path) -> Metrics:
        """Count into ``path`` with the machine's other processes (see the module docstring);
        RuntimeError when prometheus_client counts elsewhere in this process."""
        path = Path(path).resolve()
        counted_into = _counted_into()
        if counted_into is None:
            raise RuntimeError("prometheus_client was imported before the metrics directory was "
                               f"set ({ENV}={path}): set it first thing")
        if counted_into != path:
            raise RuntimeError(f"prometheus_client counts into {counted_into}, not {path}")
        path.mkdir(parents=True, exist_ok=True)
        return cls(claim(path))

    def _define(self, r: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.events_received = Counter(
            PREFIX + "events_received", "Webhooks answered by the receiver, by outcome.",
            ["source", "type", "outcome"], registry=r)
        self.ack_latency = Histogram(
            PREFIX + "ack_latency_seconds", "Time from a webhook reaching the receiver to its "
            "answer.", ["outcome"], buckets=ACK_BUCKETS, registry=r)
        self.enqueued_total = Counter(
            PREFIX + "notifications_enqueued", "Notifications stored as delivery jobs.",
            ["route"], registry=r)
        self.deliveries = Counter(
            PREFIX + "deliveries", "Runs of delivery jobs, by how they ended.",
            ["route", "outcome"], registry=r)
        self.retries = Counter(
            PREFIX + "delivery_retries", "Failed sends that will be tried again, by error.",
            ["route", "error"], registry=r)
        self.dead_lettered_total = Counter(
            PREFIX + "dead_lettered", "Notifications that became dead letters.",
            ["route"], registry=r)
        self.ratelimit_waits = Histogram(
            PREFIX + "ratelimit_wait_seconds", "Time waited for a Pumble rate-limit slot.",
            ["kind"], buckets=WAIT_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram(
            PREFIX + "end_to_end_seconds", "Time from the receiver accepting a webhook to "
            "Pumble's answer to its message.", ["route"], buckets=END_TO_END_BUCKETS,
            registry=r)
        self.alerts_total = Counter(
            PREFIX + "alerts", "Alerts about the bridge, posted or failed.",
            ["condition", "outcome"], registry=r)
        self.config_valid_gauge = Gauge(
            PREFIX + "config_valid", "1 while the config file as it is on disk is in force, 0 "
            "once a change to it was refused.", multiprocess_mode="mostrecent", registry=r)

    # -- recording ---------------------------------------------------------------------------

    @_never_raises
    def webhook_answered(self, source: str | None, event_type: str | None, status: int,
                         seconds: float) -> None:
        """One webhook answered with ``status`` after ``seconds``. ``source`` only when the
        config names it; ``event_type`` once the body was read (None for a set-up ping)."""
        outcome = _webhook_outcome(status, event_type)
        self.events_received.labels(source or UNKNOWN, _type_label(event_type), outcome).inc()
        self.ack_latency.labels(outcome).observe(max(0.0, seconds))

    @_never_raises
    def enqueued(self, route: str) -> None:
        self.enqueued_total.labels(route).inc()

    @_never_raises
    def delivery(self, route: str, outcome: str) -> None:
        """How one run of a delivery job ended (one of ``DELIVERY_OUTCOMES``)."""
        if outcome not in DELIVERY_OUTCOMES:
            raise ValueError(f"unknown delivery outcome {outcome!r}")
        self.deliveries.labels(route, outcome).inc()

    @_never_raises
    def retry(self, route: str, error: str) -> None:
        self.retries.labels(route, error).inc()

    @_never_raises
    def dead_lettered(self, route: str) -> None:
        self.dead_lettered_total.labels(route).inc()

    @_never_raises
    def alert(self, condition: str, outcome: str) -> None:
        """An alert posted, or failed to be (one of ``ALERT_OUTCOMES``)."""
        if outcome not in ALERT_OUTCOMES:
            raise ValueError(f"unknown alert outcome {outcome!r}")
        self.alerts_total.labels(condition, outcome).inc()

    @_never_raises
    def ratelimit_wait(self, kind: str, seconds: float) -> None:
        self.ratelimit_waits.labels(kind).observe(max(0.0, seconds))

    @_never_raises
    def end_to_end(self, route: str, received_at: float, answered_at: float) -> None:
        """A send Pumble answered at ``answered_at`` for a webhook accepted at ``received_at``."""
        if received_at > 0:
            self.end_to_end_seconds.labels(route).observe(max(0.0, answered_at - received_at))

    @_never_raises
    def config_valid(self, valid: bool) -> None:
        self.config_valid_gauge.set(1 if valid else 0)

    # -- the scrape and the gunicorn hook --------------------------------------------------------

    def exposition(self, queue: Queue | None = None) -> tuple[bytes, str]:
        """The text format for ``GET /metrics``: this machine's processes (for a shared one; else
        this process's) and, with ``queue``, its state in Redis. Returns (body, content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        if self.claimed is not None:
            from prometheus_client import multiprocess

            self.claimed.path.mkdir(parents=True, exist_ok=True)
            multiprocess.MultiProcessCollector(registry, str(self.claimed.path))
        else:
            registry.register(_Forward(self.registry))
        if queue is not None:
            registry.register(QueueCollector(queue))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def gunicorn_child_exit(self, _server: Any, worker: Any) -> None:
        """gunicorn's ``child_exit`` hook (in the master): forget the exited worker's live
        gauges."""
        if self.claimed is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, str(self.claimed.path))


def _webhook_outcome(status: int, event_type: str | None) -> str:
    if status == 202:
        return "accepted"
    if status == 200:
        return "duplicate" if event_type else "ping"
    if status == 401:
        return "bad_signature"
    if status == 503:
        return "unavailable"
    return "rejected" if 400 <= status < 500 else "error"


def _type_label(event_type: str | None) -> str:
    if not event_type:
        return UNKNOWN
    return event_type if _TYPE_LABEL.match(event_type) else "other"


class _Forward:
    def __init__(self, registry: Any):
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        return self._registry.collect()


class QueueCollector:
    """The queue's depth and dead letters, read from Redis at scrape time in one round trip."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        queue = self.queue
        up = GaugeMetricFamily(PREFIX + "redis_up",
                               "1 when this scrape could read the queue from Redis, else 0.")
        try:
            pipe = queue.connection.pipeline(transaction=False)
            pipe.llen(queue.key)
            pipe.zcard(queue.scheduled_job_registry.key)
            pipe.zcard(queue.started_job_registry.key)
            # Scored by expiry: the entries not yet expired are what `dlq list` shows.
            pipe.zcount(queue.failed_job_registry.key, f"({time.time()}", "+inf")
            queued, scheduled, started, dead = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: cannot read the queue from Redis (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        depth = GaugeMetricFamily(PREFIX + "queue_depth", "Delivery jobs by state.",
                                  labels=["state"])
        for state, value in (("queued", queued), ("scheduled", scheduled),
                             ("started", started)):
            depth.add_metric([state], int(value))
        yield depth
        yield GaugeMetricFamily(PREFIX + "dead_letters",
                                "Dead letters kept (the failed-job registry).", value=int(dead))
        up.add_metric([], 1)
        yield up
