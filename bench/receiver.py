"""The receiver under load: signed 5 KB Shopify order webhooks against ``pumble-bridge serve``,
next to a bare Flask endpoint and two reference points on the same gunicorn settings, from wrk on
loopback, in the same run.

Run from the repository root (wrk must be on PATH: ``apt-get install wrk``):

    .venv/bin/python -m bench.receiver             # about 7 min
    .venv/bin/python -m bench.receiver --quick     # about 1.5 min, rougher numbers
    .venv/bin/python -m bench.receiver --concurrency 32 --duration 10 --repeats 5

The issue: requests/s and p50/p99/p99.9 ack latency at 1, 8, 32 and 128 concurrent connections,
next to a bare Flask endpoint on the same gunicorn settings that reads the body and answers 202;
aim for at least 0.45× the bare endpoint's requests/s while doing everything the receiver does,
and p99 under 25 ms, at 32 connections. Reference (2 cores, 2×4, wrk, 5 KB, 32 connections):
bare ~9,700 req/s p99 11 ms; HMAC + one RPUSH to embedded Redis 0.45-0.55×; HMAC + one plain RQ
enqueue 0.29-0.33×.

What runs, all on this machine (wrk, gunicorn and Redis share its cores, as a one-box deployment
with its load balancer would):
- Redis: the embedded default (a real redis-server with the bridge's production settings: unix
  socket, AOF everysec) in a temp dir, shared by every case and emptied (FLUSHALL) after every
  run; no worker drains it, so what a run enqueued is counted and then dropped.
- The config: one Shopify source, one route rendering the shipped ``order_created.j2`` into
  ``#orders``: each webhook makes one notification.
- Cases, each a gunicorn under ``pumble-bridge serve``'s exact settings (2 workers × 4 gthread
  threads, access log, the bridge's JSON log lines and metrics directory):
  - ``bare``: a Flask view that reads the body and answers 202 [baseline];
  - ``hmac+rpush``: the same, plus the HMAC-SHA256 check of the body and one RPUSH of it;
  - ``hmac+rq``: the same, plus one plain RQ ``Queue.enqueue`` of the body (JSON serializer, as
    the bridge's; no job id, no options);
  - ``bridge``: ``python -m bridge --config CFG serve`` itself: verify, parse, route, render,
    then one atomic step (dedupe, store the event, enqueue durably, mark seen, record activity),
    count metrics, log.
  The three reference apps are served by the real ``serve`` command too: a child process
  (``--serve-app CASE``) replaces ``bridge.web.create_app`` with the reference app and calls
  ``bridge.cli.main``, so gunicorn's settings cannot drift from the receiver's.
- Load: wrk with a Lua script that sends one signed 5,000-byte body (the sample order, its note
  padded) and sets a new ``X-Shopify-Webhook-Id`` on every request (the signature covers only the
  body), so every request is a new delivery: the bridge takes its full accept path, never the
  "200 duplicate" answer. After each bridge run the jobs in the queue are counted: one for every
  answered request (plus the few still in flight when wrk stopped), or the run is marked FAILED.
- Each run: ``--duration`` s of wrk at one concurrency (``-t 1`` for 1 connection, else 2), after
  a warm-up of every case; repeats rotate the cases' order. Reported: requests/s, wrk's
  p50/p99/p99.9 (closed loop: a connection sends its next request when the answer arrives), the
  ratio to bare at the same concurrency, CPU per request of the gunicorn processes, of Redis and
  of wrk itself (so one can see whether wrk is a bottleneck), Redis commands per request, and
  "others": cores busy with work that is not this benchmark's (other people's test runs, steal).
  Medians over the repeats; latencies are medians of each run's percentile.
- Profile (``--no-profile`` skips it), at 32 connections, by an environment variable read in
  the ``--serve-app`` child (which then runs the real ``serve``), two ways:
  - stage timers, for bare, hmac+rq and the bridge: thin wrappers around gunicorn's
    ``ThreadWorker.handle`` (one request: parse, the app, the answer, the access log), Flask's
    ``wsgi_app``, the view and each stage of the receiver (verify, parse, dispatch, the
    activity line, accept and in it the job's fields and the script call, metrics, the log
    line, every redis-py call), adding the thread's own CPU time
    (``time.thread_time_ns``: CPU, not time spent waiting for the GIL or for Redis); about
    0.3 µs a wrapped call, so the stages keep their true sizes. This is the summary table.
  - cProfile of the bridge, one profiler per gunicorn thread with the same CPU clock, merged:
    function-level detail, inflated for call-heavy code (redis-py).
  Raw stats and the report go to bench/results/receiver_profile*; the summary into
  results/receiver.json (and BENCHMARKS.md).
- What-ifs (``--no-what-if`` skips them): the bridge with one thing changed (gunicorn's access
  log off; without its per-event log line and its metrics, which is no setting but shows what
  they cost; 2 workers × 2 threads; 4 × 1), at 32 connections, interleaved with bare and the
  bridge as shipped.

Times are only reported, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import hashlib
import hmac
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmark this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import stack

CASES = ("bare", "hmac+rpush", "hmac+rq", "bridge")
BASELINE = "bare"
LABELS = {
    "bare": "bare Flask: read body, 202 [baseline]",
    "hmac+rpush": "bare + HMAC + one RPUSH",
    "hmac+rq": "bare + HMAC + one plain RQ enqueue",
    "bridge": "pumble-bridge serve (everything)",
}
GOAL_RATIO = 0.45
GOAL_P99_MS = 25.0
GOAL_CONNECTIONS = 32
RPUSH_KEY = "bench:received"
PLAIN_QUEUE = "bench-plain"
PROFILE_ENV = "BENCH_RECEIVER_PROFILE_DIR"
PROFILE_TEXT = stack.RESULTS_DIR / "receiver_profile.txt"
ACCESS_LOG_ENV = "BENCH_RECEIVER_NO_ACCESS_LOG"
NO_EXTRAS_ENV = "BENCH_RECEIVER_NO_EXTRAS"
# What-if variants of the bridge, at GOAL_CONNECTIONS: (environment, extra `serve` arguments).
WHAT_IF: dict[str, tuple[dict[str, str], list[str]]] = {
    "bridge, access log off": ({ACCESS_LOG_ENV: "1"}, []),
    "bridge, without its event log line and metrics": ({NO_EXTRAS_ENV: "1"}, []),
    "bridge, 2 workers × 2 threads": ({}, ["--threads", "2"]),
    "bridge, 4 workers × 1 thread": ({}, ["--workers", "4", "--threads", "1"]),
}
ACCEPTED = b'{"accepted": true}'

LUA = r"""
-- Generated by bench/receiver.py: one signed body, a new delivery id on every request.
local body_path, run = %(body_path)s, %(run)s
local threads = {}
local body, headers, prefix
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local f = assert(io.open(body_path, "rb"))
  body = f:read("*a")
  f:close()
  headers = {
    ["Content-Type"] = "application/json",
    ["X-Shopify-Topic"] = "orders/create",
    ["X-Shopify-Shop-Domain"] = %(shop)s,
    ["X-Shopify-API-Version"] = "2025-10",
    ["X-Shopify-Hmac-Sha256"] = %(signature)s,
  }
  prefix = run .. "-" .. tostring(tid) .. "-"
