"""Delivery throughput: RQ worker processes draining queued notifications into the fake Pumble,
next to a bare keep-alive httpx loop posting the same messages, in the same run.

Run from the repository root:

    .venv/bin/python -m bench.worker             # about 2.5 min
    .venv/bin/python -m bench.worker --quick     # about 30 s, rougher numbers
    .venv/bin/python -m bench.worker --profile   # also cProfile one worker -> bench/results/
    .venv/bin/python -m bench.worker --processes 1,2,3 --jobs 4000 --repeats 5

The issue: with the fake's rate limit off, report sends per second through the worker(s) next to
a bare httpx loop posting the same messages with keep-alive, and the ratio; choose the worker
model by that measurement; aim for at least half of the bare loop.

What runs, all on this machine (workers, Redis, the sink and the loop share its cores, as in a
one-box deployment):
- The sink: the fake Pumble (``bridge.fake_pumble``) under gunicorn on a loopback port, rate limit
  off: ONE process with ``SINK_THREADS`` gthread threads. One process because the fake keeps its
  messages in memory per process: with one, every run is checked at the fake itself (each message
  there exactly once), not merely by the answers the senders got. Whether one process keeps up is
  measured, not assumed: its CPU share ("sink busy") is printed for every case.
- Redis: a private embedded redis-server (``bridge.redis_embedded``, its production settings) in a
  temp dir, or ``$REDIS_URL`` if set. The queue name is unique to the run and only the keys this
  run made are deleted afterwards; no database is ever flushed.
- Baseline: a bare ``httpx.Client`` loop in this process, POSTing to ``/sendMessage`` the body
  ``PumbleClient.send_message`` sends (text, asBot, channel; both key headers), keep-alive.
  Reference: the same loop through ``bridge.pumble.PumbleClient`` (our client, no queue).
- Candidates: N notifications enqueued through ``NotificationQueue.enqueue`` (exactly the job the
  receiver makes; not timed), then ``python -m bridge --config <tmp> worker --burst`` in 1, 2 and
  4 parallel processes (``--processes``; the bridge's worker is an RQ SimpleWorker); and, once
  and for a smaller N, for reference, the same command with RQ's forking ``Worker`` swapped in.
  A last case, "no-op job", runs the same worker on the same jobs enqueued the same way but
  calling ``noop_deliver``: what RQ (and the worker around the job) costs by itself.
  The temp config lifts the bridge's own Pumble rate limiter (``delivery.rate_limits``) out of
  reach, so the limiter's Redis round trips are measured but it never waits.
- sends/s = jobs / (last job ended - first job started), from rq's own job timestamps: the drain.
  "with start/exit" divides by the wall time from starting the processes to their exit;
  "start-up" is a process's start to its first job (median over processes), "exit" the last job's
  end to the last process's exit. A worker's start-up CPU (measured on an empty queue) is left out
  of its CPU per send.
- Costs per send: CPU of the sender (workers: ``getrusage(RUSAGE_CHILDREN)``; the loop:
  ``RUSAGE_SELF``), of Redis (``INFO cpu``; with $REDIS_URL it includes other clients) and of the
  sink (``/proc/<pid>/stat``); Redis commands (``INFO commandstats``); TCP connections the sink saw;
  and "others": CPU the rest of the machine used meanwhile (``/proc/stat``), a noise warning.
- Every run is checked: each job finished, each message at the fake exactly once. A failed check
  is printed and makes the exit status 1. Times are only reported, never asserted.

Repeats interleave the cases (in a rotating order, so drift hits them alike); the table shows the
median of the repeats and their range. ``--profile`` runs one more worker under cProfile (wall
clock) and writes where a job's time goes to bench/results/worker_profile.txt.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import os
import platform
import pstats
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmark this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gunicorn
import httpx
import redis
import rq
import yaml

import bridge
from bench.stack import (
    child_env,
    cpu_model,
    free_port,
    machine_busy,
    print_header,
    unwind_on_sigterm,
)
from bridge.notification import Notification
from bridge.queue import NotificationQueue
from bridge.redis_embedded import EmbeddedRedis

GOAL = 0.5  # sends/s through the worker(s), as a share of the bare loop's
API_KEY = "bench-key-not-real-0123456789abcdef"
CHANNEL = "bench"
SINK_THREADS = 8
SINK_URL_PATH = "/sendMessage"
BRIDGE_DIR = str(Path(bridge.__file__).resolve().parent)
PROFILE_FILE = Path(__file__).resolve().parent / "results" / "worker_profile.txt"
TOKEN = re.compile(r"\[bench ([0-9a-z]+-[0-9]+)\]")


# --- the messages ---------------------------------------------------------------------------

def message_text(run: str, i: int) -> str:
    """A small rendered-order-sized message (~150 bytes) carrying a token the fake is checked by."""
    return (f"🛒 New order #{10_000 + i} · €129.90 from Jane Doe\n"
            f"3 items · Standard shipping to Berlin, DE\n[bench {run}-{i}]")


def notification(run: str, i: int) -> Notification:
    """What the receiver makes for one routed order event (fields this version knows)."""
    wanted = {"source": "shop", "event_id": f"bench-{run}-{i}", "event_type": "order.created",
              "route": "new-orders", "channel": CHANNEL, "text": message_text(run, i),
              "as_bot": True, "account": "default", "received_at": time.time()}
    known = {f.name for f in dataclasses.fields(Notification)}
    return Notification(**{k: v for k, v in wanted.items() if k in known})


def send_body(run: str, i: int) -> dict[str, Any]:
    """The JSON body ``PumbleClient.send_message(channel, text, as_bot=True)`` posts."""
    return {"text": message_text(run, i), "asBot": True, "channel": CHANNEL}


# --- the sink: the fake Pumble under gunicorn ------------------------------------------------

def serve_fake(port: int) -> None:
    """(In a child process.) The fake Pumble under gunicorn, plus two bench-only control routes:
    ``/_fake/bench/stats`` (pid, TCP connections seen) and ``/_fake/bench/reset``."""
    from flask import jsonify, request

    from bridge.fake_pumble import create_fake_pumble
    from bridge.gunicorn_app import GunicornApp

    def factory() -> Any:
        app = create_fake_pumble(keys=[API_KEY], channels=[CHANNEL])
        peers: set[tuple[str, str]] = set()

        @app.before_request
        def count_connection() -> None:
            if not request.path.startswith("/_fake/"):
                peers.add((str(request.environ.get("REMOTE_ADDR")),
                           str(request.environ.get("REMOTE_PORT"))))

        @app.get("/_fake/bench/stats")
        def bench_stats() -> Any:
            return jsonify({"pid": os.getpid(), "connections": len(peers)})

        @app.post("/_fake/bench/reset")
        def bench_reset() -> Any:
            peers.clear()
            return jsonify({"status": "ok"})

        return app

    GunicornApp(factory, {
        "bind": f"127.0.0.1:{port}",
        "workers": 1,  # the fake's state is per process: one process, so it can be counted
        "threads": SINK_THREADS,
        "worker_class": "gthread",
        "keepalive": 30,
        "accesslog": None,
        "loglevel": "warning",
    }).run()


class Sink:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_dir / "sink.log", "wb")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-fake", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=child_env(), cwd=log_dir)
        self._control = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.pid = int(self._control.get("/_fake/bench/stats").json()["pid"])
                break
            except httpx.TransportError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the fake Pumble did not start; see "
                                     f"{log_dir / 'sink.log'}") from None
                time.sleep(0.1)
        faults = self._control.delete("/_fake/faults").json()
        if faults.get("rate_limit"):
            raise SystemExit(f"the fake's rate limit is on: {faults}")

    def reset(self) -> None:
        self._control.post("/_fake/reset").raise_for_status()
        self._control.post("/_fake/bench/reset").raise_for_status()

    def connections(self) -> int:
        return int(self._control.get("/_fake/bench/stats").json()["connections"])

    def messages(self) -> list[dict[str, Any]]:
        response = self._control.get("/_fake/messages", params={"channel": CHANNEL})
        response.raise_for_status()
        return response.json()["messages"]

    def cpu(self) -> float:
        """CPU seconds the serving process has used (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._control.close()
        self._process.send_signal(signal.SIGTERM)  # gunicorn's master stops its worker
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


# --- Redis --------------------------------------------------------------------------------------

class Store:
    """The Redis under test and everything this run wrote to it."""

    def __init__(self, folder: Path) -> None:
        self._embedded: EmbeddedRedis | None = None
        if os.environ.get("REDIS_URL"):
            self.url = os.environ["REDIS_URL"]
            self.where = "$REDIS_URL (shared: Redis CPU includes other clients)"
        else:
            self._embedded = EmbeddedRedis(folder)
            self.url = self._embedded.start()
            self.where = "embedded redis-server (unix socket, AOF everysec)"
        self.connection = redis.Redis.from_url(self.url)
        self.queue_name = f"bench-worker-{secrets.token_hex(5)}"
        self.version = self.connection.info("server").get("redis_version", "?")

    def queue(self) -> NotificationQueue:
        return NotificationQueue(self.connection, self.queue_name)

    def cpu(self) -> float:
        info = self.connection.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def commands(self) -> collections.Counter[str]:
        stats = self.connection.info("commandstats")
        return collections.Counter({name.removeprefix("cmdstat_"): int(value["calls"])
                                    for name, value in stats.items()})

    def clean(self, job_ids: list[str]) -> None:
        """Delete this run's keys: its jobs and results, and every key named after its queue."""
        conn = self.connection
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            conn.delete(*[f"rq:job:{i}" for i in chunk], *[f"rq:results:{i}" for i in chunk])
        keys = list(conn.scan_iter(match=f"*{self.queue_name}*", count=1000))
        for start in range(0, len(keys), 500):
            conn.delete(*keys[start:start + 500])
        conn.srem("rq:queues", f"rq:queue:{self.queue_name}")
        for key in conn.scan_iter(match="rq:worker:*", count=1000):  # dead workers' records
            with contextlib.suppress(redis.ResponseError):  # not a hash: not a worker's
                if conn.hget(key, "queues") == self.queue_name.encode():
                    conn.delete(key)

    def close(self) -> None:
        self.clean([])
        self.connection.close()
        if self._embedded is not None:
            self._embedded.stop()


# --- one run ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    case: str
    jobs: int
    drain: float  # seconds: first send started -> last send ended
    wall: float  # seconds: processes started -> all exited (the loop: = drain)
    startup: float | None  # seconds: a process's start -> its first job (median)
    exit: float | None  # seconds: the last job ended -> the last process exited
    cpu_sender: float  # CPU seconds of the loop / of the worker processes (start-up excluded)
    cpu_redis: float
    cpu_sink: float
    cpu_others: float  # CPU seconds of processes outside the benchmark during the run
    redis_commands: collections.Counter[str]
    connections: int
    problems: list[str]

    @property
    def rate(self) -> float:
        return self.jobs / self.drain if self.drain > 0 else 0.0

    @property
    def rate_with_startup(self) -> float:
        return self.jobs / self.wall if self.wall > 0 else 0.0


@dataclasses.dataclass
class Meters:
    """Counters read before and after a run."""

    self_cpu: float
    children_cpu: float
    redis_cpu: float
    redis_commands: collections.Counter[str]
    sink_cpu: float
    machine_cpu: float

    @classmethod
    def read(cls, sink: Sink, store: Store) -> Meters:
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime,
                   store.cpu(), store.commands(), sink.cpu(), machine_busy())

    def since(self, before: Meters) -> Meters:
        commands = self.redis_commands - before.redis_commands
        commands.pop("info", None)  # the bench's own reads
        return Meters(self.self_cpu - before.self_cpu, self.children_cpu - before.children_cpu,
                      self.redis_cpu - before.redis_cpu, commands,
                      self.sink_cpu - before.sink_cpu, self.machine_cpu - before.machine_cpu)

    def others(self) -> float:
        """CPU seconds used by processes not in this benchmark (other work on the machine)."""
        if not self.machine_cpu:
            return float("nan")
        return max(0.0, self.machine_cpu - self.self_cpu - self.children_cpu - self.redis_cpu
                   - self.sink_cpu)


