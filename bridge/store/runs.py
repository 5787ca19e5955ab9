"""What a run (bridge.delivery.run) reads and writes of the jobs it delivers, as rq would.

A job a run delivers is never dequeued by rq, so its records are read and written here: read,
only the fields a run needs; written, queued on the run's pipeline with its other writes, its
meta before the send and, once posted, what rq's worker writes for a job that succeeded. Its
result through rq's public API (``Result.create``); the rest by hand in one script
(``scripts.FINISH_IN_RUN``): rq's worker would take nine commands, each packed and parsed by
redis-py, for the hash fields (``status``, ``meta``, ``started_at``, ``ended_at``), the expiry
and the registries, and a run does this for every message. tests/test_store.py reads such jobs
through rq and compares them with rq's own: it fails the day rq's layout changes.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.utils import current_timestamp, now, utcformat

from bridge.store import scripts


def decode(connection: redis.Redis, serializer: Any, claimed: list[Any]
           ) -> list[tuple[str, tuple[Job, dict[str, Any]] | None]]:
    """The jobs ``scripts.CLAIM_RUN`` took (its answer after the count of those behind: an id,
    then the record's data and meta, for each), as a run needs them: each id with a ``Job`` that
    knows its id and meta, and its notification's payload; None for a job gone. Only the two
    fields a run reads, decoded as ``Job.restore`` decodes them (the call, compressed by rq's
    enqueue or not by the accept; the meta), not the twenty it parses: a third of a run's cost
    of reading."""
    decoded: list[tuple[str, tuple[Job, dict[str, Any]] | None]] = []
    for at in range(0, len(claimed), 3):
        job_id, data, meta = claimed[at].decode(), claimed[at + 1], claimed[at + 2]
        if not data:  # Lua's false
            decoded.append((job_id, None))
            continue
        with contextlib.suppress(zlib.error):
            data = zlib.decompress(data)
        job = Job(job_id, connection=connection, serializer=serializer)
        job.meta = serializer.loads(meta) if meta else {}
        _function, _instance, args, _kwargs = serializer.loads(data)
        decoded.append((job_id, (job, args[0])))
    return decoded


def write_meta(pipe: Pipeline, job: Job) -> None:
    """``job.meta`` as ``Job.save_meta`` writes it."""
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))


class Finisher:
    """Finishes the jobs of one queue's runs (the script registered once)."""

    def __init__(self, queue: Queue, default_ttl: int, in_digest_prefix: str):
        self.queue = queue
        self.default_ttl = default_ttl
        self.in_digest_prefix = in_digest_prefix
        self._finish = queue.connection.register_script(scripts.FINISH_IN_RUN)
        self._finish_in_digest = queue.connection.register_script(scripts.FINISH_IN_DIGEST)

    def finish(self, pipe: Pipeline, job: Job, result: dict[str, Any], started_at: datetime,
               line: str, mark: str) -> None:
        """``job`` succeeded with ``result``: kept its ``result_ttl`` (else the default) s like
        any finished job; out of the scheduled registry, where its run parked it, out of its
        ``line`` and without its run's ``mark``."""
        ttl = job.get_result_ttl(self.default_ttl)
        ended_at = now()
        scripts.run(self._finish, pipe, [job.key, self.queue.scheduled_job_registry.key,
                                         self.queue.finished_job_registry.key, line, mark],
                    [job.id, job.serializer.dumps(job.meta), utcformat(started_at),
                     utcformat(ended_at), ttl, current_timestamp() + ttl])
        Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=result, pipeline=pipe,
                      execution_started_at=started_at, execution_ended_at=ended_at)

    def finish_in_digest(self, owner: str, ids: Sequence[str]) -> list[str]:
        """The jobs ``ids`` of ``owner``'s digest, just posted, finished as delivered in it
        (their result says so), but for those another worker is running (they end there):
        two round trips for a digest, not a job run for each of its lines. Returns those
        finished."""
        queue, ttl = self.queue, self.default_ttl
        done = [i.decode() for i in self._finish_in_digest(
            keys=[queue.key, queue.scheduled_job_registry.key, queue.finished_job_registry.key],
            args=[owner, self.in_digest_prefix, Job.redis_job_namespace_prefix,
                  utcformat(now()), ttl, current_timestamp() + ttl, *ids])]
        pipe = queue.connection.pipeline(transaction=False)
        for job_id in done:
            Result.create(Job(job_id, connection=queue.connection, serializer=queue.serializer),
                          Result.Type.SUCCESSFUL, ttl, return_value={"in_digest_of": owner},
                          pipeline=pipe)
        pipe.execute()
        return done
