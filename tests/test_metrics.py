"""GET /metrics over real parts: a real Redis, the fake Pumble over HTTP, real worker runs, and
``pumble-bridge serve`` under gunicorn with several worker processes beside a ``worker`` process,
all counting into one multiprocess directory (a tmp one per test: no two tests share files).

The in-process tests (receiver and worker in the test process) use prometheus-client's ordinary
in-process mode, where counters only grow: they compare a scrape before and after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.web import create_app
from bridge.worker import run_worker
from tests.conftest import TEST_KEY, faults, free_port, signed_order, wait_until
from tests.test_e2e import ROOT, clean_env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(response.get_data(as_text=True))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def unique_route(name: str = "orders") -> dict:
    return {"name": f"{name}-{uuid.uuid4().hex[:8]}", "match": {"source": ["shop"]},
            "channel": "orders", "template": "order_created.j2"}


# -- in one process: the receiver's and the worker's counters, Redis's gauges --------------------

def test_a_webhook_and_its_delivery_are_counted(bridge, fake_pumble, redis_url):
    route = unique_route()
    b = bridge(routes=[route])
    client = create_app(b.config, redis_url, watch=False, metrics=b.metrics).test_client()
    r = route["name"]
    before = scrape(client)

    body, headers = signed_order(5001)
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 202
    received = scrape(client)
    accepted = {"source": "shop", "type": "order.created", "outcome": "accepted"}
    assert delta(before, received, "pumble_bridge_events_received_total", **accepted) == 1
    assert delta(before, received, "pumble_bridge_notifications_enqueued_total", route=r) == 1
    assert delta(before, received, "pumble_bridge_ack_latency_seconds_count",
                 outcome="accepted") == 1
    assert delta(before, received, "pumble_bridge_ack_latency_seconds_bucket",
                 outcome="accepted", le="+Inf") == 1
    assert value(received, "pumble_bridge_queue_depth", state="queued") == 1  # the test's queue
    assert value(received, "pumble_bridge_queue_depth", state="scheduled") == 0
    assert value(received, "pumble_bridge_dead_letters") == 0
    assert value(received, "pumble_bridge_redis_up") == 1
    assert delta(before, received, "pumble_bridge_deliveries_total", route=r,
                 outcome="sent") == 0

    b.drain()
    [message] = fake_pumble.messages()
    delivered = scrape(client)
    assert delta(received, delivered, "pumble_bridge_deliveries_total", route=r,
                 outcome="sent") == 1
    assert delta(received, delivered, "pumble_bridge_end_to_end_seconds_count", route=r) == 1
    assert delta(received, delivered, "pumble_bridge_ratelimit_wait_seconds_count",
                 kind="messages") == 1
    assert value(delivered, "pumble_bridge_queue_depth", state="queued") == 0

    # The same delivery again: a duplicate, nothing enqueued.
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 200
    again = scrape(client)
    assert delta(delivered, again, "pumble_bridge_events_received_total",
                 **{**accepted, "outcome": "duplicate"}) == 1
    assert delta(delivered, again, "pumble_bridge_notifications_enqueued_total", route=r) == 0

    text = client.get("/metrics").get_data(as_text=True)
    assert message["id"] not in text and headers["X-Shopify-Webhook-Id"] not in text
    assert "channel=" not in text  # a channel may be rendered from the payload: never a label


def test_retries_and_dead_letters_are_counted(bridge, fake_pumble, redis_url, rq_queue):
    route = unique_route()["name"]
    b = bridge()
    client = create_app(b.config, redis_url, watch=False, metrics=b.metrics).test_client()
    before = scrape(client)

    faults(fake_pumble, fail_next={"count": 1, "status": 503})
    b.enqueue("order #7", route=route)
    b.enqueue("to nowhere", route=route, channel="no-such-channel")
    # One run each: #7 fails once, is scheduled.
    run_worker(b.config, b.redis_url, burst=True, metrics=b.metrics)
    waiting = scrape(client)
    assert value(waiting, "pumble_bridge_queue_depth", state="scheduled") == 1
    assert value(waiting, "pumble_bridge_queue_depth", state="queued") == 0
    assert value(waiting, "pumble_bridge_dead_letters") == 1
    assert delta(before, waiting, "pumble_bridge_dead_lettered_total", route=route) == 1
    assert delta(before, waiting, "pumble_bridge_deliveries_total", route=route,
                 outcome="dead_lettered") == 1
    assert delta(before, waiting, "pumble_bridge_deliveries_total", route=route,
                 outcome="retry") == 1
    assert delta(before, waiting, "pumble_bridge_delivery_retries_total", route=route,
                 error="TransientError") == 1

    b.drain()
    done = scrape(client)
    assert delta(before, done, "pumble_bridge_deliveries_total", route=route,
                 outcome="sent") == 1
    assert value(done, "pumble_bridge_queue_depth", state="scheduled") == 0
    assert value(done, "pumble_bridge_dead_letters") == 1
    assert b.dead.purge() == 1
    assert value(scrape(client), "pumble_bridge_dead_letters") == 0


def test_receiver_outcomes_keep_labels_bounded(bridge, redis_url):
    b = bridge()
    client = create_app(b.config, redis_url, watch=False).test_client()
    before = scrape(client)
    body, headers = signed_order(5002)
    stranger = f"no-such-source-{uuid.uuid4().hex}"
    assert client.post(f"/webhooks/{stranger}", data=body, headers=headers).status_code == 404
    assert client.post("/webhooks/shop", data=body + b" ",
                       headers=headers).status_code == 401
    too_big = b"x" * (b.config.receiver.max_body_bytes + 1)
    assert client.post("/webhooks/shop", data=too_big, headers=headers).status_code == 413
    after = scrape(client)
    name = "pumble_bridge_events_received_total"
    assert delta(before, after, name, source="unknown", type="unknown",
                 outcome="rejected") == 1
    assert delta(before, after, name, source="shop", type="unknown", outcome="rejected") == 1
    assert delta(before, after, name, source="shop", type="unknown",
                 outcome="bad_signature") == 1
    assert stranger not in client.get("/metrics").get_data(as_text=True)


def test_a_failure_to_count_never_fails_a_webhook_or_a_send(bridge, fake_pumble, redis_url,
                                                           monkeypatch):
    def broken(*_args, **_kwargs):
        raise OSError("the metrics directory is gone")

    monkeypatch.setattr(MetricWrapperBase, "labels", broken)  # every count of a webhook or send
    b = bridge()
    client = create_app(b.config, redis_url, watch=False).test_client()
    body, headers = signed_order(5004)
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 202
    b.drain()
    assert len(fake_pumble.messages()) == 1
    assert b.rq.finished_job_registry.get_job_ids()


def test_the_scrape_answers_when_redis_is_down(write_config, fake_pumble):
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    path = write_config(redis_url=down, pumble_url=fake_pumble.url)
    from bridge.config import load_config

    client = create_app(load_config(path, {}), down, watch=False).test_client()
    before = scrape(client)
    assert value(before, "pumble_bridge_redis_up") == 0
    assert not any(name == "pumble_bridge_queue_depth" for name, _ in before)
    body, headers = signed_order(5003)
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 503
    assert delta(before, scrape(client), "pumble_bridge_events_received_total", source="shop",
                 type="order.created", outcome="unavailable") == 1


# -- the directory: claimed, wiped only when nobody else uses it ----------------------------------

def _holder(directory: Path) -> subprocess.Popen[str]:
    """Another process that claims the directory and holds it until killed."""
    code = ("import sys; from pathlib import Path; from bridge import metrics; "
            f"held = metrics.claim(Path({str(directory)!r})); print('held', flush=True); "
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_files_of_earlier_runs_are_wiped_only_when_no_live_process_uses_the_directory(
        tmp_path):
    earlier = tmp_path / "counter_999999.db"
    earlier.write_bytes(b"old")
    holder = _holder(tmp_path)  # alone, it wipes what earlier runs left
    assert not earlier.exists()
    stale = tmp_path / "counter_999998.db"  # then a file of a process that shares it
    stale.write_bytes(b"counts")
    try:
        shared = metrics.claim(tmp_path)
        assert shared.wiped is False  # a live process uses it: its files stay
        assert stale.exists()
        shared.release()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock all the same
        holder.wait()
    alone = metrics.claim(tmp_path)
    assert alone.wiped is True
    assert not stale.exists()
    assert (tmp_path / metrics.LOCK_FILE).exists()
    alone.release()


def test_processes_writing_to_one_directory_are_summed(tmp_path):
    env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    prelude = ("import os, sys; from pathlib import Path; from bridge import metrics; "
               "m = metrics.Metrics.shared(Path(os.environ[metrics.ENV])); ")

    def run(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # The first stays alive while the others run, as the receiver does beside the workers.
    first = subprocess.Popen(
        [sys.executable, "-c", prelude + "[m.enqueued('r') for _ in range(3)]; "
         "print('counted', flush=True); sys.stdin.read()"], cwd=ROOT, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "counted"
        run("[m.enqueued('r') for _ in range(4)]; m.delivery('r', 'sent')")
        assert len(list((tmp_path / "metrics").glob("counter_*.db"))) == 2
        samples = parse(run("sys.stdout.write(m.exposition()[0].decode())"))
    finally:
        first.communicate("", timeout=30)
    assert value(samples, "pumble_bridge_notifications_enqueued_total", route="r") == 7
    assert value(samples, "pumble_bridge_deliveries_total", route="r", outcome="sent") == 1


def test_metrics_must_be_set_up_before_prometheus_client_is_imported():
    done = subprocess.run(
        [sys.executable, "-c", "import prometheus_client, tempfile; from pathlib import Path; "
         "from bridge import metrics; metrics.Metrics.shared(Path(tempfile.mkdtemp()))"],
        cwd=ROOT, capture_output=True, text=True,
        env={k: v for k, v in clean_env().items() if k != metrics.ENV}, timeout=60)
    assert done.returncode != 0
    assert "imported before the metrics directory was set" in done.stderr


def test_nothing_is_made_at_import_and_the_environment_is_only_read(tmp_path):
    """Importing the module makes no metric (prometheus_client is not even imported); a shared
    Metrics counts into the directory it is given, and leaves the environment as it was."""
    directory = tmp_path / "metrics"
    code = ("import os, sys; from pathlib import Path; from bridge import metrics; "
            "assert 'prometheus_client' not in sys.modules; before = dict(os.environ); "
            f"m = metrics.Metrics.shared(Path({str(directory)!r})); m.enqueued('r'); "
            "assert dict(os.environ) == before; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
                          timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    assert list(directory.glob("counter_*.db"))
    elsewhere = subprocess.run(
        [sys.executable, "-c", code.replace(str(directory), str(tmp_path / "other"))], cwd=ROOT,
        capture_output=True, text=True, env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
        timeout=60)
    assert elsewhere.returncode != 0
    assert f"counts into {directory}, not {tmp_path / 'other'}" in elsewhere.stderr


def test_each_metrics_counts_its_own():
    """No process-wide metrics: what one receiver or worker counts is in the Metrics it was
    given, and in no other."""
    mine, other = metrics.Metrics(), metrics.Metrics()
    mine.enqueued("r")
    mine.delivery("r", "sent")
    name = "pumble_bridge_notifications_enqueued_total"
    assert value(parse(mine.exposition()[0].decode()), name, route="r") == 1
    assert value(parse(other.exposition()[0].decode()), name, route="r") == 0


# -- serve under gunicorn, a worker process beside it: one machine's totals ------------------------

@pytest.fixture
def served(tmp_path, write_config, redis_url, queue_name, fake_pumble, rq_queue):
    """``pumble-bridge serve --workers 2`` on a free port, its data (and so its metrics
    directory) under tmp_path."""
    config = write_config(redis_url=redis_url, queue=queue_name, pumble_url=fake_pumble.url)
    env = {k: v for k, v in clean_env(BRIDGE_DATA_DIR=str(tmp_path / "data")).items()
           if k != metrics.ENV}
    port = free_port()
    stderr = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), "serve", "--workers", "2",
         "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "serve")
        yield url, config, env, tmp_path / "data" / "metrics", serve, tmp_path / "serve.log"
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        stderr.close()


def scrape_url(url: str) -> Samples:
    # A new connection each time, so that any of the gunicorn workers may answer.
    response = httpx.get(f"{url}/metrics", headers={"Connection": "close"})
    assert response.status_code == 200
    return parse(response.text)


def test_gunicorn_workers_and_a_worker_process_add_up(served, fake_pumble):
    url, config, env, directory, _serve, log_path = served
    count = 8
    for number in range(count):
        body, headers = signed_order(6000 + number)
        response = httpx.post(f"{url}/webhooks/shop", content=body,
                              headers={**headers, "Connection": "close"})
        assert response.status_code == 202, response.text
    accepted = {"source": "shop", "type": "order.created", "outcome": "accepted"}
    for _ in range(4):  # whichever worker answers, it reports every process's counts
        samples = scrape_url(url)
        assert value(samples, "pumble_bridge_events_received_total", **accepted) == count
        assert value(samples, "pumble_bridge_notifications_enqueued_total",
                     route="new-orders") == count
        assert value(samples, "pumble_bridge_queue_depth", state="queued") == count

    worker = subprocess.run([sys.executable, "-m", "bridge", "--config", str(config), "worker",
                             "--burst"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert len(fake_pumble.messages()) == count
    samples = scrape_url(url)  # the worker process is gone; its counts stay in the total
    assert value(samples, "pumble_bridge_deliveries_total", route="new-orders",
                 outcome="sent") == count
    assert value(samples, "pumble_bridge_end_to_end_seconds_count",
                 route="new-orders") == count
    assert value(samples, "pumble_bridge_events_received_total", **accepted) == count
    assert value(samples, "pumble_bridge_queue_depth", state="queued") == 0
    writers = {path.stem.rsplit("_", 1)[1] for path in directory.glob("*.db")}
    assert len(writers) >= 2  # a gunicorn worker and the delivery worker, at least
    assert TEST_KEY not in worker.stderr

    # stderr is a file, not a terminal: JSON lines, gunicorn's own included (bridge.logs).
    written = log_path.read_text().splitlines(keepends=True)
    lines = [json.loads(line) for line in written if line.endswith("\n")]
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"]
               for line in lines)
    assert sum(line["logger"] == "bridge.web" and "event_id" in line
               for line in lines) == count


def test_a_dead_gunicorn_worker_is_forgotten_but_its_counts_stay(served):
    url, _config, _env, directory, serve, _log = served
    body, headers = signed_order(6100)
    assert httpx.post(f"{url}/webhooks/shop", content=body, headers=headers).status_code == 202
    [counter] = directory.glob("counter_*.db")
    pid = int(counter.stem.rsplit("_", 1)[1])
    assert pid != serve.pid
    # A live gauge file of that worker, as a gauge with multiprocess_mode="livesum" leaves.
    live = directory / f"gauge_livesum_{pid}.db"
    live.write_bytes(counter.read_bytes())
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not live.exists(), "gunicorn's child_exit hook")
    assert counter.exists()
    wait_until(lambda: value(scrape_url(url), "pumble_bridge_events_received_total",
                             source="shop", type="order.created", outcome="accepted") == 1,
               "a scrape after the worker was replaced")
