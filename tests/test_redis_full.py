"""Redis full, read-only, loading or gone: nothing ends a process, nothing accepted is lost.

Each test has a Redis of its own (it changes its config): a server on a free port, with
``noeviction`` and the DEBUG command, which the tests use to put it in each state for real."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from bridge.config import load_config
from bridge.local_server import LocalServer
from bridge.redis_embedded import server_executable
from bridge.web import create_app
from tests.conftest import (
    Bridge,
    faults,
    free_port,
    long_fault,
    signed_order,
    texts,
    wait_until,
)
from tests.test_e2e import ROOT, clean_env
from tests.test_worker_processes import _children, kill, worker_process

STATES = ["full", "read-only", "loading", "down"]


class OwnRedis:
    """A Redis server of the test's own on a free port, which it can fill, make a replica,
    make reload its data slowly, or stop and start again."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.dir.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [server_executable(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
             "--maxmemory-policy", "noeviction", "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, "the test's Redis to start", 15)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # a clean shutdown: the append-only file is flushed
            self.process.wait(15)
            self.process = None

    def _answers(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(self.client().ping())
        return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10)

    def fill(self) -> None:
        """Full: no write that needs memory is taken (``noeviction``)."""
        client = self.client()
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)

    def free(self) -> None:
        self.client().config_set("maxmemory", 0)

    @contextlib.contextmanager
    def state(self, state: str, seconds: float = 3.0) -> Iterator[None]:
        """Hold Redis in ``state`` for the body, and ``seconds`` at least, then end it."""
        client = self.client()
        begun = time.monotonic()
        if state == "full":
            self.fill()
        elif state == "read-only":  # a replica of a master that never answers keeps its data
            client.replicaof("127.0.0.1", "1")
        elif state == "loading":
            reload = self._slow_reload(client, seconds)
        elif state == "down":
            self.stop()
        yield
        time.sleep(max(0.0, seconds - (time.monotonic() - begun)))
        if state == "full":
            self.free()
        elif state == "read-only":
            client.replicaof("NO", "ONE")
        elif state == "loading":
            reload.join(60)
        elif state == "down":
            self.start()

    def _slow_reload(self, client: redis.Redis, seconds: float) -> threading.Thread:
        """DEBUG RELOAD of enough keys, each loaded slowly, to answer LOADING for a while."""
        keys = 20_000
        with client.pipeline(transaction=False) as pipe:
            for number in range(keys):
                pipe.set(f"padding:{number}", "x")
            pipe.execute()
        client.config_set("loading-process-events-interval-bytes", 1024)
        client.config_set("key-load-delay", int(seconds * 1e6 / keys))
        reload = threading.Thread(target=client.execute_command, args=("DEBUG", "RELOAD"))
        reload.start()
        probe = self.client()
        wait_until(lambda: _loading(probe), "Redis to be loading", 10)
        return reload


def _loading(client: redis.Redis) -> bool:
    try:
        client.set("probe", 1)
    except redis.BusyLoadingError:
        return True
    return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def own_bridge(own_redis, write_config, fake_pumble, queue_name):
    """A config on the test's own Redis: quick to give up a job whose worker lost track of it,
    and no rate limit in the way."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from bridge.queue import connect

    path = write_config(redis_url=own_redis.url, queue=queue_name, pumble_url=fake_pumble.url)
    config = yaml.safe_load(path.read_text())
    config["delivery"] = {"job_timeout": 5, "backoff_base": 0.25, "backoff_cap": 1,
                          "rate_limits": {"messages": 100_000, "requests": 100_000}}
    path.write_text(yaml.safe_dump(config))
    return Bridge(path, own_redis.url, Queue(queue_name, connection=connect(own_redis.url),
                                             serializer=JSONSerializer))


@pytest.mark.parametrize("state", STATES)
def test_the_receiver_answers_503_with_retry_after_while_redis_cannot_be_written(
        own_redis, own_bridge, state):
    app = create_app(load_config(own_bridge.path, {}), own_redis.url, watch=False)
    with LocalServer(app) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
        body, headers = signed_order(1, webhook_id="before")
        assert http.post("/webhooks/shop", content=body, headers=headers).status_code == 202
        with own_redis.state(state, seconds=1):  # long enough for a slow reload to be seen
            body, headers = signed_order(2, webhook_id="during")
            answer = http.post("/webhooks/shop", content=body, headers=headers)
            assert answer.status_code == 503
            assert int(answer.headers["Retry-After"]) > 0
            assert answer.json() == {"error": "cannot store the event right now; retry later"}
        wait_until(lambda: http.get("/readyz").status_code == 200, "the receiver to be ready")
        answer = http.post("/webhooks/shop", content=body, headers=headers)  # the shop's retry
        assert answer.status_code == 202
    assert len(own_bridge.rq) == 2  # the first webhook's job kept, the retried one added


@long_fault
@pytest.mark.parametrize("state", STATES)
def test_a_busy_worker_rides_out_redis_and_posts_each_message_once(
        own_redis, own_bridge, fake_pumble, state):
    numbers = range(20)
    faults(fake_pumble, delay=0.15)  # the worker is mid-queue, and mostly mid-send, below
    for number in numbers:
        own_bridge.enqueue(f"order #{number}", digest=False)
    worker = worker_process(own_bridge.path, "--maintenance-interval", "2")
    try:
        wait_until(lambda: len(texts(fake_pumble)) >= 3, "the first posts", 30)
        with own_redis.state(state):
            pass
        wait_until(lambda: len(texts(fake_pumble)) >= len(numbers), "every post", 90)
        time.sleep(1)  # a duplicate, if any, would show up now
        assert Counter(texts(fake_pumble)) == Counter(f"order #{n}" for n in numbers)
        assert worker.poll() is None  # it did not end
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        kill(worker)


def run_process(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`pumble-bridge run` on a free port, its output in ``log``, once its receiver is ready;
    and the receiver's URL."""
    url = f"http://127.0.0.1:{free_port()}"
    with log.open("w") as output:
        run = subprocess.Popen([sys.executable, "-m", "bridge", "--config", str(config), "run",
                                "--port", url.rpartition(":")[2]], cwd=ROOT, env=clean_env(),
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200,
               "run's receiver to be ready", 60)
    return run, url


