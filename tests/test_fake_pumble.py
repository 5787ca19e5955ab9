"""The fake Pumble over real HTTP, with plain httpx: every endpoint, rule, fault and control."""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.fake_pumble import Faults, create_fake_pumble
from bridge.local_server import LocalServer
from tests.conftest import TEST_KEY

KEY, OTHER_KEY = "key-one-0123456789abcdef", "key-two-0123456789abcdef"
HEX_ID = re.compile(r"[0-9a-f]{24}")
# One TLS context for every client: loading certificates per client would double the run time.
TLS = ssl.create_default_context()
PLAIN = httpx.Client(timeout=5, verify=TLS)  # no base URL, no key
NOT_FOUND = {"message": "Not found", "localizedMessage": "Not found", "code": 404100}


class Clock:
    """The rate limit's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fake:
    """A running fake: ``api`` calls Pumble's endpoints with the key, ``control`` the rest."""

    def __init__(self, url: str, clock: Clock, echoed: list[str]):
        self.url, self.clock, self.echoed = url, clock, echoed
        self.api = httpx.Client(base_url=url, headers={"ApiKey": KEY}, timeout=5, verify=TLS)
        self.control = httpx.Client(base_url=f"{url}/_fake", timeout=5, verify=TLS)

    def send(self, text: str, channel: str = "orders", **extra: Any) -> dict[str, Any]:
        response = self.api.post("/sendMessage", json={"channel": channel, "text": text, **extra})
        assert response.status_code == 200, response.text
        return response.json()

    def page(self, **params: Any) -> dict[str, Any]:
        response = self.api.get("/listMessages", params={"channel": "orders", **params})
        assert response.status_code == 200, response.text
        return response.json()

    def posted(self, channel: str = "") -> list[dict[str, Any]]:
        return self.control.get("/messages", params={"channel": channel}).json()["messages"]

    def faults(self, **faults: Any) -> dict[str, Any]:
        response = self.control.post("/faults", json=faults)
        assert response.status_code == 200, response.text
        return response.json()

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.api.get("/listChannels").json() if e["channel"]["name"] == name)


def serve(faults: Faults | None = None, keys: tuple[str, ...] = (KEY, OTHER_KEY)):
    clock, echoed = Clock(), []
    app = create_fake_pumble(keys=keys, channels=["orders"], echo=echoed.append, faults=faults,
                             clock=clock)
    return LocalServer(app), clock, echoed


@pytest.fixture(scope="module")
def running() -> Iterator[Fake]:
    server, clock, echoed = serve()
    with server:
        client = Fake(server.url, clock, echoed)
        yield client
        client.api.close()
        client.control.close()


@pytest.fixture
def fake(running: Fake) -> Fake:
    """One server for the module, reset before each test (which also tests the reset)."""
    running.control.post("/reset").raise_for_status()
    running.echoed.clear()
    return running


def assert_validation_error(response: httpx.Response) -> None:
    body = response.json()
    assert response.status_code == 403
    assert set(body) == {"message", "localizedMessage", "code"} and body["code"] == 400000


# -- messages ----------------------------------------------------------------------------------

