"""A notification is marked posted only on evidence that the message is its own: its mark
(bridge.marker), never the same text. Real Redis, real workers, the fake Pumble over HTTP, with
requests lost on the way (a proxy that reads them and hangs up) and answers lost on the way back
(the fake's ``drop_next``); counted at the fake by each notification's mark."""

from __future__ import annotations

import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask, Response, request

from bridge.fake_pumble import drop_connection
from bridge.local_server import LocalServer
from bridge.marker import ALPHABET, LENGTH, code, mark, marked_by, unmarked
from bridge.queue import job_id
from bridge.worker import HEARTBEAT_GRACE
from tests.conftest import TEST_KEY, FakePumble, faults, stats, wait_until
from tests.test_worker_processes import kill, started, worker_process


class LossyProxy:
    """Forwards every request to the fake, except the chosen ones (the n-th request to a path),
    which it reads and then hangs up on, unanswered and never forwarded: Pumble never saw them,
    the client cannot tell."""

    def __init__(self, target: str):
        self.drop: dict[str, set[int]] = {}
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=target)
        self.app = Flask("lossy_proxy")
        self.app.add_url_rule("/<path:path>", view_func=self._forward,
                              methods=["GET", "POST", "DELETE"])

    def _forward(self, path: str) -> Response:
        with self._lock:
            self._seen[path] += 1
            lost = self._seen[path] in self.drop.get(path, set())
        if lost:
            drop_connection()
            return Response(status=200)
        answer = self._http.request(
            request.method, f"/{path}", params=request.args, content=request.get_data(),
            headers={k: v for k, v in request.headers.items()
                     if k.lower() in ("apikey", "api-key", "content-type")})
        return Response(answer.content, answer.status_code,
                        content_type=answer.headers.get("content-type"))


@pytest.fixture
def proxy(fake_pumble: FakePumble) -> Iterator[tuple[LossyProxy, str]]:
    lossy = LossyProxy(fake_pumble.url)
    with LocalServer(lossy.app) as server:
        yield lossy, server.url


def owners(fake: FakePumble) -> Counter[str]:
    """How many posted messages carry each mark (the raw texts: marks kept)."""
    return Counter(message["text"][-LENGTH:] for message in fake.messages(raw=True))


def marks_of(b, *notifications) -> list[str]:
    return [code(job_id(b.queue.rq.name, n)) for n in notifications]


# -- messages ---------------------------------------------------------------------------------

def test_two_refunds_with_the_same_text_are_each_posted_once_when_a_request_is_lost(
        bridge, fake_pumble, proxy):
    lossy, url = proxy
    lossy.drop["sendMessage"] = {2}  # the second refund's post never reaches Pumble
    b = bridge(base_url=url)
    first = b.enqueue("Refund issued", event_id="refund-1", event_type="refund.created")
    second = b.enqueue("Refund issued", event_id="refund-2", event_type="refund.created")
    b.drain()
    posted = fake_pumble.messages()
    assert [m["text"] for m in posted] == ["Refund issued", "Refund issued"]
    # lost 0, duplicated 0: each refund's mark is on exactly one message
    assert owners(fake_pumble) == Counter(marks_of(b, first, second))
    results = {b.rq.fetch_job(job_id(b.queue.rq.name, n)).return_value()["message_id"]
               for n in (first, second)}
    assert results == {m["id"] for m in posted}


def test_a_payload_cannot_pose_as_another_notifications_mark(bridge, fake_pumble, proxy):
    lossy, url = proxy
    lossy.drop["sendMessage"] = {1}  # the first order's post is lost
    b = bridge(base_url=url)
    first = b.enqueue("order #1", event_id="o-1")
    [forged] = marks_of(b, first)
    # A customer's note that carries the first order's mark, posted while the first waits
    second = b.enqueue(f"order #2, note: hello{forged}", event_id="o-2")
    b.drain()
    assert sorted(m["text"] for m in fake_pumble.messages()) == ["order #1",
                                                                "order #2, note: hello"]
    assert owners(fake_pumble) == Counter(marks_of(b, first, second))


def test_the_mark_is_invisible_and_only_at_the_end():
    text = mark(f"Refund issued\n{ALPHABET * 3}note", "n-abc")
    assert unmarked(text) == "Refund issued\nnote"
    assert marked_by(text, "n-abc") and not marked_by(text, "n-abd")
    assert len(text) - len(unmarked(text)) == LENGTH == 32
    # drawn as nothing, and not whitespace a server might trim
    assert all(unicodedata.category(c) == "Cf" and not c.isspace() for c in ALPHABET)


