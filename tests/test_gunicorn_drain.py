"""What ``WholeRequestWorker`` tells from a gunicorn request's body: read to its end, nothing
of it is left for gthread's drain. Pinned against gunicorn's own parser and drain, which an
upgrade may change."""

import io

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from bridge.gunicorn_app import read_to_its_end

BODY = b'{"id": 1}' * 300  # over a 1 KiB read


def parsed(request: bytes) -> RequestParser:
    parser = RequestParser(Config(), [request], ("127.0.0.1", 1))
    next(parser)
    return parser


def post(body: bytes, **headers: str) -> bytes:
    head = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return b"POST /webhooks/shop HTTP/1.1\r\nHost: x\r\n" + head.encode() + b"\r\n" + body


@pytest.mark.parametrize("read", [lambda body: body.read(), lambda body: body.read(len(BODY))])
def test_a_body_read_to_its_end_leaves_nothing_to_drain(read):
    parser = parsed(post(BODY, Content_Length=str(len(BODY))) + b"GET / HTTP/1.1\r\n\r\n")
    assert not read_to_its_end(parser.mesg)
    assert read(parser.mesg.body) == BODY
    assert read_to_its_end(parser.mesg)
    left = parser.unreader.buf.getvalue()
    assert parser.finish_body() and parser.unreader.buf.getvalue() == left  # drained nothing


@pytest.mark.parametrize("request_", [
    post(BODY, Content_Length=str(len(BODY))),  # not read at all
    post(b"5\r\nhello\r\n0\r\n\r\n", Transfer_Encoding="chunked"),  # not by its length
])
def test_a_body_not_read_to_its_end_is_gthreads_to_drain(request_):
    parser = parsed(request_)
    parser.mesg.body.read(3)
    assert not read_to_its_end(parser.mesg)
    assert isinstance(parser.mesg.body.buf, io.BytesIO)  # what read_to_its_end looks at