end

function request()
  counter = counter + 1
  headers["X-Shopify-Webhook-Id"] = prefix .. counter
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "p50": %%d, "p90": %%d, "p99": %%d, "p999": %%d, ' ..
    '"max": %%d, "mean": %%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII


# --- the reference apps and the profiling hook (in the --serve-app child) ---------------------

def noop_job(body: str) -> None:
    """The job the plain RQ enqueue names (never run: no worker drains the queue)."""


def reference_app(case: str, redis_url: str) -> Any:
    """bare / hmac+rpush / hmac+rq as a Flask app on the receiver's URL."""
    from flask import Flask, request
    from rq import Queue
    from rq.serializers import JSONSerializer

    from bridge.queue import connect

    secret = stack.SECRET.encode()
    app = Flask(f"bench-{case}")
    connection = connect(redis_url) if case != "bare" else None  # the receiver's client settings
    queue = Queue(PLAIN_QUEUE, connection=connection, serializer=JSONSerializer) \
        if case == "hmac+rq" else None

    @app.post("/webhooks/<source_name>")
    def receive(source_name: str) -> Any:
        body = request.get_data(cache=False)
        if case != "bare":
            given = request.headers.get("X-Shopify-Hmac-Sha256", "").encode()
            expected = base64.b64encode(hmac.digest(secret, body, hashlib.sha256))
            if not hmac.compare_digest(given, expected):
                return b'{"error": "bad signature"}', 401, {"Content-Type": "application/json"}
            if connection is not None and queue is None:
                connection.rpush(RPUSH_KEY, body)
            elif queue is not None:
                queue.enqueue("bench.receiver.noop_job", body.decode())
        return ACCEPTED, 202, {"Content-Type": "application/json"}

    @app.get("/healthz")
    def healthz() -> Any:
        return b'{"status": "ok"}', 200, {"Content-Type": "application/json"}

    return app


def install_profiler(out_dir: Path) -> None:
    """cProfile (per-thread CPU clock) around each gunicorn ThreadWorker.handle, one profiler a
    thread; each worker process dumps its threads' merged stats when it exits."""
    import cProfile
    import threading

    from gunicorn.workers import gthread

    from bridge.gunicorn_app import GunicornApp

    local = threading.local()
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_handle = gthread.ThreadWorker.handle

    def handle(self: Any, conn: Any) -> Any:
        profiler = getattr(local, "profiler", None)
        if profiler is None:
            profiler = local.profiler = cProfile.Profile(time.thread_time)
            with lock:
                profilers.append(profiler)
        profiler.enable()
        try:
            return original_handle(self, conn)
        finally:
            profiler.disable()

    gthread.ThreadWorker.handle = handle

    def worker_exit(_server: Any, _worker: Any) -> None:
        with lock:
            taken = list(profilers)
        if not taken:
            return
        stats = pstats.Stats(taken[0])
        for profiler in taken[1:]:
            stats.add(profiler)
        stats.dump_stats(str(out_dir / f"worker-{os.getpid()}.pstats"))

    original_load = GunicornApp.load_config

    def load_config(self: Any) -> None:
        original_load(self)
        self.cfg.set("worker_exit", worker_exit)

    GunicornApp.load_config = load_config


