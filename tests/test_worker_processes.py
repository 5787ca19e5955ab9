"""Workers as separate processes, killed, stopped and run side by side: a real Redis, the
receiver on a real port, ``pumble-bridge worker`` processes, the fake Pumble over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

import httpx
import pytest
from rq.job import JobStatus

from bridge.local_server import LocalServer
from bridge.redis_embedded import EmbeddedRedis
from bridge.web import create_app
from bridge.worker import HEARTBEAT_GRACE
from tests.conftest import Bridge, faults, free_port, signed_order, stats, texts, wait_until
from tests.test_e2e import ROOT, clean_env


def worker_process(config: Path, *extra: str,
                   log: IO[bytes] | int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    # Its own process group: the worker forks rq's scheduler, which a kill must take too.
    return subprocess.Popen([sys.executable, "-m", "bridge", "--config", str(config), "worker",
                             *extra], cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=log, start_new_session=True)


def kill(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and the processes it forked, as when its machine dies."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def started(bridge: Bridge) -> bool:
    jobs = bridge.rq.get_jobs() + [bridge.rq.fetch_job(i) for i in
                                   bridge.rq.started_job_registry.get_job_ids()]
    return any(job.get_status() == JobStatus.STARTED for job in jobs if job)


def test_a_worker_killed_mid_send_loses_nothing_and_posts_once(bridge, fake_pumble):
    b = bridge({"job_timeout": 5})
    faults(fake_pumble, delay=2)  # the post reaches Pumble and is applied after the kill
    b.enqueue("order #31337")
    worker = worker_process(b.path)
    try:
        wait_until(lambda: started(b), "the worker to start the job", 20)
        time.sleep(0.5)  # inside the HTTP request now
    finally:
        kill(worker)
    wait_until(lambda: texts(fake_pumble) == ["order #31337"], "the fake to apply the post", 10)
    httpx.delete(f"{fake_pumble.url}/_fake/faults")

    # The job is left 'started' by a dead worker until its heartbeat runs out (job_timeout +
    # 10 s); the next worker's maintenance then runs it again, and it looks before sending.
    registry = b.rq.started_job_registry
    assert registry.get_expired_job_ids() == []
    b.clock.sleep(b.config.delivery.job_timeout + HEARTBEAT_GRACE)
    assert registry.get_expired_job_ids()
    # The look for the earlier post waits out Pumble's late writes (a scheduled run), and the
    # dead worker's scheduler lock is released at once (bridge.worker), not after a minute.
    b.drain()
    assert texts(fake_pumble) == ["order #31337"]
    [job_id] = b.rq.finished_job_registry.get_job_ids()
    assert b.rq.fetch_job(job_id).return_value()["message_id"] == fake_pumble.messages()[0]["id"]


def test_sigterm_lets_the_current_send_finish(bridge, fake_pumble):
    b = bridge()
    faults(fake_pumble, delay=1.5)
    b.enqueue("finish me")
    worker = worker_process(b.path)
    try:
        wait_until(lambda: started(b), "the worker to start the job", 20)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        kill(worker)
    assert texts(fake_pumble) == ["finish me"]
    assert len(b.rq.finished_job_registry.get_job_ids()) == 1


def listening_worker(bridge: Bridge) -> str:
    """The name of the one worker on the test's queue, once it waits for jobs (its signal
    handlers are in place by then) and its pub/sub listener is up."""
    from rq.worker import Worker, WorkerStatus

    names: list[str] = []

    def up() -> bool:
        workers = Worker.all(queue=bridge.rq)
        names[:] = [w.name for w in workers]
        channels = [w.pubsub_channel_name for w in workers]
        return bool(workers) and all(w.get_state() == WorkerStatus.IDLE for w in workers) \
            and all(n == 1 for _, n in bridge.rq.connection.pubsub_numsub(*channels))

    wait_until(up, "the worker to listen", 20)
    [name] = names
    return name


@pytest.mark.alone
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "rq shutdown command"])
def test_an_idle_worker_stops_within_5_s(bridge, stop):
    """SIGTERM (a supervisor, `run`), SIGINT (Ctrl-C) or rq's own shutdown command, which comes
    through the worker's pub/sub listener: whatever the redis-py release, gone within 5 s."""
    from rq.command import send_shutdown_command

    b = bridge()
    worker = worker_process(b.path)
    try:
        name = listening_worker(b)
        asked = time.monotonic()
        if stop == "rq shutdown command":
            send_shutdown_command(b.rq.connection, name)
        else:
            worker.send_signal(getattr(signal, stop))
        assert worker.wait(30) == 0
        assert time.monotonic() - asked < 5
    finally:
        kill(worker)


