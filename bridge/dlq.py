"""The dead letters: notifications the worker will not send again by itself.

They are the jobs in rq's failed-job registry of the bridge's queue, each with its reason, its
attempts and the webhook it came from. ``retry`` puts one back on the queue with fresh counters
(rq's own requeue keeps the old ones, so a retried job would get a single try: rq-notes §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rq.job import Job

from bridge.notification import Notification
from bridge.queue import CRASH_RETRIES, NotificationQueue


@dataclass(frozen=True)
class DeadLetterRecord:
    id: str
    notification: Notification
    reason: str
    attempts: int
    failed_at: datetime | None
    event: dict[str, Any] | None  # the webhook as received, while it is kept


class DeadLetters:
    def __init__(self, queue: NotificationQueue):
        self.queue = queue
        self.registry = queue.rq.failed_job_registry

    def ids(self) -> list[str]:
        return self.registry.get_job_ids()

    def list(self) -> list[DeadLetterRecord]:
        jobs = Job.fetch_many(self.ids(), connection=self.queue.rq.connection,
                              serializer=self.queue.rq.serializer)
        return [self._record(job, with_event=False) for job in jobs if job is not None]

    def get(self, job_id: str) -> DeadLetterRecord | None:
        job = self._job(job_id)
        return self._record(job, with_event=True) if job else None

    def retry(self, job_id: str) -> bool:
        """Back on the queue with its attempts reset; False if it is not a dead letter."""
        job = self._job(job_id)
        if job is None:
            return False
        for key in ("attempts", "last_error", "dead_reason", "maybe_sent_at"):
            # maybe_sent_at goes too: a person asked for it to be sent, having looked.
            job.meta.pop(key, None)
        job.retries_left = CRASH_RETRIES.max
        job.number_of_retries = 0
        job.save()
        job.save_meta()  # save() leaves an emptied meta's old value behind
        self.registry.requeue(job_id)
        return True

    def retry_all(self) -> int:
        return sum(self.retry(job_id) for job_id in self.ids())

    def purge(self, job_id: str | None = None) -> int:
        """Delete one dead letter, or all of them; how many were deleted."""
        ids = [job_id] if job_id else self.ids()
        deleted = 0
        for one in ids:
            if self._job(one) is not None:
                self.registry.remove(one, delete_job=True)
                deleted += 1
        return deleted

    def _job(self, job_id: str) -> Job | None:
        if job_id not in self.registry:
            return None
        return Job.fetch_many([job_id], connection=self.queue.rq.connection,
                              serializer=self.queue.rq.serializer)[0]

    def _record(self, job: Job, *, with_event: bool) -> DeadLetterRecord:
        notification = Notification.from_payload(job.args[0])
        reason = job.meta.get("dead_reason") or ""
        if not reason:  # a crash rather than a decision: rq's own record says what
            result = job.latest_result()
            reason = (result.exc_string or "").strip().splitlines()[-1:] if result else []
            reason = reason[0] if reason else "unknown (no reason recorded)"
        event = (self.queue.load_event(notification.source, notification.event_id)
                 if with_event else None)
        return DeadLetterRecord(id=job.id, notification=notification, reason=reason,
                                attempts=int(job.meta.get("attempts", 0)),
                                failed_at=job.ended_at, event=event)
