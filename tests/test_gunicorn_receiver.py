"""The receiver as `pumble-bridge serve` runs it (gunicorn, its master and a worker process),
over real HTTP: the last valid config survives SIGHUP and a worker's death; a body over
receiver.max_body_bytes is refused whether or not it is chunked, and what is left unread closes
the connection cleanly; a captured body re-sent naming another shop is refused."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bridge.cli import SERVE_WORKERS
from bridge.gunicorn_app import ANSWER_TIMEOUT
from bridge.sources import woocommerce
from bridge.sources.shopify import sign
from tests.conftest import TEST_KEY, TEST_SECRET, free_port, signed_order, wait_until
from tests.test_e2e import ROOT, clean_env
from tests.test_metrics import parse, value
from tests.test_reload import bump


class Served:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process = process
        self.url = url
        self.log = log

    def workers(self) -> set[int]:
        pid = self.process.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def replaced(self, old: set[int]) -> bool:
        """Every worker of ``old`` gone, and a new one serving."""
        now = self.workers()
        return bool(now) and not now & old and self.ready().status_code == 200

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", headers={"Connection": "close"})


@contextlib.contextmanager
def serving(config: Path, directory: Path, *options: str,
            environ: dict[str, str] | None = None) -> Iterator[Served]:
    """`pumble-bridge serve` of ``config`` on a free port until the block ends (with
    ``environ`` added to its environment)."""
    port, log = free_port(), directory / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--config", str(config), "serve", *options,
             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
            env=clean_env(BRIDGE_DATA_DIR=str(directory / "data"), **(environ or {})),
            start_new_session=True)
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: served.ready().status_code == 200, "serve to start")
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@pytest.fixture
def serve(tmp_path, write_config, redis_url, queue_name) -> Iterator[tuple[Served, Path]]:
    """`pumble-bridge serve --workers 1` on a free port (one worker: every request meets it)."""
    config = write_config(redis_url=redis_url, queue=queue_name)
    with serving(config, tmp_path, "--workers", "1") as served:
        yield served, config


@pytest.mark.parametrize(("environ", "options", "processes"), [
    ({}, (), SERVE_WORKERS),
    ({"WEB_CONCURRENCY": "2"}, (), 2),  # a Procfile platform's, for the machine's size
    ({"WEB_CONCURRENCY": "2"}, ("--workers", "3"), 3),
])
def test_serve_takes_its_processes_from_the_flag_then_web_concurrency(
        environ, options, processes, tmp_path, write_config, redis_url, queue_name):
    config = write_config(redis_url=redis_url, queue=queue_name)
    with serving(config, tmp_path, *options, environ=environ) as served:
        wait_until(lambda: len(served.workers()) == processes, f"{processes} processes")


def channel_of(served: Served, rq_queue, number: int) -> str:
    """The channel the served config routes a new order to (the job it enqueued says)."""
    body, headers = signed_order(number, webhook_id=f"w-{time.time_ns()}")
    response = httpx.post(f"{served.url}/webhooks/shop", content=body,
                          headers={**headers, "Connection": "close"})
    assert response.status_code == 202, response.text
    return rq_queue.get_jobs()[-1].args[0]["channel"]


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))
    bump(path)


def test_sighup_and_a_new_worker_serve_the_last_valid_config(serve, rq_queue):
    served, config = serve
    assert channel_of(served, rq_queue, 1) == "orders"

    edit(config, "channel: orders", "channel: sales")  # v2, valid
    wait_until(lambda: channel_of(served, rq_queue, 2) == "sales", "v2 in force")

    workers = served.workers()
    edit(config, "channel: sales", "chanel: sales")  # v3, invalid
    wait_until(lambda: "config_refused" in served.ready().json(), "v3 refused")
    wait_until(lambda: served.replaced(workers), "the workers restarted")
    assert "did you mean 'channel'" in served.ready().json()["config_refused"]
    assert channel_of(served, rq_queue, 3) == "sales"
    metrics = parse(httpx.get(f"{served.url}/metrics").text)
    assert value(metrics, "pumble_bridge_config_valid") == 0

    workers = served.workers()
    served.process.send_signal(signal.SIGHUP)  # what `systemctl reload` does
    wait_until(lambda: served.replaced(workers), "new workers after SIGHUP")
    assert channel_of(served, rq_queue, 4) == "sales"
    assert "config_refused" in served.ready().json()

    workers = served.workers()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: served.replaced(workers), "a worker in place of the killed one")
    assert channel_of(served, rq_queue, 5) == "sales"
    assert "config_refused" in served.ready().json()

    refusals = [line for line in served.log.read_text().splitlines()
                if "changed but is not valid" in line]
    assert len(refusals) == 1, refusals  # the master looked, once; no worker read the file

    workers = served.workers()
    edit(config, "chanel: sales", "channel: shipping")  # fixed: in force, no longer reported
    wait_until(lambda: served.replaced(workers), "the workers restarted")
    assert channel_of(served, rq_queue, 6) == "shipping"
    assert "config_refused" not in served.ready().json()


# -- bodies over receiver.max_body_bytes (1 MiB by default) ---------------------------------------

LIMIT = 1024 * 1024


def post_chunked(served: Served, size: int, signed: int) -> int:
    """POST a Shopify order padded with spaces to ``size`` bytes, chunked (no Content-Length),
    its signature over the first ``signed`` bytes; the answer's status. Stops sending once the
    answer came (a refused body is never read to its end)."""
    body, headers = signed_order(7001, webhook_id=f"w-{time.time_ns()}")
    body = body.ljust(size)
    headers["X-Shopify-Hmac-Sha256"] = sign(TEST_SECRET.encode(), body[:signed])
    port = int(served.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(("POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n"
                            "Transfer-Encoding: chunked\r\n"
                            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                            + "\r\n").encode())
        with contextlib.suppress(OSError):  # a server that stopped reading: the answer counts
            for start in range(0, size, 65536):
                if select.select([connection], [], [], 0)[0]:
                    break  # answered already
                piece = body[start:start + 65536]
                connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                connection.sendall(b"0\r\n\r\n")
        status_line = connection.makefile("rb").readline()
    return int(status_line.split()[1])


def test_a_body_over_the_limit_is_413_chunked_or_not(serve, rq_queue):
    served, _config = serve
    assert post_chunked(served, LIMIT, LIMIT) == 202  # at the limit: read whole, accepted
    assert post_chunked(served, LIMIT + 1, LIMIT + 1) == 413
    # Signed over the first MiB only: Werkzeug used to cut the body there and accept it.
    assert post_chunked(served, 2 * LIMIT, LIMIT) == 413
    assert post_chunked(served, 100 * LIMIT, 100 * LIMIT) == 413  # used to be 401
    assert len(rq_queue.get_jobs()) == 1

    body, headers = signed_order(7002)
    for size, status in ((LIMIT, 202), (LIMIT + 1, 413)):  # with a Content-Length
        padded = body.ljust(size)
        signed = {**headers, "X-Shopify-Hmac-Sha256": sign(TEST_SECRET.encode(), padded),
                  "X-Shopify-Webhook-Id": f"w-{size}"}
        response = httpx.post(f"{served.url}/webhooks/shop", content=padded, headers=signed)
        assert response.status_code == status, response.text


# -- connections: what is left unread closes them, cleanly ----------------------------------------

def answer_of(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one answer read off ``connection``."""
    reader = connection.makefile("rb")
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline().decode()) not in ("\r\n", ""):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def closed_cleanly(connection: socket.socket) -> bool:
    """The server's end of ``connection`` closed with a FIN (not a reset) within 5 s."""
    connection.settimeout(5)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return False


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_refused_body_left_unread_closes_the_connection_cleanly(serve, rq_queue, framing):
    served, _config = serve
    body, headers = signed_order(7003)
    length = (f"Content-Length: {2 * LIMIT}\r\n" if framing == "content-length"
              else "Transfer-Encoding: chunked\r\n")
    part = body.ljust(LIMIT + 64 * 1024)  # a chunked body is refused once past the limit
    sent = part if framing == "content-length" else b"%x\r\n%s\r\n" % (len(part), part)
    port = int(served.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall((f"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n{length}"
                            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                            + "\r\n").encode() + sent)  # and no more: the rest never comes
        status, answer_headers, answer = answer_of(connection)
        assert status == 413, answer
        assert answer_headers["connection"] == "close"
        assert b"body larger than" in answer
        assert closed_cleanly(connection)
    assert rq_queue.get_jobs() == []


def test_headers_that_do_not_end_are_refused_without_waiting_for_them(serve):
    served, _config = serve
    port = int(served.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /webhooks/shop HTTP/1.1\r\nX-Pad: " + b"a" * 70_000)
        status, answer_headers, _answer = answer_of(connection)
        assert (status, answer_headers["connection"]) == (431, "close")
        assert closed_cleanly(connection)


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(serve, rq_queue):
    served, _config = serve
    body, headers = signed_order(7005)
    port = int(served.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"".join([
            b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n",
            b"Expect: 100-continue\r\n",
            b"Content-Length: %d\r\n" % len(body),
            *(f"{k}: {v}\r\n".encode() for k, v in headers.items()), b"\r\n"]))
        reader = connection.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"  # before any of the body
        assert reader.readline() == b"\r\n"
        connection.sendall(body)
        statuses = [int(line.split()[1]) for line in reader if line.startswith(b"HTTP/1.1")]
    assert statuses[-1] == 202  # (after gunicorn's own 100 Continue, which a client skips)
    assert len(rq_queue.get_jobs()) == 1


def test_a_kept_alive_connections_next_request_is_read_as_it_comes(serve, rq_queue):
    """The worker reads a kept-alive connection's next request as soon as it comes, and waits
    on its event loop for what is still missing: here the body, which the headers ask to be
    told to send. The requests after it on the connection are answered as well."""
    served, _config = serve
    port = int(served.url.rpartition(":")[2])

    def head(number: int, *extra: bytes) -> tuple[bytes, bytes]:
        body, headers = signed_order(number, webhook_id=f"w-{number}-{time.time_ns()}")
        return b"".join([b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n", *extra,
                         b"Content-Length: %d\r\n" % len(body),
                         *(f"{k}: {v}\r\n".encode() for k, v in headers.items()), b"\r\n"]), body

    def final_status(reader) -> int:  # the next answer that is not a "100 Continue"
        while True:
            status = int(reader.readline().split()[1])
            headers = {}
            while (line := reader.readline().decode()) not in ("\r\n", ""):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            reader.read(int(headers.get("content-length", 0)))
            if status != 100:
                return status

    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        reader = connection.makefile("rb")
        connection.sendall(b"".join(head(7006)))
        assert final_status(reader) == 202
        headers, body = head(7007, b"Expect: 100-continue\r\n")
        connection.sendall(headers)  # and no body yet
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        connection.sendall(body)
        assert final_status(reader) == 202
        connection.sendall(b"".join(head(7008)))
        assert final_status(reader) == 202
    assert len(rq_queue.get_jobs()) == 3


def post_request(number: int) -> bytes:
    """A signed order webhook as one HTTP/1.1 request, its own webhook id."""
    body, headers = signed_order(number, webhook_id=f"w-{number}-{time.time_ns()}")
    return b"".join([b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n",
                     b"Content-Length: %d\r\n" % len(body),
                     *(f"{k}: {v}\r\n".encode() for k, v in headers.items()), b"\r\n", body])


def test_requests_pipelined_on_one_connection_are_all_answered_in_order(serve, rq_queue):
    """With one thread (serve's default) the event loop runs each request itself; a request
    already here behind the one it finishes runs on the loop's next turn, not inside it (300
    deep would pass Python's recursion limit)."""
    served, _config = serve
    port = int(served.url.rpartition(":")[2])
    numbers = range(8000, 8300)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"".join(post_request(number) for number in numbers))
        reader = connection.makefile("rb")
        statuses = []
        for _number in numbers:
            statuses.append(int(reader.readline().split()[1]))
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.partition(b":")[2])
            reader.read(length)
    assert statuses == [202] * len(numbers)
    orders = [job.args[0]["text"] for job in rq_queue.get_jobs()]
    assert len(orders) == len(numbers)
    assert all(f"#{number}" in text for number, text in zip(numbers, orders, strict=True))


