"""How much of a request the receiver's event loop waits for before a thread runs it
(bridge.gunicorn_app.RequestReader): never less than the whole request, or a thread would block
reading the rest; never more, or a request would wait for bytes that never come."""

from __future__ import annotations

import pytest

from bridge.gunicorn_app import HEADERS_LIMIT, Framing, RequestReader

HEAD = b"POST /webhooks/shop HTTP/1.1\r\nHost: bridge\r\n"


@pytest.mark.parametrize(("data", "expected"), [
    (b"", Framing.INCOMPLETE),
    (HEAD, Framing.INCOMPLETE),
    (b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n", Framing.WHOLE),
    (HEAD + b"Content-Length: 5\r\n\r\n1234", Framing.INCOMPLETE),
    (HEAD + b"Content-Length: 5\r\n\r\n12345", Framing.WHOLE),
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
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", Framing.BAD_CHUNK),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n1;" + b"x" * 8189, Framing.BAD_CHUNK),
    ((HEAD + b"X-Pad: ").ljust(HEADERS_LIMIT + 1, b"a"), Framing.HEADERS_TOO_LARGE),
])
def test_how_much_of_a_request_is_here(data, expected):
    assert RequestReader(10, data).framing is expected
    reader = RequestReader(10)  # the same, a byte at a time
    seen = [reader.feed(data[n:n + 1]) for n in range(len(data))]
    assert (seen[-1] if seen else reader.framing) is expected
    if expected is not Framing.INCOMPLETE:  # known as soon as it could be, not before
        assert seen[:-1] == [Framing.INCOMPLETE] * (len(data) - 1)


def test_a_request_pipelined_behind_another_does_not_hold_it():
    first = HEAD + b"content-length:5\r\n\r\n12345"
    assert RequestReader(10, first + b"GET / HTTP/1.1\r\n").framing is Framing.WHOLE


def test_chunk_framing_is_bounded_when_it_carries_no_body():
    reader = RequestReader(10, HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(10):  # at the limit, in chunks with more framing than body
        assert reader.feed(b"0000000001\r\nx\r\n") is Framing.INCOMPLETE
    assert reader.feed(b"0;x=y\r\n\r\n") is Framing.WHOLE
    framing_only = RequestReader(100, HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    while framing_only.framing is Framing.INCOMPLETE:
        framing_only.feed(b"1;" + b"x" * 1000 + b"\r\nx\r\n")
    assert framing_only.framing is Framing.CHUNK_FRAMING_TOO_LARGE
    assert len(framing_only.data) < 2 * 100 + HEADERS_LIMIT + 2000



def test_a_client_waiting_for_100_continue_is_told_once_and_only_when_the_body_is_wanted():
    waiting = RequestReader(10, HEAD + b"Expect: 100-Continue\r\nContent-Length: 5\r\n\r\n")
    assert [waiting.waits_for_continue(), waiting.waits_for_continue()] == [True, False]
    too_large = RequestReader(10, HEAD + b"Expect: 100-continue\r\nContent-Length: 50\r\n\r\n")
    assert not too_large.waits_for_continue()  # refused at once, its body never asked for
    http_1_0 = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    assert not RequestReader(10, http_1_0).waits_for_continue()
    assert not RequestReader(10, HEAD + b"Content-Length: 5\r\n\r\n").waits_for_continue()
