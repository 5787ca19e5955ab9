"""End to end over real parts: real Redis, the receiver on a real port, a real worker process,
the fake Pumble over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from bridge.config import load_config
from bridge.local_server import LocalServer
from bridge.web import create_app
from tests.conftest import TEST_KEY, free_port, signed_order, wait_until

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


# The bridge processes tests start keep their metric files here, not in the working tree.
TEST_METRICS_DIR = tempfile.mkdtemp(prefix="pumble-bridge-test-metrics-")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would override the test's config."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "PUMBLE_API_KEY", "PUMBLE_BASE_URL", "BRIDGE_CONFIG", "PORT",
                        "WEB_CONCURRENCY")}
    return {**env, "PROMETHEUS_MULTIPROC_DIR": TEST_METRICS_DIR, **extra}


@pytest.fixture
def receiver(write_config, redis_url, queue_name, fake_pumble, rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name, pumble_url=fake_pumble.url)
    with LocalServer(create_app(load_config(path, {}), redis_url)) as server:
        yield server, path


def test_signed_order_becomes_exactly_one_message(receiver, fake_pumble, rq_queue):
    server, config_path = receiver
    body, headers = signed_order(4242, webhook_id="wh-e2e")
    first = httpx.post(f"{server.url}/webhooks/shop", content=body, headers=headers)
    redelivered = httpx.post(f"{server.url}/webhooks/shop", content=body, headers=headers)
    tampered = httpx.post(f"{server.url}/webhooks/shop", headers=headers,
                          content=body.replace(b"#4242", b"#4243"))
    assert (first.status_code, redelivered.status_code, tampered.status_code) == (202, 200, 401)

    worker = cli("--config", str(config_path), "worker", "--burst", env=clean_env())
    assert worker.returncode == 0, worker.stderr

    [message] = fake_pumble.messages()
    assert message["channel"] == "orders"
    assert message["text"].splitlines()[0] == "🛒 New order #4242 · 368.40 EUR"
    assert "Customer: Ada Lovelace" in message["text"]
    assert "…and 2 more items" in message["text"]
    assert "https://admin.shopify.com/store/demo-shop/orders/5000000004242" in message["text"]
    assert message["author"] == message["authorAppId"]  # posted as the bot
    [job_id] = rq_queue.finished_job_registry.get_job_ids()
    assert rq_queue.fetch_job(job_id).return_value() == {
        "message_id": message["id"], "channel_id": message["channelId"]}
    assert TEST_KEY not in worker.stderr + worker.stdout


def test_tampered_order_alone_posts_nothing(receiver, fake_pumble, rq_queue):
    server, config_path = receiver
    body, headers = signed_order(4243)
    response = httpx.post(f"{server.url}/webhooks/shop", headers=headers,
                          content=body.replace(b'"quantity":2', b'"quantity":20'))
    assert response.status_code == 401
    assert cli("--config", str(config_path), "worker", "--burst",
               env=clean_env()).returncode == 0
    assert fake_pumble.messages() == []


def test_refused_send_is_kept_with_its_reason(write_config, redis_url, queue_name, fake_pumble,
                                              rq_queue):
    routes = [{"name": "lost", "channel": "no-such-channel", "text": "order {{ order.number }}"}]
    path = write_config(redis_url=redis_url, queue=queue_name, pumble_url=fake_pumble.url,
                        routes=routes)
    client = create_app(load_config(path, {}), redis_url).test_client()
    body, headers = signed_order(77)
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 202

    assert cli("--config", str(path), "worker", "--burst", env=clean_env()).returncode == 0
    [job_id] = rq_queue.failed_job_registry.get_job_ids()
    job = rq_queue.fetch_job(job_id)
    assert "NotFoundError" in job.latest_result().exc_string
    assert "Could not find channel" in job.latest_result().exc_string
    assert TEST_KEY not in job.latest_result().exc_string
    assert fake_pumble.messages() == []


@dataclass
class ExampleRun:
    """``run`` on config.example.yaml (the test's queue), started as a newcomer starts it."""

    config: Path
    command: list[str]
    env: dict[str, str]
    port: int
    fake_port: int
    process: subprocess.Popen[str]
    output: str = ""  # all it printed, once stopped


@contextmanager
def example_run(tmp_path: Path, queue_name: str, redis_url: str) -> Iterator[ExampleRun]:
    """Started and ready (``/readyz``); stopped with Ctrl-C after the block, which it must
    end cleanly (its ``output`` is there then)."""
    config = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config["redis"] = {"queue": queue_name}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port, fake_port = free_port(), free_port()
    # With REDIS_URL set the run uses that server; otherwise its own embedded one.
    env = clean_env(BRIDGE_DATA_DIR=str(tmp_path / "data"))
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "bridge", "--config", str(config_path), "run",
               "--port", str(port), "--fake-pumble-port", str(fake_port)]
    run = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
                   "serve to be ready")
        started = ExampleRun(config_path, command, env, port, fake_port, run)
        yield started
    finally:
        run.send_signal(signal.SIGINT)
        output = run.communicate(timeout=60)[0]
    assert run.returncode == 0, output
    started.output = output