def test_send_and_fetch_give_pumbles_shapes(fake):
    owner = fake.api.get("/myInfo").json()
    ref = fake.send("hello")
    bot_ref = fake.send("from the bot", asBot=True)
    assert set(ref) == {"id", "channelId"} and HEX_ID.fullmatch(ref["id"])
    assert ref["channelId"] == fake.entry("orders")["channel"]["id"]

    message = fake.api.get("/fetchMessage", params={"messageId": ref["id"],
                                                    "channel": "orders"}).json()
    assert message == {
        "id": ref["id"], "channelId": ref["channelId"], "workspaceId": owner["workspaceId"],
        "author": owner["id"], "authorAppId": None, "text": "hello",
        "timestamp": message["timestamp"], "timestampMilli": message["timestampMilli"],
        "reactions": [], "attachments": [], "files": [], "threadRootInfo": None,
        "threadReplyInfo": None, "deleted": False, "edited": False, "subtype": "",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", message["timestamp"])
    assert message["timestampMilli"] % 1000 == 0
    assert abs(message["timestampMilli"] / 1000 - time.time()) < 5

    by_bot = fake.api.get("/fetchMessage", params={"messageId": bot_ref["id"]}).json()
    assert by_bot["author"] == by_bot["authorAppId"] != owner["id"]
    assert fake.echoed == ["[fake-pumble] #orders: hello", "[fake-pumble] #orders: from the bot"]


def test_channel_id_wins_over_channel_name(fake):
    orders_id = fake.entry("orders")["channel"]["id"]
    ref = fake.send("by id", channel="general", channelId=orders_id)
    assert ref["channelId"] == orders_id
    assert [m["text"] for m in fake.posted("orders")] == ["by id"]
    assert fake.posted("general") == []


def test_fake_messages_are_in_posting_order_with_channel_names(fake):
    fake.send("one", channel="orders")
    fake.send("two", channel="#General")
    fake.send("three", channel="orders")
    assert [(m["channel"], m["text"]) for m in fake.posted()] == [
        ("orders", "one"), ("general", "two"), ("orders", "three")]
    assert [m["text"] for m in fake.posted("orders")] == ["one", "three"]


def test_replies_update_the_root_and_stay_out_of_the_channel_unless_asked(fake):
    root = fake.send("order #1")
    quiet = fake.api.post("/sendReply", json={"messageId": root["id"], "text": "packed"}).json()
    loud = fake.api.post("/sendReply", json={"messageId": root["id"], "text": "shipped",
                                             "channel": "orders", "alsoSendToChannel": True,
                                             "asBot": True}).json()
    via_send = fake.send("delivered", threadRootId=root["id"])
    assert quiet["channelId"] == loud["channelId"] == via_send["channelId"] == root["channelId"]

    fetched_root = fake.api.get("/fetchMessage", params={"messageId": root["id"]}).json()
    reply = fake.api.get("/fetchMessage", params={"messageId": loud["id"]}).json()
    assert fetched_root["threadRootInfo"] == {"replyCount": 3,
                                              "lastReplyTimestampMilli": reply["timestampMilli"]}
    assert reply["threadReplyInfo"] == {"rootId": root["id"], "replySentToChannel": True,
                                        "rootText": "order #1"}
    assert reply["author"] == reply["authorAppId"]
    listed = [m["id"] for m in fake.page()["messages"]]
    assert listed == [loud["id"], root["id"]]  # the quiet replies are only in the thread
    assert [line.rsplit(": ", 1)[1] for line in fake.echoed] == [
        "order #1", "packed", "shipped", "delivered"]


def test_reply_to_an_unknown_root_or_in_another_channel_is_not_found(fake):
    root = fake.send("order #1")
    for body in ({"messageId": "0" * 24, "text": "x"},
                 {"messageId": root["id"], "text": "x", "channel": "general"}):
        response = fake.api.post("/sendReply", json=body)
        assert (response.status_code, response.json()) == (403, NOT_FOUND)
    wrong_channel = fake.api.post("/sendMessage", json={"channel": "general", "text": "x",
                                                        "threadRootId": root["id"]})
    assert (wrong_channel.status_code, wrong_channel.json()) == (403, NOT_FOUND)
    assert len(fake.posted()) == 1


def test_reactions_are_stored_once_per_code(fake):
    owner_id = fake.api.get("/myInfo").json()["id"]
    ref = fake.send("order #1")
    for reaction in (":+1:", ":tada:", ":+1:"):
        response = fake.api.post("/addReaction", json={"messageId": ref["id"],
                                                       "reaction": reaction, "skinTone": 3})
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
    message = fake.api.get("/fetchMessage", params={"messageId": ref["id"]}).json()
    assert message["reactions"] == [{"user": owner_id, "code": ":+1:"},
                                    {"user": owner_id, "code": ":tada:"}]
    unknown = fake.api.post("/addReaction", json={"messageId": "0" * 24, "reaction": ":+1:"})
    assert (unknown.status_code, unknown.json()) == (403, NOT_FOUND)


def test_deleted_message_is_gone_everywhere(fake):
    kept, gone = fake.send("kept"), fake.send("gone")
    response = fake.api.delete("/deleteMessage", params={"messageId": gone["id"],
                                                         "channel": "orders"})
    assert (response.status_code, response.content) == (200, b"")
    fetched = fake.api.get("/fetchMessage", params={"messageId": gone["id"]})
    assert (fetched.status_code, fetched.json()) == (403, NOT_FOUND)
    assert [m["id"] for m in fake.page()["messages"]] == [kept["id"]]
    assert [m["id"] for m in fake.posted()] == [kept["id"]]
    again = fake.api.delete("/deleteMessage", params={"messageId": gone["id"]})
    assert (again.status_code, again.json()) == (403, NOT_FOUND)


def test_message_must_be_in_the_named_channel(fake):
    ref = fake.send("in orders")
    response = fake.api.get("/fetchMessage", params={"messageId": ref["id"], "channel": "random"})
    assert (response.status_code, response.json()) == (403, NOT_FOUND)


def test_messages_posted_from_many_threads_are_all_kept(fake):
    def post(worker: int) -> None:
        with httpx.Client(base_url=fake.url, headers={"ApiKey": KEY}, verify=TLS) as client:
            for i in range(10):
                client.post("/sendMessage", json={"channel": "orders", "text": f"{worker}-{i}"})

    threads = [threading.Thread(target=post, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posted = fake.posted()
    assert len(posted) == len({m["id"] for m in posted}) == 60


# -- listMessages --------------------------------------------------------------------------------

def walk(fake: Fake, strategy: str, cursor: str, limit: int = 3) -> list[dict[str, Any]]:
    pages = []
    while True:
        page = fake.page(limit=limit, strategy=strategy, cursor=cursor)
        pages.append(page)
        flag = page["hasMoreBefore"] if strategy == "BEFORE" else page["hasMoreAfter"]
        if not flag:
            return pages
        cursor = page["messages"][-1]["id"]


def test_before_pages_walk_back_without_gaps_or_repeats(fake):
    sent = [fake.send(f"m{i}")["id"] for i in range(7)]
    first = fake.page(limit=3)
    assert [m["id"] for m in first["messages"]] == sent[:-4:-1]
    assert (first["hasMoreBefore"], first["hasMoreAfter"]) == (True, None)

    rest = walk(fake, "BEFORE", first["messages"][-1]["id"])
    pages = [first, *rest]
    assert [len(p["messages"]) for p in pages] == [3, 3, 1]
    assert [p["hasMoreBefore"] for p in pages] == [True, True, False]
    assert {p["hasMoreAfter"] for p in pages} == {None}
    assert [m["id"] for p in pages for m in p["messages"]] == sent[::-1]


def test_after_pages_walk_forward_without_gaps_or_repeats(fake):
    sent = [fake.send(f"m{i}")["id"] for i in range(8)]
    pages = walk(fake, "AFTER", sent[0])
    assert [len(p["messages"]) for p in pages] == [3, 3, 1]
    assert [p["hasMoreAfter"] for p in pages] == [True, True, False]
    assert {p["hasMoreBefore"] for p in pages} == {None}
    assert [m["id"] for p in pages for m in p["messages"]] == sent[1:]


def test_without_cursor_any_strategy_gives_the_newest_page(fake):
    sent = [fake.send(f"m{i}")["id"] for i in range(4)]
    page = fake.page(limit=2, strategy="AFTER")
    assert [m["id"] for m in page["messages"]] == [sent[3], sent[2]]
    assert (page["hasMoreBefore"], page["hasMoreAfter"]) == (True, None)
    everything = fake.page()  # default limit 100
    assert (len(everything["messages"]), everything["hasMoreBefore"]) == (4, False)


def test_around_centres_on_the_cursor(fake):
    sent = [fake.send(f"m{i}")["id"] for i in range(7)]

    def around(at: int, limit: int) -> tuple[list[int], bool, bool]:
        page = fake.page(limit=limit, strategy="AROUND", cursor=sent[at])
        return ([sent.index(m["id"]) for m in page["messages"]], page["hasMoreBefore"],
                page["hasMoreAfter"])

    assert around(3, 3) == ([4, 3, 2], True, True)
    assert around(3, 4) == ([5, 4, 3, 2], True, True)
    assert around(0, 3) == ([2, 1, 0], False, True)
    assert around(6, 3) == ([6, 5, 4], True, False)
    assert around(3, 7) == ([6, 5, 4, 3, 2, 1, 0], False, False)


def test_unknown_cursor_is_not_found(fake):
    fake.send("m0")
    response = fake.api.get("/listMessages", params={"channel": "orders", "cursor": "0" * 24})
    assert (response.status_code, response.json()) == (403, NOT_FOUND)


def test_private_channel_is_listed_only_once_the_bot_is_a_member(fake):
    created = fake.api.post("/createChannel", json={"name": "VIP Orders", "type": "PRIVATE"})
    assert created.json()["name"] == "vip-orders"
    fake.send("secret", channel="vip-orders")
    refused = fake.api.get("/listMessages", params={"channel": "vip-orders"})
    assert (refused.status_code, refused.json()) == (
        403, {"error": "Addon Bot is not a member of this channel"})

    joined = fake.control.post("/channels", json={"name": "vip-orders", "bot_member": True})
    owner_id = fake.api.get("/myInfo").json()["id"]
    assert joined.json()["users"][0] == owner_id and len(joined.json()["users"]) == 2
    assert fake.entry("vip-orders")["users"] == joined.json()["users"]
    assert [m["text"] for m in fake.page(channel="vip-orders")["messages"]] == ["secret"]


def test_control_can_make_a_private_channel_without_the_bot(fake):
    made = fake.control.post("/channels", json={"name": "Staff", "type": "PRIVATE"}).json()
    assert made["channel"]["channelType"] == "PRIVATE"
    assert fake.api.get("/listMessages", params={"channel": "staff"}).status_code == 403
    fake.api.post("/createChannel", json={"name": "open", "type": "PUBLIC"})
    assert fake.page(channel="open")["messages"] == []  # public: listable without the bot


# -- channels and the owner --------------------------------------------------------------------

def test_create_and_list_channels(fake):
    owner = fake.api.get("/myInfo").json()
    created = fake.api.post("/createChannel", json={"name": "Flash Sale", "type": "PRIVATE",
                                                    "description": "weekend"}).json()
    assert set(created) == {"id", "name"} and created["name"] == "flash-sale"
    assert HEX_ID.fullmatch(created["id"])
    listed = fake.api.get("/listChannels").json()
    assert isinstance(listed, list)
    assert [e["channel"]["name"] for e in listed] == ["general", "random", "orders", "flash-sale"]
    entry = listed[-1]
    assert entry["users"] == [owner["id"]]  # the bot is not in a new channel
    channel = entry["channel"]
    assert channel == {
        "id": created["id"], "name": "flash-sale", "channelType": "PRIVATE",
        "workspaceId": owner["workspaceId"], "description": "weekend", "creatorId": owner["id"],
        "isMember": True, "isArchived": False, "isAddonBot": False,
        "timestamp": channel["timestamp"], "timestampMilli": channel["timestampMilli"]}
    assert len(listed[0]["users"]) == 2  # a start-up channel has the owner and the bot


def test_my_info_is_the_key_owner(fake):
    info = fake.api.get("/myInfo").json()
    assert set(info) == {"id", "name", "email", "workspaceId", "role"}
    assert HEX_ID.fullmatch(info["id"]) and HEX_ID.fullmatch(info["workspaceId"])


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["ApiKey", "Api-Key"])
def test_unknown_or_missing_key_is_refused(fake, header):
    for headers in ({header: "not-a-key"}, {}):
        response = PLAIN.post(f"{fake.url}/sendMessage", headers=headers,
                              json={"channel": "orders", "text": "hi"})
        assert (response.status_code, response.json()) == (403, {"error": "Invalid API key"})
    accepted = PLAIN.get(f"{fake.url}/myInfo", headers={header: OTHER_KEY})
    assert accepted.status_code == 200
    assert fake.posted() == []


def test_with_no_keys_configured_any_key_is_accepted():
    server, _, _ = serve(keys=())
    with server:
        ok = PLAIN.get(f"{server.url}/myInfo", headers={"Api-Key": "anything"})
        missing = PLAIN.get(f"{server.url}/myInfo")
    assert (ok.status_code, missing.status_code) == (200, 403)


def test_unknown_channel_is_a_legacy_error(fake):
    for target in ({"channel": "nope"}, {"channelId": "0" * 24, "channel": "orders"}):
        response = fake.api.post("/sendMessage", json={"text": "hi", **target})
        assert (response.status_code, response.json()) == (
            403, {"error": "Could not find channel with that identifier"})
    assert fake.posted() == []


@pytest.mark.parametrize(("path", "body"), [
    ("/sendMessage", {"channel": "orders", "text": ""}),
    ("/sendMessage", {"channel": "orders"}),
    ("/sendMessage", {"text": "no channel"}),
    ("/sendMessage", {"channel": "orders", "text": "hi", "asBot": "yes"}),
    ("/sendMessage", ["not", "an", "object"]),
    ("/sendReply", {"text": "no root"}),
    ("/addReaction", {"reaction": ":grin:"}),
    ("/addReaction", {"messageId": "ROOT", "reaction": "grin"}),
    ("/addReaction", {"messageId": "ROOT", "reaction": "::"}),
    ("/addReaction", {"messageId": "ROOT", "reaction": f":{'a' * 99}:"}),
    ("/addReaction", {"messageId": "ROOT", "reaction": ":grin:", "skinTone": 7}),
    ("/addReaction", {"messageId": "ROOT", "reaction": ":grin:", "skinTone": 2.0}),
    ("/createChannel", {"name": "fresh", "type": "SECRET"}),
    ("/createChannel", {"name": "fresh"}),
    ("/createChannel", {"name": "General", "type": "PUBLIC"}),
    ("/createChannel", {"name": "", "type": "PUBLIC"}),
])
def test_bad_writes_are_validation_errors(fake, path, body):
    ref = fake.send("target")
    if isinstance(body, dict) and body.get("messageId") == "ROOT":
        body = {**body, "messageId": ref["id"]}
    response = fake.api.post(path, json=body)
    assert_validation_error(response)
    assert [m["id"] for m in fake.posted()] == [ref["id"]]
    assert fake.posted()[0]["reactions"] == []
    assert len(fake.api.get("/listChannels").json()) == 3


def test_wrong_channel_type_has_pumbles_message(fake):
    response = fake.api.post("/createChannel", json={"name": "x", "type": "public"})
    assert response.json()["message"] == "[Allowed values are PUBLIC|PRIVATE]"


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "201"}, {"limit": "abc"}, {"limit": "-1"},
    {"strategy": "SIDEWAYS"}, {"strategy": "before"}, {"channel": ""},
])
def test_bad_list_queries_are_validation_errors(fake, params):
    assert_validation_error(fake.api.get("/listMessages", params={"channel": "orders", **params}))


