"""The peer: a synchronous Node-RED relay (verify the Shopify HMAC, send to Pumble, answer) next
to ``pumble-bridge run``, each alone on this machine in turn, under the same wrk load.

Run from the repository root (wrk, node and npm on PATH):

    .venv/bin/python -m bench.peer              # 2 rounds of 15 s: about 5 min
    .venv/bin/python -m bench.peer --quick      # 2 rounds of 3 s: about 2 min

Targets, each started for its run and stopped after it, posting to the same fake Pumble (the
peer's ``fake_pumble.py`` under gunicorn, 2 × 4, which counts what it accepts):
- ``node-red`` [baseline]: node-red 4.1.15, installed with npm at run time into a cache dir
  outside the repository (reused when present), running the peer's flows.json and settings.js
  (``--peer-dir``): the shop gets its answer once the message is sent;
- ``bridge``: ``serve`` + ``worker`` + the embedded Redis (what ``pumble-bridge run`` starts),
  the bridge's own Pumble rate limiter lifted: the shop gets its answer once the webhook is
  stored, and the worker sends it;
- ``loop`` [the worker's baseline]: no shop, no wrk: one keep-alive httpx client in this process
  posts LOOP_MESSAGES order-sized messages to its fake, one after the other, and nothing else
  (``stack.send_loop``, bench/worker.py's baseline too).

Every request is the same signed 5 KB Shopify ``orders/create`` with a new
``X-Shopify-Webhook-Id`` (bench/receiver.py's wrk script), from wrk -t2 with 32 connections.
Rounds rotate the targets' order. Printed per target: acked webhooks/s (wrk), delivered
messages/s (counted at the fake from the load's start until the backlog is drained) and the
drain time after the load stopped, CPU ms per delivered message by process, Redis commands per
message; then, per round and their median, the ratios against issue 18's budget: bridge /
node-red acked (≥ 1.0×) and delivered (≥ 0.5×), and the bridge's worker CPU per message / the
loop's sender CPU per message (≤ 2.0×), next to their Redis commands per message.
Checked per run: every webhook the target acked was sent to the fake exactly once (the
target's own count of acks equals the fake's count of sends), none refused, no wrk error; the
loop: each of its messages counted once at the fake.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench import stack
from bench.receiver import run_wrk, wrk_script

NODE_RED = "node-red"
BRIDGE = "bridge"
LOOP = "loop"
TARGETS = (NODE_RED, BRIDGE, LOOP)
SENDER = {NODE_RED: NODE_RED, BRIDGE: "worker", LOOP: LOOP}  # the process that posts to Pumble
NODE_RED_VERSION = "4.1.15"
PEER_DIR = Path("/work/shared/peer-nodered")
PEER_FILES = ("flows.json", "settings.js", "fake_pumble.py")
CACHE_DIR = Path.home() / ".cache" / "pumble-bridge-bench" / "node-red"
CONNECTIONS = 32
WARM_UP_SECONDS = 2
IN_FLIGHT_SECONDS = 0.3  # after wrk stops, the requests it left in flight are answered within
# The fake is polled for its count every POLL_SECONDS after the load stopped, every
# SLOW_POLL_SECONDS from a second on: each poll costs the fake about a send, which a long drain
# would otherwise add to the target's fake CPU per message.
POLL_SECONDS, SLOW_POLL_SECONDS = 0.05, 0.2
LOOP_MESSAGES = 2000
LOOP_WARM_UP = 100  # the loop's first messages: imports, the connection
# The budget: bridge / node-red at least, the bridge's worker / the loop at most.
BUDGET = {"acked": 1.0, "delivered": 0.5}
WORKER_BUDGET = 2.0


class Target(Protocol):
    """One relay under test, with the fake it sends to."""

    url: str
    fake: PeerFake

    def acked(self) -> int:
        """Webhooks the relay has acked so far, by its own count."""

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far, by process."""

    def redis_commands(self) -> dict[str, int]: ...

    def stop(self) -> None: ...


# --- the fake Pumble both targets post to -----------------------------------------------------

class PeerFake:
    """The peer's fake ``/sendMessage`` (gunicorn --preload, 2 × 4; counters shared by fork)."""

    def __init__(self, folder: Path) -> None:
        self.port = stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = stack.Service("peer-fake", [
            sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "4",
            "--worker-class", "gthread", "--bind", f"127.0.0.1:{self.port}",
            "--log-level", "warning", "bench.peer:peer_fake()",
        ], stack.child_env(PUMBLE_API_KEY=stack.API_KEY), folder)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        stack.wait_until(lambda: self.count()["sends"] >= 0, 60, "the peer's fake", self.service)

    def count(self) -> dict[str, int]:
        answer = self.http.get("/count")
        return answer.raise_for_status().json()

    def reset(self) -> None:
        self.http.post("/reset").raise_for_status()

    def cpu(self) -> float:
        return stack.tree_cpu(self.service.pid)

    def stop(self) -> None:
        self.http.close()
        self.service.stop()


