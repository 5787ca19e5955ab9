"""Burst: 5,000 orders in 10 seconds against a Pumble that allows 80 messages a minute: how long
until every order is visible in the channel, how many messages it took, and no 429.

Run from the repository root:

    .venv/bin/python -m bench.burst             # about 3.5 min
    .venv/bin/python -m bench.burst --quick     # 1,000 orders in 2 s: about 1.5 min
    .venv/bin/python -m bench.burst --orders 10000 --seconds 20
    .venv/bin/python -m bench.burst --quick --compare ../main   # also another checkout, A/B
    .venv/bin/python -m bench.burst --quick --sender both       # wrk, then the Python sender

What runs (all on this machine): the embedded Redis in a temp dir; ``pumble-bridge serve``
(gunicorn, its defaults); ``pumble-bridge worker`` (one process, the default; at the lower CPU
priority ``run`` gives its worker, ``--nice 15``, when the tree has the option) with the bridge's
default delivery settings (Pumble's published limits: 80 messages a minute; digests over 60 s of at
most 25 lines); the fake Pumble with ``--rate-limit 80`` (it answers 429 past 80 requests in any
sliding minute). The route renders the shipped ``order_created.j2``.

The sender posts the orders open loop, evenly over the burst (500 a second by default: order i
is due at i/500 s and is sent then, whatever the answers before it). By default the sender is
wrk, outside Python, with a Lua script that keeps the schedule (bench/wrk_sender.py: one C
event loop, about what a shop's network costs the machine); ``--sender python`` is the older
one, a pool of 64 Python threads in this process (bench/stack.py), which on 2 cores takes CPU
from the receiver and falls behind its schedule; ``--sender both`` bursts each on a fresh
stack, one after the other, and compares them. Each result says what the sender cost (CPU
seconds) and how late it sent (against the due time). An
order is *visible* when a message in the channel shows it: its own message ("🛒 New order #N ·
…"), or a line of a digest ("• 🛒 New order #N · …"); the fake records when it stored each message
(bench/stack.py), so "time until every order is visible" is the last such moment, counted from
the first order's due time. Checked: every order visible exactly once (not twice: alone and in a
digest), every webhook answered 202, and the fake's ``GET /_fake/stats`` ``rate_limited`` is 0.

Baseline: the floor the limit itself sets. With 25 lines a digest, N orders need at least
ceil(N/25) messages; at 80 messages in any 60 s, message k cannot be sent before
floor((k-1)/80) × 60 s, and the last cannot be sent before the last order arrived. The ratio
is the measured time (and messages) over that floor.

Acks: how long the receiver took to answer each webhook (p50, p99, max), counted from the
moment it was due (open loop: a late send counts against the receiver, never hides a slow
answer): Shopify counts a delivery failed after 5 s. With ``--compare DIR`` the whole
stack is built again from that checkout (Redis, fake, receiver and worker run its ``bridge``)
and bursts the same way, one after the other, each with the machine to itself; a table compares
them at the end.

Every run also appends its summary to bench/results/burst_history.jsonl, and the report lists
them all: a rare failure (an order shown twice) stays on record after a clean run.

Times are only reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: benchmark this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import stack, wrk_sender

SENDERS = ("wrk", "python")
PER_MINUTE = 80  # the fake's limit, and the bridge's default messages limit
MAX_ITEMS = 25  # the bridge's default digest.max_items


def floor_of(orders: int, burst_seconds: float, per_minute: int = PER_MINUTE,
             max_items: int = MAX_ITEMS) -> dict[str, float]:
    """The fewest messages, and the earliest the last one can be sent: not before the last
    order arrives, nor before the limit lets the last message go."""
    messages = math.ceil(orders / max_items)
    return {"messages": messages,
            "seconds": max(burst_seconds, 60.0 * ((messages - 1) // per_minute))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 orders in 2 s")
    parser.add_argument("--orders", type=int, help="orders in the burst (default 5000)")
    parser.add_argument("--seconds", type=float, help="length of the burst (default 10)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up waiting for the channel after this many seconds")
    parser.add_argument("--worker-nice", type=int, metavar="N",
                        help="the worker's nice value instead of the one run gives it")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="DIR",
                        help="also burst another checkout's bridge, after this one's "
                             "(repeatable)")
    parser.add_argument("--sender", choices=(*SENDERS, "both"), default="wrk",
                        help="who posts the orders: wrk (default), the Python thread pool, "
                             "or both, one after the other")
    parser.add_argument("--connections", type=int, metavar="N",
                        help="the wrk sender's connections (default: 1.5 s of the schedule, "
                             "at most 1,000)")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    senders = list(SENDERS) if args.sender == "both" else [args.sender]
    if "wrk" in senders and not wrk_sender.available():
        raise SystemExit("wrk is not on PATH (apt-get install wrk), or use --sender python")
    orders = args.orders or (1_000 if args.quick else 5_000)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    trees = {"this tree": stack.PACKAGE_ROOT,
             **{f"@{t.name}": t.resolve() for t in args.compare}}
    results = {}
    for case, tree in trees.items():
        for sender in senders:
            label = case if len(senders) == 1 else f"{case} · {sender}"
            stack.PACKAGE_ROOT = tree  # what the stack's children run (stack.child_env)
            if len(trees) * len(senders) > 1:
                print(f"\n=== {label}: {tree}", flush=True)
            name = "burst" if tree == trees["this tree"] else f"burst-{tree.name}"
            results[label] = burst(args, orders, seconds, sender,
                                   name if sender == "wrk" else f"{name}-{sender}")
    if len(results) > 1:
        print_comparison(results)
    return 1 if any(r["problems"] for r in results.values()) else 0


def print_comparison(results: dict[str, dict]) -> None:
    print(f"\n  {'':<22} {'ack p50':>8} {'p99':>8} {'max':>8} {'all visible':>12} "
          f"{'× floor':>8} {'messages':>9} {'429s':>5} {'problems':>9} {'sender CPU':>10} "
          f"{'late p99':>9}")
    for case, r in results.items():
        ack, sender = r["ack"], r["sender"]
        print(f"  {case:<22} {ack['p50_ms']:>6.0f}ms {ack['p99_ms']:>6.0f}ms "
              f"{ack['max_ms']:>6.0f}ms {r['all_visible_s']:>10.1f} s "
              f"{r['time_ratio'] or float('nan'):>7.2f}× {r['messages']:>9} "
              f"{r['rate_limited'] if r['rate_limited'] is not None else '?':>5} "
              f"{len(r['problems']):>9} {sender['cpu_s']:>8.2f} s "
              f"{sender['late_p99_ms']:>7.0f}ms")


def send_orders(sender: str, url: str, prepared: dict[int, tuple[bytes, dict[str, str]]],
                rate: float, folder: Path, connections: int | None,
                ) -> tuple[list[stack.Sent], dict]:
    """Every order posted open loop at ``rate`` by ``sender``: each order's times and answer,
    and what the sender cost and how late it sent."""
    if sender == "wrk":
        outcome = wrk_sender.send(f"{url}/webhooks/{stack.SOURCE}", prepared, rate, folder,
                                  connections)
        info = {"sender": "wrk", "connections": connections
                or wrk_sender.default_connections(rate), **wrk_sender.summary(outcome)}
        print(f"  {wrk_sender.describe(outcome)}", flush=True)
        return outcome.sent, info
    shop = stack.Shop(url)
    try:
        cpu = time.process_time()  # this process: the pool's threads (and the collector's)
        sent = shop.paced(prepared, rate)
        cpu = time.process_time() - cpu
    finally:
        shop.close()
    late = [s.sent - s.due for s in sent]
    return sent, {"sender": "python", "connections": shop.connections, "cpu_s": round(cpu, 3),
                  "late_p99_ms": round(1000 * stack.percentile(late, 99), 1),
                  "late_max_ms": round(1000 * max(late), 1)}


def cpu_by_process(box: stack.OneBox) -> dict[str, float]:
    """CPU seconds so far of the receiver (gunicorn's tree), the worker, Redis and the fake."""
    return {"receiver": box.receiver.cpu(), "worker": box.worker.cpu(),
            "redis": box.store.cpu(), "fake": box.fake.cpu()}


def acks_by_second(sent: list[stack.Sent], t0: float) -> list[dict[str, float]]:
    """Ack p50/p99/max of the orders due in each second of the burst: a latency that builds
    up second after second is a queue (too little CPU); one that spikes and falls, a stall."""
    seconds: dict[int, list[float]] = {}
    for s in sent:
        seconds.setdefault(int(s.due - t0), []).append(s.acked - s.due)
    return [{"second": k, "p50_ms": round(1000 * stack.percentile(v, 50)),
             "p99_ms": round(1000 * stack.percentile(v, 99)), "max_ms": round(1000 * max(v))}
            for k, v in sorted(seconds.items())]


def burst(args: argparse.Namespace, orders: int, seconds: float, sender: str,
          name: str) -> dict:
    """One burst on a fresh stack of the tree ``stack.PACKAGE_ROOT`` names: its result, also
    written to bench/results/NAME.json."""
    began = time.perf_counter()
    folder = stack.new_folder("bench-burst-")
    with contextlib.ExitStack() as cleanup:
        nice = stack.run_worker_nice() if args.worker_nice is None else args.worker_nice
        box = stack.one_box(
            cleanup, folder, limiter_off=False, fake_rate_limit=PER_MINUTE, collect_every=0.5,
            worker_nice=nice)
        store, fake, _config, receiver, worker, collector = box
        info = stack.machine(store.version)
        header = stack.print_header("burst", args.quick, stack.machine_line(info))
        print(f"stack:   serve (gunicorn {stack.SERVE_SHAPE}) · worker (1 process, nice {nice}, "
              f"default delivery settings: {PER_MINUTE} messages/min, digests of ≤ {MAX_ITEMS}) "
              f"· embedded redis-server {store.version} · fake Pumble --rate-limit {PER_MINUTE} "
              f"(faults: {fake.faults().get('rate_limit')})")
        print(f"burst:   {orders:,} signed 5,000-byte orders over {seconds:g} s "
              f"({orders / seconds:,.0f}/s, open loop), sent by {sender}", flush=True)

        numbers = range(1_000_001, 1_000_001 + orders)
        prepared = stack.Shop.prepare(numbers, f"burst-{stack.run_id()}")
        with stack.LoadMeter() as load:
            cpu_before = cpu_by_process(box)
            with stack.LoadMeter() as sending_load:
                sent, sending = send_orders(sender, receiver.url, prepared, orders / seconds,
                                            folder, args.connections)
            cpu_burst = {k: round(v - cpu_before[k], 2) for k, v in cpu_by_process(box).items()}
            cpu_burst["sender"] = sending["cpu_s"]
            t0 = min(s.due for s in sent)
            sent_for = max(s.sent for s in sent) - t0
            print(f"  sent {len(sent):,} in {sent_for:.1f} s; waiting for the channel",
                  flush=True)
            deadline = time.monotonic() + args.timeout
            last_report = time.monotonic()
            wanted = set(numbers)
            while time.monotonic() < deadline:
                collector.poll()
                visible = len(wanted & collector.first_seen.keys())
                if visible == orders:
                    break
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    print(f"  {time.time() - t0:6.0f} s: {visible:,} of {orders:,} visible in "
                          f"{len(collector.messages)} messages", flush=True)
                time.sleep(0.5)
            collector.poll()
        stats = fake.stats()
        seen = collector.first_seen
        visible = [n for n in numbers if n in seen]
        complete = len(visible) == orders
        all_visible_s = (max(seen[n] for n in visible) - t0) if visible else float("nan")
        messages = [(round(stored - t0, 3), count) for stored, count in collector.messages]
        digests = [count for _, count in messages if count > 1]
        acks = [s.acked - s.due for s in sent]
        statuses = stack.answer_counts(sent)
        repeated = sorted(set(collector.repeated))
        repeats = collector.repeats()
        retried = sum(s.attempts > 1 for s in sent)
        evidence = ""
        if repeated or len(visible) < orders:
            evidence = str(stack.keep_evidence("burst", fake, [
                worker.service, receiver.service, fake.service]).relative_to(
                    stack.BENCH_DIR.parent))
    floor = floor_of(orders, seconds)
    result = {
        "benchmark": "burst", "when": datetime.datetime.now().astimezone().isoformat(),
        "quick": args.quick, "machine": info, "header": header,
        "settings": {"orders": orders, "burst_seconds": seconds, "per_minute": PER_MINUTE,
                     "digest_max_items": MAX_ITEMS, "worker_processes": 1, "worker_nice": nice,
                     "body_bytes": stack.BODY_BYTES},
        "sent_over_s": round(sent_for, 2), "statuses": statuses, "sender": sending,
        "ack": {"p50_ms": round(1000 * stack.percentile(acks, 50), 1),
                "p99_ms": round(1000 * stack.percentile(acks, 99), 1),
                "max_ms": round(1000 * max(acks), 1)},
        "acks_by_second": acks_by_second(sent, t0),
        "cpu_while_sending_s": cpu_burst, "sending_load": sending_load.result.as_json(),
        "complete": complete, "visible": len(visible), "missing": orders - len(visible),
        "posted_twice": len(repeated), "repeats": repeats, "evidence": evidence,
        "resent_after_no_answer": retried, "all_visible_s": round(all_visible_s, 1),
        "messages": len(messages), "digests": len(digests),
        "orders_in_digests": sum(digests), "single_messages": len(messages) - len(digests),
        "largest_digest": max(digests, default=0),
        "messages_without_order": collector.others,
        "fake_stats": stats, "rate_limited": stats.get("rate_limited"),
        "floor": floor,
        "time_ratio": round(all_visible_s / floor["seconds"], 2) if floor["seconds"] else None,
        "messages_ratio": round(len(messages) / floor["messages"], 2),
        "timeline": messages,  # (stored since the first order was due, orders in the message)
        "load": load.result.as_json(),
        "took_s": round(time.perf_counter() - began, 1),
    }
    problems = []
    if not complete:
        problems.append(f"{orders - len(visible)} orders never visible")
    if repeated:
        problems.append(f"{len(repeated)} order(s) shown twice (e.g. #{repeated[0]}; "
                        f"evidence in {evidence})")
    if stats.get("rate_limited"):
        problems.append(f"{stats['rate_limited']} requests answered 429")
    if not stack.answers_ok(statuses):
        problems.append(f"answers {statuses}")
    result["problems"] = problems

    print(f"\n  {'':<44} {'time to all visible':>20} {'messages':>9} {'429s':>5}")
    print(f"  {'floor: ⌈N/25⌉ messages, 80 a minute [baseline]':<44} "
          f"{floor['seconds']:>18.0f} s {floor['messages']:>9} {0:>5}")
    print(f"  {'the bridge':<44} {all_visible_s:>18.1f} s {len(messages):>9} "
          f"{stats.get('rate_limited', '?'):>5}")
    ratio = f"{result['time_ratio']:.2f}×" if result["time_ratio"] else "—"
    print(f"  {'ratio to the floor':<44} {ratio:>20} {result['messages_ratio']:>8.2f}×")
    print(f"  {len(digests)} digests carried {sum(digests):,} orders (largest "
          f"{max(digests, default=0)}), {len(messages) - len(digests)} orders went alone; acks p50 "
          f"{result['ack']['p50_ms']} ms p99 {result['ack']['p99_ms']} ms max "
          f"{result['ack']['max_ms']} ms; sent over "
          f"{sent_for:.1f} s by {sender} ({sending['cpu_s']:.2f} CPU s, late by p99 "
          f"{sending['late_p99_ms']:.0f} ms); others {load.result.others_cores:.2f} cores")
    print(f"  while sending ({sending_load.result.wall:.1f} s, others "
          f"{sending_load.result.others_cores:.2f} cores), CPU s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in cpu_burst.items()))
    print("  acks by second of the burst, p50/p99 ms: " + " · ".join(
        f"{b['p50_ms']}/{b['p99_ms']}" for b in result["acks_by_second"]))
    for repeat in repeats:
        print(f"  order #{repeat['order']} is shown by:")
        for m in repeat["messages"]:
            print(f"    message {m['index']} at {m['stored'] - t0:.1f} s ({m['orders_in_it']} "
                  f"order(s)): {m['first_line']}")
    print("  checks: " + ("; ".join(problems) if problems else
                          f"all {orders:,} orders visible once, every webhook 202, no 429"))
    path = stack.write_result(name, result)
    with open(stack.RESULTS_DIR / "burst_history.jsonl", "a", encoding="utf-8") as history:
        history.write(json.dumps({k: result[k] for k in (
            "when", "quick", "all_visible_s", "messages", "digests", "single_messages",
            "rate_limited", "posted_twice", "missing", "problems", "evidence")} | {
            "orders": orders, "burst_seconds": seconds, "tree": info.get("tree", "?"),
            "sender": sender, "ack": result["ack"]}) + "\n")
    print(f"results: {path}")
    print(f"(took {time.perf_counter() - began:.1f} s)")
    return result


if __name__ == "__main__":
    sys.exit(main())
