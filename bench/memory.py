"""Memory: resident memory (RSS and PSS, from /proc/PID/smaps_rollup) of the receiver's web
processes and of the delivery worker after 10,000 events, next to a bare Flask endpoint's.

Run from the repository root:

    .venv/bin/python -m bench.memory             # about 1.5 min
    .venv/bin/python -m bench.memory --quick     # 2,000 events: about 25 s
    .venv/bin/python -m bench.memory --events 50000 --steps 10

What runs (all on this machine): the embedded Redis in a temp dir; ``pumble-bridge serve``
(gunicorn, its default workers and threads); ``pumble-bridge worker`` (one process, the default;
rq's scheduler is a forked child of it, measured too); the fake Pumble with its rate limit off and
the bridge's limiter lifted, so every event is one message (no digest). The events are signed
5,000-byte Shopify orders, each its own order number and delivery id, sent by 8 concurrent senders,
in ``--steps`` equal steps; after each step the benchmark waits until every message of the step is
stored at the fake, then reads each process's smaps_rollup. The first reading is after a warm-up of
20 events (imports done, templates compiled, connections open).

RSS counts every page a process maps, shared ones in full; PSS divides each shared page among
the processes that map it (gunicorn's workers share the master's pages after the fork), so PSS
summed over processes is what they take from the machine. PSS moves with other processes too:
a shared library's pages are divided among every process on the machine that maps them (other
people's Python processes from the same venv included); USS (the pages a process alone holds)
is also shown, and is what to watch for growth.

Baselines: for a web process, a bare Flask endpoint (bench/bare.py: read the body, answer 202)
under gunicorn with ``serve``'s worker and thread counts, receiving the same webhooks (the
baseline of bench/receiver.py); for the worker, the same worker process right
after its warm-up. The ratio for the web process is bridge / bare after all events; for the
worker, after / at warm-up (growth).

Memory is only reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmark this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import stack
from bench.receiver import Bare

SENDERS = 8
WARM_UP = 20
WORKER = "delivery worker (rq SimpleWorker)"
SCHEDULER = "rq scheduler (forked by the worker)"


def snapshot(processes: dict[str, int]) -> dict[str, dict[str, int]]:
    return {name: stack.memory(pid) for name, pid in processes.items()}


def mib(kib: int | float | None) -> str:
    return f"{kib / 1024:,.1f}" if kib is not None else "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events")
    parser.add_argument("--events", type=int, help="events (default 10000)")
    parser.add_argument("--steps", type=int, default=4, help="readings after the warm-up")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    events = args.events or (2_000 if args.quick else 10_000)
    steps = max(1, args.steps)

    began = time.perf_counter()
    folder = stack.new_folder("bench-mem-")
    readings: list[dict[str, Any]] = []
    problems: list[str] = []
    with contextlib.ExitStack() as cleanup:
        store, _fake, _config, receiver, worker, collector = stack.one_box(
            cleanup, folder, limiter_off=True)
        bare = Bare(store)
        cleanup.callback(bare.stop)
        shop = stack.Shop(receiver.url, connections=SENDERS)
        cleanup.callback(shop.close)
        bare_shop = stack.Shop(bare.url, connections=SENDERS)
        cleanup.callback(bare_shop.close)
        info = stack.machine(store.version)
        header = stack.print_header("memory", args.quick, stack.machine_line(info))
        shape = stack.SERVE_SHAPE
        print(f"stack:   serve (gunicorn {shape}) · worker (1 process) · embedded redis-server "
              f"{store.version} · fake Pumble (rate limit off) · bare Flask (gunicorn {shape})")
        print(f"events:  {events:,} signed 5,000-byte orders, {SENDERS} senders, {steps} steps "
              f"after a warm-up of {WARM_UP}", flush=True)

        processes: dict[str, int] = {"web master (gunicorn arbiter)": receiver.pid}
        for i, pid in enumerate(sorted(receiver.workers())):
            processes[f"web worker {i + 1} (gunicorn)"] = pid
        stack.wait_until(lambda: bool(stack.descendants(worker.pid)), 30,
                         "the worker's scheduler", worker.service)
        processes[WORKER] = worker.pid
        for pid in stack.descendants(worker.pid):
            processes[SCHEDULER] = pid
        processes["bare: web master"] = bare.service.pid
        for i, pid in enumerate(sorted(stack.descendants(bare.service.pid))):
            processes[f"bare: web worker {i + 1}"] = pid

        def send(numbers: range) -> None:
            run = stack.run_id()
            for target in (shop, bare_shop):
                sent = target.closed_loop(target.prepare(numbers, f"mem-{run}"), SENDERS)
                counts = stack.answer_counts(sent)
                if not stack.answers_ok(counts):
                    problems.append(f"answers {counts} from {target.url}")
            if not collector.wait_for(numbers, 600):
                problems.append(f"{sum(n not in collector.first_seen for n in numbers)} "
                                "messages never reached the fake")

        send(range(1, WARM_UP + 1))
        readings.append({"events": 0, "memory": snapshot(processes)})
        print(f"  after the warm-up: web worker PSS "
              f"{mib(readings[0]['memory']['web worker 1 (gunicorn)'].get('pss'))} MiB, "
              f"worker PSS "
              f"{mib(readings[0]['memory'][WORKER].get('pss'))} MiB",
              flush=True)
        done = 0
        with stack.LoadMeter() as load:
            for step in range(steps):
                size = events // steps + (1 if step < events % steps else 0)
                first = 100_000 + done
                send(range(first, first + size))
                done += size
                readings.append({"events": done, "memory": snapshot(processes)})
                m = readings[-1]["memory"]
                print(f"  after {done:,} events: web worker PSS "
                      f"{mib(m['web worker 1 (gunicorn)'].get('pss'))} MiB, worker PSS "
                      f"{mib(m[WORKER].get('pss'))} MiB", flush=True)
        redis_memory = store.connection.info("memory")
        redis_rss = stack.memory(store.pid)
        repeated = len(collector.repeated)
        if repeated:
            problems.append(f"{repeated} messages posted twice")

    first, last = readings[0]["memory"], readings[-1]["memory"]
    rows = []
    for name in processes:
        start, end = first.get(name, {}), last.get(name, {})
        rows.append({"process": name, "rss_start_kib": start.get("rss"),
                     "rss_end_kib": end.get("rss"), "pss_start_kib": start.get("pss"),
                     "pss_end_kib": end.get("pss"), "uss_start_kib": start.get("uss"),
                     "uss_end_kib": end.get("uss"),
                     "uss_growth_kib": (end.get("uss", 0) - start.get("uss", 0)) if end else None})

    def pss_end(name: str) -> float:
        return float(last.get(name, {}).get("pss") or 0)

    web = max((n for n in processes if n.startswith("web worker")), key=pss_end)
    bare_web = max((n for n in processes if n.startswith("bare: web worker")), key=pss_end)
    worker_name = WORKER
    scheduler_start, scheduler_end = first.get(SCHEDULER, {}), last.get(SCHEDULER, {})
    summary = {
        "web_worker": {"process": web, "rss_kib": last[web].get("rss"),
                       "pss_kib": last[web].get("pss"), "uss_kib": last[web].get("uss"),
                       "baseline_uss_kib": last[bare_web].get("uss"),
                       "baseline_pss_kib": last[bare_web].get("pss"),
                       "baseline_rss_kib": last[bare_web].get("rss"),
                       "ratio": round(pss_end(web) / pss_end(bare_web), 2)
                       if pss_end(bare_web) else None},
        "worker": {"process": worker_name, "rss_kib": last[worker_name].get("rss"),
                   "pss_kib": last[worker_name].get("pss"), "uss_kib": last[worker_name].get("uss"),
                   "baseline_uss_kib": first[worker_name].get("uss"),
                   "baseline_pss_kib": first[worker_name].get("pss"),
                   "baseline_rss_kib": first[worker_name].get("rss"),
                   "ratio": round(pss_end(worker_name) / first[worker_name]["pss"], 2)
                   if first[worker_name].get("pss") else None},
        "scheduler": {"process": SCHEDULER, "pss_kib": scheduler_end.get("pss"),
                      "uss_kib": scheduler_end.get("uss"),
                      "baseline_pss_kib": scheduler_start.get("pss"),
                      "baseline_uss_kib": scheduler_start.get("uss")},
    }
    bridge_total = sum(pss_end(n) for n in processes if not n.startswith("bare"))
    print(f"\n  {'process (MiB)':<40} {'RSS warm':>9} {f'RSS {done:,}':>11} {'PSS warm':>9} "
          f"{f'PSS {done:,}':>11} {'USS warm':>9} {f'USS {done:,}':>11} {'USS growth':>10}")
    for row in rows:
        growth = row["uss_growth_kib"]
        print(f"  {row['process']:<40} {mib(row['rss_start_kib']):>9} "
              f"{mib(row['rss_end_kib']):>11} {mib(row['pss_start_kib']):>9} "
              f"{mib(row['pss_end_kib']):>11} {mib(row['uss_start_kib']):>9} "
              f"{mib(row['uss_end_kib']):>11} "
              f"{(('+' if growth >= 0 else '') + mib(growth)) if growth is not None else '—':>10}")
    print("  (RSS: every page mapped; PSS: shared pages divided among the processes mapping them, "
          "machine-wide; USS: pages this process alone holds)")
    w, k = summary["web_worker"], summary["worker"]
    print(f"\n  a web worker after {done:,} events: PSS {mib(w['pss_kib'])} MiB (RSS "
          f"{mib(w['rss_kib'])}, USS {mib(w['uss_kib'])}) = {w['ratio']}× the bare Flask "
          f"worker's PSS {mib(w['baseline_pss_kib'])} MiB [baseline]")
    half = min(readings, key=lambda r: abs(r["events"] - done / 2))
    print(f"  the web worker's growth from {half['events']:,} to {done:,} events: USS "
          f"{mib(last[web].get('uss', 0) - half['memory'][web].get('uss', 0))} MiB, PSS "
          f"{mib(last[web].get('pss', 0) - half['memory'][web].get('pss', 0))} MiB")
    print(f"  the delivery worker after {done:,} events: PSS {mib(k['pss_kib'])} MiB (RSS "
          f"{mib(k['rss_kib'])}, USS {mib(k['uss_kib'])}) = {k['ratio']}× its own after the "
          f"warm-up ({mib(k['baseline_pss_kib'])} MiB) [baseline]")
    r = summary["scheduler"]
    print(f"  rq's scheduler, forked by the delivery worker, after {done:,} events: PSS "
          f"{mib(r['pss_kib'])} MiB, USS {mib(r['uss_kib'])} MiB (after the warm-up: PSS "
          f"{mib(r['baseline_pss_kib'])}, USS {mib(r['baseline_uss_kib'])}; USS: the pages it no "
          f"longer shares with the worker); the two together: PSS "
          f"{mib(pss_end(worker_name) + pss_end(SCHEDULER))} MiB")
    print(f"  the bridge's processes together (PSS, Redis aside): {mib(bridge_total)} MiB; "
          f"Redis used_memory {mib(redis_memory.get('used_memory', 0) / 1024)} MiB, RSS "
          f"{mib(redis_rss.get('rss'))} MiB; others {load.result.others_cores:.2f} cores")
    print("  checks: " + ("; ".join(problems) if problems else
                          "every event answered 202 and delivered once"))
    path = stack.write_result("memory", {
        "benchmark": "memory", "when": datetime.datetime.now().astimezone().isoformat(),
        "quick": args.quick, "machine": info, "header": header,
        "settings": {"events": done, "steps": steps, "senders": SENDERS,
                     "warm_up": WARM_UP, "body_bytes": stack.BODY_BYTES,
                     "gunicorn": stack.SERVE_SHAPE, "worker_processes": 1},
        "rows": rows, "summary": summary, "readings": readings,
        "bridge_pss_total_kib": bridge_total,
        "redis": {"used_memory_kib": redis_memory.get("used_memory", 0) // 1024,
                  "rss_kib": redis_rss.get("rss")},
        "load": load.result.as_json(), "problems": problems,
        "took_s": round(time.perf_counter() - began, 1),
    })
    print(f"results: {path}")
    print(f"(took {time.perf_counter() - began:.1f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