def peer_fake() -> Any:
    """(In the fake's gunicorn.) The peer's fake app, which also takes ``/sendReply`` as a
    send: every request carries the same order, and the bridge posts an order's later
    notifications as replies in the thread of its first message."""
    import fake_pumble  # the peer's, copied into the fake's working directory

    fake_pumble.app.add_url_rule("/sendReply", "send_reply", fake_pumble.send_message,
                                 methods=["POST"])
    return fake_pumble.app


# --- the targets --------------------------------------------------------------------------------

def node_red_install(cache: Path) -> Path:
    """red.js of node-red NODE_RED_VERSION in ``cache``, installed with npm when missing."""
    red = cache / "node_modules" / "node-red" / "red.js"
    with contextlib.suppress(OSError, ValueError):
        installed = json.loads((red.parent / "package.json").read_text())["version"]
        if installed == NODE_RED_VERSION:
            return red
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH (Node.js 18+ is needed for node-red)")
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "package.json").exists():  # else npm installs into a folder above
        (cache / "package.json").write_text('{"private": true}\n')
    print(f"installing node-red@{NODE_RED_VERSION} into {cache} (npm) …", flush=True)
    out = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                          f"node-red@{NODE_RED_VERSION}"], cwd=cache, capture_output=True,
                         text=True, timeout=600)
    if out.returncode or not red.exists():
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"npm install node-red@{NODE_RED_VERSION} failed: {last[0]}")
    return red


def peer_files(peer_dir: Path, folder: Path) -> None:
    """The peer's files into ``folder``, its flow pointed at ``fake_url`` later (see
    NodeRed); one clear line when the peer dir lacks one."""
    missing = [name for name in PEER_FILES if not (peer_dir / name).is_file()]
    if missing:
        raise SystemExit(f"--peer-dir {peer_dir}: missing {', '.join(missing)}")
    for name in PEER_FILES:
        shutil.copy(peer_dir / name, folder / name)