def test_a_client_that_reads_no_answers_is_closed_after_the_answer_timeout(serve, rq_queue):
    """A client that sends request after request and reads none of the answers fills every
    buffer on the way, until sending its next answer would wait: the receiver closes it after
    ANSWER_TIMEOUT rather than wait for ever, and goes on answering."""
    served, _config = serve
    port = int(served.url.rpartition(":")[2])
    attacker = socket.socket()
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # buffers fill sooner
    attacker.connect(("127.0.0.1", port))
    attacker.settimeout(ANSWER_TIMEOUT + 10)
    requests = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n" * 200
    started = time.monotonic()
    with attacker, pytest.raises((ConnectionResetError, BrokenPipeError)):  # it closed
        while time.monotonic() - started < 60:
            attacker.sendall(requests)
    body, headers = signed_order(8400, webhook_id=f"w-8400-{time.time_ns()}")
    sent = time.monotonic()
    response = httpx.post(f"{served.url}/webhooks/shop", content=body, headers=headers,
                          timeout=ANSWER_TIMEOUT + 5)
    assert response.status_code == 202
    assert time.monotonic() - sent < 1
    assert "closed a connection that read no answer for 2 s" in served.log.read_text()


def test_a_refused_body_read_whole_keeps_the_connection(serve, rq_queue):
    served, _config = serve
    body, headers = signed_order(7004)

    def request(source: str) -> bytes:
        return b"".join([f"POST /webhooks/{source} HTTP/1.1\r\nHost: bridge\r\n".encode(),
                         b"Content-Length: %d\r\n" % len(body),
                         *(f"{k}: {v}\r\n".encode() for k, v in headers.items()),
                         b"\r\n", body])

    port = int(served.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request("nowhere"))
        status, answer_headers, _answer = answer_of(connection)
        assert (status, answer_headers["connection"]) == (404, "keep-alive")
        connection.sendall(request("shop"))  # the next request on it is answered
        status, _answer_headers, answer = answer_of(connection)
        assert status == 202, answer
    assert len(rq_queue.get_jobs()) == 1