@pytest.mark.alone
def test_the_pubsub_listener_stops_when_asked(redis_url, queue_name):
    """rq's teardown (unsubscribe) leaves no listener thread nor subscription behind, and waits
    about PUBSUB_POLL, not the 60 s rq's own listener may block on redis-py 8.2. (subscribe
    fails here the day rq renames the private handler it borrows.)"""
    from rq import Queue

    from bridge.queue import connect
    from bridge.worker import PUBSUB_POLL, DeliveryWorker

    connection = connect(redis_url)
    worker = DeliveryWorker([Queue(queue_name, connection=connection)], connection=connection)
    worker.subscribe()
    try:
        wait_until(lambda: connection.pubsub_numsub(worker.pubsub_channel_name)[0][1] == 1,
                   "the listener to subscribe", 10)
        asked = time.monotonic()
        worker.unsubscribe()
        assert not worker.pubsub_thread.is_alive()
        assert time.monotonic() - asked < PUBSUB_POLL + 1
        wait_until(lambda: connection.pubsub_numsub(worker.pubsub_channel_name)[0][1] == 0,
                   "the listener's connection to close", 2)
    finally:
        connection.close()


def test_the_worker_freezes_what_it_holds_before_rq_forks_its_scheduler(bridge, monkeypatch):
    """A long-running worker moves its objects to the collector's permanent generation before
    rq forks the scheduler, so the scheduler's collections leave their pages shared; a burst
    worker forks nothing and freezes nothing (the tests' in-process workers collect as usual)."""
    import gc

    from bridge.worker import DeliveryWorker, run_worker

    b = bridge()
    frozen_when_working: dict[bool, int] = {}

    def work(worker: DeliveryWorker, *, burst: bool, with_scheduler: bool,
             logging_level: str) -> bool:
        assert with_scheduler
        frozen_when_working[burst] = gc.get_freeze_count()
        return True

    monkeypatch.setattr(DeliveryWorker, "work", work)
    assert gc.get_freeze_count() == 0
    try:
        assert run_worker(b.config, b.redis_url, burst=True)
        assert run_worker(b.config, b.redis_url, burst=False)
    finally:
        gc.unfreeze()  # this test process's objects back under the collector
    assert frozen_when_working[True] == 0
    assert frozen_when_working[False] > 0


