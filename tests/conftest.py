"""Shared fixtures: a real Redis (embedded unless REDIS_URL is set) and the fake Pumble over HTTP.

Tests never flush a database: each test gets its own queue name, so they also run safely against
a Redis the suite did not create, and xdist's workers (pyproject's addopts) can share one. Without
REDIS_URL each worker starts its own embedded Redis, in its own temporary directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import yaml

from bridge.clock import Clock
from bridge.config import load_config
from bridge.dlq import DeadLetters
from bridge.fake_pumble import create_fake_pumble
from bridge.local_server import LocalServer
from bridge.marker import unmarked
from bridge.metrics import Metrics
from bridge.notification import Notification
from bridge.queue import NotificationQueue, connect
from bridge.redis_embedded import EmbeddedRedis
from bridge.worker import run_worker

# Property tests check what is rendered and accepted, not how fast: no per-example deadline,
# which a machine busy with the rest of the suite would overrun.
hypothesis.settings.register_profile("bridge", deadline=None)
hypothesis.settings.load_profile("bridge")

# The longest fault scenarios (a Sentinel failover under load, a busy worker riding out a full,
# read-only, loading or vanished Redis): about three minutes together, so the README's test
# command leaves them out and CI runs them (.ci/run), like the soak.
long_fault = pytest.mark.skipif(os.environ.get("FAULTS") != "1",
                                reason="a long fault scenario: runs with FAULTS=1, as CI does")

# free_port's blocks: 20000 to 31999, one per xdist worker; a 25th worker shares the first block
# (its ports are still looked at before they are handed out).
PORTS_FROM = 20_000
PORTS_PER_WORKER = 500
PORT_BLOCKS = 24

TEST_KEY = "test-key-0123456789abcdef0123456789"
TEST_SECRET = "test-webhook-secret"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """What `-n auto` (pyproject's addopts) means: two workers a core. Most of a test's time is
    spent waiting for the processes it started; on 2 cores, 4 workers ran the suite fastest."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return 2 * cores


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("data"))
    url = embedded.start()
    yield url
    embedded.stop()


