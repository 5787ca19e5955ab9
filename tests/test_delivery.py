"""The worker's decisions, against a real Redis and a Pumble stand-in over real HTTP."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from flask import Flask, jsonify, request

from bridge import delivery
from bridge.config import load_config
from bridge.local_server import LocalServer
from bridge.notification import Notification
from bridge.queue import NotificationQueue
from bridge.worker import run_worker


def flaky_pumble(*failures: tuple[int, dict[str, str]]):
    """Answers each listed (status, headers) once, in order, then accepts every message."""
    app = Flask("flaky")
    app.config["texts"] = []
    pending = list(failures)
    lock = threading.Lock()

    @app.post("/sendMessage")
    def send():
        with lock:
            if pending:
                status, headers = pending.pop(0)
                return jsonify({"error": "try later"}), status, headers
            app.config["texts"].append(request.json["text"])
        return jsonify({"id": "a" * 24, "channelId": "b" * 24})

    return app


def enqueue_one(queue_name: str, redis_url: str) -> None:
    from bridge.queue import connect

    NotificationQueue(connect(redis_url), queue_name).enqueue(Notification(
        source="shop", event_id=f"e-{time.time_ns()}", event_type="order.created", route="r",
        channel="orders", text="order #1"))


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(delivery, "BACKOFF_BASE", 0.25)  # first retry after 1 s, not up to 4


@pytest.mark.parametrize("failure", [(503, {}), (429, {"Retry-After": "1"})])
def test_transient_failure_is_sent_again_later_once(failure, write_config, redis_url,
                                                    queue_name, rq_queue, fast_backoff):
    app = flaky_pumble(failure)
    with LocalServer(app) as pumble:
        config = load_config(write_config(redis_url=redis_url, queue=queue_name,
                                          pumble_url=pumble.url), {})
        enqueue_one(queue_name, redis_url)
        run_worker(config, redis_url, burst=True)
        [job_id] = rq_queue.scheduled_job_registry.get_job_ids()
        assert f"HTTP {failure[0]}" in rq_queue.fetch_job(job_id).meta["last_error"]
        assert app.config["texts"] == []

        time.sleep(2.2)  # rq schedules in whole seconds
        run_worker(config, redis_url, burst=True)
    assert app.config["texts"] == ["order #1"]
    assert rq_queue.finished_job_registry.get_job_ids() == [job_id]


def test_ambiguous_failure_is_kept_not_resent(write_config, redis_url, queue_name, rq_queue):
    with socket.socket() as silent:  # accepts the request, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        path = write_config(redis_url=redis_url, queue=queue_name,
                            pumble_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        text = path.read_text().replace("pumble:\n", "pumble:\n  read_timeout: 0.3\n")
        path.write_text(text)
        enqueue_one(queue_name, redis_url)
        run_worker(load_config(path, {}), redis_url, burst=True)
    [job_id] = rq_queue.failed_job_registry.get_job_ids()
    assert "AmbiguousError" in rq_queue.fetch_job(job_id).latest_result().exc_string
    assert rq_queue.scheduled_job_registry.get_job_ids() == []


def test_each_route_sends_with_its_account(write_config, redis_url, queue_name, rq_queue):
    from bridge.fake_pumble import create_fake_pumble
    from bridge.queue import connect

    with LocalServer(create_fake_pumble(keys=["key-main"], channels=["orders"])) as main, \
            LocalServer(create_fake_pumble(keys=["key-eu"], channels=["orders"])) as eu:
        path = write_config(redis_url=redis_url, queue=queue_name, pumble_url=main.url,
                            api_key="key-main")
        accounts = f"  accounts:\n    eu: {{api_key: key-eu, base_url: '{eu.url}'}}\n"
        path.write_text(path.read_text().replace("pumble:\n", "pumble:\n" + accounts))
        config = load_config(path, {})
        queue = NotificationQueue(connect(redis_url), queue_name)
        for account in ("default", "eu"):
            queue.enqueue(Notification(source="shop", event_id=f"e-{account}",
                                       event_type="order.created", route=f"r-{account}",
                                       channel="orders", text=f"via {account}",
                                       account=account))
        run_worker(config, redis_url, burst=True)

        def texts(server):
            return [m["text"] for m in httpx.get(f"{server.url}/_fake/messages").json()["messages"]]

        assert texts(main) == ["via default"]
        assert texts(eu) == ["via eu"]


def test_unknown_account_in_a_route_is_a_config_error(write_config):
    from bridge.config import ConfigError

    routes = [{"name": "r", "channel": "c", "text": "t", "account": "nope"}]
    with pytest.raises(ConfigError, match=r"account 'nope', which is not under pumble\.accounts"):
        load_config(write_config(routes=routes), {})