def test_limit_bounds_are_inclusive(fake):
    fake.send("m0")
    for limit in (1, 200):
        assert len(fake.page(limit=limit)["messages"]) == 1


def test_unknown_path_and_wrong_method(fake):
    unknown = fake.api.get("/noSuchThing")
    wrong = fake.api.get("/sendMessage")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Not found"})
    assert wrong.status_code == 405 and "error" in wrong.json()


# -- faults ---------------------------------------------------------------------------------------

def test_rate_limit_answers_429_until_a_slot_frees(fake):
    fake.faults(rate_limit={"per_minute": 2, "retry_after": None})
    fake.send("one")
    fake.clock.now += 20
    fake.send("two")
    fake.clock.now += 10
    limited = fake.api.post("/sendMessage", json={"channel": "orders", "text": "three"})
    assert limited.status_code == 429
    assert limited.json() == {"error": "Too many requests"}
    assert limited.headers["Retry-After"] == "30"  # "one" leaves the window 30 s from now
    other = PLAIN.get(f"{fake.url}/myInfo", headers={"ApiKey": OTHER_KEY})
    assert other.status_code == 200  # the limit is per key

    fake.clock.now += 29.5
    assert fake.api.get("/myInfo").headers["Retry-After"] == "1"  # at least 1
    fake.clock.now += 0.5
    fake.send("three")
    assert [m["text"] for m in fake.posted()] == ["one", "two", "three"]