@pytest.fixture(scope="session")
def _session_locks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two lock files every xdist worker of this session sees (their temp dirs' parent)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return shared / "tests-gate.lock", shared / "tests-running.lock"


@pytest.fixture(autouse=True)
def _alone_if_timed(request: pytest.FixtureRequest,
                    _session_locks: tuple[Path, Path]) -> Iterator[None]:
    """A test marked ``alone`` measures wall time that includes starting or stopping a process:
    it runs while no other worker runs a test, whose CPU would be its delay. The others share
    the running lock; one marked alone first closes the gate to tests not yet begun, then waits
    for the running ones to end (so it is never starved)."""
    alone = request.node.get_closest_marker("alone") is not None
    gate_path, running_path = _session_locks
    with gate_path.open("a") as gate, running_path.open("a") as running:
        fcntl.flock(gate, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(running, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield  # closing the files releases both locks


def new_queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def queue_name() -> str:
    return new_queue_name()


class FakePumble:
    """The fake Pumble on a real port, read back over HTTP like any client would (one client:
    making one costs 50 ms, most of it loading the CA certificates)."""

    def __init__(self, server: LocalServer, http: httpx.Client):
        self.server = server
        self.url = server.url
        self.http = http

    def messages(self, channel: str = "", *, raw: bool = False) -> list[dict[str, Any]]:
        """What was posted; each text as a person reads it (the bridge's invisible mark
        removed) unless ``raw``."""
        response = self.http.get(f"{self.url}/_fake/messages", params={"channel": channel})
        response.raise_for_status()
        messages = response.json()["messages"]
        if not raw:
            for message in messages:
                message["text"] = unmarked(message["text"])
        return messages


@pytest.fixture
def fake_pumble() -> Iterator[FakePumble]:
    app = create_fake_pumble(keys=[TEST_KEY], channels=["orders"])
    with LocalServer(app) as server, httpx.Client() as http:
        yield FakePumble(server, http)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config file; returns its path. Defaults: one shopify source, one order route."""

    def write(*, redis_url: str | None = None, queue: str = "pumble-bridge",
              pumble_url: str = "http://127.0.0.1:9", api_key: str | None = TEST_KEY,
              routes: list[dict[str, Any]] | None = None) -> Path:
        config: dict[str, Any] = {
            "pumble": {"base_url": pumble_url, "api_key": api_key},
            "redis": {"queue": queue, **({"url": redis_url} if redis_url else {})},
            "sources": {"shop": {"type": "shopify", "secret": TEST_SECRET}},
            "routes": routes if routes is not None else [{
                "name": "new-orders",
                "match": {"source": ["shop"], "event": ["order.created"]},
                "channel": "orders",
                "template": "order_created.j2",
            }],
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    """Look at ``condition`` every 0.1 s until it holds; an HTTP error (a server still starting)
    counts as not yet. After ``timeout`` seconds the test fails, naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if condition():
                return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def free_port() -> int:
    """A port of this xdist worker's own block that nothing uses, for a server the test starts
    later (Redis, Sentinel, gunicorn, `run`). The block lies below the kernel's ephemeral range
    (Linux: 32768 up, macOS: 49152 up), so no port-0 bind and no outgoing connection on the
    machine takes the port meanwhile; the port is handed out in TIME_WAIT, which the next call
    skips (so one worker never hands out a port twice) and a server's bind passes (servers set
    SO_REUSEADDR). Concurrent sessions start their walk through a block at different ports."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    block = PORTS_FROM + worker % PORT_BLOCKS * PORTS_PER_WORKER
    session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    start = zlib.crc32(session.encode())
    for step in range(PORTS_PER_WORKER):
        port = block + (start + step) % PORTS_PER_WORKER
        with contextlib.suppress(OSError):  # taken, or still in TIME_WAIT
            return _left_in_time_wait(port)
    raise RuntimeError(f"no free port in {block}-{block + PORTS_PER_WORKER - 1}")


def _left_in_time_wait(port: int) -> int:
    """``port`` after one connection to it closed from its side; OSError if anything holds it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))  # without SO_REUSEADDR: a TIME_WAIT refuses it too
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a server may take it
        listener.listen(1)
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first keeps the TIME_WAIT: this port
    return port


def signed_order(number: int = 1001, webhook_id: str | None = None,
                 secret: str = TEST_SECRET) -> tuple[bytes, dict[str, str]]:
    """A Shopify orders/create body and headers, signed as Shopify signs."""
    from bridge.samples import body_of, shopify_headers, shopify_order
    from bridge.sources.shopify import sign

    body = body_of(shopify_order(number))
    headers = shopify_headers(webhook_id=webhook_id)
    headers["X-Shopify-Hmac-Sha256"] = sign(secret.encode(), body)
    return body, headers


@pytest.fixture
def rq_queue(redis_url: str, queue_name: str):
    """The test's RQ queue, read directly; its jobs are deleted afterwards (nothing else is)."""
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    connection = Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    yield queue
    registries = (queue.finished_job_registry, queue.failed_job_registry,
                  queue.scheduled_job_registry, queue.started_job_registry)
    ours = {job_id for registry in registries for job_id in registry.get_job_ids()}
    ours.update(queue.get_job_ids())
    for registry in registries:
        connection.delete(registry.key)
    # A job's keys (rq:job:ID, rq:results:ID, its executions) carry its id as one part.
    for key in connection.scan_iter(match="rq:*", count=1000):
        if not ours.isdisjoint(key.decode().split(":")):
            connection.delete(key)
    queue.delete(delete_jobs=True)
    for key in connection.scan_iter(match=f"pumble-bridge:{queue_name}:*"):  # our own keys
        connection.delete(key)
    connection.close()


class MovedClock(Clock):
    """A clock the test moves on: sleeping moves it at once, then calls ``also`` (what else moves
    with it) with the seconds. Records each sleep (its length, and the time it began)."""

    def __init__(self, also: Callable[[float], None] = lambda seconds: None) -> None:
        self.offset = 0.0
        self.also = also
        self.sleeps: list[float] = []
        self.slept_at: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.slept_at.append(self.time())
        self.offset += seconds
        self.also(seconds)


# -- a bridge on the test's queue, and the fake's record ------------------------------------

FAST = {"backoff_base": 0.25, "backoff_cap": 1}  # retries after 1 s (rq schedules whole seconds)


class Bridge:
    """A config for the test's queue, the queue itself, and workers to drain it that go by the
    test's clock."""

    def __init__(self, path: Path, redis_url: str, rq_queue):
        self.path = path
        self.config = load_config(path, {})
        self.redis_url = redis_url
        self.rq = rq_queue
        self.clock = MovedClock(also=self._move_rq_on)
        self.metrics = Metrics()  # its workers', which a test may hand its receiver too
        self.queue = NotificationQueue(connect(redis_url), self.config.redis.queue,
                                       self.config.delivery)
        self.dead = DeadLetters(self.queue)

    def enqueue(self, text: str = "order #1", **fields: Any) -> Notification:
        notification = Notification(**{
            "source": "shop", "event_id": f"e-{time.time_ns()}", "event_type": "order.created",
            "route": "r", "channel": "orders", "text": text, "received_at": self.clock.time(),
            **fields})
        assert self.queue.accept([notification]).written == (True,)
        return notification

    def work(self) -> None:
        """One burst worker: it works the queue until it is empty."""
        run_worker(self.config, self.redis_url, burst=True, clock=self.clock,
                   metrics=self.metrics)

    def _move_rq_on(self, seconds: float) -> None:
        """rq's time moves with the clock (a worker's sleep included): its scheduled jobs
        (retries, waits) and the heartbeats of its started ones come ``seconds`` nearer (rq
        keeps those times as the scores of its registries, by the system's clock)."""
        connection = self.rq.connection
        for registry in (self.rq.scheduled_job_registry, self.rq.started_job_registry):
            for member, score in connection.zrange(registry.key, 0, -1, withscores=True):
                connection.zadd(registry.key, {member: score - seconds}, xx=True)

    def drain(self, rounds: int = 100) -> None:
        """Run burst workers until nothing is queued or scheduled; between them the clock is
        moved on to the next scheduled job's time (retries included): nothing sleeps."""
        registry = self.rq.scheduled_job_registry
        for _ in range(rounds):
            self.work()
            [*upcoming] = self.rq.connection.zrange(registry.key, 0, 0, withscores=True)
            if not upcoming and not len(self.rq):
                return
            if upcoming:  # due once its score is at most rq's time, in whole seconds
                self.clock.sleep(max(0.0, upcoming[0][1] - math.floor(time.time())))
        raise AssertionError(f"jobs still waiting after {rounds} workers: {len(self.rq)} "
                             f"queued, {len(registry.get_job_ids())} scheduled")


@pytest.fixture
def bridge(write_config, redis_url, queue_name, fake_pumble, rq_queue):
    def make(delivery: dict[str, Any] | None = None, routes=None, **pumble: Any) -> Bridge:
        path = write_config(redis_url=redis_url, queue=queue_name, pumble_url=fake_pumble.url,
                            routes=routes)
        config = yaml.safe_load(path.read_text())
        config["delivery"] = {**FAST, **(delivery or {})}
        config["pumble"].update(pumble)
        path.write_text(yaml.safe_dump(config))
        return Bridge(path, redis_url, rq_queue)

    return make


def faults(fake: FakePumble, **changes: Any) -> None:
    fake.http.post(f"{fake.url}/_fake/faults", json=changes).raise_for_status()


def stats(fake: FakePumble) -> dict[str, int]:
    return fake.http.get(f"{fake.url}/_fake/stats").json()


def texts(fake: FakePumble, channel: str = "") -> list[str]:
    return [m["text"] for m in fake.messages(channel)]
