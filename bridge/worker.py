"""The delivery worker process: an RQ SimpleWorker on the notification queue.

SimpleWorker runs jobs in-process: about ten times the throughput of the forking worker, and it
keeps the Pumble connection alive between sends (bench/worker.py measures it).
Scale out with more worker processes, on one machine or many: they share the queue, the rate
limits, thread roots and digests through Redis. Each process builds one Deliverer from the config
it was given and hands it to every job it runs (bridge.delivery).

A worker killed mid-job (SIGKILL, a lost machine) leaves its job in rq's started registry. rq
gives such a job up ``job_timeout + 60`` s after it started; ours says ``job_timeout + 10`` (the
job cannot outlive its timeout, which rq enforces with SIGALRM in this very process), and
maintenance runs every ``MAINTENANCE_INTERVAL`` s, so another worker runs the job again within
about a minute and a half by default. SIGTERM (or Ctrl-C) is a warm shutdown: the
current send finishes first, then the worker is gone within a couple of seconds. A Redis that
is full, read-only, loading or out of reach never ends it: it waits, and carries on.
Its maintenance also posts the summaries that are due (bridge/summaries_post.py): no process
of their own, and one post a period however many workers run.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from bridge.clock import Clock
from bridge.config import Config
from bridge.delivery import Deliverer, DeliveryJob
from bridge.delivery.deliverer import HEARTBEAT_GRACE
from bridge.metrics import Metrics
from bridge.queue import connect
from bridge.retry import REDIS_UNAVAILABLE, REDIS_UNAVAILABLE_ERRORS
from bridge.store import scripts
from bridge.store.keys import rq_scheduler
from bridge.summaries_post import SummaryPoster

log = logging.getLogger(__name__)

WORKER_TTL = 60  # an idle worker blocks 45 s on the queue, then does its maintenance
MAINTENANCE_INTERVAL = 30
# Seconds rq's pub/sub listener (the thread that hears rq's commands, such as shutdown) blocks
# between looks at its stop flag.
PUBSUB_POLL = 0.1
# rq's loop would end the worker on any of them; ours waits, probing it again by bridge.retry's
# REDIS_UNAVAILABLE, and carries on.
UNAVAILABLE = REDIS_UNAVAILABLE_ERRORS

T = TypeVar("T")


class DeliveryWorker(SimpleWorker):
    """rq's SimpleWorker, handing each job the process's ``deliverer`` (built from the config
    the worker was given), and riding out an unavailable Redis."""

    job_class = DeliveryJob
    waiting_for_redis = False  # said so in the log, and not yet said it is back

    def __init__(self, *args: Any, deliverer: Deliverer | None = None,
                 summaries: SummaryPoster | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deliverer = deliverer
        self.summaries = summaries  # posted when due, at each maintenance

    # rq's teardown stops its pub/sub listener, whose thread wakes only every 60 s, and since
    # redis-py 8.2 that stop waits for the thread with no time limit. These two keep the stop
    # within PUBSUB_POLL s on every redis-py release.
    def subscribe(self) -> None:
        """rq's subscribe, with a listener that looks at its stop flag every ``PUBSUB_POLL`` s.
        The one private name, rq's handler that retries after a lost connection, is checked by
        tests/test_worker_processes.py."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL, daemon=True,
            exception_handler=self._pubsub_exception_handler)

    def unsubscribe(self) -> None:
        """Stop the listener; its thread closes its own connection as it ends. rq's also closes
        it from here, which races with the thread's close before redis-py 8.2, and first sends
        UNSUBSCRIBE, which deadlocks on redis-py 6.0 when it has to reconnect (after a Redis
        restart)."""
        if self.pubsub_thread:
            self.pubsub_thread.stop()  # redis-py 8.2 waits here for the thread; older, not
            self.pubsub_thread.join(PUBSUB_POLL + 1)

    # rq's loop (work) quits on any exception from the steps it calls: these four and
    # run_maintenance_tasks (below). Ours wait out an unavailable Redis instead.
    def check_for_suspension(self, burst: bool) -> None:
        self._patiently(super().check_for_suspension, burst)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None) -> tuple[Job, Queue] | None:
        taken = self._patiently(super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)
        if self.waiting_for_redis:  # its heartbeat and the queue's move were written
            log.warning("Redis is available again: resuming")
            self.waiting_for_redis = False
        return taken

    def heartbeat(self, timeout: int | None = None, pipeline: redis.client.Pipeline | None = None
                  ) -> None:
        if pipeline is not None:  # part of a transaction rq executes (and handles) itself
            super().heartbeat(timeout, pipeline)
        else:
            self._patiently(super().heartbeat, timeout)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job. If Redis fails under it: a job it refused to start goes back on the
        queue; one that started is left 'started' (rq could not record how it ended) and runs
        again once its heartbeat runs out, looking before it sends again."""
        if isinstance(job, DeliveryJob):
            job.deliverer = self.deliverer
        try:
            super().execute_job(job, queue)
        except UNAVAILABLE as exc:
            with contextlib.suppress(*UNAVAILABLE):
                self.set_state(WorkerStatus.IDLE)  # so that SIGTERM stops the wait below
            self._wait_for_redis(exc)
            if self._patiently(self._requeue_unstarted, job, queue):
                log.warning("job %s: Redis refused to start it; back on the queue", job.id)
            else:
                log.warning("job %s: Redis failed while it ran (%s); it runs again within "
                            "about %d s", job.id, _why(exc),
                            self.get_heartbeat_ttl(job) + self.maintenance_interval)

    def _requeue_unstarted(self, job: Job, queue: Queue) -> bool:
        """Put a dequeued job that never started back at the queue's head, unless another
        worker's maintenance took it from rq's intermediate list first."""
        if job.id in queue.started_job_registry:
            return False
        return bool(self.connection.eval(scripts.REQUEUE_UNSTARTED, 2,
                                         queue.intermediate_queue.key, queue.key, job.id))

    def teardown(self) -> None:
        """rq's teardown, which records the worker's end in Redis: if that fails, the worker
        still stops (its record expires by itself)."""
        try:
            super().teardown()
        except UNAVAILABLE as exc:
            log.warning("could not record this worker's end in Redis (%s)", _why(exc))
            self.unsubscribe()

    def _patiently(self, call: Callable[..., T], *args: object) -> T:
        while True:
            try:
                return call(*args)
            except UNAVAILABLE as exc:
                self._wait_for_redis(exc)

    def _wait_for_redis(self, exc: Exception) -> None:
        """Until Redis takes a write again (this worker's heartbeat), backing off. One line
        when it starts waiting; the next dequeue says when it resumes. SIGTERM still stops
        the worker."""
        if not self.waiting_for_redis:
            log.warning("Redis is unavailable (%s): waiting for it", _why(exc))
            self.waiting_for_redis = True
        failures = 1
        while True:
            if self._stop_requested:
                raise StopRequested
            time.sleep(REDIS_UNAVAILABLE.steady_delay(failures))
            try:
                SimpleWorker.heartbeat(self)
            except UNAVAILABLE:
                failures += 1
                continue
            return

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.timeout is None or job.timeout < 0:
            return super().get_heartbeat_ttl(job, working_time)
        return int(job.timeout) + HEARTBEAT_GRACE

    def run_maintenance_tasks(self) -> None:
        self._patiently(self._maintain)

    def _maintain(self) -> None:
        for queue in self.queues:
            release_dead_scheduler_lock(self.connection, queue.name)
        self._post_due_summaries()
        try:
            super().run_maintenance_tasks()
        except UNAVAILABLE:
            # rq's cleaning lock, taken for 15 minutes and released when the cleaning ends:
            # released now, the cleaning runs again once Redis is back, not 15 minutes later.
            for queue in self.queues:
                queue.release_maintenance_lock()
            raise
        if self.deliverer is not None:
            self.deliverer.watch.check()  # alerts: bad signatures, a stalled queue, silent sources

    def _post_due_summaries(self) -> None:
        """The summaries whose time has come (one worker of all gets each period: see
        bridge/summaries_post.py). A summary that cannot be made is logged, never the end of
        the worker; its claim stays, and the next maintenance tries it again."""
        if self.summaries is None:
            return
        try:
            self.summaries.post_due()
        except UNAVAILABLE:
            raise
        except Exception:
            log.exception("summaries: could not post a due summary; trying again at the "
                          "next maintenance")


def _why(exc: Exception) -> str:
    """The error in a few words: its kind, and Redis's own first words for a refusal."""
    first_line = str(exc).partition("\n")[0]
    return f"{type(exc).__name__}: {first_line[:120]}"


def release_dead_scheduler_lock(connection: redis.Redis, queue: str) -> bool:
    """rq's scheduler (which moves due retries back onto the queue) holds a lock for a minute
    after its process dies, SIGKILLed with its worker; retries wait all that time. A scheduler
    of this machine whose process is gone gives its lock up at once. True if one was released.
    (Schedulers of other machines cannot be checked from here: their locks run out by themselves.)
    """
    key = RQScheduler.get_locking_key(queue)
    holder = connection.get(key)
    if holder is None:
        return False
    hostname, pid = connection.hmget(rq_scheduler(holder.decode()), "hostname", "pid")
    if hostname is None or pid is None or hostname.decode() != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
        return False  # alive
    except ProcessLookupError:
        pass
    except (PermissionError, ValueError):
        return False
    released = bool(connection.eval(scripts.RELEASE_SCHEDULER_LOCK, 1, key, holder))
    if released:
        log.info("released the scheduler lock of queue %s held by dead process %s", queue,
                 int(pid))
    return released


def run_worker(config: Config, redis_url: str, *, burst: bool = False,
               maintenance_interval: int = MAINTENANCE_INTERVAL,
               worker_ttl: int = WORKER_TTL, clock: Clock | None = None,
               metrics: Metrics | None = None) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty). Deliveries go by
    ``clock`` (the system's unless given); rq's own scheduling goes by the system's. They are
    counted in ``metrics``, the process's (bridge.metrics; without it, the worker's own)."""
    connection = connect(redis_url, patient=True)
    deliverer = Deliverer(config, connection, clock or Clock(), metrics or Metrics())
    queue = deliverer.queue
    summaries = SummaryPoster(config, queue, deliverer.clock) if config.summaries else None
    # rq's own lines (two a job at INFO) stay out: bridge.delivery logs each delivery with its
    # event's ids; rq's warnings and errors still show.
    log.info("worker on queue %s (Redis %s)", queue.rq.name, redis_url.rpartition("@")[2])
    if not burst:  # then rq forks its scheduler from this process
        # As gunicorn's master before each fork (bridge/gunicorn_app.py): what this process
        # holds (imports, config, deliverer) moves to the collector's permanent generation, so
        # the scheduler's collections leave the pages it shares with us shared instead of
        # copying them. Garbage is collected first so none is kept forever.
        gc.collect()
        gc.freeze()
    failures = 0
    try:
        while True:
            worker = DeliveryWorker([queue.rq], connection=connection, deliverer=deliverer,
                                    summaries=summaries,
                                    serializer=JSONSerializer, worker_ttl=worker_ttl,
                                    maintenance_interval=maintenance_interval,
                                    log_job_description=False)
            try:
                release_dead_scheduler_lock(connection, queue.rq.name)  # before taking it over
                return worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
            except UNAVAILABLE as exc:  # before rq's loop: registering, starting the scheduler
                worker.teardown()
                if not failures:
                    log.warning("Redis is unavailable (%s): waiting for it to start the "
                                "worker", _why(exc))
                failures += 1
                time.sleep(REDIS_UNAVAILABLE.steady_delay(failures))
    finally:
        deliverer.close()
        connection.close()