# -- replies and reactions --------------------------------------------------------------------

def post_root(b, number: int):
    b.enqueue(f"order {number} created", thread_key=f"order:{number}", starts_thread=True)
    b.drain()


def reply(b, number: int):
    return b.enqueue(f"order {number}: paid", event_type="order.paid",
                     thread_key=f"order:{number}", reply=True, reaction=":moneybag:")


def assert_replied_once_with_reaction(b, fake: FakePumble, notification) -> None:
    root, *replies = fake.messages()
    assert [r["text"] for r in replies] == [notification.text]
    assert replies[0]["threadReplyInfo"]["rootId"] == root["id"]
    assert [r["code"] for r in root["reactions"]] == [":moneybag:"]
    assert owners(fake)[code(job_id(b.queue.rq.name, notification))] == 1
    job = b.rq.fetch_job(job_id(b.queue.rq.name, notification))
    assert job.return_value()["message_id"] == replies[0]["id"]


def test_a_reply_whose_answer_is_lost_is_found_in_its_thread_and_its_reaction_comes(
        bridge, fake_pumble):
    b = bridge()
    post_root(b, 7)
    faults(fake_pumble, drop_next=1)  # the reply is posted, its answer lost
    paid = reply(b, 7)
    b.drain()
    assert stats(fake_pumble)["dropped"] == 1
    assert b.dead.list() == []
    assert_replied_once_with_reaction(b, fake_pumble, paid)


def test_a_reply_whose_request_is_lost_is_posted_after_the_look(bridge, fake_pumble, proxy):
    lossy, url = proxy
    lossy.drop["sendReply"] = {1}
    b = bridge(base_url=url)
    post_root(b, 8)
    paid = reply(b, 8)
    b.drain()
    assert_replied_once_with_reaction(b, fake_pumble, paid)


def test_a_worker_killed_mid_reply_posts_it_once_and_adds_its_reaction(bridge, fake_pumble):
    b = bridge({"job_timeout": 5})
    post_root(b, 9)
    faults(fake_pumble, delay=2)  # the reply reaches Pumble and is applied after the kill
    paid = reply(b, 9)
    worker = worker_process(b.path)
    try:
        wait_until(lambda: started(b), "the worker to start the job", 20)
        time.sleep(0.5)  # inside the HTTP request now
    finally:
        kill(worker)
    wait_until(lambda: len(fake_pumble.messages()) == 2, "the fake to apply the reply", 10)
    httpx.delete(f"{fake_pumble.url}/_fake/faults")
    b.clock.sleep(b.config.delivery.job_timeout + HEARTBEAT_GRACE)
    b.drain()
    assert_replied_once_with_reaction(b, fake_pumble, paid)


def test_a_dead_letter_retry_looks_before_posting_again(bridge, fake_pumble):
    b = bridge({"max_attempts": 1})
    post_root(b, 10)
    faults(fake_pumble, drop_next=1)
    paid = reply(b, 10)
    b.drain()
    [record] = b.dead.list()  # attempts spent on an unanswered send: it may have been posted
    assert record.reason.startswith("gave up after 1 attempts: AmbiguousError")
    assert b.dead.retry(record.id)
    b.drain()
    assert_replied_once_with_reaction(b, fake_pumble, paid)


# -- digests ----------------------------------------------------------------------------------

def test_a_post_that_may_have_been_made_takes_no_one_into_a_digest(bridge, fake_pumble):
    """Its earlier attempt posted it alone (the answer lost): found again, it must not count the
    orders waiting behind it as posted with it."""
    b = bridge({"rate_limits": {"messages": 6}, "digest": {"window": 10, "max_items": 10}})
    first, *_others = [b.enqueue(f"order #{n}", event_id=f"d-{n}") for n in range(1, 5)]
    owner = job_id(b.queue.rq.name, first)
    fake_pumble.http.post(f"{fake_pumble.url}/sendMessage", headers={"ApiKey": TEST_KEY},
                          json={"channel": "orders", "text": mark("order #1", owner),
                                "asBot": True}).raise_for_status()
    job = b.rq.fetch_job(owner)
    job.meta.update(attempts=1, maybe_sent_at=b.clock.time())
    job.save_meta()
    b.drain()
    lines = [line for m in fake_pumble.messages() for line in m["text"].splitlines()]
    for n in range(1, 5):
        assert sum(line.endswith(f"order #{n}") for line in lines) == 1, lines
    assert b.rq.fetch_job(owner).return_value()["message_id"] == fake_pumble.messages()[0]["id"]