STAGES_ENV = "BENCH_RECEIVER_STAGES_DIR"
# (label, "module:Class.method" or "module:function"), timed with the thread's CPU clock. Nested
# ones are included in their parents (the report says "of which").
VIEW = "webhooks.receive"  # the receiver's view, by its endpoint name
STAGE_TARGETS = (
    ("request", "gunicorn.workers.gthread:ThreadWorker.handle"),
    ("access log", "gunicorn.glogging:Logger.access"),
    ("flask", "flask.app:Flask.wsgi_app"),
    ("verify", "bridge.sources.shopify:ShopifySource.verify"),
    ("parse", "bridge.sources.shopify:ShopifySource.parse"),
    ("seen", "bridge.queue:NotificationQueue.seen"),
    ("dispatch", "bridge.pipeline:Pipeline.dispatch"),
    ("activity entry", "bridge.activity:Activity.entry"),
    ("accept", "bridge.queue:NotificationQueue.accept"),
    ("job fields", "bridge.queue:NotificationQueue._job_fields"),
    ("accept script", "redis.commands.core:ScriptCommands.evalsha"),
    ("activity", "bridge.activity:Activity.record"),
    ("dead letter", "bridge.dlq:DeadLetters.add"),
    ("metrics: answered", "bridge.metrics:Metrics.webhook_answered"),
    ("metrics: enqueued", "bridge.metrics:Metrics.enqueued"),
    ("redis call", "redis.client:Redis.execute_command"),
    ("redis call", "redis.client:Pipeline.execute"),
)


def install_stage_timers(out_dir: Path) -> None:
    """Thin wrappers that add each call's thread CPU time (``time.thread_time_ns``) to its
    stage, per thread; each worker process writes the totals when it exits. About 0.3 µs a
    wrapped call, against cProfile's per-function-call cost: the stages' sizes stay true."""
    import functools
    import importlib
    import threading

    import bridge.accept
    import bridge.web
    from bridge.gunicorn_app import GunicornApp

    local = threading.local()
    tables: list[dict[str, list[int]]] = []
    lock = threading.Lock()
    clock = time.thread_time_ns

    def table() -> dict[str, list[int]]:
        mine = getattr(local, "table", None)
        if mine is None:
            mine = local.table = collections.defaultdict(lambda: [0, 0])
            with lock:
                tables.append(mine)
        return mine

    def timed(label: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = table()[label]
                entry[0] += clock() - start
                entry[1] += 1
        return wrapper

    for label, target in STAGE_TARGETS:
        module_name, _, attribute = target.partition(":")
        with contextlib.suppress(ImportError, AttributeError):
            owner: Any = importlib.import_module(module_name)
            *path, name = attribute.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, name, timed(label, getattr(owner, name)))

    class TimedLog:  # the receiver's logger: its per-event line is a stage of its own
        def __init__(self, logger: Any) -> None:
            self._logger = logger
            self.info = timed("log line", logger.info)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._logger, name)

    bridge.accept.log = TimedLog(bridge.accept.log)
    create = bridge.web.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:  # the app holds the view: wrap it there
        app = create(*args, **kwargs)
        if VIEW in app.view_functions:
            app.view_functions[VIEW] = timed("view", app.view_functions[VIEW])
        return app

    bridge.web.create_app = create_app

    def worker_exit(_server: Any, _worker: Any) -> None:
        totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        with lock:
            for mine in tables:
                for label, (ns, calls) in list(mine.items()):
                    totals[label][0] += ns
                    totals[label][1] += calls
        (out_dir / f"stages-{os.getpid()}.json").write_text(json.dumps(totals))

    original_load = GunicornApp.load_config

    def load_config(self: Any) -> None:
        original_load(self)
        self.cfg.set("worker_exit", worker_exit)

    GunicornApp.load_config = load_config


def serve_app(case: str, cli_args: list[str]) -> int:
    """(In a child process.) ``pumble-bridge serve`` with the reference app for ``case`` in place
    of the receiver (``bridge``: the receiver itself), profiled when $BENCH_RECEIVER_PROFILE_DIR
    is set, its stages timed when $BENCH_RECEIVER_STAGES_DIR is."""
    import bridge.web
    from bridge.cli import main as cli_main

    if case != "bridge":
        bridge.web.create_app = lambda config, redis_url, **_: reference_app(case, redis_url)
    if os.environ.get(PROFILE_ENV):
        install_profiler(Path(os.environ[PROFILE_ENV]))
    if os.environ.get(STAGES_ENV):
        install_stage_timers(Path(os.environ[STAGES_ENV]))
    if os.environ.get(ACCESS_LOG_ENV):
        from bridge.gunicorn_app import GunicornApp

        original_load = GunicornApp.load_config

        def load_config(self: Any) -> None:
            original_load(self)
            self.cfg.set("accesslog", None)

        GunicornApp.load_config = load_config
    if os.environ.get(NO_EXTRAS_ENV):  # what the budget would be without either (not a setting)
        import logging

        from bridge.metrics import Metrics

        logging.getLogger("bridge.web").setLevel(logging.WARNING)
        Metrics.webhook_answered = Metrics.enqueued = lambda *_args, **_kwargs: None
    return cli_main(cli_args)


# --- one run --------------------------------------------------------------------------------------

@dataclass
class Run:
    case: str
    connections: int
    repeat: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int  # wrk: connect/read/write/timeout errors and non-2xx answers
    server_cpu_ms: float  # per request, gunicorn master + workers
    redis_cpu_ms: float
    wrk_cpu_ms: float
    redis_commands: float  # per request
    commands: dict[str, float]  # per request, by command
    others_cores: float
    stored: int  # what the run left in Redis (jobs, list items); -1: not checked
    problems: list[str]


def wrk_command(url: str, connections: int, seconds: float, script: Path) -> list[str]:
    threads = 1 if connections == 1 else 2
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
            "--timeout", "10s", "-s", str(script), url]


