"""Every backoff of the bridge, from one policy and one place.

The policy: after ``n`` failures, wait a random time up to ``base × 2ⁿ`` seconds, at most
``cap`` (exponential backoff with full jitter, so workers that failed together do not come
back together), and never sooner than the server's ``Retry-After`` when it sent one.

- **A delivery job's next attempt** (``Backoff.job_delay``): ``delivery.backoff_base`` and
  ``delivery.backoff_cap`` from the config, ``n`` the sends made; rq schedules it.
- **The Pumble client's reads** (``read_retries``): ``READS``, retried in the client itself
  (writes never are: bridge.pumble).
- **The Redis client's reconnects** (``Backoff.redis_retry``): ``REDIS_PATIENT`` for the worker,
  which rides out a restart of about a minute; ``REDIS_PROMPT`` for the receiver, which gives up
  fast so the shop gets its 503 and retries.
- **A worker waiting for an unavailable Redis** (``REDIS_UNAVAILABLE``, no jitter).
- **rq's crash retries** (``CRASH_RETRIES``): a worker that died mid-job.
- **"Run again later"** (``run_again_in``): how a job asks rq for its next run.

tenacity computes the jittered waits (``wait_random_exponential``) and runs the client's retry
loop; redis-py applies the same formula to its reconnects (``ExponentialWithJitterBackoff``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis
import tenacity
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as RedisRetry
from rq import Retry


@dataclass(frozen=True)
class Backoff:
    """After ``n`` failures, a random wait up to ``base × 2ⁿ`` seconds, at most ``cap``."""

    base: float
    cap: float

    def jitter(self) -> tenacity.wait.wait_base:
        # tenacity's n-th attempt waits up to multiplier × 2ⁿ⁻¹: the multiplier is twice our base.
        return tenacity.wait_random_exponential(multiplier=2 * self.base, max=self.cap)

    def steady_delay(self, failures: int) -> float:
        """The whole window, no jitter: for one process waiting on its own resource (nothing
        to spread out), ``base × 2ⁿ`` up to ``cap``."""
        wait = tenacity.wait_exponential(multiplier=2 * self.base, max=self.cap)
        return wait(_failed(failures))

    def job_delay(self, failures: int, error: BaseException) -> int:
        """Whole seconds (rq's scheduler counts in them) before a job's next attempt, after
        ``failures`` sends; past a ``Retry-After`` by one second, as rq may run a job scheduled
        for a fraction of a second up to one second early."""
        state = _failed(failures, error)
        delay = self.jitter()(state)
        asked = _retry_after(state)
        if asked is not None:
            delay = max(delay, asked + 1)
        return max(1, math.ceil(delay))

    def redis_retry(self, retries: int) -> RedisRetry:
        """redis-py's reconnect policy: ``retries`` tries, this backoff between them."""
        return RedisRetry(ExponentialWithJitterBackoff(cap=self.cap, base=self.base), retries)


READS = Backoff(base=0.25, cap=8.0)  # the Pumble client's reads, retried inside one job
READ_RETRIES = 2  # tries after the first
REDIS_PATIENT = Backoff(base=0.1, cap=2.0)  # with REDIS_PATIENT_RETRIES, about a minute
REDIS_PATIENT_RETRIES = 60
REDIS_PROMPT = Backoff(base=0.02, cap=0.2)
REDIS_PROMPT_RETRIES = 2
# A worker whose Redis refuses writes or is out of reach past the client's own retries probes it
# again after 1, 2, 4, then every 5 s (bridge.worker).
REDIS_UNAVAILABLE = Backoff(base=0.5, cap=5.0)
# What Redis unavailable looks like: refusing writes (full under noeviction, a read-only
# replica), loading its data, or out of reach once the connection's own retries are spent.
REDIS_UNAVAILABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.OutOfMemoryError,
                            redis.ReadOnlyError)

# A job's own failures are decided by bridge.delivery; this net only catches a worker that died
# mid-job (SIGKILL, lost machine) or a bug: the job is run again this many times. The first time
# at once: the job was already given up for dead, and a dead worker's scheduler lock would hold
# a scheduled run back for another minute.
CRASH_RETRIES = Retry(max=3, interval=[0, 30, 120])

# rq counts the Retry a job returns against its ``max``; a delivery's own attempts and max_age
# bound its runs, so rq's count is set out of reach.
UNCOUNTED_RUNS = 10**6


def run_again_in(seconds: int) -> Retry:
    """What a job returns to be run again in ``seconds`` (whole, at least 1)."""
    return Retry(max=UNCOUNTED_RUNS, interval=seconds)


def read_retries(retry_on: tuple[type[BaseException], ...],
                 tries: int = READ_RETRIES + 1) -> tenacity.Retrying:
    """The loop a read runs in: ``tries`` in all, on the errors ``retry_on``, waiting by
    ``READS`` (a server's Retry-After too, up to ``READS.cap``); the last error is raised."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        stop=tenacity.stop_after_attempt(tries), wait=_read_wait, reraise=True)


def _read_wait(state: tenacity.RetryCallState) -> float:
    delay = READS.jitter()(state)
    asked = _retry_after(state)
    return min(READS.cap, delay if asked is None else max(delay, asked))


def _retry_after(state: tenacity.RetryCallState) -> float | None:
    """The wait the server asked for with the last failure (bridge.pumble.RateLimitedError)."""
    error = state.outcome.exception() if state.outcome is not None else None
    return getattr(error, "retry_after", None)


def _failed(failures: int, error: BaseException | None = None) -> tenacity.RetryCallState:
    """tenacity's record of a call that failed ``failures`` times, the last with ``error``: a
    job's attempts are counted in its rq record, a worker's waits in the worker, not in a
    tenacity loop."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = failures
    if error is not None:
        state.set_exception((type(error), error, error.__traceback__))
    return state
