"""What a run (bridge.delivery.run) writes of the jobs it delivers, as rq's worker would.

A job a run delivers is never dequeued by rq, so its records are written here, queued on the
run's pipeline (one round trip a message with its send's other writes): its meta before the
send, and, once posted, what rq's worker writes for a job that succeeded. Its result through
rq's public API (``Result.create``); the rest by hand in one script (``scripts.FINISH_IN_RUN``):
rq's worker would take nine commands, each packed and parsed by redis-py, for the hash fields
(``status``, ``meta``, ``started_at``, ``ended_at``), the expiry and the registries, and a run
does this for every message. tests/test_store.py reads such a job back through rq and compares
it with one rq's worker finished: it fails the day rq's layout changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.utils import current_timestamp, now, utcformat

from bridge.store import scripts


def write_meta(pipe: Pipeline, job: Job) -> None:
    """``job.meta`` as ``Job.save_meta`` writes it."""
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))


class Finisher:
    """Finishes the jobs of one queue's runs (the script registered once)."""

    def __init__(self, queue: Queue, default_ttl: int):
        self.queue = queue
        self.default_ttl = default_ttl
        self._finish = queue.connection.register_script(scripts.FINISH_IN_RUN)

    def finish(self, pipe: Pipeline, job: Job, result: dict[str, Any], started_at: datetime,
               line: str, mark: str) -> None:
        """``job`` succeeded with ``result``: kept its ``result_ttl`` (else the default) s like
        any finished job; out of the scheduled registry, where its run parked it, out of its
        ``line`` and without its run's ``mark``."""
        ttl = job.get_result_ttl(self.default_ttl)
        ended_at = now()
        self._finish(keys=[job.key, self.queue.scheduled_job_registry.key,
                           self.queue.finished_job_registry.key, line, mark],
                     args=[job.id, job.serializer.dumps(job.meta), utcformat(started_at),
                           utcformat(ended_at), ttl, current_timestamp() + ttl], client=pipe)
        Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=result, pipeline=pipe,
                      execution_started_at=started_at, execution_ended_at=ended_at)
