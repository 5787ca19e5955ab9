"""The two ways the soak (bench/soak.py) got a notification posted twice, each reproduced alone,
deterministically, in about 30 seconds: ``.venv/bin/python -m bench.soak_repro`` (the verdicts
on stdout, the worker's log on stderr).

Each case enqueues one notification the way the receiver does, runs ``run_worker(burst=True)``
(the bridge's worker, in this process) against the fake Pumble over HTTP and a private embedded
Redis, and counts the notification's text at the fake. Exit status 1 while either posts twice.

1. late-write: Pumble applies a write after the client gave up on it (the fake's ``delay``,
   longer than ``pumble.read_timeout``). The attempt ends ambiguous, the retry (``Retry`` of 1 s,
   which rq stores in whole seconds, so it may run at once) looks at the channel before the first
   write has landed, finds nothing, and sends again; then both land. The soak hit it with a 3 s
   delay against a 2 s read timeout (the retry looked 0.5 s after the timeout); here the delay is
   6 s so that it happens every time.
2. page-of-100: a write is applied but its answer is lost (the fake's ``drop_next``); before the
   retry looks, more than 100 other messages are posted to the same channel (a busy channel, or a
   retry held back, e.g. ~60 s by a SIGKILLed worker's rq scheduler lock). ``find_posted`` reads
   only the newest page (100 messages), does not see the first post, and sends again.

And one way it fell behind without merging (the soak with ``--messages-per-minute 80``):

3. steady-stream: notifications arriving one by one, faster than the message limit (80 a
   minute), with a worker running. Each job takes itself out of its route's backlog when it first
   runs (``Backlog.claim``), finds no rate-limit slot, and is rescheduled; so the backlog never
   holds more than the few jobs not yet run once, never passes the digest threshold, and no
   digest is ever sent: everything waits in rq's scheduled registry and leaves alone at 80 a
   minute. Expected (docs/delivery.md, Digests): with more than 80 waiting, digests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import yaml
from rq import Queue
from rq.serializers import JSONSerializer

from bridge.config import load_config
from bridge.fake_pumble import create_fake_pumble
from bridge.local_server import LocalServer
from bridge.notification import Notification
from bridge.pumble import PumbleClient
from bridge.queue import NotificationQueue, connect
from bridge.redis_embedded import EmbeddedRedis
from bridge.worker import run_worker

KEY = "repro-key-0123456789abcdef0123456789"


def setup(directory: Path, redis_url: str, fake_url: str, queue: str,
          delivery: dict | None = None):
    path = directory / f"{queue}.yaml"
    path.write_text(yaml.safe_dump({
        "pumble": {"base_url": fake_url, "api_key": KEY, "read_timeout": 2,
                   "connect_timeout": 1},
        "redis": {"url": redis_url, "queue": queue},
        "delivery": delivery or {"job_timeout": 10, "backoff_base": 0.25, "backoff_cap": 1},
        "sources": {"shop": {"type": "shopify", "secret": "s"}},
        "routes": [{"name": "r", "channel": "orders", "text": "{{ event.id }}"}],
    }))
    config = load_config(path, {})
    queue_ = NotificationQueue(connect(redis_url), queue, config.delivery)
    return config, queue_, path


def enqueue(queue: NotificationQueue, text: str) -> None:
    assert queue.accept([Notification(source="shop", event_id=text, event_type="order.created",
                                       route="r", channel="orders", text=text,
                                       received_at=time.time())]).written == (True,)


def drain(config, redis_url: str, queue: str, timeout: float = 30) -> None:
    rq = Queue(queue, connection=connect(redis_url), serializer=JSONSerializer)
    deadline = time.monotonic() + timeout
    while True:
        run_worker(config, redis_url, burst=True)
        if not len(rq) and not rq.scheduled_job_registry.get_job_ids():
            return
        assert time.monotonic() < deadline, "not drained"
        time.sleep(0.2)


def posted(fake_url: str, text: str) -> int:
    messages = httpx.get(f"{fake_url}/_fake/messages").json()["messages"]
    return sum(m["text"] == text for m in messages)


def late_write(directory: Path, redis_url: str, fake_url: str) -> int:
    config, queue, _ = setup(directory, redis_url, fake_url, "repro-late")
    httpx.post(f"{fake_url}/_fake/faults", json={"delay": 6}).raise_for_status()
    enqueue(queue, "late-write order #1")
    run_worker(config, redis_url, burst=True)  # sends, times out after 2 s: ambiguous, retry
    httpx.post(f"{fake_url}/_fake/faults", json={"delay": 0}).raise_for_status()
    drain(config, redis_url, "repro-late")  # the retry looks (nothing yet) and sends again
    time.sleep(5)  # the first write lands 6 s after it was sent
    return posted(fake_url, "late-write order #1")


def page_of_100(directory: Path, redis_url: str, fake_url: str) -> int:
    config, queue, _ = setup(directory, redis_url, fake_url, "repro-page")
    httpx.post(f"{fake_url}/_fake/faults", json={"drop_next": 1}).raise_for_status()
    enqueue(queue, "page-of-100 order #2")
    run_worker(config, redis_url, burst=True)  # posted, answer dropped: ambiguous, retry
    with PumbleClient(KEY, fake_url) as client:
        for number in range(101):  # a busy channel meanwhile
            client.send_message("orders", f"another order #{1000 + number}")
    drain(config, redis_url, "repro-page")  # looks at the newest 100 only, sends again
    return posted(fake_url, "page-of-100 order #2")


def steady_stream(directory: Path, redis_url: str, fake_url: str) -> int:
    """Digests sent for 200 notifications arriving at 20/s on one route (Pumble's 80/min),
    once the limit lets the next message out."""
    _, queue, path = setup(directory, redis_url, fake_url, "repro-digest", {"job_timeout": 10})
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PUMBLE_API_KEY",
                                                             "PUMBLE_BASE_URL", "BRIDGE_CONFIG")}
    env["BRIDGE_DATA_DIR"] = str(directory / "bridge-data")
    worker = subprocess.Popen([sys.executable, "-m", "bridge", "--config", str(path), "worker"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # started
        for number in range(200):
            enqueue(queue, f"steady order #{number}")
            time.sleep(0.05)
        # Pumble's limit allows the first 80 at once; the next slot frees a minute after the
        # first post, and from then on the waiting ones go out merged.
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline and not any(
                m["text"].startswith("📦") for m in
                httpx.get(f"{fake_url}/_fake/messages").json()["messages"]):
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    messages = httpx.get(f"{fake_url}/_fake/messages").json()["messages"]
    digests = sum(m["text"].startswith("📦") for m in messages)
    rq = Queue("repro-digest", connection=connect(redis_url), serializer=JSONSerializer)
    waiting = rq.scheduled_job_registry.get_job_count(cleanup=False) + len(rq)
    print(f"steady_stream: 200 notifications at 20/s: {len(messages) - digests} posted alone, "
          f"{digests} digest(s), {waiting} waiting", flush=True)
    return digests


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's request lines
    failed = False
    with tempfile.TemporaryDirectory(prefix="repro-") as tmp:
        redis = EmbeddedRedis(Path(tmp))
        redis_url = redis.start()
        try:
            for case in (late_write, page_of_100):
                app = create_fake_pumble(keys=[KEY], channels=["orders"])
                with LocalServer(app) as fake:
                    count = case(Path(tmp), redis_url, fake.url)
                print(f"{case.__name__}: posted {count} time(s)"
                      f"{'' if count == 1 else '  <- expected once'}", flush=True)
                failed |= count != 1
            with LocalServer(create_fake_pumble(keys=[KEY], channels=["orders"])) as fake:
                digests = steady_stream(Path(tmp), redis_url, fake.url)
            if not digests:
                print("steady_stream: no digest although more than 80 wait  <- expected "
                      "digests", flush=True)
                failed = True
        finally:
            redis.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