def check_delivered(sink: Sink, run: str, jobs: int) -> list[str]:
    """Each of the run's messages at the fake exactly once, and nothing else."""
    seen = collections.Counter()
    for message in sink.messages():
        match = TOKEN.search(message.get("text", ""))
        seen[match.group(1) if match else "?"] += 1
    expected = {f"{run}-{i}" for i in range(jobs)}
    problems = []
    missing = expected - set(seen)
    twice = sorted(k for k, count in seen.items() if count > 1)
    stray = set(seen) - expected
    if missing:
        problems.append(f"{len(missing)} of {jobs} messages never reached the fake")
    if twice:
        problems.append(f"{len(twice)} messages posted more than once (e.g. {twice[0]})")
    if stray:
        problems.append(f"{sum(seen[k] for k in stray)} unexpected messages at the fake")
    return problems


def run_loop(case: str, sink: Sink, store: Store, jobs: int, *, ours: bool) -> Run:
    """The baseline (bare httpx, keep-alive) or the reference (PumbleClient) posting ``jobs``."""
    run = secrets.token_hex(4)
    bodies = [send_body(run, i) for i in range(jobs)]
    sink.reset()
    before = Meters.read(sink, store)
    if ours:
        from bridge.pumble import PumbleClient

        client = PumbleClient(API_KEY, sink.url, connect_timeout=3.0, read_timeout=10.0)
        start = time.perf_counter()
        for body in bodies:
            client.send_message(body["channel"], body["text"], as_bot=body["asBot"])
        drain = time.perf_counter() - start
        client.close()
    else:
        http = httpx.Client(base_url=sink.url, headers={"ApiKey": API_KEY, "Api-Key": API_KEY},
                            timeout=httpx.Timeout(10.0, connect=3.0),
                            limits=httpx.Limits(max_keepalive_connections=4))
        start = time.perf_counter()
        for body in bodies:
            response = http.post(SINK_URL_PATH, json=body)
            response.raise_for_status()
            response.json()["id"]  # the answer is read, as the bridge reads it
        drain = time.perf_counter() - start
        http.close()
    used = Meters.read(sink, store).since(before)
    return Run(case, jobs, drain, drain, None, None, used.self_cpu, used.redis_cpu, used.sink_cpu,
               used.others(), used.redis_commands, sink.connections(),
               check_delivered(sink, run, jobs))


