"""Time intervals and mutes, end to end: webhooks over HTTP, a real Redis, the fake Pumble, and
workers that go by the test's clock (held notifications are posted when it is moved on)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from rq.job import Job
from rq.serializers import JSONSerializer

from bridge.cli import main
from bridge.cli_tools import mute_note
from bridge.config import ConfigError, load_config
from bridge.local_server import LocalServer
from bridge.mutes import HELD, Mutes, parse_duration, release_held
from bridge.store.keys import Keys
from bridge.web import create_app
from tests.conftest import TEST_KEY, TEST_SECRET, Bridge, signed_order, texts

BERLIN = ZoneInfo("Europe/Berlin")
NIGHTS = {"name": "nights", "time_intervals": [
    {"times": [{"start_time": "22:00", "end_time": "24:00"}], "location": "Europe/Berlin"},
    {"times": [{"start_time": "00:00", "end_time": "07:00"}], "location": "Europe/Berlin"}]}
ALWAYS = {"name": "always", "time_intervals": [{"months": ["january:december"]}]}
ADMIN_TOKEN = "admin-token-for-mutes-2f7c1e9a"
ORDERS = {"name": "new-orders", "match": {"source": ["shop"], "event": ["order.created"]},
          "channel": "orders", "template": "order_created.j2"}


def with_config(b: Bridge, **changes: Any) -> Bridge:
    """The bridge with top-level keys of its config changed (time_intervals, routes, ...)."""
    config = yaml.safe_load(b.path.read_text())
    config.update(changes)
    b.path.write_text(yaml.safe_dump(config))
    return Bridge(b.path, b.redis_url, b.rq)


def post_orders(b: Bridge, *numbers: int) -> None:
    """Signed orders, over HTTP, to a receiver of the bridge's config."""
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        for number in numbers:
            body, headers = signed_order(number, webhook_id=f"mute-{number}")
            answer = httpx.post(f"{server.url}/webhooks/shop", content=body, headers=headers)
            assert answer.status_code == 202, answer.text


def job(b: Bridge, job_id: str) -> Job:
    return Job.fetch(job_id, connection=b.rq.connection, serializer=JSONSerializer)


def mutes(b: Bridge) -> Mutes:
    return Mutes(b.rq.connection, b.config.redis.queue)


# -- mutes by hand ---------------------------------------------------------------------------------

def test_a_route_muted_for_two_minutes_holds_two_orders_and_posts_them_when_it_ends(
        bridge, fake_pumble):
    b = bridge()
    mutes(b).mute("new-orders", b.clock.time() + 120, "alice", "stock count")
    post_orders(b, 1001, 1002)

    b.work()
    assert texts(fake_pumble) == []
    held = b.rq.scheduled_job_registry.get_job_ids()
    assert len(held) == 2
    assert all(HELD in job(b, i).meta for i in held)

    b.drain()
    posted = texts(fake_pumble, "orders")
    # Both, once each (top-level messages are not held behind one another: either may go first).
    assert sorted(text.split(" · ")[0] for text in posted) == ["🛒 New order #1001",
                                                               "🛒 New order #1002"]
    assert 120 <= b.clock.offset < 125  # held until the mute ended, not longer


def test_held_time_does_not_count_toward_max_age(bridge, fake_pumble):
    b = bridge({"max_age": 60})
    mutes(b).mute("new-orders", b.clock.time() + 300, "alice")
    post_orders(b, 1001)

    b.drain()

    assert len(texts(fake_pumble, "orders")) == 1
    assert b.dead.list() == []


def test_unmute_releases_the_held_notifications_at_once(bridge, fake_pumble):
    b = bridge()
    mutes(b).mute("new-orders", b.clock.time() + 3600, "alice")
    post_orders(b, 1001)
    b.work()
    assert texts(fake_pumble) == []

    [held] = b.rq.scheduled_job_registry.get_job_ids()
    assert mutes(b).unmute("new-orders")
    assert release_held(b.rq, "new-orders") == 1
    assert release_held(b.rq, "new-orders") == 0  # moved once
    # As rq's own scheduler leaves a due job: on the queue, queued, out of the registry.
    assert b.rq.get_job_ids() == [held] and b.rq.scheduled_job_registry.get_job_ids() == []
    assert job(b, held).get_status() == "queued"
    b.work()

    assert len(texts(fake_pumble, "orders")) == 1
    assert b.clock.offset == 0  # no time passed: released, not due


