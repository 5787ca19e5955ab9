"""The receiver's one write: a webhook accepted, with rq's records for its jobs written by hand.

One script (``scripts.ACCEPT``) dedupes the delivery, keeps the webhook, writes each new job as
rq's own unique enqueue writes one (its hash, its id on the queue, the queue in rq's set of
queues), with its thread root and its line, marks the delivery seen and records the activity
line. Written by hand, not through rq's public API: ``Job.create`` and ``Queue.enqueue_job`` in
a pipeline join our writes atomically only in a WATCH/MULTI transaction (three more round trips),
which took 2.35x the time per accept (531 against 226 µs; bench/accept_paths.py). rq is pinned to
a minor release (pyproject.toml), and tests/test_store.py builds a job through ``Queue.enqueue``
and compares it with ours, key by key and field by field: it fails the day rq's layout changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
import redis
from redis.exceptions import NoScriptError
from rq import Queue
from rq.job import Job
from rq.utils import now, utcformat

from bridge.store import scripts

# A job's fields that differ from one job to the next; the others are the template's.
PER_JOB = ("created_at", "enqueued_at", "data")


@dataclass(frozen=True)
class NewJob:
    """A job to write, and where it waits."""

    id: str
    call: tuple[str, tuple[Any, ...]]  # the function's dotted name and its arguments
    line: str  # the backlog it joins ("" for none), scored by ``received_at``
    received_at: float
    root: str = ""  # the thread root to mark expected, if none is there ("" for none)
    root_ttl: int = 0


@dataclass(frozen=True)
class Webhook:
    """The delivery accepted: its dedupe marker, the webhook kept (when ``record``)."""

    seen: str
    event: str
    window: int  # seconds a re-delivery is a duplicate (0: no dedupe)
    record: bytes = b""
    record_ttl: int = 0
    heard: str = ""  # the source's last-heard record, set to ``received_at`` ('' : none)
    received_at: float = 0.0


@dataclass(frozen=True)
class ListEntry:
    """A line for a capped Redis list (the activity record), pushed by the accept when the
    delivery is not one seen before."""

    key: str
    entry: bytes  # JSON
    keep: int


@dataclass(frozen=True)
class Tally:
    """What an accepted event adds to one summary's totals (``scripts.ACCEPT`` adds it)."""

    totals: str  # the hash of counts and amounts
    products: str  # the sorted set of quantities by product
    increments: tuple[tuple[str, int], ...]  # (field, by)
    quantities: tuple[tuple[str, int], ...]  # (product, quantity)


@dataclass(frozen=True)
class TallyCaps:
    """How far a summary's totals may grow: fields of its hash, products kept."""

    fields: int
    products: int


def _text(value: Any) -> Any:
    return value if isinstance(value, bytes | str) else str(value)


class Accept:
    """The accept script of one rq queue. ``template``: a job as rq's ``Job.create`` makes it,
    whose fields (all but ``PER_JOB``) every job written here shares."""

    def __init__(self, queue: Queue, template: Job, expected: bytes):
        self.queue = queue
        self._expected = expected
        self._script = queue.connection.register_script(scripts.ACCEPT)
        self._template = [field for name, value in template.to_dict().items()
                          if value is not None and name not in PER_JOB
                          for field in (name, _text(value))]

    def job_fields(self, call: tuple[str, tuple[Any, ...]]) -> list[Any]:
        """The job's hash as rq's own unique enqueue writes it (rq.scripts), but for the call,
        which is not zlib-compressed (rq reads either; compressing ~800 bytes saved little
        memory for ~10 µs a job)."""
        at = utcformat(now())
        data = orjson.dumps((call[0], None, call[1], {}))
        return [*self._template, "created_at", at, "enqueued_at", at, "data", data]

    def run(self, client: redis.Redis, webhook: Webhook | None, jobs: Sequence[NewJob],
            activity: ListEntry | None, count_replicas: bool,
            tallies: Sequence[Tally] = (), caps: TallyCaps = TallyCaps(0, 0)) -> list[Any]:
        """Run the script on the connection of ``client``, a single-connection client (the
        connection a WAIT after it must use). Answers as ``scripts.ACCEPT`` does."""
        keys: list[str] = [webhook.seen if webhook else "", webhook.event if webhook else "",
                           self.queue.key, self.queue.redis_queues_keys,
                           activity.key if activity else ""]
        args: list[Any] = [webhook.window if webhook else 0, webhook.record if webhook else "",
                           webhook.record_ttl if webhook else 0,
                           activity.entry if activity else "", activity.keep if activity else 0,
                           len(jobs), self._expected, "1" if count_replicas else ""]
        for job in jobs:
            keys += [self.queue.job_class.key_for(job.id), job.root, job.line]
            fields = self.job_fields(job.call)
            args += [job.id, job.root_ttl, job.received_at, len(fields) // 2, *fields]
        args += [caps.fields, caps.products, len(tallies)]
        for tally in tallies:
            keys += [tally.totals, tally.products]
            args += [len(tally.increments), *(part for pair in tally.increments for part in pair),
                     len(tally.quantities), *(part for pair in tally.quantities for part in pair)]
        keys.append(webhook.heard if webhook else "")
        args.append(webhook.received_at if webhook else 0)
        try:
            return self._evalsha(client.connection, keys, args)
        except NoScriptError:  # a restarted (or other) Redis: load it, once
            client.script_load(scripts.ACCEPT)
            return self._evalsha(client.connection, keys, args)

    def _evalsha(self, connection: redis.connection.AbstractConnection, keys: list[str],
                 args: list[Any]) -> list[Any]:
        """EVALSHA of the script, run as redis-py's ``execute_command`` runs a command (its
        retries, the connection dropped after each failure) but packed by hiredis at once:
        redis-py looks at and encodes the ~70 arguments one by one first, which cost more than
        the rest of the round trip. The same bytes go out (tests/test_store.py)."""
        command = [hiredis.pack_command(("EVALSHA", self._script.sha, len(keys), *keys, *args))]

        def send() -> list[Any]:
            connection.send_packed_command(command)
            return connection.read_response()

        return connection.retry.call_with_retry(send, lambda _error: connection.disconnect())
