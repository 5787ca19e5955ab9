"""The client against the fake Pumble, over real HTTP."""

import socket

import httpx
import pytest

from bridge.pumble import (
    AmbiguousError,
    AuthError,
    NotFoundError,
    PumbleClient,
    PumbleValidationError,
    TransientError,
    normalize_channel_name,
)
from tests.conftest import TEST_KEY


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
        names = [entry["channel"]["name"] for entry in client.list_channels()]
    assert created.name == "flash-sale"
    assert {"general", "random", "orders", "flash-sale"} <= set(names)


def test_refused_connection_is_transient():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
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
