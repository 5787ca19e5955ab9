"""The keep-alive path to Pumble (bridge/pumble_http.py) over real sockets: connections kept
and reused, never reused once the server closed them, TLS, and threads sharing one client."""

import shutil
import socket
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bridge.pumble import PumbleClient, TransientError
from tests.conftest import TEST_KEY

ANSWER = b'{"id":"%024d","channelId":"c0ffee"}'


class CountingServer:
    """Answers every request 200 with a message ref, counting connections and requests; closes a
    connection after ``close_after`` answers, saying so (``Connection: close``) or not (as a
    server's keep-alive timeout does)."""

    def __init__(self, *, close_after: int = 0, say_close: bool = False,
                 tls: ssl.SSLContext | None = None, answer_when: threading.Event | None = None
                 ) -> None:
        self.close_after, self.say_close, self.tls = close_after, say_close, tls
        self.answer_when = answer_when  # each answer waits for it
        self.connections = self.requests = 0
        self.closed, self.received = threading.Semaphore(0), threading.Semaphore(0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.connections += 1
            with conn, conn.makefile("rb") as reader:
                self._answer(conn, reader)
        except (OSError, ssl.SSLError):
            pass  # a client that refused our certificate
        self.closed.release()

    def _answer(self, conn: socket.socket, reader) -> None:
        for answered in range(1, 1_000_000):
            if not reader.readline():
                return
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            reader.read(length)
            self.requests += 1
            self.received.release()
            if self.answer_when and not self.answer_when.wait(timeout=10):
                return
            last = answered == self.close_after
            body = ANSWER % self.requests
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n%s\r\n%s"
                         % (len(body), b"Connection: close\r\n" if last and self.say_close
                            else b"", body))
            if last:
                return

    def stop(self) -> None:
        self._listener.close()


@pytest.fixture
def server_factory():
    servers: list[CountingServer] = []

    def make(**kwargs) -> CountingServer:
        servers.append(CountingServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def test_requests_one_after_another_share_one_connection(server_factory):
    server = server_factory()
    with PumbleClient(TEST_KEY, server.url) as client:
        ids = [client.send_message("orders", f"order {n}").id for n in range(20)]
    assert ids == [f"{n:024d}" for n in range(1, 21)]
    assert (server.connections, server.requests) == (1, 20)


def test_a_started_send_is_on_its_way_before_its_answer_is_asked_for(server_factory):
    """What a run does while Pumble takes a message: the send is out, the answer read later."""
    answer_now = threading.Event()
    server = server_factory(answer_when=answer_now)
    with PumbleClient(TEST_KEY, server.url) as client:
        answer = client.start_reply("root-id", "order 1")  # returns with no answer given yet
        assert server.received.acquire(timeout=5)  # the server has the whole request
        answer_now.set()
        assert answer().id == f"{1:024d}"
        assert client.start_message("orders", "order 2")().id == f"{2:024d}"
    assert (server.connections, server.requests) == (1, 2)


@pytest.mark.parametrize("say_close", [False, True], ids=["closed-while-idle", "said-close"])
def test_a_connection_the_server_closed_is_never_sent_on_again(server_factory, say_close):
    """Sending on a closed keep-alive connection would fail after sending: an ambiguous write,
    which the worker would have to look up in Pumble. The client opens a new one instead."""
    server = server_factory(close_after=1, say_close=say_close)
    with PumbleClient(TEST_KEY, server.url) as client:
        for n in range(3):
            client.send_message("orders", f"order {n}")
            assert server.closed.acquire(timeout=5)  # the server has closed that connection
    assert (server.connections, server.requests) == (3, 3)


def test_threads_sharing_a_client_each_take_a_connection(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url) as client, ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda n: client.send_message("orders", f"m{n}"), range(60)))
    assert sorted(m["text"] for m in fake_pumble.messages("orders")) == sorted(
        f"m{n}" for n in range(60))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (its file, a server context holding it)."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def test_https_to_a_server_the_trusted_certificates_vouch_for(server_factory, certificate,
                                                                monkeypatch):
    cert, context = certificate
    server = server_factory(tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as httpx: the CA bundle the env names
    with PumbleClient(TEST_KEY, server.url) as client:
        for n in range(3):
            client.send_message("orders", f"order {n}")
    assert (server.connections, server.requests) == (1, 3)


def test_an_untrusted_certificate_is_transient_and_nothing_is_sent(server_factory, certificate,
                                                                     monkeypatch):
    server = server_factory(tls=certificate[1])
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with PumbleClient(TEST_KEY, server.url) as client, \
            pytest.raises(TransientError, match="cannot connect: SSLCertVerificationError"):
        client.send_message("orders", "hello")
    assert server.requests == 0