def test_a_burst_of_1000_orders_under_80_a_minute_posts_each_once_without_a_429(
        bridge, fake_pumble):
    b = bridge({"digest": {"window": 10, "max_items": 50}})
    faults(fake_pumble, rate_limit={"per_minute": 80})
    numbers = range(10_000, 11_000)
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as receiver, \
            httpx.Client(base_url=receiver.url) as client:
        for number in numbers:
            body, headers = signed_order(number, webhook_id=f"burst-{number}")
            assert client.post("/webhooks/shop", content=body, headers=headers).status_code == 202
    workers = [worker_process(b.path, "--burst") for _ in range(2)]
    try:
        for worker in workers:
            assert worker.wait(180) == 0
    finally:
        for worker in workers:
            kill(worker)
    b.drain()  # anything a worker scheduled for later

    posted = texts(fake_pumble, "orders")
    seen = Counter(int(n) for text in posted for n in re.findall(r"New order #(\d+)", text))
    assert seen == Counter(numbers)  # every order, exactly once
    assert stats(fake_pumble)["rate_limited"] == 0
    assert len(posted) <= 80
    assert b.dead.list() == []


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own (append-only, as embedded) that it may stop and start."""

    class Restartable:
        def __init__(self) -> None:
            self.server = EmbeddedRedis(tmp_path / "redis")
            self.url = self.server.start()

        def restart(self) -> None:
            self.server.stop()
            self.server = EmbeddedRedis(tmp_path / "redis")
            assert self.server.start() == self.url

    redis = Restartable()
    yield redis
    redis.server.stop()


def own_bridge(own_redis, write_config, fake_pumble, queue_name) -> Bridge:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from bridge.queue import connect

    path = write_config(redis_url=own_redis.url, queue=queue_name, pumble_url=fake_pumble.url)
    return Bridge(path, own_redis.url, Queue(queue_name, connection=connect(own_redis.url),
                                             serializer=JSONSerializer))


@pytest.mark.alone
def test_the_worker_rides_out_a_redis_restart(own_redis, write_config, fake_pumble, queue_name):
    b = own_bridge(own_redis, write_config, fake_pumble, queue_name)
    worker = worker_process(b.path)
    try:
        b.enqueue("before the restart")
        wait_until(lambda: texts(fake_pumble) == ["before the restart"], "the first post", 20)
        own_redis.restart()
        b.enqueue("after the restart")
        wait_until(lambda: texts(fake_pumble) == ["before the restart", "after the restart"],
                   "the worker to reconnect and post", 60)
        assert worker.poll() is None  # it did not die of the outage
        asked = time.monotonic()
        worker.terminate()
        assert worker.wait(30) == 0
        assert time.monotonic() - asked < 5  # its listener, reconnected, stops as promptly
    finally:
        kill(worker)


def test_jobs_queued_before_a_redis_restart_are_delivered_after_it(own_redis, write_config,
                                                                  fake_pumble, queue_name):
    b = own_bridge(own_redis, write_config, fake_pumble, queue_name)
    for number in range(5):
        b.enqueue(f"queued {number}")
    own_redis.restart()
    b.drain()
    assert texts(fake_pumble) == [f"queued {number}" for number in range(5)]


def test_two_receivers_and_two_workers_share_one_redis(bridge, fake_pumble):
    """The standard scale-out: any number of receivers and workers on one Redis. Each webhook
    is sent to both receivers (a shop retrying through a load balancer): every order is posted
    exactly once."""
    b = bridge()
    ports = [free_port(), free_port()]
    receivers = [subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(b.path), "serve", "--port", str(port),
         "--workers", "1", "--threads", "4"], cwd=ROOT, env=clean_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for port in ports]
    workers = [worker_process(b.path) for _ in range(2)]
    try:
        for port in ports:
            wait_until(lambda port=port: _answers(f"http://127.0.0.1:{port}/readyz"),
                       "a receiver to be ready", 30)
        numbers = range(20_000, 20_040)
        for number in numbers:
            body, headers = signed_order(number, webhook_id=f"scale-{number}")
            answers = {httpx.post(f"http://127.0.0.1:{port}/webhooks/shop", content=body,
                                  headers=headers).status_code for port in ports}
            assert answers == {202, 200}  # one accepted it, the other saw a re-delivery
        def shown() -> Counter[int]:  # alone or in a digest (40 at once are a burst)
            return Counter(int(n) for text in texts(fake_pumble)
                           for n in re.findall(r"New order #(\d+)", text))

        wait_until(lambda: shown().total() >= len(numbers), "every order posted", 60)
        # Then no job is left to post a duplicate: none queued, scheduled or being worked on.
        wait_until(lambda: not (len(b.rq) or len(b.rq.scheduled_job_registry)
                                or len(b.rq.started_job_registry)), "the queue to be done", 30)
        assert shown() == Counter(numbers)
    finally:
        for process in (*receivers, *workers):
            process.terminate()
        for process in (*receivers, *workers):
            try:
                process.wait(30)
            finally:
                kill(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_worker_processes_share_the_queue_and_a_dead_one_is_replaced(bridge, fake_pumble):
    b = bridge()
    for number in range(30):
        b.enqueue(f"order #{number}", digest=False)
    supervisor = worker_process(b.path, "--processes", "2")
    try:
        wait_until(lambda: len(texts(fake_pumble)) == 30, "every message", 60)
        children = _children(supervisor.pid)
        assert len(children) == 2
        os.killpg(children[0], signal.SIGKILL)
        # One look at the children: between two, the dead one can be reaped before its
        # replacement leads its own process group, and neither look would count it.
        wait_until(lambda: len(now := _children(supervisor.pid)) == 2 and children[0] not in now,
                   "a replacement", 20)
        b.enqueue("after the replacement")
        wait_until(lambda: len(texts(fake_pumble)) == 31, "the next message", 30)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    finally:
        kill(supervisor)
    assert sorted(texts(fake_pumble)) == sorted([f"order #{n}" for n in range(30)]
                                                + ["after the replacement"])


def _children(pid: int) -> list[int]:
    """The worker processes a supervisor started (each leads its own process group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and os.getpgid(int(entry.name)) == int(entry.name):
                    found.append(int(entry.name))
    return found


def test_a_dead_schedulers_lock_is_released_a_live_ones_is_not(redis_url, queue_name):
    from rq.scheduler import RQScheduler

    from bridge.queue import connect
    from bridge.worker import release_dead_scheduler_lock

    connection = connect(redis_url)
    key = RQScheduler.get_locking_key(queue_name)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for name, pid, released in (("alive", os.getpid(), False),
                                     ("dead", dead.pid, True)):
            connection.set(key, name, ex=60)
            connection.hset(f"rq:scheduler:{name}",
                            mapping={"hostname": socket.gethostname(), "pid": pid})
            assert release_dead_scheduler_lock(connection, queue_name) is released
            assert (connection.get(key) is None) is released
    finally:
        connection.delete(key, "rq:scheduler:alive", "rq:scheduler:dead")


def test_the_procfiles_worker_stops_cleanly_as_honcho_stops_it(bridge):
    """honcho runs a Procfile line with `sh -c` in a session of its own, and stops it with
    SIGTERM to that whole group; what it reports is the exit code of the process it started."""
    b = bridge()
    lines = (line.partition(": ") for line in (ROOT / "Procfile").read_text().splitlines()
             if line and not line.startswith("#"))
    command = {name: rest for name, _, rest in lines}["worker"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    process = subprocess.Popen(command, shell=True, cwd=ROOT, start_new_session=True,
                               env=clean_env(BRIDGE_CONFIG=str(b.path), PATH=path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening_worker(b)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        kill(process)
