"""How a request reaches Pumble: one interface, two ways.

- ``KeepAlive``: the standard library's http.client, on connections kept alive in a small idle
  pool. Every request goes this way unless the environment names a proxy: a send costs about a
  third of the CPU httpx's request and response models take (bench/worker.py measures the
  delivery worker against a bare httpx loop), and a delivery worker does little else.
- ``ThroughHttpx``: an httpx client, where httpx does what http.client would not: the proxy the
  environment names, or a transport the caller gives (tests).

Both start a request (``start``: sent, not waited for) and give its ``Answer`` when asked
(``Pending.answer``), so a caller can do other work while Pumble answers; or raise
``CannotConnect`` (nothing was sent) or ``NoAnswer`` (sent, at least in part, and no whole answer
came back: a write may have been applied). Neither retries: whether to send again is the
caller's decision. Neither error says more than the kind of failure, so no header (the key) can
leak through one.
"""

from __future__ import annotations

import http.client
import select
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from bridge.config import http_url

# What every request says it takes, besides the key.
ACCEPT = {"Accept": "application/json", "User-Agent": "pumble-bridge"}
JSON_BODY = {"Content-Type": "application/json"}
MAX_IDLE = 4  # connections kept open between requests


class CannotConnect(Exception):
    """No connection: nothing was sent."""


class NoAnswer(Exception):
    """The request was sent, at least in part, and no whole answer came back."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    body: bytes
    retry_after: str | None  # the Retry-After header, as sent

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON (``ValueError`` when it is not)."""
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Answered:
    """A request whose answer came with it."""

    answered: Answer

    def answer(self) -> Answer:
        return self.answered


class Pending(Protocol):
    def answer(self) -> Answer:
        """The answer, waited for (once)."""


class Transport(Protocol):
    def start(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: bytes | None = None) -> Pending: ...

    def close(self) -> None: ...


def encode(body: Any) -> bytes:
    """A request's JSON body (strict: no NaN, no lone surrogates)."""
    return orjson.dumps(body)


class KeepAlive:
    """http.client connections to one base URL, up to ``MAX_IDLE`` kept open between requests.
    Safe to share between threads: each request takes a connection of its own."""

    def __init__(self, base_url: str, headers: dict[str, str], *, connect_timeout: float,
                 read_timeout: float) -> None:
        url = urllib.parse.urlsplit(http_url(base_url))
        self._host, self._port = url.hostname, url.port
        self._prefix = url.path.rstrip("/")
        # httpx's context: the same CA bundle (certifi's, or SSL_CERT_FILE) on every platform.
        self._tls = httpx.create_ssl_context() if url.scheme == "https" else None
        self._headers = {**ACCEPT, **headers}
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._idle: list[http.client.HTTPConnection] = []

    def start(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: bytes | None = None) -> _OnItsWay:
        target = self._prefix + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        headers = {**self._headers, **JSON_BODY} if body is not None else self._headers
        connection = self._take()
        try:
            connection.request(method, target, body=body, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise NoAnswer(type(exc).__name__) from None
        return _OnItsWay(self, connection)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _take(self) -> http.client.HTTPConnection:
        """An idle connection the server has not closed meanwhile, or a new one."""
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                return self._connect()
            if not _closed_by_peer(connection):
                return connection
            connection.close()

    def keep(self, connection: http.client.HTTPConnection) -> None:
        """``connection``, its answer read whole, for the next request."""
        if len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(self._host, self._port,
                                                    timeout=self._connect_timeout)
        try:
            connection.connect()
        except OSError as exc:  # refused, unreachable, timed out, TLS refused
            connection.close()
            raise CannotConnect(type(exc).__name__) from None
        connection.sock.settimeout(self._read_timeout)
        return connection


class _OnItsWay:
    """A request sent on ``connection``, its answer not read yet."""

    def __init__(self, pool: KeepAlive, connection: http.client.HTTPConnection) -> None:
        self._pool, self._connection = pool, connection

    def answer(self) -> Answer:
        connection = self._connection
        try:
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise NoAnswer(type(exc).__name__) from None
        if response.will_close:
            connection.close()
        else:
            self._pool.keep(connection)
        return Answer(response.status, response.reason, data, response.getheader("Retry-After"))


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that reads as ready has been closed by the server (or sent what
    no request asked for): either way it cannot carry the next request."""
    if connection.sock is None:
        return True
    poll = select.poll()
    poll.register(connection.sock, select.POLLIN)
    return bool(poll.poll(0))


class ThroughHttpx:
    """An httpx client: it honours the environment's proxy settings and a given transport."""

    def __init__(self, base_url: str, headers: dict[str, str], *, connect_timeout: float,
                 read_timeout: float, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(
            base_url=base_url, headers={**ACCEPT, **headers},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_keepalive_connections=MAX_IDLE), transport=transport)

    def start(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: bytes | None = None) -> Answered:
        """The whole request: httpx sends and reads in one call."""
        try:
            response = self._client.request(method, path, params=params, content=body,
                                            headers=JSON_BODY if body is not None else None)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise CannotConnect(type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise NoAnswer(type(exc).__name__) from None
        return Answered(Answer(response.status_code, response.reason_phrase, response.content,
                               response.headers.get("Retry-After")))

    def close(self) -> None:
        self._client.close()
