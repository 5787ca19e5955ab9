"""Every benchmark, one after the other, then BENCHMARKS.md and the plots in bench/plots/.

Run from the repository root (wrk on PATH: ``apt-get install wrk``; matplotlib installed: the
``bench`` extra):

    .venv/bin/python -m bench.run_all                  # about 20 min
    .venv/bin/python -m bench.run_all --quick          # about 5 min, rougher numbers
    .venv/bin/python -m bench.run_all --only receiver,burst
    .venv/bin/python -m bench.run_all --report-only    # BENCHMARKS.md + plots from bench/results/

Each benchmark runs in its own process (``python -m bench.NAME``, ``--quick`` passed on), its
output shown and kept in bench/results/NAME.txt; the whole-system ones also write
bench/results/NAME.json, which the report reads (bench/stack.py is their shared machinery:
Redis, the fake Pumble, the receiver and worker processes, the sender, the load meter). While
each runs, the CPU used by other processes on the machine (other people's test runs, the
hypervisor's steal) is measured from /proc/stat and reported next to it: the numbers are only
as good as the machine was quiet.
bench/results/ is not committed; BENCHMARKS.md and bench/plots/*.png are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import end_to_end, stack

ROOT = stack.BENCH_DIR.parent
REPORT = ROOT / "BENCHMARKS.md"
COMMAND = ".venv/bin/python -m bench.run_all"
# name, module arguments; all take --quick
BENCHMARKS: dict[str, list[str]] = {
    "route_render": ["--profile"],
    "receiver": [],
    "end_to_end": [],
    "burst": [],
    "memory": [],
    "worker": ["--profile"],
}
RUN_FILE = stack.RESULTS_DIR / "run_all.json"


# --- running ------------------------------------------------------------------------------------

def run_one(name: str, extra: list[str], quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", f"bench.{name}", *extra, *(["--quick"] if quick else [])]
    print(f"\n{'=' * 100}\n$ {' '.join(['python', *command[1:]])}\n{'=' * 100}", flush=True)
    stack.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text_file = stack.RESULTS_DIR / f"{name}.txt"
    started = time.perf_counter()
    with stack.LoadMeter() as load, open(text_file, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                out.write(line)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the benchmark stops its own services
            process.terminate()
            process.wait(timeout=60)
            raise
        code = process.wait()
    return {"name": name, "command": " ".join(["python", *command[1:]]), "exit": code,
            "took_s": round(time.perf_counter() - started, 1), "load": load.result.as_json(),
            "output": str(text_file.relative_to(ROOT))}


# --- reading the results ------------------------------------------------------------------------

def load_json(name: str) -> dict[str, Any] | None:
    path = stack.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def load_text(name: str) -> str | None:
    path = stack.RESULTS_DIR / f"{name}.txt"
    return path.read_text("utf-8") if path.exists() else None


# --- plots --------------------------------------------------------------------------------------

COLORS = {"bare": "#777777", "hmac+rpush": "#4c9be8", "hmac+rq": "#e8a33c",
          "bridge": "#d1495b"}
SHORT = {"bare": "bare Flask [baseline]", "hmac+rpush": "HMAC + RPUSH",
         "hmac+rq": "HMAC + plain RQ enqueue", "bridge": "pumble-bridge serve"}


def _plain_log_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: Any) -> str:
        leading = f"{value:e}"[0]
        return f"{value:g}" if leading in "25" else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_receiver(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for case, color in COLORS.items():
        mine = sorted((r for r in rows if r["case"] == case), key=lambda r: r["connections"])
        if not mine:
            continue
        x = [r["connections"] for r in mine]
        main = case in ("bare", "bridge")
        width, alpha = (2.0, 1.0) if main else (1.0, 0.6)
        left.plot(x, [r["p50_ms"] for r in mine], "o-", color=color, lw=width, alpha=alpha,
                  label=SHORT[case])
        left.plot(x, [r["p99_ms"] for r in mine], "s--", color=color, lw=width, alpha=alpha)
        right.plot(x, [r["rps"] for r in mine], "o-", color=color, lw=width, alpha=alpha,
                   label=SHORT[case])
    goal = data.get("goal") or {}
    if goal:
        left.axhline(goal["p99_goal_ms"], color="#d1495b", lw=0.8, ls=":")
        left.annotate(f"goal: p99 < {goal['p99_goal_ms']:g} ms at {goal['connections']}",
                      (1, goal["p99_goal_ms"]), fontsize=8, color="#d1495b",
                      xytext=(0, 3), textcoords="offset points")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks([r for r in data["settings"]["concurrency"]])
        ax.set_xticklabels([str(r) for r in data["settings"]["concurrency"]])
        ax.set_xlabel("concurrent connections (wrk)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_yscale("log")
    _plain_log_axis(left.yaxis)
    left.set_ylabel("ack latency, ms (log scale)")
    left.set_title("Ack latency: p50 (solid, circles), p99 (dashed, squares)", fontsize=10)
    left.legend(fontsize=7.5, loc="upper left")
    right.set_ylabel("requests / s")
    right.set_title("Throughput, same gunicorn settings (2 × 4)")
    right.legend(fontsize=7)
    fig.suptitle(f"Receiver: signed 5 KB Shopify orders, wrk on loopback "
                 f"({'--quick, ' if data['quick'] else ''}{data['when'][:16]})", fontsize=10)
    _save(fig, path)


def plot_end_to_end(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    results = data["results"]
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        timeline = result["timeline"]
        t = [p[0] for p in timeline]
        ms = [1000 * p[1] for p in timeline]
        ack = [1000 * p[2] for p in timeline]
        ax.scatter(t, ms, s=2, alpha=0.25, color="#d1495b", label="each order: sent → stored")
        buckets: dict[int, list[tuple[float, float]]] = {}
        for when, total, acked in zip(t, ms, ack, strict=True):
            buckets.setdefault(int(when), []).append((total, acked))
        seconds = sorted(buckets)
        for p, style in ((50, "-"), (99, "--")):
            ax.plot([s + 0.5 for s in seconds],
                    [stack.percentile([v[0] for v in buckets[s]], p) for s in seconds],
                    style, color="#7a1c2a", lw=1.5, label=f"p{p} per second")
        ax.plot([s + 0.5 for s in seconds],
                [stack.percentile([v[1] for v in buckets[s]], 50) for s in seconds],
                "-", color="#4c9be8", lw=1.2, label="ack (202) p50 per second")
        base = data["baselines"].get(str(result["rate"])) or data["baselines"].get(result["rate"])
        if base:
            ax.axhline(base["end_to_end"]["p50_ms"], color="#777777", lw=1, ls=":",
                       label="baseline p50: straight to the fake")
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_ylabel("ms (log scale)")
        e = result["end_to_end"]
        ax.set_title(f"{result['rate']} events/s for {result['seconds']:g} s: p50 "
                     f"{dur(e['p50_ms'])}, p99 {dur(e['p99_ms'])}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("seconds since the first webhook was due")
    fig.suptitle(f"End to end: webhook sent → message stored by the fake Pumble "
                 f"({'--quick, ' if data['quick'] else ''}{data['when'][:16]})", fontsize=10)
    _save(fig, path)


def plot_burst(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    timeline = sorted(data["timeline"])
    fig, ax = plt.subplots(figsize=(10, 3.6))
    shown = 0
    xs, orders, counts = [0.0], [0], [0]
    for messages, (when, count) in enumerate(timeline, 1):
        shown += count
        xs.append(when)
        orders.append(shown)
        counts.append(messages)
    ax.step(xs, orders, where="post", color="#d1495b", lw=2, label="orders visible in #orders")
    ax.set_ylabel("orders visible")
    ax.set_xlabel("seconds since the first order was due")
    other = ax.twinx()
    other.step(xs, counts, where="post", color="#4c9be8", lw=1.2,
               label="messages posted (right axis)")
    other.set_ylabel("messages posted")
    ax.axvline(data["settings"]["burst_seconds"], color="#777777", ls=":", lw=1)
    ax.axvline(data["floor"]["seconds"], color="#2a9d8f", ls="--", lw=1)
    ax.annotate("floor", (data["floor"]["seconds"], 0), color="#2a9d8f", fontsize=8,
                xytext=(3, 5), textcoords="offset points")
    lines = ax.get_legend_handles_labels()
    more = other.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.3)
    s = data["settings"]
    ax.set_title(f"Burst: {s['orders']:,} orders in {s['burst_seconds']:g} s, Pumble at "
                 f"{s['per_minute']} messages/min: all visible after {data['all_visible_s']:.0f} s"
                 f" in {data['messages']} messages, {data['rate_limited']} × 429"
                 f"{' (--quick)' if data['quick'] else ''}", fontsize=9)
    _save(fig, path)


# --- the report ---------------------------------------------------------------------------------

def _f(value: Any, spec: str = ",.1f", none: str = "—") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return none
    return format(value, spec)


def dur(ms: float) -> str:
    """A latency for people: 7.6 ms, 14.3 s."""
    return f"{ms / 1000:,.1f} s" if ms >= 1000 else f"{ms:,.1f} ms"


def mib(kib: Any) -> str:
    return _f(kib / 1024 if kib is not None else None, ",.1f")


def code_block(text: str) -> str:
    return "```\n" + text.rstrip() + "\n```\n"


def goal_lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.startswith("goal")]


def machine_section(info: dict[str, Any]) -> str:
    versions = " · ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (f"- **CPU:** {info['cpu']}, {info['cpus']} CPUs ({info['usable_cpus']} usable), "
            f"{info['memory_gib']} GiB RAM\n"
            f"- **Python:** {info['python']} on {info['platform']}\n"
            f"- **Versions:** {versions}\n"
            f"- **Load average when the receiver benchmark started:** "
            f"{' / '.join(str(x) for x in info['load_average'])}\n")


def trees_section(datasets: dict[str, dict[str, Any] | None]) -> str:
    """The bridge tree each benchmark ran against (others edit it during the session)."""
    trees = {name: d["machine"].get("tree", "?") for name, d in datasets.items() if d}
    if not trees:
        return ""
    if len(set(trees.values())) == 1:
        return f"- **Code under test:** `{next(iter(trees.values()))}`\n"
    return "- **Code under test** (it changed during the run):\n" + "".join(
        f"  - {name}: `{t}`\n" for name, t in trees.items())


def receiver_section(data: dict[str, Any]) -> str:
    out = []
    s = data["settings"]
    out.append(f"`{COMMAND}` ran `python -m bench.receiver{' --quick' if data['quick'] else ''}`"
               f": {s['body_bytes']:,}-byte signed Shopify `orders/create` webhooks from "
               f"{s['load_generator']} on loopback (a Lua script gives every request its own "
               "`X-Shopify-Webhook-Id`, so each one takes the full accept path: verify, dedupe, "
               "route, render order_created.j2, durable enqueue; the jobs in Redis are counted "
               "after every run), against four gunicorns with `pumble-bridge serve`'s exact "
               f"settings ({s['gunicorn']}, access log on, the bridge's JSON log lines), all "
               "writing to the embedded Redis (unix socket, AOF everysec) in a temp dir. "
               f"{s['duration_s']:g} s a run, {s['repeats']} repeat(s) in rotating order, "
               "medians; CPU per answered request from /proc and Redis' INFO.\n")
    out.append("| conns | case | req/s (range) | × bare | p50 ms | p99 ms | p99.9 ms | "
               "CPU ms/req: gunicorn | Redis | wrk | Redis cmds/req | others' cores |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in data["rows"]:
        label = data["labels"][r["case"]]
        bold = "**" if r["case"] == "bridge" else ""
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "—"
        failed = " ⚠ failed check" if r["failed"] else ""
        out.append(f"| {r['connections']} | {bold}{label}{bold}{failed} | {r['rps']:,.0f} "
                   f"({r['rps_min']:,.0f}-{r['rps_max']:,.0f}) | {bold}{ratio}{bold} | "
                   f"{r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['p999_ms']:.1f} | "
                   f"{r['server_cpu_ms']:.2f} | {r['redis_cpu_ms']:.2f} | {r['wrk_cpu_ms']:.2f} | "
                   f"{r['redis_commands']:.1f} | {r['others_cores']:.2f} |")
    out.append("\n![Ack latency and throughput against concurrency, bridge vs bare]"
               "(bench/plots/receiver_latency.png)\n")
    return "\n".join(out)


def profile_section(data: dict[str, Any]) -> str:
    profile = data.get("profile") or {}
    stages = profile.get("stages") or {}
    if "bridge" not in stages:
        return "_No profile in this run (`--no-profile`)._\n"
    bridge_stages = stages["bridge"]
    out = [f"Measured at {data['goal'].get('connections', 32)} connections with thin "
           "timers around each stage (the thread's own CPU clock, `time.thread_time_ns`; "
           "about 0.3 µs a timed call, so the sizes stay true), set up by an environment "
           "variable in a `--serve-app` child that runs the real `serve` (bench/receiver.py). "
           f"With the timers on the bridge did {bridge_stages['rps']:,.0f} req/s "
           f"(unprofiled {bridge_stages['unprofiled_rps']:,.0f}). Nested rows are part of "
           "their parent. Full report, with a cProfile of the same path: "
           f"`{data['profile_file']}` (not committed).\n"]
    whole = {case: st["rows"][0][1] for case, st in stages.items()}
    out.append("| stage (CPU per request, in the gunicorn worker thread) | µs | share | "
               "calls/req |")
    out.append("|---|---:|---:|---:|")
    total = bridge_stages["rows"][0][1] or 1
    for label, us, calls in bridge_stages["rows"]:
        depth = len(label) - len(label.lstrip(" "))
        name = "&nbsp;" * (2 * depth) + label.strip()
        out.append(f"| {name} | {us:,.0f} | {100 * us / total:.0f} % | "
                   f"{f'{calls:.2f}' if calls else ''} |")
    out.append("")
    out.append("For scale, a whole request in the other cases, same timers: " + ", ".join(
        f"{data['labels'][case]} **{us:,.0f} µs**" for case, us in whole.items()
        if case != "bridge") + f"; the bridge **{whole['bridge']:,.0f} µs**. The gunicorn "
        "processes' CPU per request from /proc (main loop included): " + ", ".join(
        f"{case} {st['process_cpu_us']:,.0f} µs" for case, st in stages.items()) + ".\n")
    commands = data.get("bridge_redis_commands") or {}
    if commands:
        out.append(f"Redis commands per bridge request ({sum(commands.values()):.1f}; INFO "
                   "commandstats over the timed runs at 32 connections): " + ", ".join(
                       f"`{name}` {count:g}" for name, count in commands.items()) + ".\n")
    detail = profile.get("cprofile") or {}
    if detail:
        owners = ", ".join(f"{label} {share:.0f} %" for label, _, share in
                           detail["by_owner"][:8])
        top = ", ".join(f"`{name}` {calls:g}×/req" for name, _, calls in
                        detail["top_tottime"][:8])
        out.append(f"cProfile of the same path (its per-call overhead inflates call-heavy "
                   f"code; compare shares): own time by package: {owners}. Top functions by "
                   f"own time: {top}.\n")
    return "\n".join(out)


def _row(rows: list[tuple[str, float, float]], prefix: str) -> float:
    return next((us for label, us, _ in rows if label.strip().startswith(prefix)), 0.0)


def receiver_notes(data: dict[str, Any]) -> str:
    goal = data.get("goal") or {}
    if not goal:
        return ""
    stages = (data.get("profile") or {}).get("stages") or {}
    rows = {r["case"]: r for r in data["rows"] if r["connections"] == goal["connections"]}
    bridge_row, bare = rows["bridge"], rows["bare"]
    lines = []
    bridge_total = bridge_row["server_cpu_ms"] + bridge_row["redis_cpu_ms"] + bridge_row[
        "wrk_cpu_ms"]
    bare_total = bare["server_cpu_ms"] + bare["redis_cpu_ms"] + bare["wrk_cpu_ms"]
    budget = bare_total / goal["ratio_goal"]
    rq_row, rpush_row = rows.get("hmac+rq"), rows.get("hmac+rpush")
    rq_total = (rq_row["server_cpu_ms"] + rq_row["redis_cpu_ms"] + rq_row["wrk_cpu_ms"]
                if rq_row else float("nan"))
    lines.append(
        f"- **Why the ratio is {goal['ratio']:.2f}×, not ≥ {goal['ratio_goal']}×.** At "
        f"{goal['connections']} connections every case is CPU-bound on the machine's cores "
        f"(wrk, gunicorn and Redis share them), so throughput follows the CPU a request costs "
        f"all of them together: bare {bare_total:.2f} ms, the bridge {bridge_total:.2f} ms "
        f"(gunicorn {bridge_row['server_cpu_ms']:.2f} + Redis {bridge_row['redis_cpu_ms']:.2f}"
        f" + wrk {bridge_row['wrk_cpu_ms']:.2f}); their quotient "
        f"{bare_total / bridge_total:.2f} is about the measured ratio. "
        f"{goal['ratio_goal']}× means a request may cost at most {budget:.2f} ms of CPU in all."
        " The reference points measured in the same run show the shape of the budget: "
        + ", ".join(f"{data['labels'][c]} {r:.2f}×" for c, r in goal["references"].items())
        + f". The bridge, which verifies, parses, routes, renders and writes the webhook, "
        f"its job, thread root, backlog entry, seen marker and activity line, now costs about "
        f"what HMAC + one plain RQ enqueue costs ({rq_total:.2f} ms in all).")
    lines.append(
        "- **What changed since the first measurement** (0.15×, p99 173 ms, 2.3 ms of CPU and "
        "8 Redis round trips a request, at commit 52df838): the receiver accepts a webhook in "
        "one Lua script (`NotificationQueue.accept`: dedupe check, stored webhook, the job, "
        "its root and backlog entry, seen marker, activity line; one round trip, and atomic); "
        "the script writes rq's job hash itself, from fields rq's Job made once (rq's "
        "`Queue.enqueue` built a Job, 20 fields and its own script and pipeline each time; "
        "`tests/test_queue.py` compares the two); redis-py packs and parses with hiredis; "
        "each gunicorn thread accepts on a connection it holds (redis-py's pool checked one "
        "out, with a lock and a poll for stale data, for every command) and calls EVALSHA "
        "directly; the JSON on the path (the webhook read, the stored copy, the job's call, "
        "the activity line, the answer, the log line) is orjson's; the job's call is no longer "
        "zlib-compressed (rq reads either); `Notification.to_payload` no longer deep-copies; "
        "the answer skips `jsonify`.")
    if "bridge" in stages:
        st = stages["bridge"]["rows"]
        request = st[0][1] or 1
        outside = (_row(st, "gunicorn: read") + _row(st, "gunicorn: the access log")
                   + _row(st, "Flask/werkzeug"))
        own = _row(st, "verify") + _row(st, "parse") + _row(st, "route + render")
        bare_request = (stages.get("bare") or {}).get("rows", [("", 0.0, 0.0)])[0][1]
        lines.append(
            f"- **Where it goes (stage timers).** Of {request:,.0f} µs a request in the worker "
            f"thread, {outside:,.0f} µs is gunicorn and Flask around the view (a bare request "
            f"costs {bare_request:,.0f} µs in all); verify + parse + route + render "
            f"{own:,.0f} µs; the accept {_row(st, 'accept'):,.0f} µs, of which the job's fields "
            f"{_row(st, 'of which the job'):,.0f} and the script call (redis-py's CPU for one "
            f"round trip) {_row(st, 'of which the script'):,.0f}; the event's log line "
            f"{_row(st, 'the event'):,.0f} µs. Stage times under load are 1.5-2× the same "
            "code's single-threaded cost: four threads a process hand one GIL around at every "
            "socket wait.")
    lines.append(
        f"- **wrk is not the bottleneck.** It used {bare['wrk_cpu_ms']:.2f} ms of CPU per "
        f"request against the bare endpoint ({100 * bare['wrk_cpu_ms'] / bare_total:.0f} % of "
        f"that case's CPU) and {bridge_row['wrk_cpu_ms']:.2f} ms against the bridge "
        f"({100 * bridge_row['wrk_cpu_ms'] / bridge_total:.0f} %); the gunicorn processes "
        "are what saturate the cores.")
    lines.append(
        f"- **p99 at {goal['connections']} connections.** wrk is closed-loop: each connection "
        f"waits for its answer, so by Little's law the mean latency is connections ÷ "
        f"throughput ({goal['connections']} ÷ {bridge_row['rps']:,.0f}/s = "
        f"{1000 * goal['connections'] / bridge_row['rps']:.0f} ms here). A p99 under "
        f"{goal['p99_goal_ms']:g} ms at {goal['connections']} connections needs a mean near "
        f"half of it, i.e. roughly {2 * goal['connections'] / (goal['p99_goal_ms'] / 1000):,.0f}"
        " req/s: the latency goal is the throughput goal again (the bare endpoint's own p99 "
        f"at {goal['connections']} connections in this run: {bare['p99_ms']:.1f} ms). At 1 and "
        "8 connections (below saturation) the table shows the unloaded ack time.")
    rpush = (f", {rpush_row['rps'] / bare['rps']:.2f}× here" if rpush_row else "")
    lean = next((r for r in data.get("what_if") or [] if "log line" in r["case"]), None)
    lean_text = (f" Measured in the what-ifs below: without its per-event log line and its "
                 f"metrics (neither of which a production receiver should drop) the bridge "
                 f"does {lean['ratio']:.2f}×, still short of it, so the gap is the core work "
                 "itself: verify, parse, route, render and one durable write." if lean else "")
    lines.append(
        "- **What would reach the goal, and why it is not done.** Not trimming: every stage "
        "is a small share (the table above), and the ones a receiver could live without are "
        f"not enough.{lean_text} Only a receiver that does less would: verify, dedupe and one "
        "RPUSH of the raw webhook (as the HMAC + RPUSH reference"
        f"{rpush}), with parsing, routing, rendering and job creation moved to a consumer in "
        "the worker processes. That moves ~0.4 ms of CPU a webhook from the receiver, which "
        f"already takes {bridge_row['rps']:,.0f} webhooks a second on these 2 cores (a busy "
        "shop sends a few a second), to the worker, which is what bounds delivery (RQ's "
        "~2 ms a job; bench/worker.py, and End to end below); it adds a hop to every "
        "notification and a second queue to recover after a crash; a payload the bridge "
        "cannot read and a failed template would no longer be answered (400, and the 202's "
        "`failed`). The trade is wrong for a shop, so the receiver keeps doing all of its "
        "work before it answers.")
    what_if = data.get("what_if") or []
    if what_if:
        lines.append("")
        lines.append(f"Measured what-ifs (bench/receiver.py: the bridge with one setting "
                     f"changed, at {goal['connections']} connections, interleaved with bare and "
                     f"the bridge as shipped, {data['settings']['repeats']} repeat(s), medians; "
                     "the ratio is to the bare runs of the same rounds):\n")
        lines.append("| variant | req/s | × bare | p50 ms | p99 ms | gunicorn CPU ms/req | "
                     "others' cores |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for row in what_if:
            label = data["labels"].get(row["case"], row["case"])
            lines.append(f"| {label}{' ⚠ failed check' if row['failed'] else ''} | "
                         f"{row['rps']:,.0f} | {row['ratio']:.2f}× | {row['p50_ms']:.1f} | "
                         f"{row['p99_ms']:.1f} | {row['server_cpu_ms']:.2f} | "
                         f"{row['others_cores']:.2f} |")
        lines.append("")
        if any("access log" in r["case"] for r in what_if):
            lines.append("The access log is off for the bridge only in that row; the bare endpoint "
                         "pays for the same line on every request, so switching it off for both "
                         "takes about the same time from each, which lowers the ratio a little "
                         "rather than raising it.\n")
        best = max((r for r in what_if if r["case"] not in ("bare", "bridge")),
                   key=lambda r: r["ratio"], default=None)
        if best and best["ratio"] < 0.8 * goal["ratio_goal"]:
            lines.append(f"None of these settings comes near the goal on its own (the best, "
                         f"{best['case']}, {best['ratio']:.2f}×): the cost is in the work per "
                         "request, not in how gunicorn schedules it.")
    if goal.get("p99_met") and goal.get("ratio_met"):
        lines = lines[:1]
    return "\n".join(lines) + "\n"


def end_to_end_section(data: dict[str, Any]) -> str:
    s = data["settings"]
    out = [f"`python -m bench.end_to_end{' --quick' if data['quick'] else ''}`: the real "
           f"receiver (gunicorn 2 × 4), `pumble-bridge worker --processes "
           f"{s['worker_processes']}`, the embedded Redis and the fake Pumble with its rate "
           "limit off (and the bridge's own limiter lifted in the temp config, so nothing waits "
           f"and nothing is merged), {s['body_bytes']:,}-byte signed orders, each with its own "
           f"number, sent **open loop** at a steady rate for {s['seconds']:g} s.\n",
           "**How latency is measured.** The fake's message timestamps are whole seconds, too "
           "coarse. The sender gives every order a due time (start + i/rate) and sends it then "
           "from a pool of 64 threads, whatever happened to the orders before, and latency "
           "counts from that due time, so a lagging sender is charged, never hidden. The fake "
           "runs `bridge.fake_pumble` in its own process as `pumble-bridge fake-pumble` does, "
           "and the `echo` hook the CLI uses to print each message records `time.time()` the "
           "moment the message is stored; a poller collects those records and the order number "
           "in the text ties each message to its order. Same machine, same clock: latency = "
           "stored - due, to well under a millisecond. Baseline: the same sender posting a "
           "message of the same size straight to the fake's `/sendMessage` (no bridge), "
           f"{s['baseline_seconds']:g} s at each rate.\n",
           "| rate | events | sent/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | × baseline"
           " p50 / p99 | ack p50 / p99 ms | CPU ms/event: receiver · worker · Redis · fake | "
           "others' cores | checks |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in data["results"]:
        base = data["baselines"].get(str(r["rate"])) or {}
        b = base.get("end_to_end", {})
        e, a = r["end_to_end"], r["ack"]
        if b:
            out.append(f"| {r['rate']}/s | {base['events']:,} | baseline: straight to the "
                       f"fake | {b['p50_ms']:.1f} | {b['p90_ms']:.1f} | {b['p99_ms']:.1f} | "
                       f"{b['p999_ms']:.1f} | {b['max_ms']:.1f} | 1× | | | "
                       f"{base['load']['others_cores']:.2f} | |")
        ratio = (f"{e['p50_ms'] / b['p50_ms']:,.1f}× / {e['p99_ms'] / b['p99_ms']:,.1f}×"
                 if b else "—")
        checks = end_to_end.checks_failed(r)
        cpu = r["cpu_ms_per_event"]
        out.append(f"| **{r['rate']}/s** | {r['events']:,} | {r['achieved_rate']} | "
                   f"**{e['p50_ms']:,.1f}** | {e['p90_ms']:,.1f} | **{e['p99_ms']:,.1f}** | "
                   f"{e['p999_ms']:,.1f} | {e['max_ms']:,.1f} | {ratio} | {a['p50_ms']:,.1f} / "
                   f"{a['p99_ms']:,.1f} | {cpu.get('receiver', 0):.2f} · "
                   f"{cpu.get('worker', 0):.2f} · {cpu.get('redis', 0):.2f} · "
                   f"{cpu.get('fake', 0):.2f} | {r['load']['others_cores']:.2f} | "
                   f"{'; '.join(checks) or 'all stored once'} |")
    out.append("\n![End-to-end latency over time at each rate]"
               "(bench/plots/end_to_end_latency.png)\n")
    notes = []
    for r in data["results"]:
        cpu = r["cpu_ms_per_event"]
        used = sum(cpu.values()) * r["rate"] / 1000
        e = r["end_to_end"]
        per_event = sum(cpu.values())
        cores = data["machine"]["usable_cpus"]
        resent = (f" {r['resent']} webhook(s) got no answer (httpx "
                  f"{', '.join(r.get('resend_errors') or [])}: the connection closed before "
                  "the answer) and were sent again with the same delivery id, as a shop would; "
                  "each was then stored once." if r.get("resent") else "")
        if e["p99_ms"] > 10 * max(e["p50_ms"], 1) or e["p50_ms"] > 100:
            notes.append(
                f"- **At {r['rate']}/s this machine is past its capacity.** An event costs "
                f"{per_event:.1f} ms of CPU across the bridge's processes, Redis and the fake "
                f"(the table; the sender's own CPU comes on top), so {r['rate']}/s needs "
                f"{used:.1f} of the machine's {cores} cores (others used "
                f"{r['load']['others_cores']:.2f} meanwhile): at most about "
                f"{cores / per_event * 1000:.0f} events a second fit even with nothing else "
                "running. The queue, and with it the latency, grows for as long as the rate "
                "lasts (the plot), and drains after it; no order was lost or doubled. The "
                "worker's CPU per message is the largest share (bench/worker.py profiles it: "
                "mostly rq's own bookkeeping per job); on a machine with cores to spare, run "
                "one worker process per core (docs/deploying.md)." + resent)
        else:
            notes.append(
                f"- At {r['rate']}/s the pipeline keeps up: p50 {e['p50_ms']:.1f} ms, of "
                f"which the receiver's answer {r['ack']['p50_ms']:.1f} ms; the rest is the "
                "job's wait in the queue, the worker's handling of it and the post to the "
                f"fake. It uses about {used:.2f} cores ({per_event:.1f} ms of CPU an event)."
                + resent)
    return "\n".join(out) + "\n" + "\n".join(notes) + "\n"


def burst_section(data: dict[str, Any]) -> str:
    s = data["settings"]
    floor = data["floor"]
    checks = "; ".join(data["problems"]) or f"all {s['orders']:,} visible once, every webhook 202"
    out = [f"`python -m bench.burst{' --quick' if data['quick'] else ''}`: {s['orders']:,} "
           f"signed orders sent open loop over {s['burst_seconds']:g} s "
           f"({s['orders'] / s['burst_seconds']:,.0f}/s) to the receiver; one worker process "
           f"with the default delivery settings ({s['per_minute']} messages a minute, digests "
           f"of at most {s['digest_max_items']} lines over a 60 s window); the fake Pumble with "
           f"`--rate-limit {s['per_minute']}`. An order is visible when a message shows it, "
           "alone or as a digest line (`• 🛒 New order #N · …`); the time is the fake's own "
           "record of storing the message, from the first order's due time.\n",
           "| | time until every order is visible | messages | of which digests (orders in "
           "them) | alone | 429s | checks |",
           "|---|---:|---:|---:|---:|---:|---|",
           f"| floor: ⌈N/{s['digest_max_items']}⌉ messages, {s['per_minute']} a minute "
           f"[baseline] | {floor['seconds']:.0f} s | {floor['messages']} | | | 0 | |",
           f"| **the bridge** | **{data['all_visible_s']:.1f} s** | **{data['messages']}** | "
           f"{data['digests']} ({data['orders_in_digests']:,}) | {data['single_messages']} | "
           f"**{data['rate_limited']}** | {checks} |",
           f"| ratio | {_f(data['time_ratio'], '.2f')}× | {data['messages_ratio']:.2f}× | | | | |",
           "",
           f"The sender needed {data['sent_over_s']:.1f} s for the {s['burst_seconds']:g} s "
           f"burst (acks p50 {data['ack']['p50_ms']:,.0f} ms, p99 {data['ack']['p99_ms']:,.0f} "
           f"ms: at {s['orders'] / s['burst_seconds']:,.0f}/s the receiver, sharing the cores "
           "with the worker, is past its capacity measured above, so webhooks wait for an "
           "answer; none was refused). Others' load meanwhile: "
           f"{data['load']['others_cores']:.2f} cores.\n",
           "![Orders visible and messages posted over time]"
           "(bench/plots/burst.png)\n"]
    timeline = sorted(data["timeline"])
    digest_times = [t for t, count in timeline if count > 1]
    if digest_times and data["single_messages"]:
        before = sum(1 for t, count in timeline if count == 1 and t < digest_times[0])
        after = sum(1 for t, count in timeline if count == 1 and t > digest_times[-1])
        between = data["single_messages"] - before - after
        tail_start = next((t for t, count in timeline if count == 1 and t > digest_times[-1]),
                          None)
        out.append(
            f"Why more messages than the floor: {data['single_messages']} orders went alone, "
            f"{before} before the first digest (the backlog had not yet passed "
            f"{s['per_minute']}, what the limit posts in the 60 s window)"
            + (f", {between} in between" if between else "")
            + f" and {after} after the last one: once {s['per_minute']} or fewer wait, each "
            "goes as its own message at the limit's pace, so the burst's tail "
            + (f"(from {tail_start:.0f} s) " if tail_start is not None else "")
            + "takes up to another minute or two where one or two more digests would have "
            "done. Merging whenever more notifications wait than the *current* window has "
            "free slots would bring the time close to the floor's.\n")
    history_file = stack.RESULTS_DIR / "burst_history.jsonl"
    history = [json.loads(line) for line in history_file.read_text("utf-8").splitlines()
               if line.strip()] if history_file.exists() else []
    if len(history) > 1:
        out.append(f"Every burst run kept in this checkout's bench/results/ "
                   f"({len(history)}), the one above included:\n")
        out.append("| when | code under test | orders in | all visible | messages | 429s | "
                   "checks |")
        out.append("|---|---|---|---:|---:|---:|---|")
        for h in history:
            out.append(f"| {h['when'][:16]} | `{h.get('tree', '?')}` | "
                       f"{h['orders']:,} in {h['burst_seconds']:g} s | "
                       f"{h['all_visible_s']:.0f} s | {h['messages']} | {h['rate_limited']} | "
                       f"{'; '.join(h['problems']) or 'all visible once'} |")
        out.append("")
    if data.get("repeats"):
        out.append("**An order shown twice** (the check failed; the fake's messages and the "
                   f"services' logs are kept in `{data.get('evidence')}`, not committed):\n")
        for repeat in data["repeats"]:
            shown = "; ".join(f"message {m['index']} at {m['stored']:.1f} s "
                              f"({m['orders_in_it']} orders): `{m['first_line']}`"
                              for m in repeat["messages"])
            out.append(f"- #{repeat['order']}: {shown}")
        out.append("")
    return "\n".join(out)


def memory_section(data: dict[str, Any]) -> str:
    s = data["settings"]
    out = [f"`python -m bench.memory{' --quick' if data['quick'] else ''}`: {s['events']:,} "
           f"signed orders ({s['senders']} concurrent senders) through `serve` (2 × 4) and one "
           "`worker` process, each delivered to the fake (rate limit off); /proc/PID/"
           f"smaps_rollup of every process after a warm-up of {s['warm_up']} events and after "
           f"all {s['events']:,}. A bare Flask endpoint under the same `serve` got the same "
           "webhooks, as the web baseline. RSS counts shared pages in full; PSS divides them "
           "among the processes mapping them (machine-wide: it moves when other people's "
           "processes map the same venv's libraries); USS is what a process alone holds.\n",
           f"| process | RSS MiB (warm → {s['events']:,}) | PSS MiB | USS MiB | USS growth |",
           "|---|---:|---:|---:|---:|"]
    for row in data["rows"]:
        growth = row["uss_growth_kib"]
        out.append(f"| {row['process']} | {mib(row['rss_start_kib'])} → "
                   f"{mib(row['rss_end_kib'])} | {mib(row['pss_start_kib'])} → "
                   f"{mib(row['pss_end_kib'])} | {mib(row['uss_start_kib'])} → "
                   f"{mib(row['uss_end_kib'])} | "
                   f"{('+' if (growth or 0) >= 0 else '') + mib(growth)} |")
    out.append("")
    names = [row["process"] for row in data["rows"] if not row["process"].startswith("bare")]
    out.append("PSS (MiB) after each step, to tell a leak (steady growth) from a one-off:\n")
    out.append("| events | " + " | ".join(names) + " |")
    out.append("|---:|" + "---:|" * len(names))
    for reading in data["readings"]:
        cells = [mib(reading["memory"].get(n, {}).get("pss")) for n in names]
        out.append(f"| {reading['events']:,} | " + " | ".join(cells) + " |")
    w, k = data["summary"]["web_worker"], data["summary"]["worker"]
    out.append("")
    out.append(f"- **A web process** (the larger gunicorn worker) after {s['events']:,} events: "
               f"RSS {mib(w['rss_kib'])} MiB, PSS **{mib(w['pss_kib'])} MiB** = "
               f"**{w['ratio']}×** the bare Flask worker's PSS {mib(w['baseline_pss_kib'])} MiB "
               f"[baseline] (USS {mib(w['uss_kib'])} vs {mib(w['baseline_uss_kib'])} MiB).")
    out.append(f"- **The worker process** after {s['events']:,} events: RSS {mib(k['rss_kib'])}"
               f" MiB, PSS **{mib(k['pss_kib'])} MiB** = **{k['ratio']}×** its own PSS after the"
               f" warm-up ({mib(k['baseline_pss_kib'])} MiB) [baseline] (USS "
               f"{mib(k['baseline_uss_kib'])} → {mib(k['uss_kib'])} MiB). rq's scheduler is a "
               "fork of it: pages they shared after the fork become private to both when either"
               " writes them (Python's reference counts and garbage collector write to every "
               "object they visit), so their USS can jump together without new memory in use: "
               "watch the two PSS figures summed.")
    out.append("- **Copy-on-write, not a leak (by its shape).** The PSS jumps come in one step "
               "and then hold (the table above), and the gunicorn master's USS jumps with its "
               "workers' although the master serves nothing: pages the workers shared with "
               "the master since the fork became private. `serve` builds the app once in the "
               "master (to fail early on a bad config), so the workers inherit every imported "
               "module's objects; the likely writer is a worker's first full garbage "
               "collection, which writes to every object it visits. `gc.freeze()` in the "
               "master just before gunicorn forks (a `pre_fork` hook set in "
               "`bridge.cli.cmd_serve`), and in the worker before rq forks its scheduler, "
               "would keep those pages shared: worth a run of this benchmark to confirm.")
    out.append(f"- All the bridge's processes together: PSS {mib(data['bridge_pss_total_kib'])} "
               f"MiB; the embedded Redis held {mib(data['redis']['used_memory_kib'])} MiB "
               f"(RSS {mib(data['redis']['rss_kib'])} MiB) after the run (the stored webhooks, "
               "the finished jobs kept a day for dedupe, the activity list). Others' load: "
               f"{data['load']['others_cores']:.2f} cores. Checks: "
               f"{'; '.join(data['problems']) or 'every event answered 202 and delivered once'}"
               ".")
    return "\n".join(out) + "\n"


def soak_summary() -> str:
    """Reliability is the soak's (bench/soak.py): its latest full run, as SOAK.md records it."""
    path = stack.PACKAGE_ROOT / "SOAK.md"
    text = path.read_text("utf-8") if path.exists() else ""
    found = re.search(r"\| `bench\.soak[^`]*` on (\w+) \| ([\d,]+) \|.*?\| (\d+) \|[^|]*\|[^|]*\|"
                      r"[^|]*\| `(lost: [^`]+)` \|", text)
    if not found:
        return ""
    commit, events, faults, printed = found.groups()
    return (f"**Reliability under faults** is measured by the soak, `python -m bench.soak` "
            f"({events} webhooks from every platform while workers, receivers and Redis are "
            "killed and Pumble fails, stalls, throttles and drops): latest full run, on "
            f"{commit}, `{printed}`, with {faults} faults; the figures, the faults and the bugs "
            "earlier runs found are in [SOAK.md](SOAK.md). A 1,000-event version runs in CI.\n")


