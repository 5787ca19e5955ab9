"""What a run (bridge.delivery.run) writes of the jobs it delivers, as rq's worker would.

A job a run delivers is never dequeued by rq, so its records are written here, queued on the
run's pipeline (one round trip a message with its send's other writes): its meta, and, once
posted, what rq's worker writes for a job that succeeded. Through rq's public API (status,
result, finished registry, expiry) where it takes a pipeline; by hand for the three hash fields
it writes only from ``Job.save`` (the whole hash, the payload compressed again): ``meta``,
``started_at``, ``ended_at``. tests/test_store.py reads such a job back through rq and compares
it with one rq's worker finished: it fails the day rq's layout changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.client import Pipeline
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, utcformat


def write_meta(pipe: Pipeline, job: Job) -> None:
    """``job.meta`` as ``Job.save_meta`` writes it."""
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))


def finish(pipe: Pipeline, queue: Queue, job: Job, result: dict[str, Any],
           started_at: datetime, default_ttl: int) -> None:
    """The job succeeded with ``result``: kept its ``result_ttl`` (else ``default_ttl``) s like
    any finished job, out of ``queue``'s scheduled registry, where its run parked it."""
    ttl = job.get_result_ttl(default_ttl)
    ended_at = now()
    job.started_at, job.ended_at = started_at, ended_at
    job.set_status(JobStatus.FINISHED, pipeline=pipe)
    pipe.hset(job.key, mapping={"meta": job.serializer.dumps(job.meta),
                                "started_at": utcformat(started_at),
                                "ended_at": utcformat(ended_at)})
    Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=result, pipeline=pipe,
                  execution_started_at=started_at, execution_ended_at=ended_at)
    queue.scheduled_job_registry.remove(job, pipeline=pipe)
    queue.finished_job_registry.add(job, ttl, pipe)
    job.cleanup(ttl, pipeline=pipe, remove_from_queue=False)
