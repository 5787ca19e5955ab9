"""End to end: a webhook sent -> its message stored by the fake Pumble, at a steady 50 and 200
events a second, through the real receiver, Redis and worker processes.

Run from the repository root:

    .venv/bin/python -m bench.end_to_end             # about 3.5 min (60 s at each rate)
    .venv/bin/python -m bench.end_to_end --quick     # about 40 s (10 s at each rate)
    .venv/bin/python -m bench.end_to_end --rates 50,100,200 --seconds 30 --worker-processes 1

The issue: p50/p99 from a webhook sent to its message stored by the fake Pumble (rate limit off),
at a steady 50 and 200 events per second for 60 seconds.

What runs (all on this machine): the embedded Redis in a temp dir; ``pumble-bridge serve``
(gunicorn, its defaults); ``pumble-bridge worker --processes N`` (``--worker-processes``,
default 2: one process sends at most ~170 a second on 2 cores by bench/worker.py, which is less
than 200 with the receiver sharing the cores); the fake Pumble with its rate limit off, and the
bridge's own Pumble rate limiter lifted out of reach in the temp config (the issue's "rate limit
off": nothing waits for a slot and nothing is merged into a digest). The route renders the shipped
``order_created.j2`` for each 5 KB signed Shopify order; every order has its own number and
delivery id.

How latency is measured, and why this way. The fake's own message timestamps are whole seconds,
too coarse. Instead:
- the sender is open loop: order i is due at start + i/rate and is sent then by a pool of 64
  threads, whatever happened to the orders before it (a slow answer cannot slow the sender down
  and so hide itself); latency is counted from the moment the order was *due*, so any lag of the
  sender is charged to the result, never hidden;
- the fake runs ``bridge.fake_pumble`` in its own process exactly as ``pumble-bridge fake-pumble``
  does, and the ``echo`` hook the CLI uses to print each message instead records ``time.time()``
  right after the message is stored (bench/stack.py). A poller reads those records; the order
  number in the message text ("🛒 New order #N · …") ties each message to its order.
  Both clocks are the same machine's wall clock, so latency = stored - due, to well under a ms.
Also reported: the receiver's ack (answer) latency seen by the sender, the share of that in the
total, the sender's lag behind its schedule, orders missing or posted twice (a failed check),
and the CPU used per event by each part, with other people's load on the machine meanwhile.

Baseline: the same sender, at the same rate, POSTing the same-sized message straight to the
fake's ``/sendMessage`` (no bridge): what the load generator and the fake alone add to a
latency. The ratio is the bridge's p50 (and p99) over the baseline's.

Times are only reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmark this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench import stack

RATES = (50, 200)


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def latency_stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _ms(stack.percentile(values, 50)),
            "p90_ms": _ms(stack.percentile(values, 90)),
            "p99_ms": _ms(stack.percentile(values, 99)),
            "p999_ms": _ms(stack.percentile(values, 99.9)),
            "max_ms": _ms(max(values) if values else float("nan"))}


def run_rate(rate: int, seconds: float, first_number: int, shop: stack.Shop,
             collector: stack.Collector, parts: dict[str, Any], grace: float) -> dict[str, Any]:
    """Send ``rate × seconds`` orders open loop; wait for every one at the fake."""
    count = int(rate * seconds)
    numbers = range(first_number, first_number + count)
    prepared = shop.prepare(numbers, f"e2e-{stack.run_id()}")
    cpu_before = {name: cpu() for name, cpu in parts.items()}
    with stack.LoadMeter() as load:
        sent = shop.paced(prepared, rate)
        complete = collector.wait_for(numbers, grace)
    cpu_used = {name: cpu() - cpu_before[name] for name, cpu in parts.items()}
    start = min(s.due for s in sent)
    statuses = stack.answer_counts(sent)
    seen = collector.first_seen
    latencies = [seen[s.number] - s.due for s in sent if s.number in seen]
    acks = [s.acked - s.due for s in sent]
    lags = [s.sent - s.due for s in sent]
    missing = [n for n in numbers if n not in seen]
    repeated = sorted({n for n in collector.repeated if first_number <= n < first_number + count})
    span = max(s.sent for s in sent) - start
    timeline = sorted((round(s.due - start, 4), round(seen[s.number] - s.due, 5),
                       round(s.acked - s.due, 5)) for s in sent if s.number in seen)
    return {
        "rate": rate, "seconds": seconds, "events": count,
        "achieved_rate": round((count - 1) / span, 1) if span > 0 else None,
        "statuses": statuses, "complete": complete,
        "resent": sum(s.attempts > 1 for s in sent),
        "resend_errors": sorted({e for s in sent for e in s.errors.split(",") if e}),
        "missing": len(missing), "posted_twice": len(repeated),
        "end_to_end": latency_stats(latencies), "ack": latency_stats(acks),
        "send_lag_max_ms": _ms(max(lags)), "send_lag_p99_ms": _ms(stack.percentile(lags, 99)),
        "cpu_ms_per_event": {name: round(1000 * used / count, 3)
                             for name, used in cpu_used.items()},
        "load": load.result.as_json(),
        "timeline": timeline,  # (due since start s, end-to-end s, ack s)
    }


def run_baseline(rate: int, seconds: float, fake: stack.Fake, collector: stack.Collector,
                 first_number: int) -> dict[str, Any]:
    """The same open-loop pacing posting a message like the bridge's straight to the fake's
    /sendMessage: the floor of the method (sender + fake)."""
    count = int(rate * seconds)
    numbers = range(first_number, first_number + count)
    text_tail = "\n".join(["Customer: Ada Lovelace <ada@example.com>",
                           *("• 2 × Merino Wool Sweater - Forest Green / M" for _ in range(5)),
                           "…and 2 more items", "", "Open the order: https://admin.shopify.com/"
                           "store/demo-shop/orders/5000000001001"])
    http = httpx.Client(base_url=fake.url, headers={"ApiKey": stack.API_KEY},
                        timeout=httpx.Timeout(30.0, connect=5.0),
                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    records: dict[int, tuple[float, float]] = {}

    def post(number: int, due: float) -> None:
        text = f"🛒 New order #{number} · 368.40 EUR\n{text_tail}"
        http.post("/sendMessage", json={"text": text, "asBot": True, "channel": stack.CHANNEL})
        records[number] = (due, time.time())

    start = time.time() + 0.2
    with stack.LoadMeter() as load, ThreadPoolExecutor(64) as pool:
        for index, number in enumerate(numbers):
            due = start + index / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, number, due)
    complete = collector.wait_for(numbers, 30)
    http.close()
    seen = collector.first_seen
    latencies = [seen[n] - records[n][0] for n in numbers if n in seen and n in records]
    return {"rate": rate, "seconds": seconds, "events": count, "complete": complete,
            "end_to_end": latency_stats(latencies), "load": load.result.as_json()}


def print_table(results: list[dict[str, Any]], baselines: dict[int, dict[str, Any]]) -> None:
    print(f"\n  {'':<30} {'events':>7} {'sent/s':>7} {'p50 ms':>8} {'p90':>8} {'p99':>8} "
          f"{'p99.9':>8} {'max':>8} {'× base p50':>10} {'× p99':>6} {'others':>6}  checks")
    for r in results:
        base = baselines.get(r["rate"])
        if base:
            b = base["end_to_end"]
            print(f"  {'direct to the fake [baseline]':<30} {base['events']:>7,} {r['rate']:>7} "
                  f"{b['p50_ms']:>8.1f} {b['p90_ms']:>8.1f} {b['p99_ms']:>8.1f} "
                  f"{b['p999_ms']:>8.1f} {b['max_ms']:>8.1f} {'1.00×':>10} {'1.00×':>6} "
                  f"{base['load']['others_cores']:>6.2f}")
        e = r["end_to_end"]
        ratio = f"{e['p50_ms'] / base['end_to_end']['p50_ms']:.1f}×" if base else "—"
        ratio99 = f"{e['p99_ms'] / base['end_to_end']['p99_ms']:.1f}×" if base else "—"
        bad = checks_failed(r)
        label = f"bridge at {r['rate']}/s"
        print(f"  {label:<30} "
              f"{r['events']:>7,} {r['achieved_rate']:>7} {e['p50_ms']:>8.1f} {e['p90_ms']:>8.1f}"
              f" {e['p99_ms']:>8.1f} {e['p999_ms']:>8.1f} {e['max_ms']:>8.1f} {ratio:>10} "
              f"{ratio99:>6} {r['load']['others_cores']:>6.2f}  "
              f"{'; '.join(bad) or 'every order stored once'}")
        a = r["ack"]
        print(f"  {'  of which the ack (202)':<30} {'':>7} {'':>7} {a['p50_ms']:>8.1f} "
              f"{a['p90_ms']:>8.1f} {a['p99_ms']:>8.1f} {a['p999_ms']:>8.1f} {a['max_ms']:>8.1f}")
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_event"].items())
        print(f"  {'':<30} CPU ms per event: {cpu}; sender lag max {r['send_lag_max_ms']:.1f} ms")
    print("  (latency from the moment each webhook was due to be sent until the fake stored its "
          "message; others: cores busy with work outside this benchmark)")


def checks_failed(result: dict[str, Any]) -> list[str]:
    """What went wrong with one rate's orders: missing, posted twice, answered other than 202."""
    failed = []
    if result["missing"]:
        failed.append(f"{result['missing']} missing")
    if result["posted_twice"]:
        failed.append(f"{result['posted_twice']} posted twice")
    if not stack.answers_ok(result["statuses"]):
        failed.append(f"answers {result['statuses']}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s at each rate")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), metavar="N,N,…",
                        help="events a second (default 50,200)")
    parser.add_argument("--seconds", type=float, help="seconds at each rate (default 60; "
                                                      "--quick 10)")
    parser.add_argument("--baseline-seconds", type=float,
                        help="seconds of the direct-to-fake baseline at each rate "
                             "(default 15; --quick 5)")
    parser.add_argument("--worker-processes", type=int, default=2,
                        help="pumble-bridge worker --processes N (default 2)")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    baseline_seconds = args.baseline_seconds or (5.0 if args.quick else 15.0)

    began = time.perf_counter()
    folder = stack.new_folder("bench-e2e-")
    results: list[dict[str, Any]] = []
    baselines: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as cleanup:
        store, fake, _config, receiver, worker, collector = stack.one_box(
            cleanup, folder, limiter_off=True, worker_processes=args.worker_processes)
        shop = stack.Shop(receiver.url)
        cleanup.callback(shop.close)
        info = stack.machine(store.version)
        header = stack.print_header("end_to_end", args.quick, stack.machine_line(info))
        print(f"stack:   serve (gunicorn {stack.SERVE_SHAPE}) :{receiver.port} · worker "
              f"--processes {args.worker_processes} · embedded redis-server {store.version} · "
              f"fake Pumble :{fake.port} (rate limit off; the bridge's limiter lifted)")
        print(f"load:    open loop, {rates} events/s, {seconds:g} s each, 5,000-byte signed "
              "orders, a new order number and delivery id each", flush=True)

        warm = shop.prepare(range(1, 41), "warm")
        shop.paced(warm, 40)
        if not collector.wait_for(range(1, 41), 60):
            raise SystemExit(f"the warm-up orders never reached the fake:\n"
                             f"{worker.service.tail()}\n{receiver.service.tail()}")
        parts = {"receiver": receiver.cpu, "worker": worker.cpu, "redis": store.cpu,
                 "fake": fake.cpu}
        for index, rate in enumerate(rates):
            base = run_baseline(rate, baseline_seconds, fake, collector,
                                10_000_000 + 1_000_000 * index)
            baselines[rate] = base
            print(f"  baseline {rate}/s: p50 {base['end_to_end']['p50_ms']:.1f} ms, p99 "
                  f"{base['end_to_end']['p99_ms']:.1f} ms", flush=True)
            result = run_rate(rate, seconds, 100_000 + 1_000_000 * index, shop, collector,
                              parts, grace=max(60.0, seconds))
            results.append(result)
            e = result["end_to_end"]
            print(f"  bridge {rate}/s: p50 {e['p50_ms']:.1f} ms, p99 {e['p99_ms']:.1f} ms, "
                  f"max {e['max_ms']:.1f} ms; missing {result['missing']}, twice "
                  f"{result['posted_twice']}; others {result['load']['others_cores']:.2f} cores",
                  flush=True)
        stats = fake.stats()
    print_table(results, baselines)
    failed = [r for r in results if r["missing"] or r["posted_twice"]
              or not stack.answers_ok(r["statuses"])]
    path = stack.write_result("end_to_end", {
        "benchmark": "end_to_end", "when": datetime.datetime.now().astimezone().isoformat(),
        "quick": args.quick, "machine": info, "header": header,
        "settings": {"rates": rates, "seconds": seconds, "baseline_seconds": baseline_seconds,
                     "worker_processes": args.worker_processes, "body_bytes": stack.BODY_BYTES,
                     "gunicorn": stack.SERVE_SHAPE},
        "results": results, "baselines": baselines, "fake_stats": stats,
        "failed": len(failed), "took_s": round(time.perf_counter() - began, 1),
    })
    print(f"results: {path}")
    print(f"(took {time.perf_counter() - began:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
