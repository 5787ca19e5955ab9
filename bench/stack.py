"""Shared machinery of the whole-system benchmarks (receiver, end_to_end, burst, memory).

Not a benchmark itself. It starts the real processes the way an operator does, on this machine:

- Redis: the embedded default (``bridge.redis_embedded.EmbeddedRedis``, a real redis-server with
  its production settings: unix socket, AOF everysec, noeviction) in a temp data dir. The bridge's
  processes get ``BRIDGE_DATA_DIR`` = that dir and no ``REDIS_URL``, so they find and reuse that
  very server exactly as ``pumble-bridge serve``/``worker`` do by default.
- The receiver: ``python -m bridge --config CFG serve`` (gunicorn, its default workers and
  threads); the worker: ``python -m bridge --config CFG worker [--processes N]``.
- The fake Pumble: ``bridge.fake_pumble.create_fake_pumble`` served by ``LocalServer``, the same
  app and server ``pumble-bridge fake-pumble`` runs, in its own process (``python -m bench.stack
  --serve-fake PORT``), with one addition: the ``echo`` hook the CLI uses to print each stored
  message records ``time.time()`` at the moment the message is stored, and
  ``GET /_fake/bench/seen?since=N`` returns those records from index N. (The fake's own
  timestamps are whole seconds; this one is exact, taken in the fake's process.)
- The machine's load: CPU used by processes that are not this benchmark's (``/proc/stat`` minus
  this process tree), so every result says how busy the shared machine was meanwhile.

Only processes started here are ever stopped, by their own process group.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import hmac
import importlib.metadata
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import redis
import yaml

import bridge
from bridge import samples
from bridge.cli import SERVE_THREADS, SERVE_WORKERS
from bridge.redis_embedded import EmbeddedRedis

BENCH_DIR = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(bridge.__file__).resolve().parent.parent  # the tree being benchmarked
RESULTS_DIR = BENCH_DIR / "results"
SECRET = "bench-shop-secret-not-real"
API_KEY = "bench-key-not-real-0123456789abcdef"
CHANNEL = "orders"
SOURCE = "shop"
BODY_BYTES = 5_000
# Environment that would point a child elsewhere than the temp config says.
FOREIGN_ENV = ("BRIDGE_CONFIG", "PUMBLE_API_KEY", "PUMBLE_BASE_URL", "REDIS_URL",
               "BRIDGE_DATA_DIR", "PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR", "PORT",
               "SHOPIFY_WEBHOOK_SECRET", "BRIDGE_ADMIN_TOKEN")
ORDER = re.compile(r"New order #(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What `serve` runs by default, as the benches print it.
SERVE_SHAPE = f"{SERVE_WORKERS} workers × {SERVE_THREADS} thread(s) (gthread)"


# --- the webhooks ---------------------------------------------------------------------------

def order_body(number: int, size: int = BODY_BYTES) -> bytes:
    """``samples.shopify_order(number)`` with its ``note`` padded so the body is ``size`` bytes
    (the order's own fields, seven line items, stay as they are)."""
    payload = samples.shopify_order(number)
    payload["note"] = ""
    bare = len(samples.body_of(payload))
    filler = ("Please leave the parcel with the neighbour at number 12 if nobody is home. "
              "Gift message: Happy birthday, with love from all of us! ")
    payload["note"] = (filler * (size // len(filler) + 1))[:max(0, size - bare)]
    return samples.body_of(payload)


def sign(body: bytes) -> str:
    """X-Shopify-Hmac-Sha256 of ``body`` (as ``bridge.sources.shopify.sign`` with SECRET)."""
    return base64.b64encode(hmac.digest(SECRET.encode(), body, hashlib.sha256)).decode()


def order_headers(body: bytes, webhook_id: str) -> dict[str, str]:
    return {**samples.shopify_headers(webhook_id=webhook_id), "X-Shopify-Hmac-Sha256": sign(body)}


def orders_in(text: str) -> list[int]:
    """Order numbers a message shows: one for an order's message, one a line for a digest."""
    return [int(n) for n in ORDER.findall(text)]


# --- numbers ----------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]  # drop nan
    return statistics.median(values) if values else float("nan")


# --- processes, CPU and memory -------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu(pid: int, *, reaped: bool = True) -> float:
    """CPU seconds of a process (utime+stime), plus its reaped children's with ``reaped``."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def descendants(root: int) -> list[int]:
    """Live processes under ``root`` (not root itself), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parent[int(entry.name)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and every live process under it (their reaped children too)."""
    return sum(process_cpu(pid) for pid in [root, *descendants(root)])


def machine_busy() -> float:
    """CPU seconds the machine was busy, all CPUs (steal included; /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
    return float("nan")


def ours_cpu() -> float:
    """CPU seconds of this process, its waited-for children and every live descendant."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
            + sum(process_cpu(pid) for pid in descendants(os.getpid())))


@dataclass
class Load:
    """The machine's CPU use over an interval: ours (this process tree) and others'."""

    wall: float = 0.0
    machine: float = 0.0
    ours: float = 0.0

    @property
    def others_cores(self) -> float:
        """Cores kept busy by processes that are not this benchmark (others' test runs, the
        hypervisor's steal) on average over the interval."""
        if self.wall <= 0 or self.machine != self.machine:
            return float("nan")
        return max(0.0, self.machine - self.ours) / self.wall

    @property
    def ours_cores(self) -> float:
        return self.ours / self.wall if self.wall > 0 else float("nan")

    def as_json(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 3), "others_cores": round(self.others_cores, 3),
                "ours_cores": round(self.ours_cores, 3)}


class LoadMeter:
    """``with LoadMeter() as load: ...`` then ``load.result``."""

    def __enter__(self) -> LoadMeter:
        self._start = (time.perf_counter(), machine_busy(), ours_cpu())
        self.result = Load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, busy, ours = time.perf_counter(), machine_busy(), ours_cpu()
        self.result = Load(wall - self._start[0], busy - self._start[1], ours - self._start[2])


def memory(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private pages: clean + dirty) in KiB, from /proc/PID/smaps_rollup
    (empty if the process is gone). PSS shares a file-backed page among every process on the
    machine that maps it (other people's Python processes using the same venv included), so it
    moves with them; USS does not."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Swap"):
                values[name.lower()] = int(rest.split()[0])
    if values:
        values["uss"] = values.get("private_clean", 0) + values.get("private_dirty", 0)
    return values


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env["PYTHONPATH"] = str(PACKAGE_ROOT)  # the children run the same tree as this process
    env.update(extra)
    return env


class Service:
    """A child process in its own session (so its whole group can be stopped: gunicorn's
    workers, rq's scheduler), output to a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, env=env, cwd=log_dir, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # our own group only: what it left behind
        self.process.wait()
        self._log.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               service: Service | None = None, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError, redis.RedisError):
            if check():
                return
        if service is not None and not service.alive():
            raise SystemExit(f"{what}: {service.name} exited:\n{service.tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{service.tail()}" if service is not None else ""
            raise SystemExit(f"{what}: not within {timeout:.0f} s{tail}")
        time.sleep(interval)


# --- Redis --------------------------------------------------------------------------------------

class Store:
    """The embedded Redis in ``folder`` (the bridge's processes reuse it through
    BRIDGE_DATA_DIR=folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._embedded = EmbeddedRedis(folder)
        self.url = self._embedded.start()
        self.connection = redis.Redis.from_url(self.url)
        server = self.connection.info("server")
        self.version = server.get("redis_version", "?")
        self.pid = int(server.get("process_id", 0))

    def cpu(self) -> float:
        info = self.connection.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def commands(self) -> dict[str, int]:
        return {name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in self.connection.info("commandstats").items()}

    def flush(self) -> None:
        """Empty the private server between runs (it is this benchmark's alone)."""
        self.connection.flushall()

    def close(self) -> None:
        self.connection.close()
        self._embedded.stop()


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    for own in ("info", "flushall", "llen", "scan", "dbsize", "ping"):  # the bench's own reads
        diff.pop(own, None)
    return {k: v for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v > 0}


# --- the fake Pumble ------------------------------------------------------------------------------

def serve_fake(port: int, rate_limit: int | None) -> None:
    """(In a child process.) The fake Pumble as ``pumble-bridge fake-pumble`` serves it, plus
    ``GET /_fake/bench/seen?since=N``: [time stored, channel, text] of each message from the Nth."""
    from flask import jsonify, request

    from bridge.fake_pumble import Faults, create_fake_pumble
    from bridge.local_server import LocalServer

    records: list[tuple[float, str]] = []
    lock = threading.Lock()

    def record(line: str) -> None:  # called by the fake right after it stored the message
        stored = time.time()
        with lock:
            records.append((stored, line.removeprefix("[fake-pumble] ")))

    app = create_fake_pumble(keys=[API_KEY], channels=[CHANNEL], echo=record,
                             faults=Faults(rate_limit_per_minute=rate_limit))

    @app.get("/_fake/bench/seen")
    def bench_seen() -> Any:
        since = int(request.args.get("since", "0"))
        with lock:
            chunk = records[since:]
        return jsonify({"pid": os.getpid(), "next": since + len(chunk), "records": chunk})

    @app.post("/_fake/bench/forget")
    def bench_forget() -> Any:
        with lock:
            records.clear()
        return jsonify({"status": "ok"})

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with LocalServer(app, "127.0.0.1", port):
        stop.wait()


@dataclass
class Seen:
    stored: float  # time.time() in the fake when it stored the message
    channel_text: str  # "#orders: 🛒 New order #1001 · …"

    @property
    def orders(self) -> list[int]:
        return orders_in(self.channel_text)


class Fake:
    def __init__(self, folder: Path, rate_limit: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "bench.stack", "--serve-fake", str(self.port)]
        if rate_limit:
            command += ["--rate-limit", str(rate_limit)]
        self.service = Service("fake-pumble", command, child_env(), folder)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self._next = 0
        wait_until(lambda: self.http.get("/_fake/stats").status_code == 200, 30,
                   "the fake Pumble", self.service)
        self.pid = int(self.http.get("/_fake/bench/seen", params={"since": 10**9}).json()["pid"])

    def seen(self) -> list[Seen]:
        """Messages stored since the last call."""
        answer = self.http.get("/_fake/bench/seen", params={"since": self._next}).json()
        self._next = answer["next"]
        return [Seen(t, text) for t, text in answer["records"]]

    def stats(self) -> dict[str, int]:
        return self.http.get("/_fake/stats").json()

    def faults(self) -> dict[str, Any]:
        return self.http.get("/_fake/faults").json()

    def cpu(self) -> float:
        return process_cpu(self.pid, reaped=False)

    def stop(self) -> None:
        self.http.close()
        self.service.stop()


# --- the bridge -----------------------------------------------------------------------------------

def write_config(folder: Path, pumble_url: str, *, limiter_off: bool,
                 queue: str = "pumble-bridge") -> Path:
    """One Shopify source, one route that renders the shipped order_created.j2 into #orders;
    Redis left out (the embedded default). ``limiter_off``: the bridge's own Pumble rate limiter
    lifted out of reach (the fake's limit is off too), so no wait and no digest."""
    from bridge.config import load_config
    from bridge.ratelimit import DEFAULT_LIMITS

    config: dict[str, Any] = {
        "pumble": {"base_url": pumble_url, "api_key": API_KEY},
        "redis": {"queue": queue},
        "sources": {SOURCE: {"type": "shopify", "secret": SECRET}},
        "routes": [{"name": "new-orders",
                    "match": {"source": [SOURCE], "event": ["order.created"]},
                    "channel": CHANNEL, "template": "order_created.j2", "as_bot": True}],
    }
    if limiter_off:
        config["delivery"] = {"rate_limits": dict.fromkeys(DEFAULT_LIMITS, 10**9)}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    load_config(path, environ={})  # refuse a config this tree no longer takes
    return path


def bridge_env(store: Store, name: str, **extra: str) -> dict[str, str]:
    metrics_dir = store.folder / f"metrics-{name}"
    metrics_dir.mkdir(exist_ok=True)
    return child_env(BRIDGE_DATA_DIR=str(store.folder), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                     **extra)


class Receiver:
    """``pumble-bridge serve`` (or, with ``command``, something started the same way)."""

    def __init__(self, store: Store, config: Path, name: str = "receiver", *,
                 command: list[str] | None = None, env: dict[str, str] | None = None,
                 serve_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = command or [sys.executable, "-m", "bridge"]
        self.service = Service(name, [*base, "--config", str(config), "serve", "--port",
                                      str(self.port), *serve_args],
                               {**bridge_env(store, name), **(env or {})}, store.folder)
        self.pid = self.service.pid  # the gunicorn master (serve runs it in-process)
        wait_until(self._ready, 60, f"{name} on {self.url}", self.service)

    def _ready(self) -> bool:
        if len(self.workers()) < 1:
            return False
        return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

    def workers(self) -> list[int]:
        """The gunicorn worker processes (the master's children)."""
        return [pid for pid in descendants(self.pid)
                if (_stat_fields(pid) or ["", "0"])[1] == str(self.pid)]

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def stop(self) -> None:
        self.service.stop()


def run_worker_nice() -> int:
    """The nice value ``pumble-bridge run`` starts its worker at, in the tree benchmarked (0 for
    a tree from before it had one): read from its cli.py, as it may be another checkout."""
    cli = (PACKAGE_ROOT / "bridge" / "cli.py").read_text("utf-8")
    found = re.search(r"^WORKER_NICE = (\d+)", cli, re.MULTILINE)
    return int(found.group(1)) if found else 0


class Worker:
    """``pumble-bridge worker [--processes N] [--nice N]``: as ``run`` starts it, ``nice``
    ``run_worker_nice()``."""

    def __init__(self, store: Store, config: Path, processes: int = 1,
                 name: str = "worker", nice: int = 0) -> None:
        extra = ["--processes", str(processes)] if processes > 1 else []
        extra += ["--nice", str(nice)] if nice else []
        self.service = Service(name, [sys.executable, "-m", "bridge", "--config", str(config),
                                      "worker", *extra], bridge_env(store, name), store.folder)
        self.pid = self.service.pid
        self.processes = processes

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def stop(self) -> None:
        self.service.stop(grace=45)


class OneBox(NamedTuple):
    """The bridge on one machine, as the end-to-end benchmarks run it."""

    store: Store
    fake: Fake
    config: Path
    receiver: Receiver
    worker: Worker
    collector: Collector


def one_box(cleanup: contextlib.ExitStack, folder: Path, *, limiter_off: bool,
            fake_rate_limit: int | None = None, worker_processes: int = 1,
            collect_every: float = 0.25, worker_nice: int = 0) -> OneBox:
    """Redis, the fake Pumble, ``serve`` and ``worker`` (at ``worker_nice``) on the bench
    config, and a collector of what the fake stores; ``cleanup`` stops each in reverse order
    and removes ``folder`` last."""
    cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
    store = Store(folder)
    cleanup.callback(store.close)
    fake = Fake(folder, rate_limit=fake_rate_limit)
    cleanup.callback(fake.stop)
    config = write_config(folder, fake.url, limiter_off=limiter_off)
    receiver = Receiver(store, config)
    cleanup.callback(receiver.stop)
    worker = Worker(store, config, worker_processes, nice=worker_nice)
    cleanup.callback(worker.stop)
    collector = Collector(fake, interval=collect_every)
    cleanup.callback(collector.stop)
    return OneBox(store, fake, config, receiver, worker, collector)


# --- the bare loop -------------------------------------------------------------------------------

LOOP_TEXT = ("🛒 New order #{n} · €129.90 from Jane Doe\n"
             "3 items · Standard shipping to Berlin, DE\nShipping: Standard · Payment: card")


def send_loop(url: str, messages: int) -> float:
    """The baseline of the delivery worker: one keep-alive ``httpx.Client`` in this process
    POSTs ``messages`` order-sized texts to ``url``/sendMessage, one after the other, and does
    nothing else. Its CPU seconds (this whole process: run it with no other thread busy)."""
    started = time.process_time()
    with httpx.Client(base_url=url, headers={"ApiKey": API_KEY}) as client:
        for n in range(messages):
            client.post("/sendMessage", json={"channel": CHANNEL, "asBot": True,
                                              "text": LOOP_TEXT.format(n=n)}).raise_for_status()
    return time.process_time() - started


# --- sending webhooks -----------------------------------------------------------------------------

@dataclass
class Sent:
    number: int
    due: float  # time.time() the schedule said to send it
    sent: float  # time.time() the request started
    acked: float  # time.time() the answer arrived
    status: int  # the last attempt's; 0: no answer at all
    attempts: int = 1
    errors: str = ""  # transport errors of earlier attempts (e.g. "RemoteProtocolError")


def answer_counts(sent: Iterable[Sent]) -> dict[str, int]:
    """How the webhooks were answered: "202"; "200 after a re-send" (the first attempt was
    stored but its answer lost, so the re-send is a duplicate: fine); any other status; "0":
    never answered."""
    counts: dict[str, int] = {}
    for s in sent:
        key = "200 after a re-send" if s.status == 200 and s.attempts > 1 else str(s.status)
        counts[key] = counts.get(key, 0) + 1
    return counts


def answers_ok(counts: dict[str, int]) -> bool:
    return set(counts) <= {"202", "200 after a re-send"}


@dataclass
class Shop:
    """Signed 5 KB Shopify orders/create webhooks, each with its own order number and
    delivery id, POSTed to the receiver over keep-alive connections."""

    url: str
    connections: int = 64
    _http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=self.connections,
                                max_keepalive_connections=self.connections))
        self.endpoint = f"{self.url}/webhooks/{SOURCE}"

    @staticmethod
    def prepare(numbers: Iterable[int], run: str) -> dict[int, tuple[bytes, dict[str, str]]]:
        prepared = {}
        for number in numbers:
            body = order_body(number)
            prepared[number] = (body, order_headers(body, f"bench-{run}-{number}"))
        return prepared

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, int, str]:
        """(status, attempts, errors). A request that got no answer (a keep-alive connection
        the server closed as it was reused, a reset) is sent again with the same delivery id,
        as a shop retries; the receiver's dedupe makes that safe. 0: never answered."""
        errors = []
        for attempt in range(1, 4):
            try:
                response = self._http.post(self.endpoint, content=body, headers=headers)
                return response.status_code, attempt, ",".join(errors)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
        return 0, 3, ",".join(errors)

    def paced(self, prepared: dict[int, tuple[bytes, dict[str, str]]], rate: float,
              start: float | None = None) -> list[Sent]:
        """Open loop: order i is due at start + i/rate whatever happened to the ones before
        (a pool of ``connections`` threads sends them), so a slow answer cannot slow the
        sending down and hide itself (no coordinated omission: latency counts from ``due``)."""
        start = start or time.time() + 0.2
        numbers = list(prepared)
        results: list[Sent | None] = [None] * len(numbers)

        def send(index: int, number: int, due: float) -> None:
            body, headers = prepared[number]
            sent = time.time()
            status, attempts, errors = self.post(body, headers)
            results[index] = Sent(number, due, sent, time.time(), status, attempts, errors)

        with ThreadPoolExecutor(self.connections, thread_name_prefix="shop") as pool:
            for index, number in enumerate(numbers):
                due = start + index / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(send, index, number, due)
        return [r for r in results if r is not None]

    def closed_loop(self, prepared: dict[int, tuple[bytes, dict[str, str]]],
                    concurrency: int) -> list[Sent]:
        """As fast as ``concurrency`` senders go, each waiting for its answer."""
        numbers = list(prepared)
        chunks = [numbers[i::concurrency] for i in range(concurrency)]
        results: list[Sent] = []
        lock = threading.Lock()

        def sender(chunk: list[int]) -> None:
            mine = []
            for number in chunk:
                body, headers = prepared[number]
                sent = time.time()
                status, attempts, errors = self.post(body, headers)
                mine.append(Sent(number, sent, sent, time.time(), status, attempts, errors))
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=sender, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def close(self) -> None:
        self._http.close()


class Collector:
    """Polls the fake's stored-message records in the background: when each order was first
    stored (the fake's own clock), how many messages, and any order shown twice."""

    def __init__(self, fake: Fake, interval: float = 0.25) -> None:
        self.fake = fake
        self.first_seen: dict[int, float] = {}
        self.messages: list[tuple[float, int]] = []  # (stored, orders in it)
        self.texts: list[str] = []  # each message's "#channel: text", in storing order
        self.shown_in: dict[int, list[int]] = {}  # order -> indexes of the messages showing it
        self.repeated: list[int] = []
        self.others = 0  # messages showing no order
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True, name="collector")
        self._lock = threading.Lock()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            for seen in self.fake.seen():
                orders = seen.orders
                self.shown_in_add(orders, len(self.messages))
                self.messages.append((seen.stored, len(orders)))
                self.texts.append(seen.channel_text)
                if not orders:
                    self.others += 1
                for number in orders:
                    if number in self.first_seen:
                        self.repeated.append(number)
                    else:
                        self.first_seen[number] = seen.stored

    def shown_in_add(self, orders: list[int], index: int) -> None:
        for number in orders:
            self.shown_in.setdefault(number, []).append(index)

    def repeats(self, limit: int = 5) -> list[dict[str, Any]]:
        """Orders shown more than once, with the messages that show them."""
        found = []
        for number in sorted(set(self.repeated))[:limit]:
            found.append({"order": number, "messages": [
                {"index": i, "stored": self.messages[i][0], "orders_in_it": self.messages[i][1],
                 "first_line": self.texts[i].split("\n", 1)[0][:160]}
                for i in self.shown_in.get(number, [])]})
        return found

    def wait_for(self, numbers: Iterable[int], timeout: float) -> bool:
        wanted = set(numbers)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if wanted <= self.first_seen.keys():
                return True
            time.sleep(self._interval)
        self.poll()
        return wanted <= self.first_seen.keys()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()


# --- the machine ----------------------------------------------------------------------------------

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def wrk_version() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        return "-"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=5)
        match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
        return match.group(1) if match else "?"
    return "?"


def tree() -> str:
    """The commit under test, and the bridge files that differ from it (others edit them
    during the session: the numbers are of the tree as it was when the benchmark started)."""
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *args], cwd=PACKAGE_ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.rstrip("\n")
        return ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "?"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "bridge",
                                         "templates").splitlines() if line.strip()]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine(redis_version: str = "") -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "usable_cpus": usable,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "tree": tree(),
        "versions": {**versions("flask", "werkzeug", "gunicorn", "jinja2", "pydantic", "redis",
                                "rq", "httpx", "prometheus_client"),
                     "redis-server": redis_version or "-", "wrk": wrk_version()},
    }


