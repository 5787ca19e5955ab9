"""The receiver as `pumble-bridge serve` runs it (gunicorn, its master and a worker process),
over real HTTP: the last valid config survives SIGHUP and a worker's death; a body over
receiver.max_body_bytes is refused whether or not it is chunked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, signed_order, wait_until
from tests.test_e2e import ROOT, clean_env
from tests.test_metrics import parse, value
from tests.test_reload import bump


class Served:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process = process
        self.url = url
        self.log = log

    def workers(self) -> set[int]:
        pid = self.process.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def replaced(self, old: set[int]) -> bool:
        """Every worker of ``old`` gone, and a new one serving."""
        now = self.workers()
        return bool(now) and not now & old and self.ready().status_code == 200

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", headers={"Connection": "close"})


@pytest.fixture
def serve(tmp_path, write_config, redis_url, queue_name) -> Iterator[tuple[Served, Path]]:
    """`pumble-bridge serve --workers 1` on a free port (one worker: every request meets it)."""
    config = write_config(redis_url=redis_url, queue=queue_name)
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--config", str(config), "serve", "--workers", "1",
             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
            env=clean_env(BRIDGE_DATA_DIR=str(tmp_path / "data")), start_new_session=True)
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: served.ready().status_code == 200, "serve to start")
        yield served, config
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def channel_of(served: Served, rq_queue, number: int) -> str:
    """The channel the served config routes a new order to (the job it enqueued says)."""
    body, headers = signed_order(number, webhook_id=f"w-{time.time_ns()}")
    response = httpx.post(f"{served.url}/webhooks/shop", content=body,
                          headers={**headers, "Connection": "close"})
    assert response.status_code == 202, response.text
    return rq_queue.get_jobs()[-1].args[0]["channel"]


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))
    bump(path)


def test_sighup_and_a_new_worker_serve_the_last_valid_config(serve, rq_queue):
    served, config = serve
    assert channel_of(served, rq_queue, 1) == "orders"

    edit(config, "channel: orders", "channel: sales")  # v2, valid
    wait_until(lambda: channel_of(served, rq_queue, 2) == "sales", "v2 in force")

    workers = served.workers()
    edit(config, "channel: sales", "chanel: sales")  # v3, invalid
    wait_until(lambda: "config_refused" in served.ready().json(), "v3 refused")
    assert "did you mean 'channel'" in served.ready().json()["config_refused"]
    wait_until(lambda: served.replaced(workers), "the workers restarted")
    assert channel_of(served, rq_queue, 3) == "sales"
    metrics = parse(httpx.get(f"{served.url}/metrics").text)
    assert value(metrics, "pumble_bridge_config_valid") == 0

    workers = served.workers()
    served.process.send_signal(signal.SIGHUP)  # what `systemctl reload` does
    wait_until(lambda: served.replaced(workers), "new workers after SIGHUP")
    assert channel_of(served, rq_queue, 4) == "sales"
    assert "config_refused" in served.ready().json()

    workers = served.workers()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: served.replaced(workers), "a worker in place of the killed one")
    assert channel_of(served, rq_queue, 5) == "sales"
    assert "config_refused" in served.ready().json()

    refusals = [line for line in served.log.read_text().splitlines()
                if "changed but is not valid" in line]
    assert len(refusals) == 1, refusals  # the master looked, once; no worker read the file

    edit(config, "chanel: sales", "channel: shipping")  # fixed: in force, no longer reported
    wait_until(lambda: channel_of(served, rq_queue, 6) == "shipping", "the fixed file in force")
    assert "config_refused" not in served.ready().json()
