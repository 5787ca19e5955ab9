"""The client against the fake Pumble, over real HTTP."""

import socket

import httpx
import pytest

from bridge.local_server import LocalServer
from bridge.pumble import (
    AmbiguousError,
    AuthError,
    NotFoundError,
    PumbleClient,
    PumbleError,
    PumbleValidationError,
    RateLimitedError,
    TransientError,
    normalize_channel_name,
)
from tests.conftest import TEST_KEY, free_port
from tests.test_identity import LossyProxy


def test_send_message_lands_in_the_channel(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url) as client:
        ref = client.send_message("#Orders", "hello", as_bot=True)
    assert len(ref.id) == 24 and int(ref.id, 16) >= 0
    [message] = fake_pumble.messages("orders")
    assert (message["id"], message["channelId"], message["text"]) == (ref.id, ref.channel_id,
                                                                     "hello")


def test_send_by_channel_id(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url) as client:
        first = client.send_message("orders", "one")
        second = client.send_message(channel_id=first.channel_id, text="two")
    assert second.channel_id == first.channel_id
    assert [m["text"] for m in fake_pumble.messages("orders")] == ["one", "two"]


@pytest.mark.parametrize("header", ["ApiKey", "Api-Key"])
def test_fake_accepts_either_header_name(fake_pumble, header):
    response = httpx.post(f"{fake_pumble.url}/sendMessage", headers={header: TEST_KEY},
                          json={"channel": "general", "text": "hi"})
    assert response.status_code == 200


def test_client_sends_both_header_names():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={"id": "a" * 24, "channelId": "b" * 24})

    with PumbleClient("k-1", "http://pumble.test", transport=httpx.MockTransport(handler)) as c:
        c.send_message("general", "hi")
    assert seen["apikey"] == "k-1"
    assert seen["api-key"] == "k-1"


def test_unknown_channel_is_not_found(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url) as client, \
            pytest.raises(NotFoundError, match="Could not find channel"):
        client.send_message("no-such-channel", "hello")


def test_wrong_key_is_an_auth_error_that_does_not_show_the_key(fake_pumble):
    key = "wrong-key-abcdef0123456789"
    with PumbleClient(key, fake_pumble.url) as client:
        with pytest.raises(AuthError) as caught:
            client.send_message("orders", "hello")
        assert key not in repr(client)
    assert caught.value.status == 403
    assert key not in str(caught.value)
    assert fake_pumble.messages() == []


def test_validation_error_carries_pumbles_code(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url) as client, \
            pytest.raises(PumbleValidationError) as caught:
        client.create_channel("general")  # exists already
    assert caught.value.code == 400000


def test_create_and_list_channels(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url) as client:
        created = client.create_channel("Flash Sale")
        names = [channel.name for channel in client.list_channels()]
    assert created.name == "flash-sale"
    assert {"general", "random", "orders", "flash-sale"} <= set(names)


def test_refused_connection_is_transient():
    port = free_port()  # nobody listens there
    with PumbleClient(TEST_KEY, f"http://127.0.0.1:{port}") as client, \
            pytest.raises(TransientError):
        client.send_message("orders", "hello")


def test_connection_dropped_after_sending_is_ambiguous():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with PumbleClient(TEST_KEY, f"http://127.0.0.1:{port}", read_timeout=0.3) as client, \
                pytest.raises(AmbiguousError):
            client.send_message("orders", "hello")  # accepted by the kernel, never answered


@pytest.mark.parametrize(("given", "expected"), [
    ("#General", "general"), ("Flash Sale", "flash-sale"), (" orders ", "orders"),
])
def test_channel_names_are_normalised_like_pumble(given, expected):
    assert normalize_channel_name(given) == expected


# -- the whole surface, and every error class, against the fake over HTTP ----------------------

def set_faults(fake_pumble, **faults) -> None:
    httpx.post(f"{fake_pumble.url}/_fake/faults", json=faults).raise_for_status()


@pytest.fixture
def client(fake_pumble):
    with PumbleClient(TEST_KEY, fake_pumble.url, read_timeout=2) as client:
        yield client


def test_reply_react_fetch_delete(client, fake_pumble):
    root = client.send_message("orders", "order #1")
    reply = client.send_reply(root.id, "packed", channel="orders", as_bot=True)
    client.add_reaction(root.id, ":tada:")
    fetched = client.fetch_message(root.id, channel_id=root.channel_id)
    assert fetched.text == "order #1"
    assert fetched.data["reactions"][0]["code"] == ":tada:"
    assert fetched.data["threadRootInfo"]["replyCount"] == 1
    assert client.fetch_message(reply.id, channel="orders").data["threadReplyInfo"]["rootId"] \
        == root.id
    client.delete_message(root.id, channel="orders")
    with pytest.raises(NotFoundError):
        client.fetch_message(root.id, channel="orders")


def test_bare_reaction_is_a_validation_error(client):
    root = client.send_message("orders", "order #1")
    with pytest.raises(PumbleValidationError):
        client.add_reaction(root.id, "grin")


def test_reply_to_unknown_message_is_not_found(client):
    with pytest.raises(NotFoundError) as caught:
        client.send_reply("0" * 24, "hello", channel="orders")
    assert caught.value.status == 403  # Pumble's status for every error (bridge/fake_pumble.py)