def print_header(benchmark: str, quick: bool, machine_text: str) -> str:
    """A benchmark's first lines (printed, and kept with its results): what, when, where."""
    text = (f"{benchmark} benchmark · {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
            f"{' · --quick' if quick else ''}\nmachine: {machine_text}")
    print(text)
    print(f"bridge:  {PACKAGE_ROOT / 'bridge'}")
    return text


def machine_line(info: dict[str, Any]) -> str:
    v = info["versions"]
    return (f"{info['cpu']}, {info['cpus']} CPUs ({info['usable_cpus']} usable), "
            f"{info['memory_gib']} GiB · Python {info['python']} · {info['platform']}\n"
            f"         " + " · ".join(f"{k} {val}" for k, val in v.items())
            + f"\ntree:    {info.get('tree', '?')}")


def keep_evidence(name: str, fake: Fake, services: Iterable[Service]) -> Path:
    """After a failed check: every message the fake holds and the services' logs, under
    bench/results/NAME-evidence/ (the temp dir is removed at exit)."""
    folder = RESULTS_DIR / f"{name}-evidence"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(httpx.HTTPError):
        (folder / "fake_messages.json").write_text(
            json.dumps(fake.http.get("/_fake/messages").json(), indent=1, ensure_ascii=False),
            "utf-8")
    for service in services:
        with contextlib.suppress(OSError):
            shutil.copy(service.log_path, folder / service.log_path.name)
    return folder


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=float), "utf-8")
    return path


def unwind_on_sigterm() -> None:
    """SIGTERM (``kill``, a CI timeout) unwinds like Ctrl-C, so the
    benchmark's cleanup stops every service it started instead of leaving them running."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def new_folder(prefix: str) -> Path:
    import tempfile

    # Short: the embedded Redis' socket path must fit in sun_path.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def run_id() -> str:
    return secrets.token_hex(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="(internal) the benchmarks' fake Pumble")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", required=True)
    parser.add_argument("--rate-limit", type=int, default=None, metavar="PER_MINUTE")
    args = parser.parse_args(argv)
    serve_fake(args.serve_fake, args.rate_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
