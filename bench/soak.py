"""Soak with faults: every platform's webhooks at a steady rate through the whole bridge while a
driver breaks things, then the fake Pumble's record is counted event by event.

Run from the repository root:

    .venv/bin/python -m bench.soak                      # 10,000 events at 30/s, all faults
    .venv/bin/python -m bench.soak --quick              # 1,000 events, one fault of each kind
    .venv/bin/python -m bench.soak --events 3000 --rate 20 --seed 7 --keep

It prints the faults as they happen, progress every 10 s, a summary, and last the line

    lost: 0, duplicated: 0, accepted: N, rejected: M

and exits 0, or exits 1 when anything was lost, duplicated, posted for a rejected event, or not
accepted in the end. ``tests/test_soak.py`` runs the quick version (only with ``SOAK=1``).

What runs (all on loopback, in a temp dir removed afterwards unless ``--keep`` or a failure):
- Redis: the embedded ``redis-server`` (``bridge.redis_embedded``: append-only, fsync every
  second, no eviction) in the temp dir. The bridge reaches it by URL (``unix://…/redis.sock``);
  a restart is a clean ``SHUTDOWN`` (the append-only file is flushed) and a start on the same data
  directory, so the URL stays the same.
- The fake Pumble as its own process (``python -m bridge fake-pumble``, werkzeug, which it needs
  for accept-then-drop), one channel per source, its key required.
- 2 receivers (``pumble-bridge serve --workers 2``: gunicorn, one thread) and 2 workers
  (``pumble-bridge worker --maintenance-interval 2``), each in its own process group. A killed
  one is started again a second later, as systemd's ``Restart=always`` would; a process that
  exits on its own is restarted too, and counted (it should not happen).
- The config (``config.yaml`` in the temp dir): one source per platform (shopify, woocommerce,
  stripe, bigcommerce without enrichment, standard-webhooks, hmac) and one catch-all route to the
  channel ``soak-<source>`` with the inline text ``soak <source> <event id> <type>``: every
  notification names its event, so the fake's record is matched back to events; digests are left
  on and counted too (a digest lists each notification's first line, which the same pattern
  finds). Delivery settings are the defaults but for what makes a soak of minutes possible:
  ``job_timeout: 10`` (a killed worker's job runs again ~20 s later, not ~1 min),
  ``backoff_base: 0.5``, ``backoff_cap: 8``, ``max_attempts: 12`` (so the bursts below, which a
  default backoff would ride out with 5 attempts over minutes, do not dead-letter), and the
  bridge's own rate limiter lifted out of reach (``rate_limits``: 60,000 messages a minute, so the
  429 storms come from the fake; ``--messages-per-minute 80`` puts Pumble's limit back, where
  digests should take over: SOAK.md says why they do not yet). ``pumble.read_timeout: 2``,
  ``connect_timeout: 1``.

The shop (this process): N events, platform by platform in turn (index mod 6), each from the
platform's sample payloads (``tests/payloads``; Shopify's from ``bridge.samples``) with a delivery
id of the run's own, signed as the platform signs; sent at a steady ``--rate`` to a receiver
(alternating), 16 connections at most in flight. Of them:
- 1% (``--forged``, seeded) are sent only with a bad signature (a wrong secret, or the body
  changed after signing): each must be answered 401 and none may reach a channel. These are the
  *rejected* events.
- 10% (``--duplicates``, seeded) are sent twice with the same delivery id: a third of the copies
  at once to the other receiver (a race), the rest 1-30 s later.
- Any answer other than 2xx or 401 (a 503 while Redis is down, a 5xx, a refused or dropped
  connection while a receiver is dead, a timeout) is retried 1-5 s later, as a shop retries, up to
  60 times, until the event is answered 202 or 200. An event is *accepted* when it was answered
  202 or 200 at least once; every event not forged must end accepted.

The faults, at seeded random times in the first 85% of the sending (``--faults KIND=N,…``
overrides the counts; by default, per 2,500 events, one of each kind; ``--quick``: one of each):
- ``kill-worker``: SIGKILL one worker's process group (the worker and rq's scheduler), restart it;
- ``kill-receiver``: SIGKILL one receiver's process group (gunicorn's arbiter and worker), restart;
- ``restart-redis``: stop Redis, keep it down 1-3 s, start it on the same data;
- ``pumble-5xx``: the fake fails its next 10-60 requests with 500, 502, 503 or 504;
- ``pumble-timeouts``: the fake waits 3 s before each request (> the 2 s read timeout) for 3-8 s;
- ``pumble-429``: the fake allows 5-30 requests a minute (Retry-After 1-3 s) for 5-15 s;
- ``pumble-drop``: the fake applies its next 1-5 writes and closes the connection unanswered.
Faults of different kinds may overlap; two of one kind on one target wait for each other.

The end: once every webhook is answered, the soak waits (``--drain-timeout``, default 300 s) until
no job is queued, scheduled or started and the fake's record has stopped changing for 3 s, then
reads every message the fake holds (``GET /_fake/messages``) and counts, per event, how many
times ``soak <source> <event id>`` appears (alone or as a digest line):
- lost: accepted events that appear 0 times;
- duplicated: events that appear more than once;
- also shown, each a failure when not 0: rejected events that appear, unaccepted events (never
  answered 2xx), messages that match no event; and, for information: dead letters (rq's failed
  registry; each is also a loss), digests, restarts, the answers the shop got, what the fake's
  faults did (``GET /_fake/stats``), elapsed time and throughput.
Counting what reached the channel is the point: HTTP answers are only the shop's side.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import heapq
import itertools
import json
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: soak this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import redis

from bench.soak_cluster import QUEUE, Cluster
from bench.soak_events import Factory, Webhook
from bench.stack import unwind_on_sigterm

KINDS = ("kill-worker", "kill-receiver", "restart-redis", "pumble-5xx", "pumble-timeouts",
         "pumble-429", "pumble-drop")
READ_TIMEOUT = 2.0
MENTION = re.compile(r"soak (\S+) (\S+) ")
MAX_SENDS = 60
IN_FLIGHT = 16


@dataclasses.dataclass
class Options:
    events: int = 10_000
    rate: float = 30.0
    seed: int = 1
    faults: dict[str, int] = dataclasses.field(default_factory=dict)  # {} : the default counts
    duplicates: float = 0.10
    forged: float = 0.01
    receivers: int = 2
    workers: int = 2
    messages_per_minute: int = 60_000
    drain_timeout: float = 300.0
    keep: bool = False
    directory: Path | None = None  # default: a new temp dir
    quiet: bool = False

    @classmethod
    def quick(cls, **changes: Any) -> Options:
        return cls(**{"events": 1000, "rate": 25.0,
                      "faults": {kind: 1 for kind in KINDS}, **changes})

    def fault_counts(self) -> dict[str, int]:
        default = max(1, round(self.events / 2500))
        return {kind: self.faults.get(kind, default if not self.faults else 0) for kind in KINDS}


@dataclasses.dataclass
class Fault:
    at: float  # seconds after the sending started, planned
    kind: str
    params: dict[str, Any]
    started: float = 0.0
    ended: float = 0.0
    detail: str = ""
    error: str = ""


@dataclasses.dataclass
class Result:
    events: int
    accepted: int
    rejected: int
    lost: int
    duplicated: int
    rejected_seen: int
    unaccepted: int
    unmatched: int
    dead_letters: int
    ambiguous: int  # attempts that may have posted (worker logs: AmbiguousError)
    found_by_looking: int  # retries that found the earlier attempt's post and did not send
    digests: int
    messages: int
    drained: bool
    sending: float
    elapsed: float
    requests: int
    answers: dict[str, int]
    fake_stats: dict[str, int]
    restarts: dict[str, int]
    unexpected_exits: list[str]
    faults: list[Fault]
    examples: dict[str, list[str]]
    directory: str

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and self.rejected_seen == 0
                and self.unaccepted == 0 and self.unmatched == 0)

    @property
    def line(self) -> str:
        return (f"lost: {self.lost}, duplicated: {self.duplicated}, "
                f"accepted: {self.accepted}, rejected: {self.rejected}")


class Soak:
    def __init__(self, options: Options):
        self.options = options
        self.rng = random.Random(options.seed)
        self.send_rng = random.Random(options.seed + 1)
        self.rng_lock = threading.Lock()
        self.t0 = 0.0
        self.lock = threading.Lock()
        self.heap: list[tuple[float, int, int, str]] = []  # (due, seq, event index, receiver)
        self.seq = itertools.count()
        self.in_flight = 0
        self.sends = Counter[str]()
        self.requests = 0
        self.unexpected: list[str] = []
        self.fault_threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    # -- output ------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(text, flush=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the plan ------------------------------------------------------------------------------

    def build_events(self) -> list[Webhook]:
        o = self.options
        factory = Factory(o.seed, run=f"{o.seed % 1000:03d}{self.rng.randrange(36**3):03x}-")
        forged = set(self.rng.sample(range(o.events), round(o.events * o.forged)))
        return [factory.make(i, i in forged) for i in range(o.events)]

    def plan_faults(self, duration: float) -> list[Fault]:
        rng = self.rng
        faults = []
        for kind, count in self.options.fault_counts().items():
            for _ in range(count):
                at = rng.uniform(0.05, 0.85) * duration
                params: dict[str, Any] = {
                    "kill-worker": lambda: {"target": rng.randrange(self.options.workers)},
                    "kill-receiver": lambda: {"target": rng.randrange(self.options.receivers)},
                    "restart-redis": lambda: {"down": round(rng.uniform(1, 3), 1)},
                    "pumble-5xx": lambda: {"count": rng.randint(10, 60),
                                           "status": rng.choice([500, 502, 503, 504])},
                    "pumble-timeouts": lambda: {"delay": READ_TIMEOUT + 1,
                                                "for": round(rng.uniform(3, 8), 1)},
                    "pumble-429": lambda: {"per_minute": rng.randint(5, 30),
                                           "retry_after": rng.randint(1, 3),
                                           "for": round(rng.uniform(5, 15), 1)},
                    "pumble-drop": lambda: {"count": rng.randint(1, 5)},
                }[kind]()
                faults.append(Fault(round(at, 1), kind, params))
        return sorted(faults, key=lambda f: f.at)

    # -- the shop ------------------------------------------------------------------------------

    def push(self, due: float, index: int, receiver: int) -> None:
        with self.lock:
            heapq.heappush(self.heap, (due, next(self.seq), index, receiver))

    def send(self, client_for, webhook: Webhook, receiver: int) -> None:
        url = f"{self.cluster.urls[receiver]}/webhooks/{webhook.source}"
        body, headers = webhook.request()
        try:
            answer = str(client_for().post(url, content=body, headers=headers).status_code)
        except httpx.HTTPError as exc:
            answer = f"conn:{type(exc).__name__}"
        with self.lock:
            webhook.answers.append(answer)
            self.requests += 1
            self.sends[answer] += 1
            self.in_flight -= 1
            done = webhook.accepted or answer == "401"
            if answer == "401" and not webhook.forged:
                self.unexpected.append(f"event {webhook.event_id}: 401 for a good signature")
            elif webhook.forged and answer in ("200", "202"):
                self.unexpected.append(f"event {webhook.event_id}: forged, answered {answer}")
            elif answer not in ("200", "202", "401") and answer[0] == "4":
                self.unexpected.append(f"event {webhook.event_id}: answered {answer}")
                done = True
        if not done and len(webhook.answers) < MAX_SENDS:
            with self.rng_lock:
                delay, other = self.send_rng.uniform(1, 5), self.send_rng.randrange(
                    len(self.cluster.urls))
            self.push(self.now() + delay, webhook.index, other)

    def shop(self, events: list[Webhook]) -> None:
        """Send every event at the steady rate, the copies and the retries; return when every
        webhook has been answered for good."""
        o = self.options
        receivers = len(self.cluster.urls)
        duplicated = set(self.rng.sample([w.index for w in events if not w.forged],
                                         round(o.events * o.duplicates)))
        for webhook in events:
            due = webhook.index / o.rate
            self.push(due, webhook.index, webhook.index % receivers)
            if webhook.index in duplicated:
                if self.rng.random() < 1 / 3:
                    self.push(due + 0.001, webhook.index, (webhook.index + 1) % receivers)
                else:
                    self.push(due + self.rng.uniform(1, 30), webhook.index,
                              self.rng.randrange(receivers))
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=10)
            return local.client

        with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="shop") as pool:
            while True:
                with self.lock:
                    if not self.heap and not self.in_flight:
                        break
                    due = self.heap[0][0] if self.heap else None
                    ready = (due is not None and due <= self.now()
                             and self.in_flight < IN_FLIGHT)
                    if ready:
                        _, _, index, receiver = heapq.heappop(self.heap)
                        self.in_flight += 1
                if ready:
                    pool.submit(self.send, client, events[index], receiver)
                else:
                    time.sleep(0.002)

    # -- the faults ----------------------------------------------------------------------------

    def start_faults(self, faults: list[Fault]) -> None:
        for fault in faults:
            thread = threading.Thread(target=self.fault, args=(fault,), daemon=True,
                                      name=f"fault-{fault.kind}")
            self.fault_threads.append(thread)
            thread.start()

    def fault(self, fault: Fault) -> None:
        delay = fault.at - self.now()
        if delay > 0 and self.stopping.wait(delay):
            return
        c = self.cluster
        p = fault.params
        lock = {"kill-worker": lambda: c.workers[p["target"]].lock,
                "kill-receiver": lambda: c.receivers[p["target"]].lock,
                "restart-redis": lambda: c.redis.lock}.get(fault.kind, lambda: self.fake_locks[
                    fault.kind])()
        with lock:
            fault.started = self.now()
            try:
                fault.detail = self.inject(fault)
            except Exception as exc:  # report it; the soak goes on
                fault.error = f"{type(exc).__name__}: {exc}"
            fault.ended = self.now()
        self.say(f"  t={fault.started:6.1f}s  {fault.kind}: {fault.detail}"
                 f"{' ERROR ' + fault.error if fault.error else ''}"
                 f" (until t={fault.ended:.1f}s)")

    def inject(self, fault: Fault) -> str:
        c = self.cluster
        p = fault.params
        if fault.kind in ("kill-worker", "kill-receiver"):
            process = (c.workers if fault.kind == "kill-worker" else c.receivers)[p["target"]]
            pid = process.pid
            process.kill()
            time.sleep(1.0)  # RestartSec=1
            process.start()
            return f"SIGKILL {process.name} (group {pid}), restarted as {process.pid}"
        if fault.kind == "restart-redis":
            c.redis.stop()
            time.sleep(p["down"])
            c.redis.start()
            return f"Redis stopped, down {p['down']} s, started on the same data"
        if fault.kind == "pumble-5xx":
            c.faults(fail_next={"count": p["count"], "status": p["status"]})
            return f"the next {p['count']} Pumble requests answer {p['status']}"
        if fault.kind == "pumble-timeouts":
            c.faults(delay=p["delay"])
            time.sleep(p["for"])
            c.faults(delay=0)
            return f"Pumble waits {p['delay']} s before each request, for {p['for']} s"
        if fault.kind == "pumble-429":
            c.faults(rate_limit={"per_minute": p["per_minute"],
                                 "retry_after": p["retry_after"]})
            time.sleep(p["for"])
            c.faults(rate_limit=None)
            return (f"Pumble allows {p['per_minute']}/min (Retry-After {p['retry_after']} s) "
                    f"for {p['for']} s")
        if fault.kind == "pumble-drop":
            c.faults(drop_next=p["count"])
            return f"Pumble applies its next {p['count']} writes and drops the connection"
        raise ValueError(fault.kind)

    def supervise(self) -> None:
        """Restart a process that exited without being killed by a fault (Restart=always)."""
        while not self.stopping.wait(1.0):
            for process in (*self.cluster.receivers, *self.cluster.workers):
                if process.lock.acquire(blocking=False):
                    try:
                        if process.died():
                            code = process.popen.returncode if process.popen else None
                            self.unexpected_exits.append(
                                f"t={self.now():.1f}s {process.name} exited ({code})")
                            self.say(f"  t={self.now():6.1f}s  {process.name} exited on its "
                                     f"own (code {code}); restarting")
                            process.start()
                    finally:
                        process.lock.release()

    # -- the end -------------------------------------------------------------------------------

    def backlog(self, connection: redis.Redis) -> dict[str, int] | None:
        from rq import Queue
        from rq.serializers import JSONSerializer

        try:
            queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
            return {"queued": queue.count,
                    "scheduled": queue.scheduled_job_registry.get_job_count(cleanup=False),
                    "started": queue.started_job_registry.get_job_count(cleanup=False),
                    "failed": queue.failed_job_registry.get_job_count(cleanup=False)}
        except redis.RedisError:
            return None

    def drain(self, connection: redis.Redis) -> bool:
        deadline = time.monotonic() + self.options.drain_timeout
        quiet_since, last_count, last_print = None, -1, 0.0
        while time.monotonic() < deadline:
            backlog = self.backlog(connection)
            try:
                count = self.cluster.fake_stats()["requests"]
            except httpx.HTTPError:
                count = -1
            idle = backlog is not None and not (backlog["queued"] or backlog["scheduled"]
                                                or backlog["started"])
            if idle and count == last_count:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 3:
                    return True
            else:
                quiet_since = None
            last_count = count
            if time.monotonic() - last_print >= 10:
                last_print = time.monotonic()
                self.say(f"  t={self.now():6.1f}s  draining: {backlog}")
            time.sleep(0.5)
        return False

    def progress(self, connection: redis.Redis) -> None:
        while not self.stopping.wait(10):
            with self.lock:
                answered = sum(self.sends.values())
                waiting = len(self.heap)
            self.say(f"  t={self.now():6.1f}s  requests answered {answered} "
                     f"({dict(self.sends.most_common(4))}), waiting to be sent {waiting}, "
                     f"jobs {self.backlog(connection)}")

    def count(self, events: list[Webhook], messages: list[dict[str, Any]]) -> dict[str, Any]:
        by_key = {(w.source, w.event_id): w for w in events}
        seen = Counter[tuple[str, str]]()
        unmatched = []
        for message in messages:
            mentions = MENTION.findall(message["text"] + " ")
            if not mentions:
                unmatched.append(message["text"][:80])
            for key in mentions:
                if key in by_key:
                    seen[key] += 1
                else:
                    unmatched.append(f"{key}")
        accepted = [w for w in events if not w.forged and w.accepted]
        lost = [w for w in accepted if seen[(w.source, w.event_id)] == 0]
        duplicated = [k for k, n in seen.items() if n > 1]
        rejected_seen = [w for w in events if w.forged and seen[(w.source, w.event_id)]]
        unaccepted = [w for w in events if not w.forged and not w.accepted]
        return {"accepted": accepted, "lost": lost, "duplicated": duplicated,
                "rejected_seen": rejected_seen, "unaccepted": unaccepted,
                "unmatched": unmatched, "seen": seen}

    def in_worker_logs(self, directory: Path, text: str) -> int:
        return sum(line.count(text) for path in (directory / "logs").glob("worker-*.log")
                   for line in path.read_text(errors="replace").splitlines())

    # -- the whole -----------------------------------------------------------------------------

    def run(self) -> Result:
        o = self.options
        directory = o.directory or Path(tempfile.mkdtemp(prefix="soak-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.unexpected_exits: list[str] = []
        self.fake_locks = {kind: threading.Lock() for kind in KINDS}
        events = self.build_events()
        duration = o.events / o.rate
        faults = self.plan_faults(duration)
        self.say(f"soak: {o.events} events at {o.rate:g}/s (~{duration:.0f} s), seed {o.seed}, "
                 f"{len(faults)} faults, in {directory}")
        self.cluster = Cluster(
            directory, receivers=o.receivers, workers=o.workers, maintenance=2,
            delivery={"job_timeout": 10, "backoff_base": 0.5, "backoff_cap": 8,
                      "max_attempts": 12,
                      "rate_limits": {"messages": o.messages_per_minute,
                                      "requests": max(1000, 2 * o.messages_per_minute)}},
            pumble={"read_timeout": READ_TIMEOUT, "connect_timeout": 1})
        ok = False
        try:
            self.cluster.start()
            connection = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
            self.t0 = time.monotonic()
            helpers = [threading.Thread(target=self.supervise, daemon=True),
                       threading.Thread(target=self.progress, args=(connection,), daemon=True)]
            for thread in helpers:
                thread.start()
            self.start_faults(faults)
            self.shop(events)
            sending = self.now()
            self.say(f"  t={sending:6.1f}s  every webhook answered; waiting for the faults to "
                     "end and the queue to drain")
            for thread in self.fault_threads:
                thread.join()
            drained = self.drain(connection)
            elapsed = self.now()
            self.stopping.set()
            messages = self.cluster.messages()
            counted = self.count(events, messages)
            backlog = self.backlog(connection) or {}
            fake_stats = self.cluster.fake_stats()
            result = Result(
                events=o.events, accepted=len(counted["accepted"]),
                rejected=sum(w.forged for w in events), lost=len(counted["lost"]),
                duplicated=len(counted["duplicated"]),
                rejected_seen=len(counted["rejected_seen"]),
                unaccepted=len(counted["unaccepted"]), unmatched=len(counted["unmatched"]),
                dead_letters=backlog.get("failed", -1),
                ambiguous=self.in_worker_logs(directory, "AmbiguousError"),
                found_by_looking=self.in_worker_logs(directory, "an earlier attempt did post"),
                digests=sum(m["text"].startswith("📦") for m in messages),
                messages=len(messages), drained=drained, sending=sending, elapsed=elapsed,
                requests=self.requests, answers=dict(self.sends), fake_stats=fake_stats,
                restarts={p.name: p.starts - 1 for p in (*self.cluster.receivers,
                                                         *self.cluster.workers)},
                unexpected_exits=self.unexpected_exits, faults=faults,
                examples={
                    "lost": [f"{w.source} {w.event_id} answers={w.answers}"
                             for w in counted["lost"][:10]],
                    "duplicated": [f"{s} {e} x{counted['seen'][(s, e)]}"
                                   for s, e in counted["duplicated"][:10]],
                    "rejected_seen": [f"{w.source} {w.event_id}"
                                      for w in counted["rejected_seen"][:10]],
                    "unaccepted": [f"{w.source} {w.event_id} answers={w.answers}"
                                   for w in counted["unaccepted"][:10]],
                    "unmatched": counted["unmatched"][:10],
                    "answers": self.unexpected[:10]},
                directory=str(directory))
            ok = result.ok
            (directory / "result.json").write_text(json.dumps(
                dataclasses.asdict(result), indent=1, default=str))
            return result
        finally:
            self.stopping.set()
            self.cluster.stop()
            if ok and not o.keep and o.directory is None:
                shutil.rmtree(directory, ignore_errors=True)


def report(result: Result, options: Options) -> str:
    lines = [
        "",
        f"events {result.events} (accepted {result.accepted}, rejected {result.rejected}, "
        f"unaccepted {result.unaccepted}); requests sent {result.requests}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.answers.items())),
        f"messages at the fake {result.messages} (digests {result.digests}); "
        f"rejected events posted {result.rejected_seen}; unmatched {result.unmatched}; "
        f"dead letters {result.dead_letters}; attempts that may have posted (ambiguous) "
        f"{result.ambiguous}, of which found by looking {result.found_by_looking}",
        f"fake's faults: {result.fake_stats}",
        f"restarts: {result.restarts}; exits not caused by a fault: "
        f"{result.unexpected_exits or 'none'}",
        f"sending {result.sending:.1f} s, until drained {result.elapsed:.1f} s "
        f"({'drained' if result.drained else 'NOT DRAINED at the timeout'}); "
        f"throughput {result.accepted / result.elapsed:.1f} accepted events/s end to end",
        "faults injected (t = seconds after the first webhook):",
        *(f"  t={f.started:6.1f}-{f.ended:6.1f}s {f.kind}: {f.detail}"
          f"{' ERROR ' + f.error if f.error else ''}" for f in result.faults),
    ]
    for name, examples in result.examples.items():
        if examples:
            lines.append(f"{name} (first ones): " + "; ".join(examples))
    if not result.ok:
        lines.append(f"FAILED; logs and result.json kept in {result.directory}")
    lines.append(result.line)
    return "\n".join(lines)


def parse_faults(text: str) -> dict[str, int]:
    faults = {kind: 0 for kind in KINDS}  # those not named: none
    if text == "none":
        return faults
    for item in filter(None, text.split(",")):
        kind, _, count = item.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
        faults[kind] = int(count or 1)
    return faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, help="default 10000 (--quick: 1000)")
    parser.add_argument("--rate", type=float, help="events a second (default 30; --quick 25)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="1,000 events, one fault of each kind (what CI runs)")
    parser.add_argument("--faults", type=parse_faults, default={},
                        help=f"KIND=N,… of {', '.join(KINDS)} (the others: none), or none")
    parser.add_argument("--duplicates", type=float, default=0.10,
                        help="share of events sent twice (default 0.10)")
    parser.add_argument("--forged", type=float, default=0.01,
                        help="share of events sent only with a bad signature (default 0.01)")
    parser.add_argument("--messages-per-minute", type=int, default=60_000,
                        help="the bridge's own limiter (default 60000; 80 is Pumble's, where "
                             "digests should merge the backlog: see SOAK.md)")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    changes = {k: v for k, v in {"events": args.events, "rate": args.rate, "seed": args.seed,
                                 "messages_per_minute": args.messages_per_minute,
                                 "duplicates": args.duplicates, "forged": args.forged,
                                 "drain_timeout": args.drain_timeout, "keep": args.keep}.items()
               if v is not None}
    if args.faults:
        changes["faults"] = args.faults
    options = Options.quick(**changes) if args.quick else Options(**changes)
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node()}, "
          f"{platform.platform()}, Python {platform.python_version()}", flush=True)
    result = Soak(options).run()
    print(report(result, options), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the cluster was stopped on the way out
        sys.exit(130)
