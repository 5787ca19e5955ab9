"""Run the receiver under gunicorn from inside ``pumble-bridge serve``.

The receiver is made once, in the master, and every worker is forked from it, so every worker
serves the config the master holds: the last one that validated. The master checks the config
and templates on each turn of its loop (about once a second) and on SIGHUP; a change, whether
put in force or refused, restarts the workers as SIGHUP does (new ones start, the old ones
finish their requests), so none serves a config the master has replaced and each reports a
refusal (``/readyz``). The workers never watch or reload by themselves: two processes that
each read the file could disagree, and a worker replacing a dead one would start from the
startup config.

The workers are gunicorn's ``gthread`` workers, but a request is run only once it is all here
(``WholeRequestWorker``): a connection that sends slowly, stalls or sends nothing costs a buffer
in the worker's event loop, not the loop itself or one of its few threads, and is closed once it
has taken ``REQUEST_READ_TIMEOUT`` seconds. With one thread (``serve``'s default) the event loop
runs each whole request itself.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import re
import selectors
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import TConn, ThreadWorker

from bridge.reload import Reloader
from bridge.web import receiver_of

# A request (headers and body) not all here this many seconds after its first byte could come is
# answered 408 and its connection closed. Platforms send a webhook at once, in well under this.
REQUEST_READ_TIMEOUT = 10
# Headers not ended within this many bytes are answered 431 (a platform sends a few hundred).
HEADERS_LIMIT = 64 * 1024
# How long a connection closed after its answer is read (and its bytes dropped) before it is
# closed for good: closing with bytes unread would reset it and could lose the answer.
LINGER = 2.0
# A connection whose answer cannot be sent for this many seconds (its client sends requests but
# reads no answers, until every buffer on the way is full) is closed: whatever runs the request
# (the event loop itself, with --threads 1) must not wait on it for ever.
ANSWER_TIMEOUT = 2.0


class GunicornApp(BaseApplication):
    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]):
        self._factory = factory
        self._options = options
        self._app: Flask | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: one per host path
            self.cfg.set("control_socket_disable", True)

    def run(self) -> None:
        # Made before any fork; it opens no connection (redis-py connects on first use, in
        # each worker).
        self._app = self._factory()
        self.pipelines.leave_watching_to_caller()
        try:
            _ConfigWatchingArbiter(self).run()
        except RuntimeError as exc:  # as gunicorn's own run(): a bad bind, say
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    @property
    def pipelines(self) -> Reloader:
        assert self._app is not None, "run() makes the app"
        return receiver_of(self._app).pipelines

    def reload(self) -> None:  # SIGHUP, in the master: read the file before the new workers
        self.pipelines.reload_if_changed()
        super().reload()

    def load(self) -> Flask:
        assert self._app is not None, "run() makes the app"
        return self._app


class _ConfigWatchingArbiter(Arbiter):
    """gunicorn's master, which also looks at the config on each turn of its loop: a change is
    handled as a SIGHUP."""

    app: GunicornApp

    def spawn_worker(self) -> int:
        # Everything the master holds (the app, its imports, its config) moves to the
        # collector's permanent generation before the fork: a worker's collections then never
        # write to those objects, so their pages stay shared with the master instead of being
        # copied into every worker. Garbage is collected first so none is kept forever.
        gc.collect()
        gc.freeze()
        return super().spawn_worker()

    def murder_workers(self) -> None:
        # Called on every turn of the arbiter's loop, about once a second (gunicorn is capped at
        # its next major release for this; tests/test_gunicorn_receiver.py fails if it stops).
        super().murder_workers()
        if self.app.pipelines.reload_if_changed():
            self.handle_hup()


class Framing(enum.Enum):
    """How much of a request is here. The values with a status are answered by the worker."""

    INCOMPLETE = "more must come"
    WHOLE = "all here (or framed so that gunicorn refuses it before the app reads it)"
    TOO_LARGE = "a body over the limit: the app refuses it without the rest"
    HEADERS_TOO_LARGE = "431 Request Header Fields Too Large"
    BAD_CHUNK = "400 Bad Request"
    CHUNK_FRAMING_TOO_LARGE = "413 Content Too Large"  # mostly chunk-size lines, little body

    @property
    def answer(self) -> bytes | None:
        """The status line the worker answers with, if it answers itself."""
        return self.value.encode() if self.value[0].isdigit() else None


CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:([^\r]*)", re.IGNORECASE)
CHUNK_SIZE_LINE_LIMIT = 8190  # gunicorn's own limit on a chunk-size line
EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*(\r|$)", re.IGNORECASE)


class RequestReader:
    """The bytes of one HTTP/1.1 request as they come in, and how much of it is here. Each
    byte is looked at about once, so a request sent a byte at a time costs no more to follow
    than one sent at once.

    ``limit`` is the most body the app reads (its MAX_CONTENT_LENGTH): a body over it is
    TOO_LARGE once the limit is passed (a chunked one, once more than ``limit`` bytes of it are
    here: the app reads that many to refuse it)."""

    def __init__(self, limit: int, data: bytes = b""):
        self.limit = limit
        self.data = bytearray()
        self._searched = 0  # where the end of the headers (or of the trailers) may start
        self._body = -1  # where the body starts, once the headers are in
        self._length: int | None = None  # Content-Length, if one that gunicorn accepts
        self._chunked = False
        self._next_chunk = 0  # chunked: where the next chunk-size line starts
        self._chunk_bytes = 0  # chunked: body bytes of the chunks before it
        self._continue = False  # the client waits for "100 Continue" before its body
        self.framing = self.feed(data)

    def feed(self, data: bytes) -> Framing:
        """Take in more of the request; how much of it is here now (also ``self.framing``)."""
        self.data += data
        self.framing = self._framing()
        return self.framing

    def waits_for_continue(self) -> bool:
        """True once, when the client asked to be told to send its body (``Expect:
        100-continue``) and it is wanted: the event loop says so, not the thread that would
        otherwise only see the request once the client stopped waiting."""
        waits = self._continue and self.framing is Framing.INCOMPLETE
        self._continue = self._continue and not waits
        return waits

    def _framing(self) -> Framing:
        if self._body < 0 and not self._headers_ended():
            too_large = len(self.data) > HEADERS_LIMIT
            return Framing.HEADERS_TOO_LARGE if too_large else Framing.INCOMPLETE
        if self._chunked:
            return self._chunks()
        if self._length is None:
            return Framing.WHOLE
        if self._length > self.limit:
            return Framing.TOO_LARGE
        whole = len(self.data) - self._body >= self._length
        return Framing.WHOLE if whole else Framing.INCOMPLETE

    def _headers_ended(self) -> bool:
        end = self.data.find(b"\r\n\r\n", self._searched)
        if end < 0:
            self._searched = max(0, len(self.data) - 3)
            return False
        head = bytes(self.data[:end])
        self._body = self._next_chunk = end + 4
        self._chunked = CHUNKED.search(head) is not None
        http_1_0 = head.partition(b"\r\n")[0].endswith(b"HTTP/1.0")  # may not be told
        self._continue = bool(EXPECT_CONTINUE.search(head)) and not http_1_0
        lengths = {value.strip() for value in CONTENT_LENGTH.findall(head)}
        if len(lengths) == 1 and next(iter(lengths)).isdigit():
            self._length = int(next(iter(lengths)))
        return True

    def _chunks(self) -> Framing:
        if len(self.data) - self._body > 2 * self.limit + HEADERS_LIMIT:
            return Framing.CHUNK_FRAMING_TOO_LARGE  # no body to read past the limit, yet big
        while True:
            start = self._next_chunk
            line_end = self.data.find(b"\r\n", start, start + CHUNK_SIZE_LINE_LIMIT + 2)
            if line_end < 0:
                long = len(self.data) - start > CHUNK_SIZE_LINE_LIMIT
                return Framing.BAD_CHUNK if long else Framing.INCOMPLETE
            try:
                size = int(bytes(self.data[start:line_end]).partition(b";")[0].strip(), 16)
            except ValueError:
                return Framing.BAD_CHUNK
            if size == 0:  # then the trailer section, ended by an empty line
                return self._trailers(line_end + 2)
            here = min(size, len(self.data) - line_end - 2)
            if self._chunk_bytes + here > self.limit:
                return Framing.TOO_LARGE
            if len(self.data) < line_end + 4 + size:
                return Framing.INCOMPLETE  # the rest of this chunk, or its CRLF, to come
            self._chunk_bytes += size
            self._next_chunk = line_end + 4 + size

    def _trailers(self, start: int) -> Framing:
        if self.data.startswith(b"\r\n", start):
            return Framing.WHOLE
        if self.data.find(b"\r\n\r\n", max(start, self._searched)) >= 0:
            return Framing.WHOLE
        self._searched = max(start, len(self.data) - 3)
        too_large = len(self.data) - start > HEADERS_LIMIT
        return Framing.HEADERS_TOO_LARGE if too_large else Framing.INCOMPLETE


def read_to_its_end(request: Any) -> bool:
    """Whether the app read all of a gunicorn request's body (as ``_WebhooksFirst`` does),
    so that nothing of it is left to drain."""
    body = getattr(request, "body", None)
    reader = getattr(body, "reader", None)
    return isinstance(reader, LengthReader) and reader.length == 0 and body.buf.tell() == 0


class _HeadersWithBody:
    """A connection's socket while gunicorn answers a request on it: the header block, which
    gunicorn sends alone, waits for the body's first bytes and goes out with them, in one send
    (one syscall, one segment to the client) rather than two. Anything else done with the
    socket sends what waits first."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._waiting = b""
        self._first = True

    def sendall(self, data: bytes) -> None:
        first, self._first = self._first, False
        # gunicorn's header block, always first: not an interim (1xx) answer, sent as it comes
        if first and data.endswith(b"\r\n\r\n") and data[9:10] != b"1":
            self._waiting = data
            return
        waiting, self._waiting = self._waiting, b""
        self._sock.sendall(waiting + data if waiting else data)

    def flush(self) -> None:
        if self._waiting:
            waiting, self._waiting = self._waiting, b""
            self._sock.sendall(waiting)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._sock, name)


