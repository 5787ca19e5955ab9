"""What ``WholeRequestWorker`` does around gthread's handling of a request: a body the app read
to its end leaves nothing for gthread's drain (pinned against gunicorn's own parser, which an
upgrade may change), and an answer's header block goes out with its body."""

import io

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from bridge.gunicorn_app import _HeadersWithBody, read_to_its_end

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


class Recorded:
    """A socket that records what is sent on it, one entry a send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8000)


HEAD = b"HTTP/1.1 202 ACCEPTED\r\nContent-Length: 2\r\n\r\n"


def test_an_answers_header_block_goes_out_with_its_body_in_one_send():
    sock = Recorded()
    answer = _HeadersWithBody(sock)
    answer.sendall(HEAD)
    assert sock.sent == []
    answer.sendall(b"{}")
    answer.sendall(b"more")
    answer.flush()
    assert sock.sent == [HEAD + b"{}", b"more"]


def test_a_header_block_with_no_body_goes_out_at_the_end_or_before_any_other_use():
    sock = Recorded()
    answer = _HeadersWithBody(sock)
    answer.sendall(HEAD)
    answer.flush()
    assert sock.sent == [HEAD]
    sock = Recorded()
    answer = _HeadersWithBody(sock)
    answer.sendall(HEAD)
    assert answer.getsockname() == ("127.0.0.1", 8000) and sock.sent == [HEAD]
    answer.flush()
    assert sock.sent == [HEAD]  # once


def test_an_interim_answer_is_sent_as_it_comes():
    sock = Recorded()
    answer = _HeadersWithBody(sock)
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    answer.sendall(early)
    assert sock.sent == [early]
    answer.sendall(HEAD)
    answer.sendall(b"{}")
    assert sock.sent == [early, HEAD, b"{}"]
