"""How much of a request the receiver's event loop waits for before a thread runs it
(bridge.gunicorn_app.framing): never less than the whole request, or a thread would block
reading the rest; never more, or a request would wait for bytes that never come."""

from __future__ import annotations

import pytest

from bridge.gunicorn_app import HEADERS_LIMIT, Framing, framing

HEAD = b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n"


@pytest.mark.parametrize(("data", "expected"), [
    (b"", Framing.INCOMPLETE),
    (HEAD, Framing.INCOMPLETE),
    (b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n", Framing.WHOLE),
    (HEAD + b"Content-Length: 5\r\n\r\n1234", Framing.INCOMPLETE),
    (HEAD + b"Content-Length: 5\r\n\r\n12345", Framing.WHOLE),
    (HEAD + b"content-length:5\r\n\r\n12345GET / HTTP/1.1\r\n", Framing.WHOLE),  # pipelined
    (HEAD + b"Content-Length: 10\r\n\r\n" + b"a" * 10, Framing.WHOLE),  # at the limit
    (HEAD + b"Content-Length: 10\r\n\r\n123", Framing.INCOMPLETE),
    (HEAD + b"Content-Length: 11\r\n\r\n", Framing.TOO_LARGE),  # refused before its body
    # Framing gunicorn refuses (400) without reading a body: nothing to wait for.
    (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", Framing.WHOLE),
    (HEAD + b"Content-Length: -5\r\n\r\n", Framing.WHOLE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", Framing.INCOMPLETE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n", Framing.INCOMPLETE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n0\r\n", Framing.INCOMPLETE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;x=y\r\n12345\r\n0\r\n\r\n", Framing.WHOLE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n", Framing.INCOMPLETE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n", Framing.WHOLE),
    # A chunk's size says nothing of what came: 10 bytes of it are not past the limit, 11 are.
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nff\r\n" + b"a" * 10, Framing.INCOMPLETE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nff\r\n" + b"a" * 11, Framing.TOO_LARGE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n6\r\naaaaaa\r\n6\r\naaaaa", Framing.TOO_LARGE),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", Framing.WHOLE),  # gunicorn's 400
    (HEAD + b"X-Pad: " + b"a" * HEADERS_LIMIT, Framing.HEADERS_TOO_LARGE),
])
def test_framing(data, expected):
    assert framing(data, limit=10) is expected