# -- a captured body re-sent with other unsigned headers ------------------------------------------

WOO_BODY = (Path(__file__).parent / "payloads" / "woocommerce" / "order_created.json").read_bytes()


@pytest.fixture
def serve_two_shops(tmp_path, redis_url, queue_name) -> Iterator[Served]:
    """A Shopify source with shop_domain and a WooCommerce one with site_url, every order
    event routed."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "pumble": {"base_url": "http://127.0.0.1:9", "api_key": TEST_KEY},
        "redis": {"url": redis_url, "queue": queue_name},
        "sources": {
            "shop": {"type": "shopify", "secret": TEST_SECRET,
                     "shop_domain": "demo-shop.myshopify.com"},
            "woo": {"type": "woocommerce", "secret": TEST_SECRET,
                    "site_url": "https://shop.example.com"}},
        "routes": [{"name": name, "match": {"event": [f"order.{name}"]}, "channel": "orders",
                    "template": f"order_{name}.j2"} for name in ("created", "cancelled")],
    }))
    with serving(config, tmp_path, "--workers", "1") as served:
        yield served


def test_a_replayed_body_naming_another_shop_is_refused(serve_two_shops, rq_queue):
    served = serve_two_shops
    body, headers = signed_order(5001)
    response = httpx.post(f"{served.url}/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 202, response.text
    [job] = rq_queue.get_jobs()
    assert "https://admin.shopify.com/store/demo-shop/orders/" in job.args[0]["text"]

    # The replay: the signed body with a new id, another topic and another shop.
    replayed = {**headers, "X-Shopify-Webhook-Id": "w-replayed",
                "X-Shopify-Topic": "orders/cancelled", "X-Shopify-Shop-Domain": "evil.example"}
    response = httpx.post(f"{served.url}/webhooks/shop", content=body, headers=replayed)
    assert response.status_code == 401
    assert response.json() == {
        "error": "X-Shopify-Shop-Domain 'evil.example' is not this source's shop_domain"}

    woo = {"Content-Type": "application/json", "X-WC-Webhook-Topic": "order.created",
           "X-WC-Webhook-Source": "https://shop.example.com/",
           "X-WC-Webhook-Delivery-ID": "d-1",
           "X-WC-Webhook-Signature": woocommerce.sign(TEST_SECRET.encode(), WOO_BODY)}
    response = httpx.post(f"{served.url}/webhooks/woo", content=WOO_BODY, headers=woo)
    assert response.status_code == 202, response.text
    response = httpx.post(f"{served.url}/webhooks/woo", content=WOO_BODY, headers={
        **woo, "X-WC-Webhook-Delivery-ID": "d-replayed", "X-WC-Webhook-Topic": "order.updated",
        "X-WC-Webhook-Source": "https://evil.example/"})
    assert response.status_code == 401
    assert "is not this source's site_url" in response.json()["error"]
    links = [line for job in rq_queue.get_jobs() for line in job.args[0]["text"].splitlines()
             if "https://" in line]
    assert len(rq_queue.get_jobs()) == 2
    assert not [link for link in links if "evil.example" in link]
    assert any("https://shop.example.com/wp-admin/post.php?post=727" in link for link in links)
