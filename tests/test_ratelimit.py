"""The Redis rate limiter, against a real Redis: one namespace per test, its keys deleted after."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bridge.config import DeliverySettings
from bridge.ratelimit import DEFAULT_LIMITS, Limit, RateLimiter, RateLimitTimeout
from tests.conftest import TEST_KEY, MovedClock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def connection(redis_url: str, queue_name: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    for key in connection.scan_iter(match=f"pumble-bridge:{queue_name}:ratelimit:*"):
        connection.delete(key)
    connection.close()


@pytest.fixture
def make(connection: redis.Redis, queue_name: str):
    def make(limits: dict[str, Limit], **kwargs) -> RateLimiter:
        return RateLimiter(connection, queue_name, limits, **kwargs)

    return make


def used(limiter: RateLimiter, account: str) -> dict[str, int]:
    return {kind: bucket["used"] for kind, bucket in limiter.state(account).items()}


def test_limit_validation():
    assert Limit(1).window == 60.0
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="per_minute"):
            Limit(bad)  # type: ignore[arg-type]
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="window"):
            Limit(5, window=bad)
    assert {k: v.per_minute for k, v in DEFAULT_LIMITS.items()} == {
        "messages": 80, "replies": 80, "reactions": 60, "channels": 60, "requests": 1000}
    # The kinds a config may set (delivery.rate_limits) are exactly the ones with a default.
    assert DeliverySettings(rate_limits=dict.fromkeys(DEFAULT_LIMITS, 5)).rate_limits
    with pytest.raises(ValueError, match=re.escape("unknown kind 'posts' (known: messages, "
                                                   "replies, reactions, channels, requests)")):
        DeliverySettings(rate_limits={"posts": 5})


def test_limiter_validation(connection: redis.Redis, make):
    with pytest.raises(ValueError, match="margin"):
        make({"messages": Limit(1)}, margin=-1)
    with pytest.raises(ValueError, match="kind"):
        make({"bad:kind": Limit(1)})
    with pytest.raises(ValueError, match="namespace"):
        RateLimiter(connection, "")
    limiter = make({"messages": Limit(1)})
    with pytest.raises(ValueError, match="unknown rate-limit kind 'replies'"):
        limiter.try_acquire("acme", "replies")
    with pytest.raises(ValueError, match="max_wait"):
        limiter.acquire("acme", "messages", max_wait=-1)


def test_slots_up_to_the_limit_then_a_wait(make):
    limiter = make({"messages": Limit(3), "requests": Limit(100)}, margin=1.0)
    assert [limiter.try_acquire("acme", "messages") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_acquire("acme", "messages")
    # the oldest slot leaves window + margin (61 s) after it was taken, a moment ago
    assert 55 < wait <= 61
    assert limiter.try_acquire("acme", "messages") > 0
    assert used(limiter, "acme") == {"messages": 3, "requests": 3}


def test_the_margin_lengthens_the_window(make):
    limiter = make({"messages": Limit(1, window=1.0)}, margin=5.0)
    assert limiter.window("messages") == 6.0
    assert limiter.try_acquire("acme", "messages") == 0.0
    assert 1.0 < limiter.try_acquire("acme", "messages") <= 6.0


def test_both_the_kind_and_the_overall_bucket_are_enforced_and_a_refusal_charges_neither(make):
    limiter = make({"messages": Limit(2), "reactions": Limit(60), "requests": Limit(3)})
    assert limiter.try_acquire("acme", "messages") == 0.0
    assert limiter.try_acquire("acme", "messages") == 0.0
    assert limiter.try_acquire("acme", "messages") > 0  # the kind is full
    assert used(limiter, "acme") == {"messages": 2, "reactions": 0, "requests": 2}
    assert limiter.try_acquire("acme", "reactions") == 0.0
    assert used(limiter, "acme") == {"messages": 2, "reactions": 1, "requests": 3}
    assert limiter.try_acquire("acme", "reactions") > 0  # the overall bucket is full
    assert limiter.try_acquire("acme", "requests") > 0
    assert used(limiter, "acme") == {"messages": 2, "reactions": 1, "requests": 3}


def test_a_full_overall_bucket_alone_refuses(make):
    limiter = make({"messages": Limit(10), "requests": Limit(1)})
    assert limiter.try_acquire("acme", "requests") == 0.0  # a read: the overall bucket only
    assert used(limiter, "acme") == {"messages": 0, "requests": 1}
    assert limiter.try_acquire("acme", "messages") > 0
    assert used(limiter, "acme") == {"messages": 0, "requests": 1}


def test_accounts_and_kinds_are_independent(make):
    limiter = make({"messages": Limit(1), "replies": Limit(1), "requests": Limit(100)})
    assert limiter.try_acquire("acme", "messages") == 0.0
    assert limiter.try_acquire("acme", "messages") > 0
    assert limiter.try_acquire("acme", "replies") == 0.0
    # names that an unescaped key would confuse: separators, glob and hash-tag characters
    for other in ("acme:messages", "acme:", "acme*", "{acme}", "Acme", "acmé", ""):
        assert limiter.try_acquire(other, "messages") == 0.0, other
    assert used(limiter, "acme") == {"messages": 1, "replies": 1, "requests": 2}
    assert used(limiter, "acme:messages") == {"messages": 1, "replies": 0, "requests": 1}


def test_keys_hold_no_account_name_and_expire(connection: redis.Redis, make, queue_name: str):
    limiter = make({"messages": Limit(5, window=0.2), "requests": Limit(5, window=0.3)},
                   margin=0.05)
    account = "shop:secret-looking-name"
    assert limiter.try_acquire(account, "messages") == 0.0
    keys = sorted(k.decode() for k in
                  connection.scan_iter(match=f"pumble-bridge:{queue_name}:ratelimit:*"))
    assert keys == sorted([limiter.key(account, "messages"), limiter.key(account, "requests")])
    assert all("secret" not in key and "shop" not in key for key in keys)
    assert keys[0].startswith(f"pumble-bridge:{queue_name}:ratelimit:{{")
    assert 0 < connection.pttl(limiter.key(account, "messages")) <= 250
    assert 250 < connection.pttl(limiter.key(account, "requests")) <= 350
    members = connection.zrange(limiter.key(account, "messages"), 0, -1)
    assert members == connection.zrange(limiter.key(account, "requests"), 0, -1)
    time.sleep(0.4)
    assert connection.exists(*keys) == 0  # an idle account leaves nothing behind


def test_members_are_unique_per_slot(connection: redis.Redis, make):
    limiter = make({"messages": Limit(50)})
    for _ in range(50):
        assert limiter.try_acquire("acme", "messages") == 0.0
    assert connection.zcard(limiter.key("acme", "messages")) == 50


def test_acquire_takes_a_free_slot_without_sleeping(make):
    clock = MovedClock()
    limiter = make({"messages": Limit(2)}, clock=clock)
    assert limiter.acquire("acme", "messages") == 0.0
    assert limiter.acquire("acme", "messages", max_wait=0) == 0.0
    assert clock.sleeps == []


def test_acquire_sleeps_until_the_oldest_slot_leaves_the_window(make):
    clock = MovedClock()  # the windows go by Redis's time moved on by the clock's sleeps
    limiter = make({"messages": Limit(2, window=40), "requests": Limit(100)}, margin=10,
                   clock=clock)
    before_first = clock.time()
    assert limiter.try_acquire("acme", "messages") == 0.0
    after_first = clock.time()
    clock.sleep(20)
    assert limiter.try_acquire("acme", "messages") == 0.0
    before_acquire = clock.time()
    waited = limiter.acquire("acme", "messages", max_wait=500)
    assert clock.sleeps[1:], "acquire took a slot that was not free"
    # the first sleep lasts until the first slot is window + margin = 50 s old
    slack = 0.005
    assert before_first + 50 - clock.slept_at[1] - slack <= clock.sleeps[1]
    assert clock.sleeps[1] <= after_first + 50 - before_acquire + slack
    assert waited == pytest.approx(sum(clock.sleeps[1:]))
    # the first slot left the window, the second is still in it, and the new one came in
    assert used(limiter, "acme") == {"messages": 2, "requests": 3}


def test_acquire_raises_beyond_max_wait_and_takes_nothing(make):
    clock = MovedClock()
    limiter = make({"messages": Limit(1), "requests": Limit(100)}, clock=clock)
    assert limiter.acquire("acme", "messages") == 0.0
    for max_wait in (0, 1.0, 30.0):
        with pytest.raises(RateLimitTimeout) as raised:
            limiter.acquire("acme", "messages", max_wait=max_wait)
        assert raised.value.kind == "messages" and raised.value.account == "acme"
        assert 55 < raised.value.retry_after <= 61
        assert raised.value.waited == 0.0
    assert clock.sleeps == []
    assert used(limiter, "acme") == {"messages": 1, "requests": 1}


def test_state(make):
    limiter = make({"messages": Limit(2, window=10), "replies": Limit(5), "requests": Limit(3)},
                   margin=0.5)
    empty = limiter.state("acme")
    assert empty == {
        "messages": {"used": 0, "limit": 2, "window": 10.5, "wait": 0.0},
        "replies": {"used": 0, "limit": 5, "window": 60.5, "wait": 0.0},
        "requests": {"used": 0, "limit": 3, "window": 60.5, "wait": 0.0},
    }
    limiter.try_acquire("acme", "messages")
    limiter.try_acquire("acme", "messages")
    state = limiter.state("acme")
    assert state["messages"]["used"] == 2 and 5 < state["messages"]["wait"] <= 10.5
    assert state["replies"] == {"used": 0, "limit": 5, "window": 60.5, "wait": 0.0}
    assert state["requests"]["used"] == 2 and state["requests"]["wait"] == 0.0
    limiter.try_acquire("acme", "replies")
    state = limiter.state("acme")
    assert state["requests"]["used"] == 3 and 55 < state["requests"]["wait"] <= 60.5
    # the wait reported is the one try_acquire would give, from the same Redis clock
    assert limiter.try_acquire("acme", "messages") == pytest.approx(
        state["requests"]["wait"], abs=1.0)
    assert limiter.state("nobody")["requests"]["used"] == 0


SENDER = textwrap.dedent("""
    import json, sys
    import httpx, redis
    from bridge.ratelimit import Limit, RateLimiter, RateLimitTimeout
    redis_url, namespace, pumble_url, key, count = sys.argv[1:6]
    limiter = RateLimiter(redis.Redis.from_url(redis_url), namespace,
                          {"messages": Limit(10, window=60), "requests": Limit(1000)})
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start sending together
    statuses, refused = [], 0
    with httpx.Client(timeout=10) as client:
        for i in range(int(count)):
            try:
                limiter.acquire("acme", "messages", max_wait=0.2)
            except RateLimitTimeout:
                refused += 1
                continue
            response = client.post(f"{pumble_url}/sendMessage", headers={"ApiKey": key},
                                   json={"channel": "orders", "text": f"m {i}", "asBot": True})
            statuses.append(response.status_code)
    print(json.dumps({"statuses": statuses, "refused": refused}), flush=True)
""")


def test_two_processes_never_exceed_pumbles_limit(redis_url: str, queue_name: str,
                                                   connection: redis.Redis, fake_pumble):
    response = httpx.post(f"{fake_pumble.url}/_fake/faults",
                          json={"rate_limit": {"per_minute": 10}})
    response.raise_for_status()
    senders = [subprocess.Popen(
        [sys.executable, "-c", SENDER, redis_url, queue_name, fake_pumble.url, TEST_KEY, "7"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(2)]
    try:
        for sender in senders:
            assert sender.stdout is not None
            assert sender.stdout.readline().strip() == "ready"
        for sender in senders:
            assert sender.stdin is not None
            sender.stdin.write("go\n")
            sender.stdin.flush()
        outputs = [sender.communicate(timeout=30)[0] for sender in senders]
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert all(sender.returncode == 0 for sender in senders)
    results = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    statuses = [status for result in results for status in result["statuses"]]
    assert statuses.count(429) == 0
    assert statuses == [200] * 10
    assert sum(result["refused"] for result in results) == 4
    assert len(fake_pumble.messages("orders")) == 10
