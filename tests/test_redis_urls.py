"""The Redis URL forms a deployment uses, against real servers: redis://, unix:// (the embedded
default, everywhere else in the suite) and redis+sentinel:// through a real Sentinel."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bridge.notification import Notification
from bridge.queue import NotificationQueue, connect
from bridge.redis_embedded import server_executable
from tests.conftest import free_port


@pytest.fixture
def sentinel(tmp_path: Path):
    """A Redis on a TCP port and one Sentinel watching it as "shop-redis"."""
    binary = server_executable()
    master_port, sentinel_port = free_port(), free_port()
    master = subprocess.Popen([binary, "--port", str(master_port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor shop-redis 127.0.0.1 {master_port} 1\n")
    watcher = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/shop-redis/0"
        deadline = time.monotonic() + 15
        while True:
            try:
                connect(url).ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "Sentinel did not come up"
                time.sleep(0.2)
        yield url, master_port
    finally:
        for process in (watcher, master):
            process.terminate()
            process.wait(10)


def test_sentinel_url_reaches_the_master(sentinel):
    url, master_port = sentinel
    client = connect(url, patient=True)
    assert client.info("server")["tcp_port"] == master_port
    queue = NotificationQueue(client, "sentinel-test")
    assert queue.accept([Notification(source="shop", event_id="e-1", event_type="order.created",
                                       route="r", channel="orders", text="via sentinel")]
                        ).written == (True,)
    assert [job.args[0]["text"] for job in queue.rq.get_jobs()] == ["via sentinel"]


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1/shop", "redis+sentinel://h:1"])
def test_a_malformed_sentinel_url_is_a_clear_error(url):
    with pytest.raises(ValueError, match=r"HOST:PORT\[,HOST:PORT…\]/SERVICE"):
        connect(url)