def test_rate_limit_with_a_fixed_retry_after_set_at_start_up():
    server, _, _ = serve(Faults(rate_limit_per_minute=1, rate_limit_retry_after=7))
    with server:
        headers = {"ApiKey": KEY}
        first = PLAIN.get(f"{server.url}/myInfo", headers=headers)
        second = PLAIN.get(f"{server.url}/myInfo", headers=headers)
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.headers["Retry-After"] == "7"


def test_fail_next_fails_that_many_requests_then_recovers(fake):
    fake.faults(fail_next={"count": 2, "status": 502})
    for _ in range(2):
        failed = fake.api.post("/sendMessage", json={"channel": "orders", "text": "hi"})
        assert (failed.status_code, failed.json()) == (502, {"error": "Service unavailable"})
    assert fake.posted() == []
    fake.send("hi")
    assert len(fake.posted()) == 1
    assert fake.faults(fail_next={"count": 1})["fail_next"] == {"count": 1, "status": 503}
    assert fake.api.get("/listChannels").status_code == 503


def test_control_requests_are_not_faulted(fake):
    fake.faults(fail_next={"count": 1}, rate_limit={"per_minute": 1, "retry_after": None},
                drop_next=1)
    for _ in range(3):
        assert fake.control.get("/messages").status_code == 200
        fake.control.post("/channels", json={"name": "orders"}).raise_for_status()
    faults = fake.control.get("/faults").json()
    assert (faults["fail_next"]["count"], faults["drop_next"]) == (1, 1)


