"""The soak's processes on loopback: a Redis of its own, the fake Pumble, receivers and workers.

Every process runs in its own process group (a new session) so that a SIGKILL of the group takes
what it forked too: gunicorn's worker, rq's scheduler. Each one's output goes to a log file in the
soak's directory, appended to across restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.soak_events import CHANNEL, ROUTE_TEXT, SOURCES, channels
from bridge.redis_embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "soak-key-0123456789abcdef0123456789"
QUEUE = "soak"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(directory: Path) -> dict[str, str]:
    """This environment minus anything that would override the soak's config."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "REDIS_URL", "PUMBLE_API_KEY", "PUMBLE_BASE_URL", "BRIDGE_CONFIG", "PORT")}
    return {**env, "BRIDGE_DATA_DIR": str(directory / "bridge-data"), "PYTHONUNBUFFERED": "1"}


def write_config(path: Path, redis_url: str, pumble_url: str, delivery: dict[str, Any],
                 pumble: dict[str, Any]) -> None:
    config = {
        "pumble": {"base_url": pumble_url, "api_key": API_KEY, **pumble},
        "redis": {"url": redis_url, "queue": QUEUE},
        "delivery": delivery,
        "sources": SOURCES,
        "routes": [{"name": "soak", "channel": CHANNEL, "text": ROUTE_TEXT}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class Process:
    """One restartable process (group), like a systemd unit with Restart=always."""

    def __init__(self, name: str, command: list[str], directory: Path):
        self.name = name
        self.command = command
        self.directory = directory
        self.log = directory / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.lock = threading.Lock()  # one fault at a time per process

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(self.command, cwd=ROOT, env=child_env(self.directory),
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.starts += 1

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0

    def kill(self) -> None:
        """SIGKILL the whole group, as when the machine under it dies."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL what is left of the group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        self.kill()

    def died(self) -> bool:
        return self.popen is not None and self.popen.poll() is not None


class Redis:
    """The embedded Redis (append-only, as shipped) in the soak's directory, restartable: the
    same data directory and the same Unix socket path every time."""

    def __init__(self, directory: Path):
        self.data = directory / "data"
        self.server = EmbeddedRedis(self.data)
        self.url = self.server.start()
        self.lock = threading.Lock()

    def stop(self) -> None:
        self.server.stop()  # SHUTDOWN: the append-only file is flushed first

    def start(self) -> None:
        self.server = EmbeddedRedis(self.data)
        url = self.server.start()
        assert url == self.url, (url, self.url)


class Cluster:
    def __init__(self, directory: Path, *, receivers: int, workers: int,
                 delivery: dict[str, Any], pumble: dict[str, Any], maintenance: int):
        self.directory = directory
        self.redis = Redis(directory)
        python = [sys.executable, "-m", "bridge"]
        self.fake_port = free_port()
        self.fake = Process("fake-pumble", [
            *python, "fake-pumble", "--port", str(self.fake_port), "--key", API_KEY,
            *[arg for channel in channels() for arg in ("--channel", channel)]], directory)
        self.fake_url = f"http://127.0.0.1:{self.fake_port}"
        self.config = directory / "config.yaml"
        write_config(self.config, self.redis.url, self.fake_url, delivery, pumble)
        base = [*python, "--config", str(self.config)]
        self.ports = [free_port() for _ in range(receivers)]
        self.receivers = [Process(f"receiver-{i}", [
            *base, "serve", "--port", str(port), "--workers", "2"], directory)
            for i, port in enumerate(self.ports)]
        self.workers = [Process(f"worker-{i}", [
            *base, "worker", "--maintenance-interval", str(maintenance)], directory)
            for i in range(workers)]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, timeout: float = 60.0) -> None:
        self.fake.start()
        for process in (*self.receivers, *self.workers):
            process.start()
        deadline = time.monotonic() + timeout
        for url in (self.fake_url + "/_fake/stats", *(u + "/readyz" for u in self.urls)):
            while not _answers(url):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s; see "
                                       f"{self.directory / 'logs'}")
                time.sleep(0.2)

    def stop(self) -> None:
        for process in (*self.receivers, *self.workers, self.fake):
            with contextlib.suppress(Exception):
                process.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()

    # -- the fake Pumble's control endpoints ----------------------------------------------------

    def faults(self, **changes: Any) -> None:
        httpx.post(f"{self.fake_url}/_fake/faults", json=changes, timeout=10).raise_for_status()

    def fake_stats(self) -> dict[str, int]:
        return httpx.get(f"{self.fake_url}/_fake/stats", timeout=10).json()

    def messages(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.fake_url}/_fake/messages", timeout=60)
        response.raise_for_status()
        return response.json()["messages"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
