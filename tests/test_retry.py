"""bridge.retry: one backoff policy (full jitter, never sooner than Retry-After) for a job's next
attempt and the Pumble client's reads."""

from __future__ import annotations

import pytest

from bridge.pumble import AuthError, RateLimitedError, TransientError
from bridge.retry import READS, UNCOUNTED_RUNS, Backoff, read_retries, run_again_in


@pytest.mark.parametrize("failures", [0, 1, 2, 3, 8])
def test_a_jobs_delay_is_drawn_up_to_base_times_two_to_the_failures_capped(failures):
    backoff = Backoff(base=2.0, cap=60.0)
    window = min(60.0, 2.0 * 2**failures)
    delays = {backoff.job_delay(failures, TransientError("HTTP 503")) for _ in range(400)}
    assert min(delays) >= 1  # whole seconds, at least one: rq's scheduler counts in them
    assert max(delays) <= max(1, -(-window // 1))
    if window >= 8:  # jittered: spread over the window, not one value
        assert len(delays) > window / 4


def test_a_jobs_delay_is_never_sooner_than_retry_after_plus_rqs_second():
    backoff = Backoff(base=0.25, cap=1.0)
    error = RateLimitedError("HTTP 429", retry_after=4)
    assert {backoff.job_delay(1, error) for _ in range(50)} == {5}


def test_reads_wait_by_the_same_policy_and_honour_retry_after_up_to_the_cap():
    slept: list[float] = []
    failures = iter([TransientError("503"), RateLimitedError("429", retry_after=3),
                     RateLimitedError("429", retry_after=3600)])

    def read() -> str:
        error = next(failures, None)
        if error:
            raise error
        return "answer"

    retrying = read_retries((TransientError, RateLimitedError), tries=4).copy(sleep=slept.append)
    assert retrying(read) == "answer"
    first, second, third = slept
    assert 0 <= first <= READS.base * 2  # after one failure: up to base × 2
    assert second >= 3  # the server's Retry-After
    assert third == READS.cap  # a read inside a job never waits an hour


def test_reads_give_up_with_the_last_error_and_never_retry_a_refusal():
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise AuthError("bad key")

    with pytest.raises(AuthError):
        read_retries((TransientError,), tries=3).copy(sleep=lambda s: None)(refused)
    assert len(calls) == 1

    def down() -> None:
        calls.append(1)
        raise TransientError(f"503 #{len(calls)}")

    with pytest.raises(TransientError, match="503 #4"):
        read_retries((TransientError,), tries=3).copy(sleep=lambda s: None)(down)


def test_run_again_later_is_out_of_rqs_count():
    again = run_again_in(7)
    assert again.intervals == [7]
    assert again.max == UNCOUNTED_RUNS


def test_a_worker_waiting_for_redis_probes_after_1_2_4_then_every_5_seconds():
    from bridge.retry import REDIS_UNAVAILABLE

    assert [REDIS_UNAVAILABLE.steady_delay(n) for n in range(1, 7)] == [1, 2, 4, 5, 5, 5]


def test_redis_clients_reconnect_by_the_policy(redis_url):
    from bridge.queue import connect
    from bridge.retry import REDIS_PATIENT_RETRIES, REDIS_PROMPT_RETRIES

    patient, prompt = connect(redis_url, patient=True), connect(redis_url)
    try:
        assert patient.get_retry().get_retries() == REDIS_PATIENT_RETRIES
        assert prompt.get_retry().get_retries() == REDIS_PROMPT_RETRIES
    finally:
        patient.close()
        prompt.close()
