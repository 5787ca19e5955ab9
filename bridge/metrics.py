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
  ``dead_lettered``, ``error`` (an unexpected exception; rq's crash retries take over).
- ``delivery_retries_total{route, error}``: failed attempts that will be tried again, by the
  Pumble error's class (``TransientError``, ``RateLimitedError``, ``AmbiguousError``, …).
- ``dead_lettered_total{route}``: notifications that became dead letters (in the worker, or at
  receipt when a template failed).
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
``serve`` runs several gunicorn workers and ``worker`` processes run beside them; a scrape is
answered by one gunicorn worker but must add up all of them. So ``serve``, ``worker`` and
``run`` call ``enable_multiprocess()`` first thing, before anything imports prometheus_client
(this module imports it only when the first metric is recorded or served): it sets
``PROMETHEUS_MULTIPROC_DIR`` (kept if already set, else ``<BRIDGE_DATA_DIR>/metrics``) in the
process's environment, where gunicorn's forked workers and the subprocesses of ``run`` find
it. Each process then writes its values to its own files there (``counter_<pid>.db``, …) and
``/metrics`` sums every file. Without it (a library use, the tests' in-process receiver and
workers) metrics stay in the process and ``/metrics`` shows that process's.

Cleaning up. A dead process's counter and histogram files must stay while anything else runs:
their counts are part of the totals, and removing them would make counters go backwards. They
are removed when nothing uses the directory any more, at the next start: every process that
enables the directory holds a shared ``flock`` on ``<dir>/.lock`` for its whole life (gunicorn's
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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ParamSpec

import redis

from bridge.config import data_dir

if TYPE_CHECKING:
    from rq import Queue

log = logging.getLogger(__name__)
P = ParamSpec("P")

ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE = ".lock"
PREFIX = "pumble_bridge_"

DELIVERY_OUTCOMES = ("sent", "in_digest", "retry", "waiting", "dead_lettered", "error")
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                      3600.0, 4 * 3600.0, 24 * 3600.0)
UNKNOWN = "unknown"
# Canonical types look like order.created; a signed sender's own type names (a generic HMAC
# source may pass them through) are kept while they look like names, else "other".
_TYPE_LABEL = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


# -- the directory -------------------------------------------------------------------------------

def directory(environ: Mapping[str, str] = os.environ) -> Path:
    """``PROMETHEUS_MULTIPROC_DIR`` if set, else ``<BRIDGE_DATA_DIR>/metrics``."""
    return Path(environ.get(ENV) or data_dir(environ) / "metrics").resolve()


_claims: dict[Path, IO[str]] = {}
_claims_lock = threading.Lock()


def enable_multiprocess() -> Path:
    """Count into the shared directory (see the module docstring); call before anything records
    a metric. Returns the directory. Idempotent within a process."""
    path = directory()
    if "prometheus_client" in sys.modules and not _multiprocess_mode():
        raise RuntimeError("prometheus_client was imported before the metrics directory was set "
                           f"({ENV}); call bridge.metrics.enable_multiprocess() first")
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)  # prometheus_client reads it; children inherit it
    claim(path)
    return path


def claim(path: Path) -> bool:
    """Hold ``path`` as in use by this process (until it exits); first delete the files of
    earlier runs if no other live process holds it. True when it deleted them."""
    path = Path(path)
    with _claims_lock:
        if path in _claims:
            return False
        lock = (path / LOCK_FILE).open("a")  # held open for the life of the process
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            wiped = False
        else:
            for stale in path.glob("*.db"):
                stale.unlink(missing_ok=True)
            wiped = True
        fcntl.flock(lock, fcntl.LOCK_SH)  # waits while another starting process wipes
        _claims[path] = lock
        return wiped


def release(path: Path) -> None:
    """Give up this process's claim on ``path`` (tests; a process's claim ends with it)."""
    with _claims_lock:
        lock = _claims.pop(Path(path), None)
    if lock is not None:
        lock.close()


def gunicorn_child_exit(_server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook (in the master): forget the exited worker's live gauges."""
    if _multiprocess_mode():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, os.environ[ENV])


def _multiprocess_mode() -> bool:
    if "prometheus_client" not in sys.modules:
        return ENV in os.environ
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


# -- the metrics -------------------------------------------------------------------------------