def test_when_muted_drop_ends_it_unsent_counted_and_shown(bridge, fake_pumble):
    b = with_config(bridge(routes=[{**ORDERS, "when_muted": "drop"}]),
                    admin={"token": ADMIN_TOKEN})
    mutes(b).mute("new-orders", b.clock.time() + 120, "alice", "stock count")
    post_orders(b, 1001)

    b.drain()

    assert texts(fake_pumble) == []
    assert b.dead.list() == []
    [job_id] = b.rq.finished_job_registry.get_job_ids()
    assert "dropped" in job(b, job_id).return_value()
    samples = b.metrics.exposition()[0].decode()
    assert 'deliveries_total{outcome="dropped",route="new-orders"} 1.0' in samples
    client = create_app(b.config, b.redis_url, watch=False).test_client()
    event = client.get("/admin/events/mute-1001", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}).json
    [line] = event["lines"]
    [delivery] = line["deliveries"]
    assert (delivery["outcome"], delivery["dropped"]) == ("dropped",
                                                          "muted by alice (stock count)")
    page = client.get("/admin/events/mute-1001",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert "dropped while muted" in page and "muted by alice (stock count)" in page


def test_mutes_list_and_expire_by_themselves(bridge, redis_url):
    b = bridge()
    store = mutes(b)
    now = b.clock.time()
    store.mute("new-orders", now + 60, "alice", "deploy")

    [mute] = store.all(now)
    assert (mute.route, mute.by, mute.why, mute.until) == ("new-orders", "alice", "deploy",
                                                           now + 60)
    assert store.all(now + 61) == [] and store.get("new-orders", now + 61) is None
    ttl = b.rq.connection.ttl(Keys(b.config.redis.queue).mute("new-orders"))
    assert 0 < ttl <= 61


# -- time intervals --------------------------------------------------------------------------------

def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def test_a_route_muted_by_its_interval_is_held_until_it_ends(bridge, fake_pumble):
    route = {"name": "r", "match": {"event": ["*"]}, "channel": "orders", "text": "x",
             "mute_time_intervals": ["nights"]}
    b = with_config(bridge({"max_age": 10**9}), routes=[route], time_intervals=[NIGHTS])
    b.clock.offset = at("2026-12-07T23:00") - b.clock.time()  # 23:00 in Berlin
    b.enqueue("order #1")

    b.drain()

    assert texts(fake_pumble, "orders") == ["order #1"]
    posted_at = dt.datetime.fromtimestamp(b.clock.time(), BERLIN)
    assert (posted_at.date(), posted_at.hour) == (dt.date(2026, 12, 8), 7)


def test_routes_test_and_render_say_when_a_route_would_be_held(bridge, capsys):
    routes = [{**ORDERS, "mute_time_intervals": ["always"], "continue": True},
              {**ORDERS, "name": "nightly", "active_time_intervals": ["nights"],
               "when_muted": "drop"}]
    b = with_config(bridge(), routes=routes, time_intervals=[NIGHTS, ALWAYS])
    note = mute_note(b.config, now=at("2026-12-07T12:00"))
    assert note(b.config.routes[1]) == ("muted now (outside its active intervals (nights), "
                                        "until 2026-12-07 22:00 Europe/Berlin): would be dropped")
    assert note(b.config.routes[0]) == ("muted now (interval always, with no end in sight): "
                                        "would be held")

    code = main(["routes", "test", "--config", str(b.path), "--type", "order.created"])

    out = capsys.readouterr().out
    assert code == 0
    assert "    muted now (interval always, with no end in sight): would be held" in out


# -- config ----------------------------------------------------------------------------------------

def write(tmp_path: Path, **top: Any) -> Path:
    path = tmp_path / "muted.yaml"
    path.write_text(yaml.safe_dump({
        "pumble": {"api_key": TEST_KEY},
        "sources": {"shop": {"type": "shopify", "secret": TEST_SECRET}}, **top},
        sort_keys=False))
    return path


def test_an_unknown_interval_name_is_refused_with_did_you_mean(tmp_path):
    path = write(tmp_path, time_intervals=[NIGHTS],
                 routes=[{**ORDERS, "mute_time_intervals": ["nigths"]}])

    with pytest.raises(ConfigError) as refused:
        load_config(path, {})

    [line] = refused.value.problems
    assert line.startswith(f"{path}:")
    assert line.endswith("routes[0].mute_time_intervals[0]: unknown time interval 'nigths' "
                         "(did you mean 'nights'?)")


def test_a_bad_interval_entry_is_refused_with_its_place(tmp_path):
    bad = {"name": "lunch", "time_intervals": [{"times": [{"start_time": "13:00",
                                                           "end_time": "12:00"}]}]}
    path = write(tmp_path, time_intervals=[bad])

    with pytest.raises(ConfigError) as refused:
        load_config(path, {})

    [line] = refused.value.problems
    assert "time_intervals[0]: time interval 'lunch', entry 1: times: 13:00 is not before " \
        "12:00" in line


def test_intervals_in_alertmanagers_shape_load(tmp_path):
    whole = {"name": "business", "time_intervals": [{
        "times": [{"start_time": "09:00", "end_time": "17:00"}],
        "weekdays": ["monday:friday"], "days_of_month": ["1:-1"], "months": ["january:december"],
        "years": ["2026:2030"], "location": "Europe/Berlin"}]}
    config = load_config(write(tmp_path, time_intervals=[whole], routes=[
        {**ORDERS, "active_time_intervals": ["business"], "when_muted": "drop"}]), {})

    assert config.routes[0].active_time_intervals == ["business"]
    assert config.routes[0].when_muted == "drop"


# -- the CLI and the store -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("2m", 120), ("1h30m", 5400), ("2d", 172800),
                                               ("45s", 45), ("1w", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "m", "2x", "1h 30", "-2m", "0s"])
