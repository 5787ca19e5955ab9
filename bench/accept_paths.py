"""The receiver's accept, two ways, in one run: the store's one Lua script (bridge.store.accept,
rq's job records written by hand) against rq's public API kept atomic with WATCH/MULTI (WATCH the
seen marker and the job, read them, then in one MULTI: our writes and ``Queue.enqueue_job(job,
pipeline=)`` of a job made by ``Job.create``).

    .venv/bin/python -m bench.accept_paths             # about 20 s
    .venv/bin/python -m bench.accept_paths --accepts 500 --rounds 3

Each accept is a new delivery of one webhook with one notification (a thread's first message,
in a route's line), its webhook kept, a dedupe window, an activity line: the receiver's common
case. Both paths run on one embedded Redis (unix socket, AOF everysec, as deployed), on one
connection held by the thread (as the receiver's threads do), alternating in rounds; reported:
the median over rounds of µs per accept, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import redis
from rq.job import Job, JobStatus

from bridge.notification import Notification
from bridge.queue import (
    CRASH_RETRIES,
    DELIVER,
    FAILURE_TTL,
    RESULT_TTL,
    NotificationQueue,
    Received,
    connect,
    job_id,
)
from bridge.redis_embedded import EmbeddedRedis
from bridge.store.accept import ListEntry
from bridge.threads import EXPECTED

WINDOW = 3 * 24 * 3600
BODY = b'{"id": 1001, "note": "' + b"x" * 4900 + b'"}'


def notification(run: str, number: int) -> Notification:
    return Notification(source="shop", event_id=f"{run}-{number}", event_type="order.created",
                        route="orders", channel="orders", text=f"🛒 order #{number}",
                        received_at=time.time(), thread_key=f"order:{run}-{number}",
                        starts_thread=True)


def received(one: Notification) -> Received:
    return Received(source=one.source, event_id=one.event_id, event_type=one.event_type,
                    headers={"X-Shopify-Topic": "orders/create"}, body=BODY)


def activity(queue: NotificationQueue, one: Notification) -> ListEntry:
    line = {"event_id": one.event_id, "source": one.source, "type": one.event_type,
            "notifications": [{"route": one.route, "channel": one.channel,
                               "job_id": job_id(queue.rq.name, one)}], "terms": one.event_id}
    return ListEntry(queue.keys.activity(), orjson.dumps(line), 2000)


def by_script(queue: NotificationQueue, one: Notification) -> None:
    queue.accept([one], received=received(one), dedupe_window=WINDOW,
                 activity=activity(queue, one))


def by_public_api(queue: NotificationQueue, client: redis.Redis, one: Notification) -> None:
    """The same writes, atomic by WATCH/MULTI/EXEC, rq's job through its public API."""
    seen = queue.keys.seen(one.source, one.event_id)
    new_id = job_id(queue.rq.name, one)
    line = activity(queue, one)
    record = orjson.dumps({"source": one.source, "event_id": one.event_id,
                           "type": one.event_type, "headers": received(one).headers,
                           "body": BODY.decode()})
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(seen, Job.key_for(new_id))
                if pipe.exists(seen) or pipe.exists(Job.key_for(new_id)):
                    pipe.unwatch()
                    return
                job = Job.create(DELIVER, args=[one.to_payload()], connection=client,
                                 serializer=queue.rq.serializer, id=new_id,
                                 status=JobStatus.QUEUED, origin=queue.rq.name,
                                 description="deliver", timeout=queue.delivery.job_timeout,
                                 result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                                 retry=CRASH_RETRIES)
                pipe.multi()
                pipe.set(queue.keys.event(one.source, one.event_id), record,
                         ex=queue.delivery.max_age + 3600)
                queue.rq.enqueue_job(job, pipeline=pipe)
                pipe.set(queue.roots.key(one), EXPECTED, ex=queue.delivery.max_age, nx=True)
                pipe.zadd(queue.backlog.key(one), {new_id: one.received_at})
                pipe.set(seen, 1, ex=WINDOW)
                pipe.lpush(line.key, line.entry)
                pipe.ltrim(line.key, 0, line.keep - 1)
                pipe.info("replication")  # the online replicas, as the script counts them
                pipe.execute()
                return
            except redis.WatchError:
                continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--accepts", type=int, default=1000, help="per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        embedded = EmbeddedRedis(Path(folder))
        try:
            queue = NotificationQueue(connect(embedded.start()), "bench-accept")
            client = queue._thread_client()  # the receiver's way: one connection a thread
            paths = {"script": lambda one: by_script(queue, one),
                     "public API": lambda one: by_public_api(queue, client, one)}
            times: dict[str, list[float]] = {name: [] for name in paths}
            for round_ in range(options.rounds + 1):  # the first round warms up
                for name, accept in (paths.items() if round_ % 2 else
                                     reversed(paths.items())):
                    batch = [notification(f"{name}-{round_}", n)
                             for n in range(options.accepts)]
                    started = time.perf_counter()
                    for one in batch:
                        accept(one)
                    if round_:
                        times[name].append((time.perf_counter() - started) / options.accepts)
                queue.rq.connection.flushall()
        finally:
            embedded.stop()
    load = os.getloadavg()[0]
    script = statistics.median(times["script"])
    for name, per_accept in times.items():
        median = statistics.median(per_accept)
        print(f"{name:>10}: {median * 1e6:7.1f} µs/accept ({1 / median:7.0f}/s), "
              f"{median / script:.2f}x the script's")
    print(f"load average (1 min) {load:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