@long_fault
def test_redis_full_then_freed_under_run_every_acked_webhook_is_posted_once(
        own_redis, own_bridge, fake_pumble, tmp_path):
    """Signed webhooks to `run`'s receiver while Redis fills up (503s), and on after it is
    full; memory is freed and the shops retry: every webhook answered 2xx is posted exactly
    once, and no process of the bridge exited."""
    log = tmp_path / "run.log"
    run, url = run_process(own_bridge.path, log)
    faults(fake_pumble, delay=0.05)  # the worker has a backlog as Redis fills
    try:
        children = _children(run.pid)
        assert len(children) == 2  # the receiver and the worker
        acked: set[int] = set()
        refused: list[int] = []
        with httpx.Client(base_url=url, timeout=30) as http:

            def send(number: int) -> int:
                body, headers = signed_order(number, webhook_id=f"full-{number}")
                status = http.post("/webhooks/shop", content=body, headers=headers).status_code
                (acked.add(number) if status == 202 else refused.append(number))
                return status

            client = own_redis.client()
            number = 1000
            while len(acked) < 30:
                number += 1
                send(number)
            # Room for a few dozen more webhooks, then full. On a busy machine Redis' own buffers
            # (the append-only file's, a client's) may take the room for a moment: the shop goes
            # on until one more webhook was taken, as well as 50 refused and the worker waiting.
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 150_000)
            first = set(acked)
            while (len(refused) < 50 or "Redis is unavailable" not in log.read_text()
                   or not acked - first):
                number += 1
                assert send(number) in (202, 503)
                assert number < 5000, ("Redis never filled up, the worker never noticed, or no "
                                       "webhook was accepted as Redis filled")
            own_redis.free()
            for retried in refused:  # the shops retry
                assert send(retried) == 202
        everything = set(range(1001, number + 1))
        assert acked == everything

        def posted() -> Counter[int]:
            return Counter(int(n) for text in texts(fake_pumble, "orders")
                           for n in re.findall(r"New order #(\d+)", text))

        wait_until(lambda: set(posted()) == everything, "every webhook posted", 150)
        time.sleep(2)  # a duplicate, if any, would show up now
        assert posted() == Counter(everything)  # none lost, none twice
        assert run.poll() is None and _children(run.pid) == children  # no process exited
        assert "Redis is available again: resuming" in log.read_text()
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        kill(run)


@pytest.mark.parametrize("state", ["full", "read-only"])
def test_a_worker_started_on_an_unwritable_redis_waits_for_it(
        own_redis, own_bridge, fake_pumble, state, tmp_path):
    log = tmp_path / "worker.log"
    with own_redis.state(state, seconds=0), log.open("wb") as output:
        worker = worker_process(own_bridge.path, log=output)
        # it cannot register itself: it waits, and says so
        wait_until(lambda: "Redis is unavailable" in log.read_text(), "the worker to wait", 30)
        assert worker.poll() is None
    try:
        own_bridge.enqueue("once Redis takes writes")
        wait_until(lambda: texts(fake_pumble) == ["once Redis takes writes"], "the post", 30)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        kill(worker)