def test_run_serves_a_newcomer_end_to_end(tmp_path, queue_name, redis_url, rq_queue):
    """The README's first command: run with no Pumble key, send the sample, see the message."""
    with example_run(tmp_path, queue_name, redis_url) as run:
        sample = cli("--config", str(run.config), "send-sample", "--url",
                     f"http://127.0.0.1:{run.port}", env=run.env)
        assert sample.returncode == 0, sample.stdout + sample.stderr
        assert "202" in sample.stdout

        def posted():
            return httpx.get(f"http://127.0.0.1:{run.fake_port}/_fake/messages"
                             ).json()["messages"]

        wait_until(lambda: len(posted()) == 1, "the sample to be posted")
        [message] = posted()
        assert message["channel"] == "orders"
        assert "New order #" in message["text"]
    assert "BUILT-IN FAKE PUMBLE" in run.output
    assert "[fake-pumble] #orders: 🛒 New order #" in run.output
    if not os.environ.get("REDIS_URL"):
        assert (tmp_path / "data" / "redis" / "appendonlydir" / "appendonly.aof.manifest").exists()
        assert not (tmp_path / "data" / "redis" / "redis.sock").exists()  # stopped cleanly


def test_fake_pumble_command_serves_alone():
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "bridge", "fake-pumble", "--port", str(port), "--key", "k1",
         "--channel", "Flash Sale", "--rate-limit", "1"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/_fake/messages").status_code == 200, "the fake")
        refused = httpx.post(f"{url}/sendMessage", headers={"ApiKey": "k2"},
                             json={"channel": "flash-sale", "text": "hi"})
        sent = httpx.post(f"{url}/sendMessage", headers={"ApiKey": "k1"},
                          json={"channel": "flash-sale", "text": "hi"})
        limited = httpx.post(f"{url}/sendMessage", headers={"ApiKey": "k1"},
                             json={"channel": "flash-sale", "text": "third"})
        assert (refused.status_code, refused.json()) == (403, {"error": "Invalid API key"})
        assert sent.status_code == 200
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    finally:
        fake.send_signal(signal.SIGINT)
        output = fake.communicate(timeout=10)[0]
    assert fake.returncode == 0
    assert "[fake-pumble] #flash-sale: hi" in output


def test_redis_out_of_reach_is_one_clear_line_not_a_traceback(write_config):
    path = write_config()
    done = cli("--config", str(path), "dlq", "list",
               env=clean_env(REDIS_URL="redis://:hunter2-secret@127.0.0.1:1/0"))
    assert done.returncode == 1
    assert done.stderr.startswith("pumble-bridge: cannot connect to Redis: ")
    assert "127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr
    assert "hunter2-secret" not in done.stderr
