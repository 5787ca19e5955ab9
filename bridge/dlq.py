"""The dead letters: notifications the worker will not send again by itself.

They are the jobs in rq's failed-job registry of the bridge's queue, each with its reason, its
attempts and the webhook it came from. ``retry`` puts one back on the queue with fresh counters
(rq's own requeue keeps the old ones, so a retried job would get a single try).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rq.job import Job, JobStatus

from bridge.notification import Notification
from bridge.queue import DELIVER, FAILURE_TTL, NotificationQueue, job_id, readable_body
from bridge.retry import CRASH_RETRIES
from bridge.sources import WebhookRequest

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from bridge.pipeline import Pipeline


@dataclass(frozen=True)
class DeadLetterRecord:
    id: str
    notification: Notification
    reason: str
    attempts: int
    failed_at: datetime | None
    event: dict[str, Any] | None  # the webhook as received, while it is kept

    @property
    def webhook_body(self) -> str | None:
        """The kept webhook's body for a person: JSON indented, anything else as received."""
        return None if self.event is None else readable_body(self.event.get("body") or "")


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

    def add(self, notification: Notification, reason: str) -> bool:
        """A dead letter from the start: a notification whose template failed to render. Its
        text is made again from the stored webhook (which the receiver keeps as long as dead
        letters) when it is retried. False when it was there already."""
        new_id = job_id(self.queue.rq.name, notification)
        connection = self.queue.rq.connection
        if Job.exists(new_id, connection=connection):
            return False  # a re-delivery of a webhook already recorded
        job = Job.create(DELIVER, args=[notification.to_payload()], connection=connection,
                         serializer=self.queue.rq.serializer, id=new_id, description="deliver",
                         origin=self.queue.rq.name, timeout=self.queue.delivery.job_timeout,
                         failure_ttl=FAILURE_TTL, retry=CRASH_RETRIES,
                         meta={"dead_reason": f"the template failed: {reason}",
                               "unrendered": True})
        job.ended_at = datetime.now(UTC)
        job.set_status(JobStatus.FAILED, pipeline=None)
        job.save()
        self.registry.add(job, ttl=FAILURE_TTL, exc_string=reason)
        return True

    def retry(self, job_id: str, pipeline: Pipeline | None = None) -> bool:
        """Back on the queue with its attempts reset; False if it is not a dead letter.

        A dead letter whose template failed is rendered again first, by ``pipeline`` (the
        current config) from the stored webhook; RenderError if it still fails."""
        job = self._job(job_id)
        if job is None:
            return False
        if job.meta.get("unrendered"):
            job.args = [self._render_again(job, pipeline).to_payload()]
            job.meta.pop("unrendered")
        for key in ("attempts", "last_error", "dead_reason"):
            # maybe_sent_at stays: a post that may have been made is looked for (by its mark)
            # before it is sent again, after a retry as after any ambiguous attempt.
            job.meta.pop(key, None)
        job.retries_left = CRASH_RETRIES.max
        job.number_of_retries = 0
        job.save()
        job.save_meta()  # save() leaves an emptied meta's old value behind
        self.registry.requeue(job_id)
        return True

    def retry_all(self, pipeline: Pipeline | None = None) -> int:
        """Every dead letter that can go back; one whose template still fails stays."""
        from bridge.render import RenderError

        queued = 0
        for one in self.ids():
            try:
                queued += self.retry(one, pipeline)
            except RenderError as exc:
                log.warning("dead letter %s stays: %s", one, exc)
        return queued

    def _render_again(self, job: Job, pipeline: Pipeline | None) -> Notification:
        from bridge.render import RenderError

        notification = Notification.from_payload(job.args[0])
        event = self.queue.load_event(notification.source, notification.event_id)
        if pipeline is None or event is None:
            raise RenderError(f"{job.id}: its template failed and "
                              + ("the webhook is no longer kept" if event is None
                                 else "no config was given to render it again"))
        webhook = WebhookRequest.of(event.get("headers", {}), event["body"].encode())
        return pipeline.render_again(notification, notification.source, webhook)

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