class NodeRed:
    """The peer's flow in node-red, sending to its own fake."""

    def __init__(self, red: Path, folder: Path) -> None:
        self.fake = PeerFake(folder)
        user_dir = folder / "userdir"
        user_dir.mkdir(exist_ok=True)
        flows = json.loads((folder / "flows.json").read_text())
        for node in flows:
            if node.get("type") == "http request":  # the flow names a fixed port
                node["url"] = f"{self.fake.url}/sendMessage"
        for place in (user_dir, folder):  # node-red reads the working directory's if present
            (place / "flows.json").write_text(json.dumps(flows))
        self.port = stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.service = stack.Service(NODE_RED, [
            "node", str(red), "--settings", str(folder / "settings.js"), "--userDir",
            str(user_dir)], stack.child_env(
                NR_PORT=str(self.port), NR_USERDIR=str(user_dir), SHOP_SECRET=stack.SECRET,
                PUMBLE_API_KEY=stack.API_KEY), folder)
        stack.wait_until(lambda: self.acked() >= 0, 90, "node-red", self.service, interval=0.2)

    def acked(self) -> int:
        answer = self.http.get("/relay/stats")  # 404 until the flow runs
        return int(answer.raise_for_status().json()["acked"])

    def cpu(self) -> dict[str, float]:
        return {NODE_RED: stack.tree_cpu(self.service.pid), "fake": self.fake.cpu()}

    def redis_commands(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        self.http.close()
        self.service.stop()
        self.fake.stop()


class Bridge:
    """``serve`` + ``worker`` + the embedded Redis, sending to the peer's fake."""

    def __init__(self, folder: Path) -> None:
        self.fake = PeerFake(folder)
        self.store = stack.Store(folder)
        config = stack.write_config(folder, self.fake.url, limiter_off=True)
        self.receiver = stack.Receiver(self.store, config)
        self.worker = stack.Worker(self.store, config, nice=stack.run_worker_nice())  # as run
        self.url = self.receiver.url
        self._metrics = folder / "metrics-receiver"  # stack.bridge_env's, for "receiver"

    def acked(self) -> int:
        """Webhooks answered 202 (``pumble_bridge_events_received_total{outcome="accepted"}``
        summed over the receiver's processes)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._metrics))
        return int(sum(sample.value for family in registry.collect()
                       for sample in family.samples
                       if sample.name == "pumble_bridge_events_received_total"
                       and sample.labels.get("outcome") == "accepted"))

    def cpu(self) -> dict[str, float]:
        return {"receiver": self.receiver.cpu(), "worker": self.worker.cpu(),
                "redis": self.store.cpu(), "fake": self.fake.cpu()}

    def redis_commands(self) -> dict[str, int]:
        return self.store.commands()

    def stop(self) -> None:
        self.worker.stop()
        self.receiver.stop()
        self.store.close()
        self.fake.stop()


# --- one run --------------------------------------------------------------------------------------

@dataclass
class Run:
    target: str
    round: int
    seconds: float  # the load's
    acked: int  # by the target's own count
    acked_per_s: float  # wrk: answered requests / its duration
    p50_ms: float
    p99_ms: float
    delivered: int  # counted at the fake
    delivered_per_s: float  # from the load's start until the last one
    drain_s: float  # after the load stopped
    cpu_ms: dict[str, float]  # per delivered message, by process
    redis_commands: float  # per delivered message
    others_cores: float
    problems: list[str] = field(default_factory=list)


def wait_drained(target: Target, acked_before: int, stopped: float, timeout: float) -> float:
    """When the sends at the fake first reached the target's acks (or the timeout): the fake
    is polled from the moment the load stopped; the acks are read once the requests in flight
    then can have been answered, and again on every poll."""
    history: list[tuple[float, int]] = []
    while True:
        now = time.monotonic()
        history.append((now, target.fake.count()["sends"]))
        if now - stopped >= IN_FLIGHT_SECONDS:
            acked = target.acked() - acked_before
            if history[-1][1] >= acked or now - stopped > timeout:
                break
        time.sleep(POLL_SECONDS if now - stopped < 1 else SLOW_POLL_SECONDS)
    return next((t for t, sends in history if sends >= acked), history[-1][0])


def warm_up(target: Target, folder: Path) -> None:
    """Imports, connections, the JIT: a short load, then the counts back to zero."""
    acked_before = target.acked()
    run_wrk(f"{target.url}/webhooks/{stack.SOURCE}", 8, WARM_UP_SECONDS, wrk_script(folder))
    wait_drained(target, acked_before, time.monotonic(), 120)
    target.fake.reset()


def measure(name: str, target: Target, folder: Path, seconds: float, round_: int,
            drain_timeout: float) -> Run:
    warm_up(target, folder)
    script = wrk_script(folder)  # new delivery ids: the warm-up's would be duplicates
    acked_before, cpu_before = target.acked(), target.cpu()
    commands_before = target.redis_commands()
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with stack.LoadMeter() as load:
        started = time.monotonic()
        result = run_wrk(f"{target.url}/webhooks/{stack.SOURCE}", CONNECTIONS, seconds, script)
        stopped = time.monotonic()
        wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        drained = wait_drained(target, acked_before, stopped, drain_timeout)
    time.sleep(0.5)  # a late ack, or a send past the acks, would show now
    acked, counts = target.acked() - acked_before, target.fake.count()
    delivered = counts["sends"]
    cpu_after = target.cpu()
    per_message = 1000 / max(delivered, 1)
    cpu_ms = {process: (cpu_after[process] - cpu_before[process]) * per_message
              for process in cpu_after}
    cpu_ms["wrk"] = (wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime
                     - wrk_before.ru_stime) * per_message
    commands = stack.commands_between(commands_before, target.redis_commands())
    answered = int(result["requests"])
    problems = []
    if result["errors"]:
        problems.append(f"{result['errors']} wrk errors / non-2xx answers")
    if delivered != acked:
        problems.append(f"{acked} acked but {delivered} sent to the fake")
    if not answered <= acked <= answered + CONNECTIONS:
        problems.append(f"{acked} acked by the target, {answered} answers read by wrk")
    if counts["bad"]:
        problems.append(f"{counts['bad']} sends refused by the fake")
    return Run(name, round_, seconds, acked, answered / (result["duration_us"] / 1e6),
               result["p50"] / 1000, result["p99"] / 1000, delivered,
               delivered / max(drained - started, 1e-9), max(0.0, drained - stopped), cpu_ms,
               sum(commands.values()) / max(delivered, 1), load.result.others_cores, problems)


def measure_loop(fake: PeerFake, round_: int) -> Run:
    """The loop's run: its sender CPU (this process) and the fake's, per message."""
    stack.send_loop(fake.url, LOOP_WARM_UP)
    fake.reset()
    fake_before = fake.cpu()
    with stack.LoadMeter() as load:
        started = time.monotonic()
        sender = stack.send_loop(fake.url, LOOP_MESSAGES)
        seconds = time.monotonic() - started
    counts = fake.count()
    sent = counts["sends"]
    per_message = 1000 / max(sent, 1)
    problems = []
    if sent != LOOP_MESSAGES:
        problems.append(f"{sent} of {LOOP_MESSAGES} messages counted at the fake")
    if counts["bad"]:
        problems.append(f"{counts['bad']} sends refused by the fake")
    cpu_ms = {LOOP: sender * per_message, "fake": (fake.cpu() - fake_before) * per_message}
    nan = float("nan")  # no shop: nothing acked, no latency to the shop
    return Run(LOOP, round_, seconds, 0, nan, nan, nan, sent, sent / seconds, 0.0, cpu_ms, 0.0,
               load.result.others_cores, problems)


def start(name: str, red: Path, folder: Path) -> Target:
    return NodeRed(red, folder) if name == NODE_RED else Bridge(folder)


# --- the summary ----------------------------------------------------------------------------------

def summary_lines(runs: list[Run], rounds: int) -> list[str]:
    def med(target: str, value: str) -> float:
        return stack.median(getattr(r, value) for r in runs if r.target == target)

    def cpu(target: str, process: str) -> float:
        return stack.median(r.cpu_ms.get(process, float("nan")) for r in runs
                            if r.target == target)

    def cell(value: float, width: int, spec: str) -> str:
        return f"{value:>{width}{spec}}" if value == value else f"{'—':>{width}}"

    processes = ["receiver", "worker", "redis", "fake", "wrk", NODE_RED, LOOP]
    lines = [f"{'target':<10} {'acked/s':>8} {'deliv/s':>8} {'drain s':>7} {'p99 ms':>7} "
             + " ".join(f"{p + ' ms':>11}" for p in processes)
             + f" {'total ms':>8} {'redis cmd':>9} {'others':>6}",
             f"{'':<10} {'':>8} {'':>8} {'':>7} {'':>7} "
             + " ".join(f"{'/msg':>11}" for _ in processes) + f" {'/msg':>8} {'/msg':>9}"
             f" {'cores':>6}"]
    for target in TARGETS:
        total = stack.median(sum(r.cpu_ms.values()) for r in runs if r.target == target)
        lines.append(f"{target:<10} {cell(med(target, 'acked_per_s'), 8, ',.0f')} "
                     f"{med(target, 'delivered_per_s'):>8,.0f} {med(target, 'drain_s'):>7.1f} "
                     f"{cell(med(target, 'p99_ms'), 7, '.1f')} "
                     + " ".join(cell(cpu(target, p), 11, ".3f") for p in processes)
                     + f" {total:>8.3f} {med(target, 'redis_commands'):>9.1f}"
                     f" {med(target, 'others_cores'):>6.2f}")

    def by_round(mine: str, baseline: str, value: Callable[[Run], float]) -> list[float]:
        ratios = []
        for round_ in range(1, rounds + 1):
            got = {r.target: value(r) for r in runs if r.round == round_}
            ratios.append(got[mine] / got[baseline] if got.get(baseline) else float("nan"))
        return ratios

    for value in ("acked", "delivered"):
        lines.append(ratio_line(f"{value} bridge / node-red", BUDGET[value], at_least=True,
                                ratios=by_round(BRIDGE, NODE_RED,
                                                lambda r, v=value: getattr(r, f"{v}_per_s"))))
    lines.append(ratio_line(
        "CPU per message, the bridge's worker / the bare loop", WORKER_BUDGET, at_least=False,
        ratios=by_round(BRIDGE, LOOP, lambda r: r.cpu_ms[SENDER[r.target]])))
    lines.append(f"  per message (medians): the bridge's worker {cpu(BRIDGE, 'worker'):.3f} ms "
                 f"CPU, {med(BRIDGE, 'redis_commands'):.1f} Redis commands; the bare loop "
                 f"{cpu(LOOP, LOOP):.3f} ms CPU, {med(LOOP, 'redis_commands'):.0f} Redis "
                 "commands")
    return lines


def ratio_line(label: str, budget: float, *, at_least: bool, ratios: list[float]) -> str:
    """``label``'s ratio by round and their median, against the budget (at least or at most)."""
    met = sum(ratio >= budget if at_least else ratio <= budget for ratio in ratios)
    median = stack.median(ratios)
    ok = median >= budget if at_least else median <= budget
    gap = "met" if ok else f"{abs(median - budget):.2f}× {'short of' if at_least else 'over'} it"
    return (f"{label}: " + ", ".join(f"{ratio:.2f}×" for ratio in ratios)
            + f" by round (budget {'≥' if at_least else '≤'} {budget:.1f}×: met in {met} of "
            f"{len(ratios)}; median {median:.2f}× = {median / budget:.0%} of the budget, {gap})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s rounds (about 2 min)")
    parser.add_argument("--duration", type=float, help="seconds of load a run (default 15)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each target (default and least 2)")
    parser.add_argument("--peer-dir", type=Path, default=PEER_DIR,
                        help=f"the peer's flows.json, settings.js, fake_pumble.py ({PEER_DIR})")
    parser.add_argument("--node-red-dir", type=Path, default=CACHE_DIR,
                        help=f"where node-red is installed, reused when present ({CACHE_DIR})")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    seconds = args.duration or (3.0 if args.quick else 15.0)
    rounds = max(2, args.rounds)
    began = time.perf_counter()
    folder = stack.new_folder("bench-peer-")
    runs: list[Run] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        peer_files(args.peer_dir, folder)
        red = node_red_install(args.node_red_dir)
        info = stack.machine()
        info["versions"].update(node=node_version(), **{NODE_RED: NODE_RED_VERSION})
        header = stack.print_header("peer", args.quick, stack.machine_line(info))
        print(f"load:    wrk -t2 -c{CONNECTIONS}, {seconds:g} s a run, {rounds} rounds, signed "
              f"{stack.BODY_BYTES:,}-byte orders, a new webhook id each; fake: the peer's "
              f"fake_pumble.py (gunicorn 2×4); the bare loop: {LOOP_MESSAGES:,} messages, "
              f"one keep-alive httpx client", flush=True)
        with stack.LoadMeter() as load:
            for round_ in range(1, rounds + 1):
                order = TARGETS[round_ % len(TARGETS):] + TARGETS[:round_ % len(TARGETS)]
                for name in order:
                    runs.append(one_run(name, red, folder, seconds, round_))
    lines = summary_lines(runs, rounds)
    finished = datetime.datetime.now().astimezone()
    lines.append(f"{finished:%Y-%m-%d %H:%M %Z}; the rest of the machine kept "
                 f"{load.result.others_cores:.2f} cores busy on average (load average "
                 f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    problems = [f"{r.target} round {r.round}: {p}" for r in runs for p in r.problems]
    lines.append("checks: " + ("; ".join(problems) if problems else
                               "every acked webhook sent to the fake exactly once, both targets;"
                               " every message of the loop counted once"))
    print("\n" + "\n".join(lines))
    path = stack.write_result("peer", {
        "benchmark": "peer", "when": finished.isoformat(), "quick": args.quick,
        "machine": info, "header": header, "summary": lines,
        "settings": {"seconds": seconds, "rounds": rounds, "connections": CONNECTIONS,
                     "body_bytes": stack.BODY_BYTES, "loop_messages": LOOP_MESSAGES},
        "runs": [asdict(r) for r in runs], "load": load.result.as_json(),
        "took_s": round(time.perf_counter() - began, 1)})
    print(f"results: {path}\n(took {time.perf_counter() - began:.0f} s)")
    return 1 if problems else 0


def one_run(name: str, red: Path, folder: Path, seconds: float, round_: int) -> Run:
    """Start ``name`` in a folder of its own, measure it, stop it."""
    run_folder = folder / f"{name}-{round_}"
    run_folder.mkdir()
    for file in PEER_FILES:
        shutil.copy(folder / file, run_folder / file)
    if name == LOOP:
        fake = PeerFake(run_folder)
        try:
            run = measure_loop(fake, round_)
        finally:
            fake.stop()
    else:
        target = start(name, red, run_folder)
        try:
            run = measure(name, target, run_folder, seconds, round_,
                          drain_timeout=max(120.0, 20 * seconds))
        finally:
            target.stop()
    acked = f"{run.acked_per_s:7,.0f}" if run.acked_per_s == run.acked_per_s else f"{'—':>7}"
    print(f"  [{round_}] {name:<9} acked {acked}/s  delivered "
          f"{run.delivered_per_s:7,.0f}/s  drain {run.drain_s:5.1f} s  CPU "
          f"{sum(run.cpu_ms.values()):.2f} ms/msg  others {run.others_cores:.2f}"
          + ("  FAILED: " + "; ".join(run.problems) if run.problems else ""), flush=True)
    return run


def node_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["node", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip().lstrip("v")
    return "?"


if __name__ == "__main__":
    sys.exit(main())