def test_delay_lets_a_client_time_out_yet_the_message_is_posted(fake):
    fake.faults(delay=0.3)
    with pytest.raises(httpx.ReadTimeout):
        fake.api.post("/sendMessage", json={"channel": "orders", "text": "late"}, timeout=0.1)
    assert fake.posted() == []  # still sleeping
    started = time.monotonic()
    assert fake.api.get("/myInfo").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert [m["text"] for m in fake.posted()] == ["late"]


def test_dropped_write_is_stored_but_never_answered(fake):
    fake.faults(drop_next=1)
    assert fake.api.get("/listChannels").status_code == 200  # reads are never dropped
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        fake.api.post("/sendMessage", json={"channel": "orders", "text": "accepted"})
    assert [m["text"] for m in fake.posted()] == ["accepted"]
    fake.send("answered")
    assert fake.faults()["drop_next"] == 0
    assert [m["text"] for m in fake.posted()] == ["accepted", "answered"]


def test_only_applied_writes_are_dropped(fake):
    ref = fake.send("to delete")
    fake.faults(drop_next=1)
    refused = fake.api.post("/sendMessage", json={"channel": "nope", "text": "x"})
    assert refused.status_code == 403  # answered: nothing was applied
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        fake.api.delete("/deleteMessage", params={"messageId": ref["id"]})
    assert fake.posted() == []