class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # as in multiprocess mode, which has no _created series
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_received = Counter(
            PREFIX + "events_received", "Webhooks answered by the receiver, by outcome.",
            ["source", "type", "outcome"], registry=r)
        self.ack_latency = Histogram(
            PREFIX + "ack_latency_seconds", "Time from a webhook reaching the receiver to its "
            "answer.", ["outcome"], buckets=ACK_BUCKETS, registry=r)
        self.enqueued = Counter(
            PREFIX + "notifications_enqueued", "Notifications stored as delivery jobs.",
            ["route"], registry=r)
        self.deliveries = Counter(
            PREFIX + "deliveries", "Runs of delivery jobs, by how they ended.",
            ["route", "outcome"], registry=r)
        self.retries = Counter(
            PREFIX + "delivery_retries", "Failed sends that will be tried again, by error.",
            ["route", "error"], registry=r)
        self.dead_lettered = Counter(
            PREFIX + "dead_lettered", "Notifications that became dead letters.",
            ["route"], registry=r)
        self.ratelimit_wait = Histogram(
            PREFIX + "ratelimit_wait_seconds", "Time waited for a Pumble rate-limit slot.",
            ["kind"], buckets=WAIT_BUCKETS, registry=r)
        self.end_to_end = Histogram(
            PREFIX + "end_to_end_seconds", "Time from the receiver accepting a webhook to "
            "Pumble's answer to its message.", ["route"], buckets=END_TO_END_BUCKETS,
            registry=r)
        self.config_valid = Gauge(
            PREFIX + "config_valid", "1 while the config file as it is on disk is in force, 0 "
            "once a change to it was refused.", multiprocess_mode="mostrecent", registry=r)


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()
_failed = False


def _never_raises(record: Callable[P, None]) -> Callable[P, None]:
    """Counting must never fail a webhook or a send (a metrics directory deleted under a
    running process, a full disk): the failure is logged once and the count is lost."""

    @functools.wraps(record)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        global _failed
        try:
            record(*args, **kwargs)
        except Exception:
            if not _failed:
                _failed = True
                log.exception("metrics: cannot record %s; further failures are not logged",
                              record.__name__)

    return guarded


def _m() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


@_never_raises
def webhook_answered(source: str | None, event_type: str | None, status: int,
                     seconds: float) -> None:
    """One webhook answered with ``status`` after ``seconds``. ``source`` only when the config
    names it; ``event_type`` once the body was read (None for a set-up ping)."""
    outcome = _webhook_outcome(status, event_type)
    m = _m()
    m.events_received.labels(source or UNKNOWN, _type_label(event_type), outcome).inc()
    m.ack_latency.labels(outcome).observe(max(0.0, seconds))


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


@_never_raises
def enqueued(route: str) -> None:
    _m().enqueued.labels(route).inc()


@_never_raises
def delivery(route: str, outcome: str) -> None:
    """How one run of a delivery job ended (one of ``DELIVERY_OUTCOMES``)."""
    if outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"unknown delivery outcome {outcome!r}")
    _m().deliveries.labels(route, outcome).inc()


@_never_raises
def retry(route: str, error: str) -> None:
    _m().retries.labels(route, error).inc()


@_never_raises
def dead_lettered(route: str) -> None:
    _m().dead_lettered.labels(route).inc()


@_never_raises
def ratelimit_wait(kind: str, seconds: float) -> None:
    _m().ratelimit_wait.labels(kind).observe(max(0.0, seconds))


@_never_raises
def end_to_end(route: str, received_at: float, answered_at: float) -> None:
    """A send Pumble answered at ``answered_at`` for a webhook accepted at ``received_at``."""
    if received_at > 0:
        _m().end_to_end.labels(route).observe(max(0.0, answered_at - received_at))


@_never_raises
def config_valid(valid: bool) -> None:
    _m().config_valid.set(1 if valid else 0)


# -- the scrape ----------------------------------------------------------------------------------

def exposition(queue: Queue | None = None) -> tuple[bytes, str]:
    """The text format for ``GET /metrics``: this machine's processes (or, without multiprocess
    mode, this one's) and, with ``queue``, its state in Redis. Returns (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    m = _m()  # defines the metrics, so they are listed (empty) before anything happened
    registry = CollectorRegistry(auto_describe=False)
    if _multiprocess_mode():
        from prometheus_client import multiprocess

        path = os.environ[ENV]
        Path(path).mkdir(parents=True, exist_ok=True)
        multiprocess.MultiProcessCollector(registry, path)
    else:
        registry.register(_Forward(m.registry))
    if queue is not None:
        registry.register(QueueCollector(queue))
    return generate_latest(registry), CONTENT_TYPE_LATEST


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