def test_iter_messages_walks_every_page(client):
    sent = [client.send_message("orders", f"m{i}").id for i in range(7)]
    walked = [m.id for m in client.iter_messages("orders", limit=3)]
    assert walked == list(reversed(sent))  # newest first, no gap, no repeat
    page = client.list_messages("orders", limit=3)
    assert (len(page.messages), page.has_more_before) == (3, True)
    forward = [m.id for m in client.iter_messages("orders", limit=3, strategy="AFTER",
                                                  cursor=sent[0])]
    assert forward == sent[1:]


def test_iter_replies_walks_a_whole_thread_and_nothing_else(client):
    root = client.send_message("orders", "order #1")
    other = client.send_message("orders", "order #2")
    client.send_reply(other.id, "not this thread", channel_id=other.channel_id)
    sent = [client.send_reply(root.id, f"r{i}", channel_id=root.channel_id).id
            for i in range(7)]
    walked = [m.id for m in client.iter_replies(root.id, channel_id=root.channel_id, limit=3)]
    assert sorted(walked) == sorted(sent) and len(walked) == 7  # no gap, no repeat
    assert [m.text for m in client.iter_replies(other.id, limit=3)] == ["not this thread"]
    with pytest.raises(NotFoundError):
        list(client.iter_replies("0" * 24))


def test_private_channel_needs_the_bot(client, fake_pumble):
    client.create_channel("vip orders", private=True)
    with pytest.raises(AuthError):
        client.list_messages("vip-orders")
    httpx.post(f"{fake_pumble.url}/_fake/channels",
               json={"name": "vip-orders", "bot_member": True}).raise_for_status()
    assert client.list_messages("vip-orders").messages == []


def test_list_channels_and_my_info(client):
    channels = {c.name: c for c in client.list_channels()}
    assert channels["orders"].type == "PUBLIC"
    assert len(channels["orders"].id) == 24
    assert client.my_info()["id"]


def test_rate_limit_gives_retry_after(client, fake_pumble):
    set_faults(fake_pumble, rate_limit={"per_minute": 1, "retry_after": 7})
    client.send_message("orders", "first")
    with pytest.raises(RateLimitedError) as caught:
        client.send_message("orders", "second")
    assert caught.value.retry_after == 7
    assert caught.value.retryable
    assert [m["text"] for m in fake_pumble.messages()] == ["first"]


def test_server_error_is_transient_and_writes_are_not_retried(client, fake_pumble):
    set_faults(fake_pumble, fail_next={"count": 1, "status": 502})
    with pytest.raises(TransientError) as caught:
        client.send_message("orders", "hello")
    assert caught.value.status == 502
    assert fake_pumble.messages() == []  # not applied, and not sent again by the client
    client.send_message("orders", "hello")
    assert len(fake_pumble.messages()) == 1


def test_reads_are_retried(client, fake_pumble):
    set_faults(fake_pumble, fail_next={"count": 2, "status": 503})
    assert client.list_messages("orders").messages == []  # third try answers


def test_accept_then_drop_is_ambiguous(client, fake_pumble):
    set_faults(fake_pumble, drop_next=1)
    with pytest.raises(AmbiguousError):
        client.send_message("orders", "maybe")
    assert [m["text"] for m in fake_pumble.messages()] == ["maybe"]  # it was posted


def test_timeout_after_sending_is_ambiguous(fake_pumble):
    set_faults(fake_pumble, delay=0.5)
    with PumbleClient(TEST_KEY, fake_pumble.url, read_timeout=0.2) as client, \
            pytest.raises(AmbiguousError):
        client.send_message("orders", "slow")


def test_legacy_and_structured_error_bodies_are_parsed():
    answers = iter([
        httpx.Response(403, json={"error": "Could not find channel with that identifier"}),
        httpx.Response(403, json={"message": "Not found", "localizedMessage": "Not found",
                                  "code": 404100}),
        httpx.Response(403, json={"message": "[Allowed values are PUBLIC|PRIVATE]",
                                  "localizedMessage": "x", "code": 400000}),
        httpx.Response(403, json={"error": "Invalid API key"}),
        httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
        httpx.Response(500, text="<html>oops</html>"),
    ])
    transport = httpx.MockTransport(lambda request: next(answers))
    expected = [NotFoundError, NotFoundError, PumbleValidationError, AuthError,
                RateLimitedError, TransientError]
    with PumbleClient("k", "http://pumble.test", transport=transport) as client:
        for kind in expected:
            with pytest.raises(PumbleError) as caught:
                client.send_message("orders", "x")
            assert type(caught.value) is kind
            if kind is PumbleValidationError:
                assert caught.value.code == 400000
            if kind is RateLimitedError:
                assert caught.value.retry_after > 3600  # an HTTP date far ahead


def test_a_proxy_the_environment_names_is_gone_through(fake_pumble, monkeypatch):
    """Requests go straight to the client's transport only without one: through the proxy
    (here one that forwards to the fake), a Pumble this machine cannot reach is reached."""
    with LocalServer(LossyProxy(fake_pumble.url).app) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        with PumbleClient(TEST_KEY, "http://pumble.invalid") as client:
            client.send_message("orders", "via the proxy", as_bot=True)
    assert fake_pumble.messages("orders")[-1]["text"].startswith("via the proxy")
