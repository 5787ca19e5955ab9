"""The job the worker runs: send one notification to Pumble, then decide what a failure means.

- Sent: the job's result is Pumble's message id and channel id.
- Certainly not applied (5xx, refused connection, 429): sent again later with exponential
  backoff and full jitter, at least the server's Retry-After; the job is failed after
  MAX_ATTEMPTS.
- Refused for good (key, validation, unknown channel) or ambiguous (maybe applied): the job fails
  at once and is kept in RQ's failed-job registry with the reason, since sending it again blindly
  could post twice.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from rq import Retry, get_current_job

from bridge.config import Config, config_path, load_config
from bridge.notification import Notification
from bridge.pumble import AuthError, PumbleClient, PumbleError, RateLimitedError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_BASE = 2.0  # seconds
BACKOFF_CAP = 300.0


class Deliverer:
    """What a worker process needs to send: its config and one Pumble client per account."""

    def __init__(self, config: Config):
        self.config = config
        self._clients: dict[str, PumbleClient] = {}

    def client(self, account: str) -> PumbleClient:
        """The account's client, made once: its connections stay open between sends."""
        if account not in self._clients:
            pumble = self.config.pumble
            credentials = pumble.account(account)
            if credentials is None:
                raise AuthError(f"no key for Pumble account {account!r} in this worker's config")
            key, base_url = credentials
            self._clients[account] = PumbleClient(
                key, base_url, connect_timeout=pumble.connect_timeout,
                read_timeout=pumble.read_timeout)
        return self._clients[account]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


_deliverer: Deliverer | None = None


def configure(config: Config) -> Deliverer:
    """Set the config this process delivers with (the worker does it at start-up)."""
    global _deliverer
    if _deliverer is not None:
        _deliverer.close()
    _deliverer = Deliverer(config)
    return _deliverer


def deliver(payload: dict[str, Any]) -> dict[str, str] | Retry:
    notification = Notification.from_payload(payload)
    deliverer = _deliverer or configure(load_config(config_path(None)))
    try:
        client = deliverer.client(notification.account)
        ref = client.send_message(notification.channel, notification.text,
                                  as_bot=notification.as_bot)
    except PumbleError as exc:
        if not exc.retryable:
            raise
        return _retry_later(exc)
    log.info("delivered event %s (route %s) to #%s as message %s", notification.event_id,
             notification.route, notification.channel, ref.id)
    return {"message_id": ref.id, "channel_id": ref.channel_id}


def _retry_later(error: PumbleError) -> Retry:
    job = get_current_job()
    attempt = (job.number_of_retries or 0) + 1 if job else MAX_ATTEMPTS
    if job is None or attempt >= MAX_ATTEMPTS:
        raise error
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))  # full jitter
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        delay = max(delay, error.retry_after + 1)  # rq's scheduler works in whole seconds
    job.meta["last_error"] = str(error)
    job.save_meta()
    log.warning("job %s: %s; attempt %d of %d in %ds", job.id, error, attempt + 1,
                MAX_ATTEMPTS, math.ceil(delay))
    # A returned Retry is rq's way to choose the delay per attempt (rq-notes §1).
    return Retry(max=MAX_ATTEMPTS - 1, interval=max(1, math.ceil(delay)))
