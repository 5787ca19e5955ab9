"""A job that finished must never be run again (rq #2289/#2424, fixed in rq 3.0 by #2466).

rq 2.12 forgets the job's execution when the success transaction hits a WatchError (the Redis
connection dropping between the job's end and EXEC is one way), leaves the job in the started
registry and a later maintenance pass "recovers" it as abandoned: with our crash retries that is a
second post. Here the drop is made at exactly that moment."""

from __future__ import annotations

import socket
import time

from rq.serializers import JSONSerializer
from rq.worker import BaseWorker, SimpleWorker

from bridge.queue import connect
from bridge.retry import CRASH_RETRIES
from bridge.worker import DeliveryWorker


class PromptlyStoppingWorker(SimpleWorker):
    """rq's own worker, with the pub/sub listener of ours: rq's wakes every 60 s and redis-py 8.2
    waits for it as the worker stops, which made this test take a minute, depending on timing."""

    subscribe = DeliveryWorker.subscribe
    unsubscribe = DeliveryWorker.unsubscribe


def test_a_finished_job_is_not_run_again_after_a_connection_drop(redis_url, rq_queue, monkeypatch):
    connection = connect(redis_url, patient=True)
    job = rq_queue.enqueue("os.getpid", job_id=f"n-{rq_queue.name}", unique=True,
                           retry=CRASH_RETRIES, job_timeout=30)
    dropped = []
    cleanup_execution = BaseWorker.cleanup_execution

    def drop_before_exec(self, job, pipeline, *args, **kwargs):
        cleanup_execution(self, job, pipeline, *args, **kwargs)
        if not dropped and pipeline.watching:
            dropped.append(True)
            pipeline.connection._sock.shutdown(socket.SHUT_RDWR)  # EXEC will find it closed

    monkeypatch.setattr(BaseWorker, "cleanup_execution", drop_before_exec)
    worker = PromptlyStoppingWorker([rq_queue.name], connection=connection,
                                    serializer=JSONSerializer)
    worker.work(burst=True)
    monkeypatch.undo()
    assert dropped

    rq_queue.started_job_registry.cleanup(timestamp=time.time() + 3600)  # long after it expired

    job.refresh()
    assert job.get_status() == "finished"
    assert rq_queue.started_job_registry.get_job_ids() == []
    assert rq_queue.scheduled_job_registry.get_job_ids() == []
    assert rq_queue.failed_job_registry.get_job_ids() == []
    assert rq_queue.get_job_ids() == []