def run_wrk(url: str, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    out = subprocess.run(wrk_command(url, connections, seconds, script), capture_output=True,
                         text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise SystemExit(f"wrk said nothing usable (exit {out.returncode}):\n{out.stdout}\n"
                     f"{out.stderr}")


def stored_count(store: stack.Store, case: str, queue: str) -> int:
    case = "bridge" if case.startswith("bridge") else case
    key = {"hmac+rpush": RPUSH_KEY, "hmac+rq": f"rq:queue:{PLAIN_QUEUE}",
           "bridge": f"rq:queue:{queue}"}.get(case)
    return int(store.connection.llen(key)) if key else -1


def measure(case: str, server: stack.Receiver, store: stack.Store, connections: int,
            seconds: float, script: Path, repeat: int, queue: str) -> Run:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = (server.cpu(), store.cpu(), store.commands())
    with stack.LoadMeter() as load:
        result = run_wrk(f"{server.url}/webhooks/{stack.SOURCE}", connections, seconds, script)
    time.sleep(0.3)  # requests still in flight when wrk stopped finish
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu, redis_cpu = server.cpu() - before[0], store.cpu() - before[1]
    commands = stack.commands_between(before[2], store.commands())
    wrk_cpu = (after_children.ru_utime + after_children.ru_stime
               - children.ru_utime - children.ru_stime)
    requests = int(result["requests"])
    per = max(requests, 1)
    duration = result["duration_us"] / 1e6
    errors = sum(int(result[k]) for k in ("connect", "read", "write", "status", "timeout"))
    stored = stored_count(store, case, queue)
    problems = []
    if errors:
        problems.append(f"{errors} wrk errors / non-2xx answers")
    if stored >= 0 and not requests <= stored <= requests + connections + 2:
        problems.append(f"{stored} stored in Redis for {requests} answered requests")
    if not server.service.alive():
        problems.append(f"the server died:\n{server.service.tail()}")
    store.flush()
    return Run(case, connections, repeat, requests, duration, requests / duration,
               result["p50"] / 1000, result["p90"] / 1000, result["p99"] / 1000,
               result["p999"] / 1000, result["max"] / 1000, errors,
               1000 * server_cpu / per, 1000 * redis_cpu / per, 1000 * wrk_cpu / per,
               sum(commands.values()) / per,
               {k: round(v / per, 3) for k, v in commands.items()},
               load.result.others_cores, stored, problems)


# --- the profile --------------------------------------------------------------------------------

def profiled_run(case: str, mode: str, store: stack.Store, config: Path, seconds: float,
                 script: Path, folder: Path) -> tuple[dict[str, Any], float, Path, str]:
    """Serve ``case`` with the profiler (``cprofile``) or the stage timers (``stages``) on, warm
    it up, load it at GOAL_CONNECTIONS for ``seconds``; (wrk's result, the gunicorn processes'
    CPU seconds, the folder the workers wrote to, the server's log tail)."""
    name = f"{mode}-{case.replace('+', '-')}"
    out_dir = folder / name
    out_dir.mkdir()
    env = {PROFILE_ENV if mode == "cprofile" else STAGES_ENV: str(out_dir)}
    server = stack.Receiver(store, config, name, env=env, command=[
        sys.executable, "-m", "bench.receiver", "--serve-app", case, "--"])
    try:
        run_wrk(f"{server.url}/webhooks/{stack.SOURCE}", 8, 2, script)  # warm-up
        store.flush()
        cpu = server.cpu()
        result = run_wrk(f"{server.url}/webhooks/{stack.SOURCE}", GOAL_CONNECTIONS, seconds,
                         script)
        cpu = server.cpu() - cpu
        time.sleep(0.3)
    finally:
        server.stop()
        store.flush()
    return result, cpu, out_dir, server.service.tail()


def stage_rows(totals: dict[str, list[int]], case: str) -> list[tuple[str, float, float]]:
    """(label, µs of thread CPU per request, calls per request) by stage, nested by indent."""
    requests = max(1, totals.get("request", [0, 0])[1])

    def us(label: str) -> float:
        return totals.get(label, [0, 0])[0] / 1000 / requests

    def calls(label: str) -> float:
        return totals.get(label, [0, 0])[1] / requests

    request, access, flask, view = us("request"), us("access log"), us("flask"), us("view")
    answered = us("metrics: answered")
    rows = [
        ("a request in a gunicorn worker thread", request, calls("request")),
        ("  gunicorn: read and parse the request, write the answer", request - flask - access,
         0.0),
        ("  gunicorn: the access log line", access, calls("access log")),
        ("  Flask/werkzeug around the view (request, context, after_request)",
         flask - view - answered, 0.0),
    ]
    if case == "bridge":
        rows.append(("  metrics: the webhook counted (after_request)", answered,
                     calls("metrics: answered")))
    rows.append(("  the view" if case == "bridge" else "  the view (the case's own work)", view,
                 calls("view")))
    if case == "bridge":
        children = ("verify", "parse", "seen", "dispatch", "activity entry", "accept",
                    "activity", "dead letter", "metrics: enqueued", "log line")
        names = {"verify": "verify: HMAC of the body", "parse": "parse: JSON -> Event",
                 "seen": "dedupe: seen? (EXISTS; only with a failed template)",
                 "dispatch": "route + render order_created.j2",
                 "activity entry": "the admin page's activity line (JSON)",
                 "accept": "accept: dedupe, store the webhook, the job, its root and backlog, "
                           "mark seen, the activity line (one Lua script)",
                 "activity": "activity record of a duplicate (none here)",
                 "dead letter": "dead letters (none here)",
                 "metrics: enqueued": "metrics: enqueued", "log line": "the event's log line"}
        for child in children:
            if child in totals:
                rows.append((f"    {names[child]}", us(child), calls(child)))
                if child == "accept":
                    for inner, text in (("job fields", "the job's hash fields (rq's Job)"),
                                        ("accept script", "the script call (EVALSHA)")):
                        if inner in totals:
                            rows.append((f"      of which {text}", us(inner), calls(inner)))
        rows.append(("    the rest of the view (glue, request.headers, the answer, ...)",
                     view - sum(us(c) for c in children), 0.0))
    if "redis call" in totals:
        rows.append(("Redis client calls, within the above (redis-py CPU; calls = round trips)",
                     us("redis call"), calls("redis call")))
    return [(label, round(value, 1), round(n, 2)) for label, value, n in rows]


def stage_profile(case: str, store: stack.Store, config: Path, seconds: float, script: Path,
                  folder: Path, unprofiled_rps: float) -> dict[str, Any]:
    result, cpu, out_dir, tail = profiled_run(case, "stages", store, config, seconds, script,
                                              folder)
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    files = sorted(out_dir.glob("stages-*.json"))
    if not files:
        raise SystemExit(f"the stage-timed {case} server wrote nothing:\n{tail}")
    for path in files:
        for label, (ns, calls) in json.loads(path.read_text()).items():
            totals[label][0] += ns
            totals[label][1] += calls
    requests = max(1, totals["request"][1])
    rps = result["requests"] / (result["duration_us"] / 1e6)
    return {
        "case": case, "requests": requests, "rps": round(rps, 1),
        "unprofiled_rps": round(unprofiled_rps, 1),
        "process_cpu_us": round(1e6 * cpu / max(1, result["requests"]), 1),
        "rows": stage_rows(totals, case),
    }


def _find(stats: pstats.Stats, path_part: str, name: str) -> tuple[int, float, float]:
    """(calls, tottime, cumtime) summed over functions ``name`` in files containing path_part."""
    calls = tottime = cumtime = 0.0
    for (filename, _, func), (_, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and path_part in filename.replace("\\", "/"):
            calls, tottime, cumtime = calls + nc, tottime + tt, cumtime + ct
    return int(calls), tottime, cumtime


OWNERS = (  # first match wins: (label, path fragment)
    ("gunicorn", "/gunicorn/"),
    ("werkzeug", "/werkzeug/"),
    ("flask", "/flask/"),
    ("redis-py", "/redis/"),
    ("rq", "/rq/"),
    ("jinja2 runtime", "/jinja2/"),
    ("pydantic", "/pydantic"),
    ("prometheus_client", "/prometheus_client/"),
    ("bridge", "/bridge/"),
    ("compiled templates", "/templates/"),
    ("logging (stdlib)", "/logging/"),
    ("json (stdlib)", "/json/"),
    ("bench hooks", "/bench/"),
)


def by_owner(stats: pstats.Stats) -> dict[str, float]:
    """Own time by package; a builtin (C function) is charged to the package that called it."""
    totals: collections.Counter[str] = collections.Counter()

    def owner_of(filename: str) -> str:
        path = filename.replace("\\", "/")
        return next((label for label, part in OWNERS if part in path), "other Python (stdlib)")

    for (filename, _, _), (_, _, tt, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            caller = max(callers.items(), key=lambda kv: kv[1][2], default=None)
            totals[owner_of(caller[0][0]) if caller else "other Python (stdlib)"] += tt
        else:
            totals[owner_of(filename)] += tt
    return dict(totals)


def cprofile_summary(case: str, store: stack.Store, config: Path, seconds: float, script: Path,
                     folder: Path) -> tuple[dict[str, Any], Path]:
    result, _, out_dir, tail = profiled_run(case, "cprofile", store, config, seconds, script,
                                            folder)
    dumps = sorted(out_dir.glob("worker-*.pstats"))
    if not dumps:
        raise SystemExit(f"the profiled {case} server wrote no stats:\n{tail}")
    stats = pstats.Stats(str(dumps[0]))
    for extra in dumps[1:]:
        stats.add(str(extra))
    target = stack.RESULTS_DIR / f"receiver_profile_{case.replace('+', '_')}.pstats"
    stats.dump_stats(str(target))
    requests = max(1, _find(stats, "/gunicorn/workers/gthread.py", "handle")[0])
    owners = by_owner(stats)
    total = sum(owners.values())
    observability = 0.0  # redis-py 8's telemetry hooks, entered from outside their package
    for (filename, _, _), (*_, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "/redis/observability/" in filename.replace("\\", "/"):
            observability += sum(value[3] for caller, value in callers.items()
                                 if "/redis/observability/" not in caller[0].replace("\\", "/"))
    top = sorted(((tt, nc, f"{Path(fn).parent.name}/{Path(fn).name}:{line}({func})"
                   if fn != "~" else func)
                  for (fn, line, func), (_, nc, tt, _, _) in stats.stats.items()),  # type: ignore[attr-defined]
                 reverse=True)[:20]
    return {
        "case": case, "requests": requests,
        "rps": round(result["requests"] / (result["duration_us"] / 1e6), 1),
        "total_us": round(1e6 * total / requests, 1),
        "redis_observability_share": round(100 * observability / total, 1) if total else 0.0,
        "by_owner": sorted(((label, round(1e6 * v / requests, 1), round(100 * v / total, 1))
                            for label, v in owners.items()), key=lambda r: -r[1]),
        "top_tottime": [(name, round(1e6 * tt / requests, 1), round(nc / requests, 2))
                        for tt, nc, name in top],
    }, target


def profile_text(stages: dict[str, dict[str, Any]], cprofile: dict[str, Any], pstats_file: Path,
                 header: str, bridge_commands: dict[str, float]) -> str:
    out = io.StringIO()
    out.write(f"{header}\n\nWhere a request's CPU goes in the gunicorn worker threads, at "
              f"{GOAL_CONNECTIONS} connections.\n")
    out.write("\n1. Stage timers: thin wrappers add each stage's thread CPU time "
              "(time.thread_time_ns); nested rows are part of their parent.\n")
    for case, summary in stages.items():
        out.write(f"\n=== {case}: {summary['requests']:,} requests, {summary['rps']:,.0f} req/s "
                  f"with the timers (unprofiled: {summary['unprofiled_rps']:,.0f}); gunicorn "
                  f"processes' CPU per request (/proc): {summary['process_cpu_us']:,.0f} µs ===\n")
        for label, us, calls in summary["rows"]:
            shown = f"{calls:6.2f}×" if calls else ""
            out.write(f"  {label:<78} {us:8,.1f} µs {shown}\n")
    if bridge_commands:
        out.write(f"\n=== bridge: Redis commands per request (INFO commandstats, timed runs): "
                  f"{sum(bridge_commands.values()):.1f} ===\n")
        for name, count in bridge_commands.items():
            out.write(f"  {name:<24} {count:6.2f}\n")
    if cprofile:
        out.write(f"\n2. cProfile of the bridge (per-thread CPU clock; it charges every Python "
                  f"call, so call-heavy code such as redis-py looks bigger than it is: compare "
                  f"with the stage timers). {cprofile['requests']:,} requests at "
                  f"{cprofile['rps']:,.0f} req/s under the profiler; raw stats: {pstats_file}\n")
        out.write(f"\n=== own time by package, per request (total {cprofile['total_us']:,.0f} µs"
                  f"; redis-py 8's observability hooks: {cprofile['redis_observability_share']}"
                  " % of it) ===\n")
        for label, us, share in cprofile["by_owner"]:
            out.write(f"  {label:<40} {us:8,.1f} µs {share:5.1f} %\n")
        out.write("\n=== top 20 functions by own time, per request ===\n")
        for name, us, calls in cprofile["top_tottime"]:
            out.write(f"  {name:<70} {us:8,.1f} µs {calls:6.2f}×\n")
        for key in ("tottime", "cumulative"):
            out.write(f"\n=== top 30 by {key} ===\n")
            pstats.Stats(str(pstats_file), stream=out).sort_stats(key).print_stats(30)
    return out.getvalue()


# --- what if ------------------------------------------------------------------------------------

def run_what_if(servers: dict[str, stack.Receiver], store: stack.Store, config: Path,
                seconds: float, script: Path, repeats: int, queue: str) -> list[dict[str, Any]]:
    """The bridge with one setting changed, at GOAL_CONNECTIONS, interleaved with bare and the
    bridge as it ships, so each variant's ratio has its own baseline."""
    variants: dict[str, stack.Receiver] = {}
    try:
        for label, (env, serve_args) in WHAT_IF.items():
            name = "whatif-" + "".join(c if c.isalnum() else "-" for c in label).strip("-")
            variants[label] = stack.Receiver(store, config, name, env=env, serve_args=serve_args,
                                             command=[sys.executable, "-m", "bench.receiver",
                                                      "--serve-app", "bridge", "--"])
            run_wrk(f"{variants[label].url}/webhooks/{stack.SOURCE}", 8, 2, script)  # warm-up
            store.flush()
        cases: dict[str, stack.Receiver] = {"bare": servers["bare"],
                                            "bridge": servers["bridge"], **variants}
        names = list(cases)
        runs: list[Run] = []
        for repeat in range(repeats):
            shift = repeat % len(names)
            for case in names[shift:] + names[:shift]:
                run = measure(case, cases[case], store, GOAL_CONNECTIONS, seconds, script,
                              repeat, queue)
                runs.append(run)
                failed = "  FAILED: " + "; ".join(run.problems) if run.problems else ""
                print(f"  [what-if {repeat + 1}/{repeats}] c={GOAL_CONNECTIONS} {case:<30} "
                      f"{run.rps:8,.0f} req/s  p99 {run.p99_ms:7.2f} ms  others "
                      f"{run.others_cores:.2f}{failed}", flush=True)
    finally:
        for server in variants.values():
            server.stop()
    base = stack.median(r.rps for r in runs if r.case == "bare")
    rows = []
    for case in names:
        mine = [r for r in runs if r.case == case]
        rps = stack.median(r.rps for r in mine)
        rows.append({"case": case, "rps": round(rps, 1), "ratio": round(rps / base, 3),
                     **{k: round(stack.median(getattr(r, k) for r in mine), 2)
                        for k in ("p50_ms", "p99_ms", "p999_ms", "server_cpu_ms",
                                  "others_cores")},
                     "failed": sum(bool(r.problems) for r in mine)})
    print(f"\n  what if (c={GOAL_CONNECTIONS}, medians of {repeats})  "
          f"{'req/s':>8} {'× bare':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10}")
    for row in rows:
        print(f"  {row['case']:<36} {row['rps']:>8,.0f} {row['ratio']:>6.2f}× "
              f"{row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} {row['server_cpu_ms']:>10.2f}"
              f"{'  FAILED' if row['failed'] else ''}")
    return rows


# --- report ---------------------------------------------------------------------------------------

def summarize(runs: list[Run], concurrencies: list[int]) -> list[dict[str, Any]]:
    rows = []
    for connections in concurrencies:
        base = stack.median(r.rps for r in runs if r.case == BASELINE
                            and r.connections == connections)
        for case in CASES:
            mine = [r for r in runs if r.case == case and r.connections == connections]
            if not mine:
                continue
            rps = stack.median(r.rps for r in mine)
            rows.append({
                "case": case, "connections": connections, "repeats": len(mine),
                "rps": round(rps, 1), "rps_min": round(min(r.rps for r in mine), 1),
                "rps_max": round(max(r.rps for r in mine), 1),
                "ratio": round(rps / base, 3) if base == base and base else None,
                **{k: round(stack.median(getattr(r, k) for r in mine), 2)
                   for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu_ms",
                             "redis_cpu_ms", "wrk_cpu_ms", "redis_commands", "others_cores")},
                "failed": sum(bool(r.problems) for r in mine),
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n  {'case':<36} {'conns':>5} {'req/s':>8} {'× bare':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'p99.9':>7} {'CPU ms/req: gunicorn':>20} {'redis':>6} {'wrk':>6} "
          f"{'cmds':>5} {'others':>6}")
    last = None
    for row in rows:
        if last is not None and row["connections"] != last:
            print()
        last = row["connections"]
        ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "—"
        print(f"  {LABELS[row['case']]:<36} {row['connections']:>5} {row['rps']:>8,.0f} "
              f"{ratio:>7} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['p999_ms']:>7.2f} "
              f"{row['server_cpu_ms']:>20.3f} {row['redis_cpu_ms']:>6.3f} "
              f"{row['wrk_cpu_ms']:>6.3f} {row['redis_commands']:>5.1f} "
              f"{row['others_cores']:>6.2f}{'  FAILED' if row['failed'] else ''}")
    print("  (medians over repeats; CPU per answered request; cmds: Redis commands per request; "
          "others: cores busy with work outside this benchmark)")


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    at = {r["case"]: r for r in rows if r["connections"] == GOAL_CONNECTIONS}
    if "bridge" not in at or BASELINE not in at:
        return {}
    bridge_row = at["bridge"]
    return {
        "connections": GOAL_CONNECTIONS,
        "ratio": bridge_row["ratio"], "ratio_goal": GOAL_RATIO,
        "ratio_met": bool(bridge_row["ratio"] is not None and bridge_row["ratio"] >= GOAL_RATIO),
        "p99_ms": bridge_row["p99_ms"], "p99_goal_ms": GOAL_P99_MS,
        "p99_met": bridge_row["p99_ms"] < GOAL_P99_MS,
        "references": {case: at[case]["ratio"] for case in ("hmac+rpush", "hmac+rq")
                       if case in at},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-app"]:  # the child: --serve-app CASE -- <pumble-bridge arguments>
        return serve_app(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    parser.add_argument("--concurrency", default="1,8,32,128", metavar="N,N,…",
                        help="wrk connections (default 1,8,32,128)")
    parser.add_argument("--duration", type=float, help="seconds a run (default 5; --quick 2)")
    parser.add_argument("--repeats", type=int, help="runs of every case (default 3; --quick 1)")
    parser.add_argument("--profile-seconds", type=float,
                        help="seconds of each profiled run (default 10; --quick 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument("--no-what-if", action="store_true",
                        help="skip the what-if variants of the bridge (access log off, other "
                             "worker/thread counts)")
    parser.add_argument("--workers", type=int,
                        help="gunicorn workers of every case (default: serve's own)")
    parser.add_argument("--threads", type=int,
                        help="threads per gunicorn worker of every case (default: serve's own)")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    concurrencies = sorted({int(n) for n in args.concurrency.split(",") if n.strip()})
    seconds = args.duration or (2.0 if args.quick else 5.0)
    repeats = args.repeats or (1 if args.quick else 3)
    profile_seconds = args.profile_seconds or (3.0 if args.quick else 10.0)

    began = time.perf_counter()
    folder = stack.new_folder("bench-rcv-")
    runs: list[Run] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        store = stack.Store(folder)
        cleanup.callback(store.close)
        queue = "pumble-bridge"
        config = stack.write_config(folder, "http://127.0.0.1:9", limiter_off=False, queue=queue)
        body = stack.order_body(1001)
        (folder / "body.json").write_bytes(body)
        script = folder / "webhooks.lua"
        script.write_text(LUA % {
            "body_path": _lua_string(str(folder / "body.json")),
            "run": _lua_string(f"wrk-{stack.run_id()}"),
            "shop": _lua_string(stack.samples.SHOP_DOMAIN),
            "signature": _lua_string(stack.sign(body)),
        }, "utf-8")
        info = stack.machine(store.version)
        header = stack.print_header("receiver", args.quick, stack.machine_line(info))
        print(f"load:    wrk, {len(body):,}-byte signed Shopify orders/create, a new "
              f"X-Shopify-Webhook-Id every request; {concurrencies} connections, "
              f"{seconds:g} s a run, {repeats} repeat(s), cases rotated")
        print(f"redis:   embedded redis-server {store.version} (unix socket, AOF everysec), "
              "emptied after every run", flush=True)

        serve_args = [*(["--workers", str(args.workers)] if args.workers else []),
                      *(["--threads", str(args.threads)] if args.threads else [])]
        servers: dict[str, stack.Receiver] = {}
        for case in CASES:
            command = None if case == "bridge" else [
                sys.executable, "-m", "bench.receiver", "--serve-app", case, "--"]
            servers[case] = stack.Receiver(store, config, case.replace("+", "-"),
                                           command=command, serve_args=serve_args)
            cleanup.callback(servers[case].stop)
        print("servers: " + ", ".join(f"{case} :{s.port} (workers {len(s.workers())})"
                                      for case, s in servers.items()), flush=True)
        for server in servers.values():  # warm-up: imports, templates, connections
            run_wrk(f"{server.url}/webhooks/{stack.SOURCE}", 8, 1 if args.quick else 2, script)
            store.flush()

        for repeat in range(repeats):
            for connections in concurrencies:
                shift = (repeat + concurrencies.index(connections)) % len(CASES)
                for case in CASES[shift:] + CASES[:shift]:
                    run = measure(case, servers[case], store, connections, seconds, script,
                                  repeat, queue)
                    runs.append(run)
                    failed = "  FAILED: " + "; ".join(run.problems) if run.problems else ""
                    print(f"  [{repeat + 1}/{repeats}] c={connections:<4} {case:<11} "
                          f"{run.rps:8,.0f} req/s  p50 {run.p50_ms:6.2f}  p99 {run.p99_ms:7.2f}"
                          f"  p99.9 {run.p999_ms:7.2f} ms  others {run.others_cores:.2f}"
                          f"{failed}", flush=True)
        what_if: list[dict[str, Any]] = []
        if not args.no_what_if:
            what_if = run_what_if(servers, store, config, seconds, script, repeats, queue)
        for server in servers.values():
            server.stop()

        rows = summarize(runs, concurrencies)
        print_table(rows)
        goal = verdict(rows)
        if goal:
            print(f"\ngoal at {GOAL_CONNECTIONS} connections: bridge = {goal['ratio']:.2f}× bare "
                  f"(goal ≥ {GOAL_RATIO}×: {'MEETS' if goal['ratio_met'] else 'DOES NOT MEET'}),"
                  f" p99 {goal['p99_ms']:.1f} ms (goal < {GOAL_P99_MS:g} ms: "
                  f"{'MEETS' if goal['p99_met'] else 'DOES NOT MEET'}); references: "
                  + ", ".join(f"{c} {r:.2f}×" for c, r in goal["references"].items()))

        bridge_commands: dict[str, float] = {}
        mine = [r for r in runs if r.case == "bridge" and r.connections == GOAL_CONNECTIONS]
        if mine:
            names = sorted({k for r in mine for k in r.commands})
            bridge_commands = dict(sorted(((n, round(stack.median(r.commands.get(n, 0)
                                                                  for r in mine), 2))
                                           for n in names), key=lambda kv: -kv[1]))
        profile: dict[str, Any] = {}
        if not args.no_profile:
            rps_at = {row["case"]: row["rps"] for row in rows
                      if row["connections"] == GOAL_CONNECTIONS}
            stages = {case: stage_profile(case, store, config, profile_seconds, script, folder,
                                          rps_at.get(case, float("nan")))
                      for case in ("bare", "hmac+rq", "bridge")}
            detail, pstats_file = cprofile_summary("bridge", store, config, profile_seconds,
                                                   script, folder)
            profile = {"stages": stages, "cprofile": detail}
            PROFILE_TEXT.write_text(profile_text(stages, detail, pstats_file, header,
                                                 bridge_commands), "utf-8")
            print(f"\nwhere the bridge's request CPU goes (stage timers, thread CPU µs per "
                  f"request, {GOAL_CONNECTIONS} connections; details: {PROFILE_TEXT}):")
            for label, us, calls in stages["bridge"]["rows"]:
                print(f"  {label:<78} {us:8,.1f}{f'  {calls:.2f}×' if calls else ''}")
            print(f"  bare, a whole request: {stages['bare']['rows'][0][1]:,.1f} µs; "
                  f"hmac+rq: {stages['hmac+rq']['rows'][0][1]:,.1f} µs")

    problems = [r for r in runs if r.problems]
    path = stack.write_result("receiver", {
        "benchmark": "receiver", "when": datetime.datetime.now().astimezone().isoformat(),
        "quick": args.quick, "machine": info, "header": header,
        "settings": {"concurrency": concurrencies, "duration_s": seconds, "repeats": repeats,
                     "body_bytes": len(body), "gunicorn": "2 workers × 4 threads (gthread)",
                     "load_generator": f"wrk {info['versions']['wrk']}"},
        "labels": LABELS, "rows": rows, "goal": goal, "what_if": what_if,
        "runs": [asdict(r) for r in runs],
        "bridge_redis_commands": bridge_commands, "profile": profile,
        "profile_file": str(PROFILE_TEXT.relative_to(stack.BENCH_DIR.parent))
        if profile else "",
        "failed_runs": len(problems), "took_s": round(time.perf_counter() - began, 1),
    })
    print(f"results: {path}")
    for r in problems:
        print(f"FAILED {r.case} c={r.connections}: " + "; ".join(r.problems))
    print(f"(took {time.perf_counter() - began:.1f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