def test_faults_merge_clear_and_reject_nonsense(fake):
    fake.faults(rate_limit={"per_minute": 5, "retry_after": 2})
    merged = fake.faults(delay=0.01, fail_next={"count": 1, "status": 500})
    assert merged == {"rate_limit": {"per_minute": 5, "retry_after": 2},
                      "fail_next": {"count": 1, "status": 500}, "delay": 0.01, "drop_next": 0}
    assert fake.faults(rate_limit=None)["rate_limit"] is None
    for bad in ({"delay": -1}, {"drop_next": "2"}, {"rate_limit": {"per_minute": 0}},
                {"fail_next": {"status": 503}}, {"surprise": 1}):
        assert fake.control.post("/faults", json=bad).status_code == 400
    cleared = fake.control.delete("/faults").json()
    assert cleared == {"rate_limit": None, "fail_next": {"count": 0, "status": 503},
                       "delay": 0.0, "drop_next": 0}
    assert fake.api.get("/myInfo").status_code == 200


# -- reset ----------------------------------------------------------------------------------------

def test_reset_clears_messages_extra_channels_and_faults(fake):
    orders_id = fake.entry("orders")["channel"]["id"]
    fake.send("old")
    fake.api.post("/createChannel", json={"name": "temp", "type": "PUBLIC"})
    fake.control.post("/channels", json={"name": "orders", "bot_member": False})
    fake.faults(fail_next={"count": 5})

    assert fake.control.post("/reset").status_code == 200
    assert fake.posted() == []
    entries = fake.api.get("/listChannels").json()
    assert [e["channel"]["name"] for e in entries] == ["general", "random", "orders"]
    assert fake.entry("orders")["channel"]["id"] == orders_id
    assert len(fake.entry("orders")["users"]) == 2  # the bot is back
    assert fake.control.get("/faults").json()["fail_next"]["count"] == 0


