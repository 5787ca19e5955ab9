"""The RQ job: one run of the delivery steps, and what a failure means.

Failures: 5xx, 429, refused connections, timeouts and ambiguous answers are tried again after
bridge.retry's backoff (at least the server's Retry-After), up to ``delivery.max_attempts``
sends; everything else Pumble refuses (key, validation, unknown channel) is dead-lettered at once
with its reason. Waiting (for a thread root, its turn, a rate-limit slot) is not an attempt.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from rq import get_current_job
from rq.job import Job

from bridge import alerts
from bridge.delivery.attempt import Attempt, DeadLetter, Outcome
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.steps import STEPS, run_steps
from bridge.notification import Notification
from bridge.pumble import AmbiguousError, AuthError, PumbleError
from bridge.ratelimit import RateLimitTimeout

log = logging.getLogger(__package__)


class DeliveryJob(Job):
    """rq's job, with the Deliverer of the worker running it (bridge.worker hands it over)."""

    deliverer: Deliverer | None = None


def deliver(payload: dict[str, Any]) -> Outcome:
    """The RQ job. Returns Pumble's ids for the record, or a Retry to run again later."""
    job = get_current_job()
    deliverer = job.deliverer if isinstance(job, DeliveryJob) else None
    if job is None or deliverer is None:
        raise RuntimeError("bridge.delivery.deliver runs in the bridge's own worker "
                           "(pumble-bridge worker), which gives it its config")
    return run(Attempt(deliverer, job, Notification.from_payload(payload)))


def run(attempt: Attempt) -> Outcome:
    """The steps; then, for a failure, a retry after a backoff or a dead letter."""
    route = attempt.notification.route
    try:
        try:
            outcome = run_steps(STEPS, attempt)
        except PumbleError as exc:
            if exc.retryable or isinstance(exc, AmbiguousError):
                return attempt.failed(exc)
            if isinstance(exc, AuthError) and exc.status:  # Pumble's 401/403, not a missing key
                attempt.deliverer.alerter.post(alerts.key_rejected(
                    attempt.notification.account, exc.status))
            raise DeadLetter(f"refused by Pumble: {type(exc).__name__}: {exc}") from None
    except DeadLetter as exc:
        attempt.dead(str(exc))
        raise
    except RateLimitTimeout as exc:
        log.info("job %s (route %s): %s; trying again shortly", attempt.job.id, route, exc,
                 extra=attempt.context())
        return attempt.waiting(max(1, math.ceil(exc.retry_after)))
    except Exception:
        attempt.deliverer.metrics.delivery(route, "error")  # rq's crash retries take over
        raise
    if outcome is None:
        raise AssertionError("the last step (record) ends every run")
    return outcome
