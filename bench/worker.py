"""Delivery throughput: ``pumble-bridge worker`` draining queued orders into the fake Pumble, next
to a bare keep-alive httpx loop posting the same number of messages to the same fake, in the same
run.

Run from the repository root:

    .venv/bin/python -m bench.worker                    # about 2 min
    .venv/bin/python -m bench.worker --quick            # about 40 s, rougher numbers
    .venv/bin/python -m bench.worker --compare ../old   # also another checkout's worker

What runs, all on this machine: the embedded Redis in a temp dir; the fake Pumble (its rate limit
off) in its own process; the bridge's config lifts its own rate limiter out of reach, so the
limiter's Redis round trips are paid but nothing waits and nothing becomes a digest.

Each round, for each case, in a rotating order:
- ``loop`` [baseline]: one ``httpx.Client`` (keep-alive) in this process POSTs ``/sendMessage``
  with a rendered-order-sized text, one after the other;
- ``worker``: ``--jobs`` signed orders are first accepted by ``pumble-bridge serve`` (not timed),
  then ``pumble-bridge worker --burst`` (one process, the default) delivers them and exits;
- ``worker@DIR`` (with ``--compare DIR``): the same, run from another checkout.

Reported: messages/s from the first to the last message the fake stored (its own clock), the
ratio to the loop, the sender's CPU per message (the worker's whole process tree, less what
starting and stopping on an empty queue costs; the loop: this process), Redis CPU and commands
per message, and the cores the rest of the machine kept busy. Each worker round is checked at the
fake: every order exactly once. Times are only reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import stack

BASELINE = "loop"


@dataclass
class Round:
    case: str
    rate: float  # messages/s
    cpu_ms: float  # sender CPU per message
    redis_cpu_ms: float
    redis_commands: float
    others_cores: float
    problems: list[str]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain_rate(fake: stack.Fake, expected: int, timeout: float) -> tuple[float, list[str]]:
    """Messages/s between the first and the last message the fake stored, and what is wrong."""
    seen: list[stack.Seen] = []
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        seen += fake.seen()
    numbers = [n for s in seen for n in s.orders]
    problems = []
    if len(numbers) != expected or len(set(numbers)) != len(numbers):
        problems.append(f"{len(set(numbers))} orders stored ({len(numbers)} times) of {expected}")
    span = (seen[-1].stored - seen[0].stored) if len(seen) > 1 else float("nan")
    return (len(seen) - 1) / span, problems


def run_loop(fake: stack.Fake, store: stack.Store, jobs: int) -> Round:
    before = (store.cpu(), store.commands())
    fake.seen()
    with stack.LoadMeter() as load:
        cpu = stack.send_loop(fake.url, jobs)
    rate, _ = drain_rate(fake, jobs, 30)
    return Round(BASELINE, rate, 1000 * cpu / jobs, 1000 * (store.cpu() - before[0]) / jobs,
                 sum(stack.commands_between(before[1], store.commands()).values()) / jobs,
                 load.result.others_cores, [])


def worker_cost(store: stack.Store, config: Path, pythonpath: Path) -> float:
    """CPU seconds a worker spends starting and stopping on an empty queue."""
    before = children_cpu()
    burst_worker(store, config, pythonpath, "worker-empty")
    return children_cpu() - before


def burst_worker(store: stack.Store, config: Path, pythonpath: Path, name: str) -> None:
    service = stack.Service(name, [sys.executable, "-m", "bridge", "--config", str(config),
                                   "worker", "--burst"],
                            stack.bridge_env(store, name, PYTHONPATH=str(pythonpath)),
                            store.folder)
    if service.process.wait(timeout=600) != 0:
        raise SystemExit(f"{name} failed:\n{service.tail()}")
    service.stop()


def run_worker(case: str, tree: Path, box: tuple[stack.Store, stack.Fake, Path], jobs: int,
               first: int) -> Round:
    store, fake, config = box
    idle = worker_cost(store, config, tree)
    receiver = stack.Receiver(store, config, f"receiver-{case}", env={"PYTHONPATH": str(tree)})
    shop = stack.Shop(receiver.url, connections=16)
    sent = shop.closed_loop(stack.Shop.prepare(range(first, first + jobs), stack.run_id()), 16)
    shop.close()
    receiver.stop()
    problems = [] if stack.answers_ok(stack.answer_counts(sent)) else ["not every order accepted"]
    fake.seen()
    before = (children_cpu(), store.cpu(), store.commands())
    with stack.LoadMeter() as load:
        burst_worker(store, config, tree, f"worker-{case}")
    rate, missing = drain_rate(fake, jobs, 30)
    return Round(case, rate, 1000 * (children_cpu() - before[0] - idle) / jobs,
                 1000 * (store.cpu() - before[1]) / jobs,
                 sum(stack.commands_between(before[2], store.commands()).values()) / jobs,
                 load.result.others_cores, problems + missing)


def print_summary(rounds: list[Round], cases: list[str]) -> None:
    def median(case: str, field: str) -> float:
        return stack.median(getattr(r, field) for r in rounds if r.case == case)

    loop = median(BASELINE, "rate")
    print(f"\n{'case':<24} {'msgs/s':>8} {'× loop':>7} {'CPU ms/msg':>10} {'× loop':>7}"
          f" {'redis ms/msg':>12} {'cmds/msg':>8} {'others':>6}")
    for case in cases:
        print(f"{case:<24} {median(case, 'rate'):>8,.0f} {median(case, 'rate') / loop:>6.2f}× "
              f"{median(case, 'cpu_ms'):>10.2f} "
              f"{median(case, 'cpu_ms') / median(BASELINE, 'cpu_ms'):>6.1f}× "
              f"{median(case, 'redis_cpu_ms'):>12.3f} {median(case, 'redis_commands'):>8.1f} "
              f"{median(case, 'others_cores'):>6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one round")
    parser.add_argument("--jobs", type=int, help="messages a round (default 3000; --quick 600)")
    parser.add_argument("--rounds", type=int, help="rounds of every case (default 3; --quick 1)")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="DIR",
                        help="also run this checkout's worker (repeatable)")
    args = parser.parse_args(argv)
    stack.unwind_on_sigterm()
    jobs = args.jobs or (600 if args.quick else 3000)
    trees = {"worker": stack.PACKAGE_ROOT, **{f"worker@{t.name}": t.resolve()
                                              for t in args.compare}}
    cases = [BASELINE, *trees]
    rounds: list[Round] = []
    folder = stack.new_folder("bench-wrk-")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        store = stack.Store(folder)
        cleanup.callback(store.close)
        fake = stack.Fake(folder)
        cleanup.callback(fake.stop)
        config = stack.write_config(folder, fake.url, limiter_off=True)
        stack.print_header("worker", args.quick, stack.machine_line(stack.machine(
            store.version)))
        for index in range(args.rounds or (1 if args.quick else 3)):
            for case in cases[index % len(cases):] + cases[:index % len(cases)]:
                first = 100_000 * (len(rounds) + 1)
                result = (run_loop(fake, store, jobs) if case == BASELINE else
                          run_worker(case, trees[case], (store, fake, config), jobs, first))
                rounds.append(result)
                print(f"  [{index + 1}] {case:<24} {result.rate:8,.0f} msgs/s  "
                      f"{result.cpu_ms:6.2f} CPU ms/msg  others {result.others_cores:.2f}"
                      + ("  FAILED: " + "; ".join(result.problems) if result.problems else ""),
                      flush=True)
    print_summary(rounds, cases)
    return 1 if any(r.problems for r in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
