"""`pumble-bridge pumble …` against the fake over HTTP."""

import pytest

from bridge.cli import main
from tests.conftest import TEST_KEY


@pytest.fixture
def pumble(fake_pumble, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PUMBLE_API_KEY", TEST_KEY)
    monkeypatch.delenv("PUMBLE_BASE_URL", raising=False)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./config.yaml

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["pumble", "--base-url", fake_pumble.url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_send_then_list_react_reply_delete(pumble, fake_pumble):
    code, out, _ = pumble("send", "#orders", "Order #1 shipped")
    assert code == 0 and out.startswith("sent ")
    message_id = out.split()[1]
    code, out, _ = pumble("messages", "orders")
    assert code == 0 and message_id in out and "Order #1 shipped" in out
    assert pumble("react", message_id, "tada")[0] == 0
    assert pumble("reply", "orders", message_id, "on its way")[0] == 0
    [root] = [m for m in fake_pumble.messages("orders") if m["id"] == message_id]
    assert root["reactions"][0]["code"] == ":tada:"
    assert pumble("delete", "orders", message_id)[0] == 0
    assert message_id not in pumble("messages", "orders")[1]


def test_channels_and_create(pumble):
    assert pumble("create-channel", "Flash Sale", "--private")[1].startswith("created #flash-sale")
    code, out, _ = pumble("channels")
    assert code == 0
    assert "#flash-sale" in out and "PRIVATE" in out and "#general" in out


def test_error_is_one_line_and_non_zero(pumble):
    code, out, err = pumble("send", "nowhere", "hi")
    assert code == 1
    assert err.count("\n") == 1 and "Could not find channel" in err
    assert TEST_KEY not in err + out


def test_no_key_is_a_clear_error(pumble, monkeypatch):
    monkeypatch.delenv("PUMBLE_API_KEY")
    code, _, err = pumble("channels")
    assert code == 2
    assert "no Pumble API key" in err


def test_key_from_the_config(pumble, monkeypatch, write_config, fake_pumble):
    monkeypatch.delenv("PUMBLE_API_KEY")
    path = write_config(pumble_url=fake_pumble.url)
    assert main(["--config", str(path), "pumble", "send", "orders", "via config"]) == 0
    assert fake_pumble.messages("orders")[0]["text"] == "via config"


def test_base_url_goes_after_the_action_too(pumble, fake_pumble, capsys):
    assert main(["pumble", "whoami", "--base-url", fake_pumble.url]) == 0
    assert capsys.readouterr().out.strip().endswith("Fake Owner <owner@example.com>")


def test_messages_walk_on_from_a_cursor(pumble):
    sent = [pumble("send", "orders", f"order #{n}")[1].split()[1] for n in range(1, 4)]
    code, newest, _ = pumble("messages", "orders", "--limit", "1")
    assert code == 0 and [line.split()[0] for line in newest.splitlines()] == [sent[2]]
    code, older, _ = pumble("messages", "orders", "--cursor", sent[2])
    assert code == 0 and [line.split()[0] for line in older.splitlines()] == [sent[1], sent[0]]
