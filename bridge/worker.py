"""The delivery worker process: an RQ SimpleWorker on the notification queue.

SimpleWorker runs jobs in-process: about ten times the throughput of the forking worker, and it
keeps the Pumble connection alive between sends (rq-notes §4; bench/worker.py measures it).
Scale out with more worker processes, on one machine or many: they share the queue, the rate
limits, thread roots and digests through Redis.

A worker killed mid-job (SIGKILL, a lost machine) leaves its job in rq's started registry. rq
gives such a job up ``job_timeout + 60`` s after it started; ours says ``job_timeout + 10`` (the
job cannot outlive its timeout, which rq enforces with SIGALRM in this very process), and
maintenance runs every ``MAINTENANCE_INTERVAL`` s, so another worker runs the job again within
about a minute and a half by default (rq-notes §2). SIGTERM (or Ctrl-C) is a warm shutdown: the
current send finishes first, then the worker is gone within a couple of seconds.
"""

from __future__ import annotations

import logging
import os
import socket

import redis
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from bridge import delivery
from bridge.clock import Clock
from bridge.config import Config
from bridge.queue import connect

log = logging.getLogger(__name__)

WORKER_TTL = 60  # an idle worker blocks 45 s on the queue, then does its maintenance
MAINTENANCE_INTERVAL = 30
HEARTBEAT_GRACE = 10
# Seconds rq's pub/sub listener (the thread that hears rq's commands, such as shutdown) blocks
# between looks at its stop flag.
PUBSUB_POLL = 0.1


class DeliveryWorker(SimpleWorker):
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

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.timeout is None or job.timeout < 0:
            return super().get_heartbeat_ttl(job, working_time)
        return int(job.timeout) + HEARTBEAT_GRACE

    def run_maintenance_tasks(self) -> None:
        for queue in self.queues:
            release_dead_scheduler_lock(self.connection, queue.name)
        super().run_maintenance_tasks()


# Delete the lock only if it still names the dead scheduler (another may have taken it since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
    hostname, pid = connection.hmget(f"rq:scheduler:{holder.decode()}", "hostname", "pid")
    if hostname is None or pid is None or hostname.decode() != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
        return False  # alive
    except ProcessLookupError:
        pass
    except (PermissionError, ValueError):
        return False
    released = bool(connection.eval(_RELEASE, 1, key, holder))
    if released:
        log.info("released the scheduler lock of queue %s held by dead process %s", queue,
                 int(pid))
    return released


def run_worker(config: Config, redis_url: str, *, burst: bool = False,
               maintenance_interval: int = MAINTENANCE_INTERVAL,
               worker_ttl: int = WORKER_TTL, clock: Clock | None = None) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty). Deliveries go by
    ``clock`` (the system's unless given); rq's own scheduling goes by the system's."""
    connection = connect(redis_url, patient=True)
    queue = delivery.configure(config, connection, clock).queue
    worker = DeliveryWorker(
        [queue.rq],
        connection=connection,
        serializer=JSONSerializer,
        worker_ttl=worker_ttl,
        maintenance_interval=maintenance_interval,
        log_job_description=False,
    )
    try:
        # rq's own lines (two a job at INFO) stay out: bridge.delivery logs each delivery with
        # its event's ids; rq's warnings and errors still show.
        log.info("worker %s on queue %s (Redis %s)", worker.name, queue.rq.name,
                 redis_url.rpartition("@")[2])
        release_dead_scheduler_lock(connection, queue.rq.name)  # before taking it over
        return worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
    finally:
        connection.close()