def test_the_channel_view_shows_messages_as_sent_escaped(fake_pumble):
    httpx.post(f"{fake_pumble.url}/sendMessage", headers={"ApiKey": TEST_KEY},
               json={"channel": "orders", "text": "<b>Ada</b> & co", "asBot": True})
    page = httpx.get(f"{fake_pumble.url}/_fake/", params={"channel": "orders"})
    assert page.status_code == 200
    assert "&lt;b&gt;Ada&lt;/b&gt; &amp; co" in page.text
    assert "1 message(s)" in page.text


def test_the_channel_view_reads_like_a_chat(fake_pumble):
    api = {"headers": {"ApiKey": TEST_KEY}}

    def send(text: str, root: str = "") -> str:
        body = {"messageId": root} if root else {"channel": "orders", "asBot": True}
        answer = httpx.post(f"{fake_pumble.url}/{'sendReply' if root else 'sendMessage'}",
                            **api, json={**body, "text": text})
        answer.raise_for_status()
        return answer.json()["id"]

    first = send("Order #1: see https://shop.example/orders/1.")
    send("Order #2 [in the admin](https://shop.example/o/2?a=1&b=2) javascript:alert(1)")
    send("paid", root=first)
    httpx.post(f"{fake_pumble.url}/addReaction", **api,
               json={"messageId": first, "reaction": ":white_check_mark:"}).raise_for_status()
    page = httpx.get(f"{fake_pumble.url}/_fake/", params={"channel": "orders"}).text

    assert '<a href="https://shop.example/orders/1" target="_blank" rel="noopener noreferrer">' \
        'https://shop.example/orders/1</a>.' in page
    assert '<a href="https://shop.example/o/2?a=1&amp;b=2" target="_blank" ' \
        'rel="noopener noreferrer">in the admin</a> javascript:alert(1)' in page
    # The reply sits under its root (posted before the second order), with the root's reaction.
    order_1, reaction, replies, reply, order_2 = (page.index(text) for text in (
        "Order #1", "✅", "1 reply", ">paid<", "Order #2"))
    assert order_1 < reaction < replies < reply < order_2
    assert re.search(r'<time class="when" datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ">'
                     r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>', page)