def test_bad_durations_say_so(text):
    with pytest.raises(ValueError, match=r"duration|no time"):
        parse_duration(text)


def test_mute_mutes_and_unmute_from_the_shell(bridge, capsys):
    b = bridge()

    assert main(["mute", "new-orders", "--for", "1h30m", "--comment", "stock count", "--by",
                 "alice", "--config", str(b.path)]) == 0
    assert main(["mutes", "--config", str(b.path)]) == 0
    assert main(["unmute", "new-orders", "--config", str(b.path)]) == 0
    assert main(["mute", "new-order", "--for", "2m", "--config", str(b.path)]) == 2
    assert main(["mute", "new-orders", "--for", "soon", "--config", str(b.path)]) == 2

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("muted new-orders until ") and lines[0].endswith(
        "its notifications are held, and sent when it ends")
    assert lines[1].startswith("new-orders  until ") and lines[1].endswith(
        "  by alice: stock count")
    assert lines[2] == "1 mute(s) set by hand, 0 route(s) in a muted time interval"
    assert lines[3] == "unmuted new-orders"
    assert "no route named 'new-order'" in err and "did you mean 'new-orders'?" in err
    assert "--for: 'soon' is not a duration" in err
    assert "Traceback" not in err


def test_the_keys_keep_their_literal_form():
    keys = Keys("q")
    assert [keys.mute("r"), keys.mute_prefix(), keys.alert_sent("dead_letter", "r"),
            keys.signature_failures("shop"), keys.heard_from("shop")] == [
        "pumble-bridge:q:mute:454349e422f05297191ead13e21d3db5",
        "pumble-bridge:q:mute:",
        "pumble-bridge:q:alert:8a65ff673ab3123a5998fde8d1550f9d",
        "pumble-bridge:q:signature-failures:8d9001d32c6a703d95921a77115050f3",
        "pumble-bridge:q:heard-from:8d9001d32c6a703d95921a77115050f3"]


# -- the admin page --------------------------------------------------------------------------------


def test_the_admin_page_lists_mutes_and_unmutes_with_its_csrf_token(bridge, fake_pumble):
    b = with_config(bridge(), admin={"token": ADMIN_TOKEN}, routes=[
        ORDERS, {**ORDERS, "name": "nightly", "mute_time_intervals": ["always"]}],
        time_intervals=[ALWAYS])
    mutes(b).mute("new-orders", b.clock.time() + 3600, "alice", "stock <count>")
    post_orders(b, 1001)
    b.work()
    client = create_app(b.config, b.redis_url, watch=False).test_client()
    assert client.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303

    page = client.get("/admin/routes").text
    assert "<b>new-orders</b>" in page and "alice" in page and "stock &lt;count&gt;" in page
    assert "<b>nightly</b>" in page and "interval always, with no end in sight" in page
    assert page.count(">Unmute</button>") == 1  # an interval is ended in the config, not here
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    refused = client.post("/admin/mutes/unmute", data={"route": "new-orders", "csrf": "x"})
    assert refused.status_code == 403 and mutes(b).get("new-orders", b.clock.time())

    done = client.post("/admin/mutes/unmute", data={"route": "new-orders", "csrf": csrf})

    assert done.status_code == 303
    assert "1 held notification(s) sent now" in client.get(done.headers["Location"]).text
    assert mutes(b).all(b.clock.time()) == []
    b.work()
    assert len(texts(fake_pumble, "orders")) == 1
    again = client.post("/admin/mutes/unmute", data={"route": "new-orders", "csrf": csrf})
    assert "was not muted" in client.get(again.headers["Location"]).text


def test_many_held_notifications_released_by_unmute_go_out_as_one_digest(bridge, fake_pumble):
    b = bridge({"rate_limits": {"messages": 2}, "digest": {"window": 60, "max_items": 10}})
    mutes(b).mute("new-orders", b.clock.time() + 3600, "alice")
    post_orders(b, *range(1001, 1006))
    b.work()
    mutes(b).unmute("new-orders")

    assert release_held(b.rq, "new-orders") == 5
    b.drain()

    [digest] = texts(fake_pumble, "orders")
    assert digest.startswith("📦 5 notifications (order.created)")
    assert [line.split(" · ")[0] for line in digest.splitlines()[1:]] == [
        f"• 🛒 New order #{n}" for n in range(1001, 1006)]  # in arrival order


def test_muting_needs_no_webhook_secret(bridge, capsys, monkeypatch):
    b = bridge()
    config = yaml.safe_load(b.path.read_text())
    config["sources"]["shop"]["secret"] = "${SHOP_SECRET}"  # not set
    b.path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv("SHOP_SECRET", raising=False)

    assert main(["mute", "new-orders", "--for", "2m", "--config", str(b.path)]) == 0
    assert main(["check", "--config", str(b.path)]) == 2  # a command that needs it says so

    assert "SHOP_SECRET is not set" in capsys.readouterr().err