def write_report(run: dict[str, Any] | None) -> Path:
    receiver, e2e = load_json("receiver"), load_json("end_to_end")
    burst, memory = load_json("burst"), load_json("memory")
    route_text, worker_text = load_text("route_render"), load_text("worker")
    stack.PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    plots = []
    if receiver:
        plot_receiver(receiver, stack.PLOTS_DIR / "receiver_latency.png")
        plots.append("receiver_latency.png")
    if e2e:
        plot_end_to_end(e2e, stack.PLOTS_DIR / "end_to_end_latency.png")
        plots.append("end_to_end_latency.png")
    if burst:
        plot_burst(burst, stack.PLOTS_DIR / "burst.png")
        plots.append("burst.png")

    info = next((d["machine"] for d in (receiver, e2e, burst, memory) if d), stack.machine())
    quick = any(d and d.get("quick") for d in (receiver, e2e, burst, memory))
    when = (run or {}).get("when") or next((d["when"] for d in (receiver, e2e, burst, memory)
                                            if d), "")
    took = f" in {run['took_s'] / 60:.0f} min" if run and run.get("took_s") else ""
    out = ["# Benchmarks", ""]
    out.append(f"Generated by **`{COMMAND}{' --quick' if quick else ''}`** on {when[:16]}{took}"
               f"; regenerate this file and `bench/plots/` with the same command (or "
               f"`{COMMAND} --report-only` from the last results). Each benchmark's docstring "
               "says how it measures; raw results go to `bench/results/` (not committed).")
    if quick:
        out.append("\n> **This is a `--quick` run**: shorter runs and fewer repeats than the "
                   "full one; the numbers are rougher.")
    out.append("\n**About the numbers.** They come from one small shared machine (below), "
               "with the load generator, the bridge, Redis and the fake Pumble all on it, "
               "and other engineers' test suites running on it during this session. Every "
               "benchmark measures the CPU used by processes that are not its own (from "
               "/proc/stat, hypervisor steal included) and reports it as *others' cores*; "
               "compare the ratios measured within one run, and treat absolute numbers as "
               "this machine's on that day.\n")
    out.append("Install what the benchmarks need beyond the tests: `.venv/bin/pip install -e "
               "'.[bench]'` (matplotlib) and Debian's `wrk` (`apt-get install wrk`).\n")
    soak = soak_summary()
    if soak:
        out.append(soak)
    out.append("## The machine\n")
    out.append(machine_section(info) + trees_section(
        {"receiver": receiver, "end_to_end": e2e, "burst": burst, "memory": memory}))
    if run and run.get("benchmarks"):
        out.append("| benchmark | command | took | others' cores (mean) | exit |")
        out.append("|---|---|---:|---:|---:|")
        for b in run["benchmarks"]:
            out.append(f"| {b['name']} | `{b['command']}` | {b['took_s']:.0f} s | "
                       f"{b['load']['others_cores']:.2f} | {b['exit']} |")
        out.append("")

    out.append("## Goals at a glance\n")
    out.append("| goal (from the issue) | measured here | verdict |")
    out.append("|---|---|---|")
    if receiver and receiver.get("goal"):
        g = receiver["goal"]
        out.append(f"| receiver ≥ {g['ratio_goal']}× the bare endpoint's req/s at "
                   f"{g['connections']} connections, doing everything | **{g['ratio']:.2f}×** "
                   f"| {'met' if g['ratio_met'] else '**not met**'} |")
        out.append(f"| receiver p99 < {g['p99_goal_ms']:g} ms at {g['connections']} connections "
                   f"| **{g['p99_ms']:.1f} ms** | {'met' if g['p99_met'] else '**not met**'} |")
        refs = g.get("references", {})
        out.append(f"| reference points (issue's machine: HMAC + RPUSH 0.45-0.55×, HMAC + plain "
                   f"RQ enqueue 0.29-0.33×) | HMAC + RPUSH {_f(refs.get('hmac+rpush'), '.2f')}×,"
                   f" HMAC + RQ {_f(refs.get('hmac+rq'), '.2f')}× | for comparison |")
    if e2e:
        cells = "; ".join(f"{r['rate']}/s: p50 {dur(r['end_to_end']['p50_ms'])}, p99 "
                          f"{dur(r['end_to_end']['p99_ms'])}" for r in e2e["results"])
        ok = not e2e.get("failed")
        out.append(f"| end to end p50/p99, webhook → message stored | {cells} | no target; "
                   f"{'every order stored once' if ok else '**a check failed**'} |")
    if burst:
        history_file = stack.RESULTS_DIR / "burst_history.jsonl"
        history = [json.loads(line) for line in history_file.read_text("utf-8").splitlines()
                   if line.strip()] if history_file.exists() else []
        full = [h for h in history if h["quick"] == burst["quick"]]
        failed_before = [h for h in full if h["problems"]]
        verdict = "; ".join(burst["problems"]) or "met in this run"
        if failed_before and len(full) > 1:
            verdict += (f"; **{len(failed_before)} of {len(full)} such runs kept here failed a "
                        "check** (an order shown twice, on older code: see Burst)"
                        if all(h["posted_twice"] and not h["missing"] for h in failed_before)
                        else f"; **{len(failed_before)} of {len(full)} such runs kept here "
                        "failed a check** (see Burst)")
        out.append(f"| burst of {burst['settings']['orders']:,} in "
                   f"{burst['settings']['burst_seconds']:g} s at 80 messages/min: every order "
                   f"visible, zero 429s | all visible after **{burst['all_visible_s']:.0f} s** "
                   f"in {burst['messages']} messages, **{burst['rate_limited']}** × 429 | "
                   f"{verdict} |")
    if memory:
        w, k = memory["summary"]["web_worker"], memory["summary"]["worker"]
        out.append(f"| memory after {memory['settings']['events']:,} events | web worker PSS "
                   f"{mib(w['pss_kib'])} MiB ({w['ratio']}× bare), worker PSS "
                   f"{mib(k['pss_kib'])} MiB ({k['ratio']}× its warm-up) | no target |")
    for name, text in (("route_render", route_text), ("worker", worker_text)):
        for line in goal_lines(text):
            verdict = "**not met**" if "DOES NOT MEET" in line else "met"
            goal = line.split(":", 1)[0].removeprefix("goal ").strip("() ")
            out.append(f"| bench/{name}.py: {goal} | "
                       f"{line.split(':', 1)[1].strip()} | {verdict} |")
    out.append("")

    if receiver:
        out.append("## Receiver: requests/s and ack latency against concurrency\n")
        out.append(receiver_section(receiver))
        out.append("### Profile: where a bridge request's CPU goes\n")
        out.append(profile_section(receiver))
        out.append("### Notes\n")
        out.append(receiver_notes(receiver))
    if e2e:
        out.append("## End to end: webhook sent → message stored\n")
        out.append(end_to_end_section(e2e))
    if burst:
        out.append("## Burst: 5,000 orders in 10 s against 80 messages a minute\n"
                   if not burst["quick"] else "## Burst (quick: 1,000 orders in 2 s)\n")
        out.append(burst_section(burst))
    if memory:
        out.append("## Memory after 10,000 events\n" if not memory["quick"]
                   else f"## Memory after {memory['settings']['events']:,} events (quick)\n")
        out.append(memory_section(memory))
    for name, title, text in (
            ("route_render", "Routing and rendering (bench/route_render.py)", route_text),
            ("worker", "Delivery worker throughput (bench/worker.py)", worker_text)):
        if text:
            out.append(f"## {title}\n")
            out.append(f"Its own output, as printed (`python -m bench.{name}"
                       f"{' --quick' if quick else ''} --profile`; the method is in its "
                       "docstring):\n")
            out.append(code_block(text))
    REPORT.write_text("\n".join(out).rstrip() + "\n", "utf-8")
    return REPORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", metavar="NAME,…",
                        help=f"run only these ({', '.join(BENCHMARKS)}); the report uses the "
                             "last results of the others")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: BENCHMARKS.md and the plots from bench/results/")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(names) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    run: dict[str, Any] | None = None
    if not args.report_only:
        began = time.perf_counter()
        results = [run_one(name, BENCHMARKS[name], args.quick) for name in names]
        run = {"when": datetime.datetime.now().astimezone().isoformat(), "quick": args.quick,
               "benchmarks": results, "took_s": round(time.perf_counter() - began, 1)}
        if args.only and RUN_FILE.exists():  # keep the other benchmarks' last records
            previous = json.loads(RUN_FILE.read_text("utf-8"))
            kept = [b for b in previous.get("benchmarks", []) if b["name"] not in names]
            run["benchmarks"] = kept + results
            run["took_s"] = None
        stack.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        RUN_FILE.write_text(json.dumps(run, indent=1), "utf-8")
    elif RUN_FILE.exists():
        run = json.loads(RUN_FILE.read_text("utf-8"))
    report = write_report(run)
    print(f"\nreport: {report.relative_to(ROOT)}; plots: "
          f"{', '.join(str(p.relative_to(ROOT)) for p in sorted(stack.PLOTS_DIR.glob('*.png')))}")
    failed = [b["name"] for b in (run or {}).get("benchmarks", []) if b["exit"] != 0]
    if failed:
        print(f"benchmarks that exited non-zero (a failed check, see their output): "
              f"{', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