@dataclass
class _Waiting:
    """A connection the event loop reads: a request coming in, or a connection closing."""

    deadline: float
    request: RequestReader | None = None  # None: closing, what comes is dropped
    watched: bool = False  # registered with the event loop's poller


class WholeRequestWorker(ThreadWorker):
    """gunicorn's gthread worker, whose event loop reads each request whole before it runs (in
    the loop itself with one thread, else in a thread), and times out and closes connections
    without holding either.

    gthread gives a thread to each connection with bytes to read, and the thread reads until the
    request is in: 8 connections sending a byte a second held all of them. Here only requests
    that are all here run (or refused whole: a body over the limit, whose connection is then
    closed); everything that waits, waits in the event loop."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.waiting: dict[TConn, _Waiting] = {}
        self._running_here = False  # a request runs in the event loop (``--threads 1``)

    def enqueue_req(self, conn: TConn) -> None:
        """gthread's one way to a thread: new connections, kept-alive ones that became
        readable, and requests pipelined behind a previous one all start by being read."""
        leftover = conn.parser.unreader.take_buffered() if conn.parser else b""
        request = RequestReader(self.wsgi.config["MAX_CONTENT_LENGTH"], leftover)
        self.waiting[conn] = _Waiting(time.monotonic() + REQUEST_READ_TIMEOUT, request)
        if conn.sock.getblocking():  # a pipelined request's; a kept-alive one's is not (a syscall)
            conn.sock.setblocking(False)
        if request.framing is Framing.INCOMPLETE:
            # A kept-alive connection comes here because its next request came: read it now
            # rather than on the event loop's next turn (a poller registration and round fewer).
            self._read(conn)
        else:
            self._take(conn)
        waiting = self.waiting.get(conn)
        if waiting is not None and not waiting.watched:  # more of the request must come
            self._watch(conn, waiting, self._read)

    def _wait(self, conn: TConn, seconds: float, on_readable: Callable[[TConn], None],
              request: RequestReader | None = None) -> None:
        """Read ``conn`` in the event loop for at most ``seconds``."""
        waiting = self.waiting[conn] = _Waiting(time.monotonic() + seconds, request)
        conn.sock.setblocking(False)
        self._watch(conn, waiting, on_readable)

    def _watch(self, conn: TConn, waiting: _Waiting, on_readable: Callable[[TConn], None]) -> None:
        waiting.watched = True
        self.poller.register(conn.sock, selectors.EVENT_READ, lambda _sock: on_readable(conn))

    def _read(self, conn: TConn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._close(conn)
            return
        self.waiting[conn].request.feed(data)
        self._take(conn)

    def _take(self, conn: TConn) -> None:
        """Hand the request to a thread, or answer it here, once enough of it is in."""
        request = self.waiting[conn].request
        if request.waits_for_continue():
            with contextlib.suppress(OSError):  # a few bytes: the socket's buffer takes them
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request.framing is Framing.INCOMPLETE:
            return
        if request.framing.answer:
            self._answer_and_close(conn, request.framing.answer)
            return
        self._forget(conn)
        data, whole = bytes(request.data), request.framing is Framing.WHOLE
        if self.cfg.threads == 1:
            self._run_here(conn, data, whole)
            return
        future = self.tpool.submit(self._handle_whole, conn, data, whole)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done))

    def _run_here(self, conn: TConn, data: bytes, whole: bool) -> None:
        """Run a whole request in the event loop itself: no hand-off to a thread and back,
        which cost a receiver up to a fifth of its CPU a webhook (``bench.receiver``)."""
        if self._running_here:  # a request pipelined behind the one finishing: next turn
            self.method_queue.defer(self._run_here, conn, data, whole)
            return
        self._running_here = True
        try:
            done: Future = Future()
            try:
                done.set_result(self._handle_whole(conn, data, whole))
            except Exception as exc:  # as the pool's future would hold it
                done.set_exception(exc)
            self.finish_request(conn, done)
        finally:
            self._running_here = False

    def _handle_whole(self, conn: TConn, data: bytes, whole: bool) -> bool:
        # The socket is made blocking again by conn.init() (a new connection) or gthread's
        # handle() (a kept-alive one), before anything is read or written: not here as well.
        conn.init()
        conn.parser.unreader.unread(data)
        conn.data_ready = True  # no wait for more: it is here
        conn.whole = whole
        return self.handle(conn)

    def _keepalive_after(self, conn: TConn, keepalive: bool) -> bool:
        if keepalive and read_to_its_end(conn.parser.mesg):
            # gthread would drain it under a socket timeout, set and reset (two syscalls) for
            # a read that returns nothing.
            return True
        return super()._keepalive_after(conn, keepalive)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        if not conn.whole:  # the rest of the body was never read: the answer closes
            req.must_close = True
        sock = conn.sock
        sock.settimeout(ANSWER_TIMEOUT)  # the request is all here: only the answer can wait
        conn.sock = answer = _HeadersWithBody(sock)
        try:
            keepalive = super().handle_request(req, conn)
            answer.flush()
            return keepalive
        except TimeoutError:
            self.log.warning("closed a connection that read no answer for %.0f s",
                             ANSWER_TIMEOUT)
            return False
        finally:
            conn.sock = sock

    def finish_request(self, conn: TConn, fs: Future) -> None:
        if not self.alive or fs.cancelled() or fs.exception() or fs.result() is not False:
            super().finish_request(conn, fs)
            return
        self._close_after_answer(conn)  # gthread would linger here, blocking the event loop

    def _close_after_answer(self, conn: TConn) -> None:
        """Close ``conn`` cleanly: a FIN after the answer, then what the client still sends is
        read and dropped (for LINGER seconds at most) so that the close resets nothing."""
        if conn in self.waiting:
            self._forget(conn)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._wait(conn, LINGER, self._drain)

    def _drain(self, conn: TConn) -> None:
        try:
            if conn.sock.recv(65536):
                return  # dropped: the request it belonged to was answered
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(conn)

    def murder_pending(self) -> None:  # on every turn of the event loop
        super().murder_pending()
        now = time.monotonic()
        for conn, waiting in list(self.waiting.items()):
            if waiting.deadline > now:
                continue
            if waiting.request and waiting.request.data:
                self._answer_and_close(conn, b"408 Request Timeout")
            else:
                self._close(conn)

    def _answer_and_close(self, conn: TConn, status: bytes) -> None:
        with contextlib.suppress(OSError):  # gone, or not reading: closed all the same
            conn.sock.send(b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                           % status)
        self._close_after_answer(conn)

    def _forget(self, conn: TConn) -> None:
        if self.waiting.pop(conn).watched:
            self.poller.unregister(conn.sock)

    def _close(self, conn: TConn) -> None:
        if conn in self.waiting:
            self._forget(conn)
        self.nr_conns -= 1
        conn.close()