def write_config(folder: Path, sink: Sink, store: Store) -> Path:
    """The worker's config: the fake, the private Redis and queue, the limiter out of reach."""
    from bridge import config as bridge_config

    config: dict[str, Any] = {
        "pumble": {"base_url": sink.url, "api_key": API_KEY},
        "redis": {"url": store.url, "queue": store.queue_name},
        "sources": {"shop": {"type": "shopify", "secret": "bench-secret-not-real"}},
        "routes": [{"name": "new-orders", "match": {"source": ["shop"],
                                                    "event": ["order.created"]},
                    "channel": CHANNEL, "template": "order_created.j2"}],
    }
    settings = getattr(bridge_config, "DeliverySettings", None)
    if "delivery" in bridge_config.Config.model_fields and settings is not None \
            and "rate_limits" in settings.model_fields:
        kinds = set(getattr(bridge_config, "RATE_LIMIT_KINDS", ()))
        with contextlib.suppress(ImportError, AttributeError):
            from bridge.ratelimit import DEFAULT_LIMITS

            kinds |= set(DEFAULT_LIMITS)
        config["delivery"] = {"rate_limits": {kind: 10**9 for kind in sorted(kinds)}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    bridge_config.load_config(path, environ={})  # refuse a config this tree no longer takes
    return path


NOOP = "bench.worker.noop_deliver"


def noop_deliver(payload: dict[str, Any]) -> dict[str, str]:
    """A job that sends nothing: the worker's cost without the delivery (the no-op case)."""
    return {"message_id": "", "channel_id": ""}


def can_swap_job() -> bool:
    import bridge.queue

    return isinstance(getattr(bridge.queue, "DELIVER", None), str)


def enqueue(store: Store, run: str, jobs: int, *, noop: bool = False) -> list[str]:
    """Enqueue as the receiver does; ``noop``: the same jobs, calling ``noop_deliver``."""
    import bridge.queue

    queue = store.queue()
    deliver = getattr(bridge.queue, "DELIVER", None)
    if noop:
        bridge.queue.DELIVER = NOOP
    try:
        accepted = sum(queue.enqueue(notification(run, i)) for i in range(jobs))
    finally:
        if noop:
            bridge.queue.DELIVER = deliver
    if accepted != jobs:
        raise SystemExit(f"enqueue accepted {accepted} of {jobs} notifications")
    return [i.decode() if isinstance(i, bytes) else i for i in queue.rq.get_job_ids()]


def job_times(store: Store, job_ids: list[str]) -> list[tuple[str, float, float, str]]:
    """(status, started, ended, worker name) of each job, from rq's job hashes."""
    pipe = store.connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(f"rq:job:{job_id}", "status", "started_at", "ended_at", "worker_name")
    result = []
    for status, started, ended, worker in pipe.execute():
        result.append((
            (status or b"missing").decode(),
            rq.utils.str_to_date(started).timestamp() if started else float("nan"),
            rq.utils.str_to_date(ended).timestamp() if ended else float("nan"),
            (worker or b"").decode()))
    return result


def worker_command(config: Path, *, fork: bool = False, profile: Path | None = None) -> list[str]:
    if fork:
        return [sys.executable, str(Path(__file__).resolve()), "--fork-worker", str(config)]
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    return [*python, "-m", "bridge", "--config", str(config), "worker", "--burst"]


def start_workers(store: Store, config: Path, logs: list[Path], *, fork: bool = False,
                  profile: Path | None = None) -> list[subprocess.Popen[bytes]]:
    children = []
    for log in logs:
        with open(log, "wb") as out:
            children.append(subprocess.Popen(
                worker_command(config, fork=fork, profile=profile), stdout=out,
                stderr=subprocess.STDOUT, env=child_env(REDIS_URL=store.url), cwd=config.parent))
    return children


def failures(codes: list[int], logs: list[Path]) -> list[str]:
    problems = []
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            tail = log.read_text("utf-8", "replace").strip().splitlines()[-8:]
            problems.append(f"a worker exited with status {code}:\n      " + "\n      ".join(tail))
    return problems


def startup_cost(store: Store, config: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one worker process started on an empty queue (start-up + exit)."""
    logs = [config.parent / f"worker-empty-{secrets.token_hex(4)}.log"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    codes = [child.wait() for child in start_workers(store, config, logs)]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    problems = failures(codes, logs)
    if problems:
        raise SystemExit("the worker does not start: " + "; ".join(problems))
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def run_workers(case: str, sink: Sink, store: Store, config: Path, jobs: int, processes: int,
                *, fork: bool = False, noop: bool = False, profile: Path | None = None,
                startup_cpu: float = 0.0) -> Run:
    """Enqueue ``jobs`` (untimed), then drain them with ``processes`` worker processes.
    ``startup_cpu``: one process's start-up CPU, left out of the CPU per send."""
    run = secrets.token_hex(4)
    job_ids = enqueue(store, run, jobs, noop=noop)
    sink.reset()
    logs = [config.parent / f"worker-{run}-{p}.log" for p in range(processes)]
    before = Meters.read(sink, store)
    launched = time.time()
    start = time.perf_counter()
    codes = [child.wait() for child in start_workers(store, config, logs, fork=fork,
                                                       profile=profile)]
    wall = time.perf_counter() - start
    exited = time.time()
    used = Meters.read(sink, store).since(before)

    problems = failures(codes, logs)
    times = job_times(store, job_ids)
    statuses = collections.Counter(status for status, *_ in times)
    if statuses != {"finished": jobs}:
        problems.append(f"job statuses after the run: {dict(statuses)}")
    problems += check_delivered(sink, run, 0 if noop else jobs)
    done = [(s, e, w) for status, s, e, w in times if status == "finished"]
    drain = (max(e for _, e, _ in done) - min(s for s, _, _ in done)) if done else float("nan")
    first_job: dict[str, float] = {}
    for started, _, worker in done:
        first_job[worker] = min(first_job.get(worker, started), started)
    startup = statistics.median(t - launched for t in first_job.values()) if first_job else None
    if len(first_job) < processes and not problems:
        problems.append(f"only {len(first_job)} of {processes} workers took a job")
    finish = exited - max(e for _, e, _ in done) if done else None
    store.clean(job_ids)
    return Run(case, jobs, drain, wall, startup, finish,
               used.children_cpu - processes * startup_cpu, used.redis_cpu, used.sink_cpu,
               used.others(), used.redis_commands, sink.connections(), problems)


def fork_worker(config: str) -> int:
    """(In a child process.) ``pumble-bridge worker --burst`` with rq's forking Worker in place of
    the worker class bridge.worker builds: the same config, connection and job, one fork a job."""
    from rq.worker import Worker

    import bridge.worker as bridge_worker
    from bridge.cli import main as cli_main
    from bridge.delivery import Deliverer, DeliveryJob

    made: list[Worker] = []

    class ForkingWorker(Worker):
        job_class = DeliveryJob

        def __init__(self, *args: Any, deliverer: Deliverer, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.deliverer = deliverer  # handed to each job, as bridge.worker's worker does
            made.append(self)

        def execute_job(self, job: DeliveryJob, queue: rq.Queue) -> None:
            job.deliverer = self.deliverer
            super().execute_job(job, queue)

    for name in ("DeliveryWorker", "SimpleWorker"):
        if hasattr(bridge_worker, name):
            setattr(bridge_worker, name, ForkingWorker)
    code = cli_main(["--config", config, "worker", "--burst"])
    if not made:
        print("bench: bridge.worker no longer builds its worker from DeliveryWorker or "
              "SimpleWorker: the forking Worker was not swapped in", file=sys.stderr)
        return 3
    return code


# --- the profile --------------------------------------------------------------------------------

SOCKET_IO = ("recv", "recv_into", "send", "sendall", "poll", "select", "connect")


STARTUP_MODULES = ("importlib", "<frozen", "/pydantic", "/yaml/", "/jinja2/", "/typing.py",
                   "/typing_extensions.py", "/dataclasses.py", "/re/_", "/ssl.py", "/enum.py",
                   "/abc.py", "/collections/__init__.py", "/inspect.py")


def category(filename: str) -> str:
    path = filename.replace("\\", "/")
    if path.startswith(BRIDGE_DIR):
        return "bridge (our code)"
    for part, name in (("/rq/", "rq"), ("/redis/", "redis-py"), ("/httpx/", "httpx/httpcore/h11"),
                       ("/httpcore/", "httpx/httpcore/h11"), ("/h11/", "httpx/httpcore/h11"),
                       ("/logging/", "logging")):
        if part in path:
            return name
    if any(part in path for part in STARTUP_MODULES):
        return "start-up: imports, config, classes, regexes, TLS context"
    return "other Python (stdlib: json, zlib, datetime, uuid, …)"


def time_by_category(stats: pstats.Stats) -> dict[str, float]:
    """Wall seconds by owner. A builtin's time goes to its caller's owner, except socket I/O,
    which is waiting for the peer: split into Redis and Pumble by who called it, and lock waits
    (thread joins at exit)."""
    totals: dict[str, float] = collections.defaultdict(float)
    for (filename, _, name), (_, _, tottime, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename != "~":
            totals[category(filename)] += tottime
            continue
        io_call = any(f"'{op}'" in name or f".{op}" in name for op in SOCKET_IO) and (
            "socket" in name or "select" in name)
        for (caller_file, _, _), caller_stats in callers.items():
            spent = caller_stats[2]
            owner = category(caller_file)
            if io_call and owner == "redis-py":
                totals["waiting for Redis (socket I/O)"] += spent
            elif io_call and owner == "httpx/httpcore/h11":
                totals["waiting for Pumble (socket I/O)"] += spent
            elif "_thread.lock" in name:
                totals["waiting for threads (lock waits: joins at exit)"] += spent
            else:
                totals[owner] += spent
    return dict(totals)


def top_functions(stats: pstats.Stats, file_part: str, jobs: int,
                  limit: int) -> list[tuple[float, int, str]]:
    """Functions in files matching ``file_part`` called at least once a job, by cumulative
    time: (seconds, calls, label)."""
    rows = []
    for (filename, line, name), (_, calls, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        path = filename.replace("\\", "/")
        if file_part in path and calls >= jobs:
            short = path.split(file_part, 1)[1] if file_part.endswith("/") else Path(path).name
            rows.append((ct, calls, f"{short}:{line}({name})"))
    return sorted(rows, reverse=True)[:limit]


def cumulative(stats: pstats.Stats, file_part: str, name: str) -> float:
    return sum(ct for (filename, _, func), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
               if func == name and file_part in filename.replace("\\", "/"))


def profile_report(stats_file: Path, run: Run, header: str) -> str:
    stats = pstats.Stats(str(stats_file))
    jobs = run.jobs
    out = io.StringIO()
    out.write(f"{header}\ncProfile (wall clock) of one `python -m bridge worker --burst` (the "
              f"bridge's RQ SimpleWorker) draining {jobs:,} jobs; the profiler inflates Python "
              f"time (compare shares, not µs).\nThis run: {run.rate:,.0f} sends/s drained under "
              f"the profiler, wall {run.wall:.2f} s incl. start-up; raw stats: {stats_file}\n\n")

    work = cumulative(stats, "rq/worker/base.py", "work")
    job = cumulative(stats, "rq/job.py", "_execute") or cumulative(stats, "bridge/delivery/job.py",
                                                                  "deliver")
    http = cumulative(stats, "httpx/_client.py", "request")
    out.write("=== per job, by structure (cumulative wall time) ===\n")
    rows = [("worker loop (rq Worker.work)", work),
            ("  the job function (bridge.delivery.deliver)", job),
            ("    the HTTP request to Pumble (httpx Client.request)", http),
            ("    the rest of deliver (our code and its Redis calls)", job - http),
            ("  rq around the job (dequeue, status, registries, result, logs)", work - job)]
    for label, seconds in rows:
        share = f"{100 * seconds / work:5.1f} %" if work else ""
        out.write(f"  {label:<66} {1e6 * seconds / jobs:9,.0f} µs {share}\n")

    for title, part in (("our code (bridge/), by function", BRIDGE_DIR + "/"),
                        ("rq, by function", "/rq/")):
        out.write(f"\n=== {title}: cumulative per job, functions run at least once a job ===\n")
        for seconds, calls, label in top_functions(stats, part, jobs, 15):
            out.write(f"  {label:<60} {calls / jobs:5.1f}×/job {1e6 * seconds / jobs:9,.0f} µs\n")

    out.write("\n=== per job, by owner (tottime; a builtin is charged to its caller, socket I/O "
              "to the peer; whole process, start-up included) ===\n")
    totals = time_by_category(stats)
    whole = sum(totals.values())
    for owner, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        out.write(f"  {owner:<66} {1e6 * seconds / jobs:9,.0f} µs "
                  f"{100 * seconds / whole:5.1f} %\n")

    commands = run.redis_commands
    out.write(f"\n=== Redis commands per job, while draining (INFO commandstats): "
              f"{sum(commands.values()) / jobs:.1f} ===\n")
    for name, calls in commands.most_common(25):
        out.write(f"  {name:<24} {calls / jobs:6.2f}\n")

    for key in ("tottime", "cumulative"):
        out.write(f"\n=== top 30 by {key} ===\n")
        pstats.Stats(str(stats_file), stream=out).sort_stats(key).print_stats(30)
    return out.getvalue()


def profile_worker(sink: Sink, store: Store, config: Path, jobs: int, out: Path,
                   header: str) -> Run:
    out.parent.mkdir(parents=True, exist_ok=True)
    stats_file = out.with_suffix(".pstats")
    run = run_workers("profiled SimpleWorker × 1", sink, store, config, jobs, 1,
                      profile=stats_file)
    out.write_text(profile_report(stats_file, run, header), "utf-8")
    return run


# --- report -------------------------------------------------------------------------------------

def machine(store: Store) -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"Python {platform.python_version()} · {platform.platform()} · {os.cpu_count()} CPUs "
            f"({usable} usable, {cpu_model()})\n         rq {rq.__version__} · redis-py "
            f"{redis.__version__} · httpx {httpx.__version__} · gunicorn {gunicorn.__version__}"
            f" · redis-server {store.version}")


def _median(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(r) for r in runs)


def _per_send(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(r) / r.jobs for r in runs)


CASE_WIDTH = 40


def print_tables(results: dict[str, list[Run]], baseline: str) -> None:
    base = _median(results[baseline], lambda r: r.rate)
    print(f"\n  {'sends/s, median of repeats':<{CASE_WIDTH}} {'jobs':>6} {'sends/s':>8} "
          f"{'range':>13} {'× loop':>7} {'with start/exit':>15} {'start-up':>9} {'exit':>7}")
    for case, runs in results.items():
        rates = [r.rate for r in runs]
        startups = [r.startup for r in runs if r.startup is not None]
        exits = [r.exit for r in runs if r.exit is not None]
        print(f"  {case:<{CASE_WIDTH}} {runs[0].jobs:>6,} {statistics.median(rates):>8,.0f} "
              f"{f'{min(rates):,.0f}-{max(rates):,.0f}':>13} "
              f"{statistics.median(rates) / base:>6.2f}× "
              f"{_median(runs, lambda r: r.rate_with_startup):>15,.0f} "
              f"{f'{statistics.median(startups):.2f} s' if startups else '—':>9} "
              f"{f'{statistics.median(exits):.2f} s' if exits else '—':>7}")

    print(f"\n  {'per send, median of repeats':<{CASE_WIDTH}} {'CPU ms: sender':>14} "
          f"{'Redis':>6} {'sink':>6} {'total':>6} {'Redis cmds':>10} {'TCP conns':>9} "
          f"{'sink busy':>9} {'others':>6}  checks")
    for case, runs in results.items():
        sender = _per_send(runs, lambda r: r.cpu_sender)
        redis_cpu = _per_send(runs, lambda r: r.cpu_redis)
        sink_cpu = _per_send(runs, lambda r: r.cpu_sink)
        commands = _per_send(runs, lambda r: sum(r.redis_commands.values()))
        busy = _median(runs, lambda r: r.cpu_sink / r.drain)
        others = _median(runs, lambda r: r.cpu_others / r.wall)
        bad = sum(bool(r.problems) for r in runs)
        print(f"  {case:<{CASE_WIDTH}} {1000 * sender:>14.2f} {1000 * redis_cpu:>6.2f} "
              f"{1000 * sink_cpu:>6.2f} {1000 * (sender + redis_cpu + sink_cpu):>6.2f} "
              f"{commands:>10.1f} {_median(runs, lambda r: r.connections):>9.0f} "
              f"{100 * busy:>8.0f}% {others:>6.2f}  "
              f"{'all delivered once' if not bad else f'{bad} run(s) FAILED'}")
    print("  (sink busy: the fake's CPU share of one core while draining; others: cores taken by "
          "processes outside this benchmark, or the hypervisor)")
    others = statistics.median(r.cpu_others / r.wall for runs in results.values() for r in runs)
    if others > 0.25:
        print(f"  WARNING: other processes kept {others:.2f} cores busy during the runs: the "
              "numbers are low and noisy; run again on a quiet machine")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer jobs and repeats (a smoke run: rougher numbers)")
    parser.add_argument("--jobs", type=int, help="messages per run (default 2000; --quick 500)")
    parser.add_argument("--repeats", type=int, help="rounds of every case (default 3; --quick 2)")
    parser.add_argument("--processes", default="1,2,4", metavar="N,N,…",
                        help="worker process counts to run in parallel (default 1,2,4)")
    parser.add_argument("--profile", nargs="?", const=PROFILE_FILE, type=Path, metavar="FILE",
                        help=f"also cProfile one worker; report to FILE (default {PROFILE_FILE})")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--fork-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    if args.serve_fake:
        serve_fake(args.serve_fake)
        return 0
    if args.fork_worker:
        return fork_worker(args.fork_worker)

    processes = sorted({int(n) for n in args.processes.split(",") if n.strip()})
    if not processes or processes[0] < 1:
        parser.error("--processes takes whole numbers >= 1, e.g. 1,2,4")
    jobs = args.jobs or (500 if args.quick else 2_000)
    repeats = args.repeats or (2 if args.quick else 3)
    fork_jobs = 50 if args.quick else 200
    profile_jobs = 300 if args.quick else 1_000
    began = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    results: dict[str, list[Run]] = {}
    try:
        with contextlib.ExitStack() as stack:
            store = Store(folder)
            stack.callback(store.close)
            sink = Sink(folder)
            stack.callback(sink.stop)
            config = write_config(folder, sink, store)
            header = print_header("worker", args.quick, machine(store))
            print(f"sink:    fake Pumble under gunicorn, 1 process × {SINK_THREADS} threads "
                  f"(gthread), {sink.url}, rate limit off")
            print(f"redis:   {store.where}, queue {store.queue_name}")
            print(f"runs:    {jobs:,} messages a run, {repeats} repeats interleaved; forking "
                  f"Worker {fork_jobs} messages, once", flush=True)

            walls, cpus = zip(*(startup_cost(store, config) for _ in range(3)), strict=True)
            startup_cpu = statistics.median(cpus)
            print(f"start-up: a worker process on an empty queue, start to exit: "
                  f"{statistics.median(walls):.2f} s wall, {startup_cpu:.2f} s CPU (median of 3;"
                  f" this CPU is left out of the workers' CPU per send below)", flush=True)

            baseline, client = "bare httpx loop, keep-alive [baseline]", "PumbleClient loop"
            cases: list[tuple[str, Callable[[], Run]]] = [
                (baseline, lambda: run_loop(baseline, sink, store, jobs, ours=False)),
                (client, lambda: run_loop(client, sink, store, jobs, ours=True)),
            ]
            candidates = []
            for n in processes:
                label = f"SimpleWorker × {n} process{'es' if n > 1 else ''}"
                candidates.append(label)
                cases.append((label, lambda n=n, label=label: run_workers(
                    label, sink, store, config, jobs, n, startup_cpu=startup_cpu)))
            noop = "SimpleWorker × 1, no-op job"
            if can_swap_job():
                cases.append((noop, lambda: run_workers(noop, sink, store, config, jobs, 1,
                                                        noop=True, startup_cpu=startup_cpu)))
            else:
                print("(no-op case skipped: bridge.queue.DELIVER is gone, the job cannot be "
                      "swapped)")
            for r in range(repeats):
                order = cases[r % len(cases):] + cases[:r % len(cases)]
                for case, measure in order:
                    run = measure()
                    results.setdefault(case, []).append(run)
                    failed = "  FAILED: " + "; ".join(run.problems) if run.problems else ""
                    print(f"  [{r + 1}/{repeats}] {case:<{CASE_WIDTH}} {run.rate:8,.0f} sends/s"
                          f"{failed}", flush=True)
            results = {case: results[case] for case, _ in cases}  # table in the cases' order
            fork_label = "forking rq.Worker × 1 (once)"
            candidates.append(fork_label)
            fork = run_workers(fork_label, sink, store, config, fork_jobs, 1, fork=True,
                               startup_cpu=startup_cpu)
            results[fork_label] = [fork]
            failed = "  FAILED: " + "; ".join(fork.problems) if fork.problems else ""
            print(f"  [once] {fork_label:<{CASE_WIDTH - 2}} {fork.rate:8,.0f} sends/s{failed}",
                  flush=True)

            print_tables(results, baseline)
            rate = {case: _median(runs, lambda r: r.rate) for case, runs in results.items()}
            base = rate[baseline]
            ranked = sorted(candidates, key=rate.__getitem__, reverse=True)
            best = ranked[0]
            print(f"\nfastest worker model: {best}: {rate[best]:,.0f} sends/s = "
                  f"{rate[best] / base:.2f}× the bare loop ({base:,.0f}/s); "
                  f"{rate[best] / rate[ranked[1]]:.2f}× the next best ({ranked[1]})")
            verdict = "MEETS" if rate[best] >= GOAL * base else "DOES NOT MEET"
            print(f"goal (worker sends ≥ {GOAL:g}× the bare loop): {verdict}")
            one = candidates[0]
            if noop in rate and processes[0] == 1:
                print(f"one worker, wall per job: {1e6 / rate[one]:,.0f} µs = rq's own "
                      f"{1e6 / rate[noop]:,.0f} µs (no-op job) + delivering "
                      f"{1e6 / rate[one] - 1e6 / rate[noop]:,.0f} µs; our client alone posts in "
                      f"{1e6 / rate[client]:,.0f} µs, the bare loop in {1e6 / base:,.0f} µs")

            if args.profile:
                profiled = profile_worker(sink, store, config, profile_jobs, args.profile,
                                          header)
                failed = "; FAILED: " + "; ".join(profiled.problems) if profiled.problems else ""
                print(f"profile: {args.profile} ({profiled.jobs:,} jobs{failed})")
                results["profiled SimpleWorker × 1"] = [profiled]  # for the checks below
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    failed = [r for runs in results.values() for r in runs if r.problems]
    if failed:
        print(f"\n{len(failed)} run(s) failed their delivery checks:")
        for r in failed:
            print(f"  {r.case}: " + "; ".join(r.problems))
    print(f"(took {time.perf_counter() - began:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
