"""Slow and idle connections do not starve the receiver (issue 16): while 256 connections send
headers a byte a second, stall in their body, idle after a keep-alive answer or send nothing
(each reopened as soon as the receiver closes it), signed webhooks are still answered within a
second at p99, and the receiver closes every kind of attacking connection.

About 20 s on two busy cores, so it runs only when asked:
``SLOW_CLIENTS=1 .venv/bin/pytest tests/test_slow_clients.py``.
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import threading
import time

import httpx
import pytest

from bridge.gunicorn_app import REQUEST_READ_TIMEOUT
from tests.conftest import signed_order
from tests.test_gunicorn_receiver import serving

pytestmark = pytest.mark.skipif(os.environ.get("SLOW_CLIENTS") != "1",
                                reason="runs only with SLOW_CLIENTS=1 (about 20 s)")

CONNECTIONS = 256
SLOW_HEADERS = b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\nX-Pad: " + b"a" * 4096
OPENINGS = {  # what each kind sends at once; the slow headers come one byte a second
    "slow headers": b"",
    "stalled body": b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"id\": ",
    "idle keep-alive": b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n",
    "silent": b"",
}


class Attack:
    """CONNECTIONS connections, an equal share of each kind, each reopened once closed."""

    def __init__(self, port: int):
        self.port = port
        self.closed = dict.fromkeys(OPENINGS, 0)  # closes seen, by kind
        self.sent: dict[socket.socket, int] = {}  # slow-header bytes sent so far
        kinds = list(OPENINGS)
        self.kinds = {}
        for n in range(CONNECTIONS):
            self.kinds[self.open(kinds[n % len(kinds)])] = kinds[n % len(kinds)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(1):
            self.step()

    def open(self, kind: str) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        connection.sendall(OPENINGS[kind])
        connection.setblocking(False)
        self.sent[connection] = 0
        return connection

    def step(self) -> None:
        """Reopen what the receiver closed; one more byte on each slow-header connection."""
        readable, _, _ = select.select(list(self.kinds), [], [], 0)
        for connection in readable:
            try:
                if connection.recv(65536):
                    continue  # an answer (the keep-alive one); the close comes later
            except BlockingIOError:
                continue
            except OSError:
                pass
            kind = self.kinds.pop(connection)
            del self.sent[connection]
            connection.close()
            self.closed[kind] += 1
            self.kinds[self.open(kind)] = kind
        for connection, kind in self.kinds.items():
            sent = self.sent[connection]
            if kind == "slow headers" and sent < len(SLOW_HEADERS):
                try:
                    connection.send(SLOW_HEADERS[sent:sent + 1])
                    self.sent[connection] = sent + 1
                except OSError:
                    pass  # closed: seen on the next step

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for connection in self.kinds:
            connection.close()


def test_signed_webhooks_are_answered_within_a_second_among_256_slow_connections(
        tmp_path, write_config, redis_url, queue_name, rq_queue):
    config = write_config(redis_url=redis_url, queue=queue_name)
    with serving(config, tmp_path) as served:  # serve's default workers and threads
        attack = Attack(int(served.url.rpartition(":")[2]))
        latencies, statuses = [], []
        try:
            started, number = time.monotonic(), 0
            while time.monotonic() - started < REQUEST_READ_TIMEOUT + 6:
                number += 1
                body, headers = signed_order(number, webhook_id=f"control-{number}")
                sent = time.monotonic()
                try:
                    response = httpx.post(f"{served.url}/webhooks/shop", content=body,
                                          headers={**headers, "Connection": "close"}, timeout=5)
                    statuses.append(response.status_code)
                except httpx.TimeoutException:
                    statuses.append(0)
                latencies.append(time.monotonic() - sent)
                time.sleep(0.1)
        finally:
            attack.close()
    assert len(attack.kinds) == CONNECTIONS
    assert statuses == [202] * len(statuses), statuses
    assert len(latencies) >= 50
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"p99 {p99:.3f} s over {len(latencies)} webhooks; closed by the receiver: "
          f"{attack.closed}")
    assert p99 < 1.0, (p99, sorted(latencies)[-5:])
    # Every kind was closed by the receiver at least once: none holds a connection for ever.
    assert all(attack.closed.values()), attack.closed
