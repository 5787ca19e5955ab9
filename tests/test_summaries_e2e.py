"""Summaries end to end: webhooks over real HTTP into a real Redis, totals added at accept,
claimed once per period by the workers (time moved by the test's clock), posted to the fake
Pumble through the normal delivery path."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from bridge.cli import main
from bridge.local_server import LocalServer
from bridge.samples import body_of, shopify_headers, shopify_order, shopify_refund
from bridge.sources.shopify import sign
from bridge.summaries_post import SummaryPoster
from bridge.web import create_app
from tests.conftest import TEST_SECRET, Bridge, texts
from tests.test_e2e import clean_env, cli

BERLIN = ZoneInfo("Europe/Berlin")
ADMIN_TOKEN = "admin-token-5c2e8f1a9b3d7460"
DAILY = {"name": "daily", "channel": "orders", "schedule": "0 18 * * *",
         "timezone": "Europe/Berlin"}


def with_summaries(bridge, routes=None, summaries=(DAILY,)) -> Bridge:
    made = bridge(routes=routes)
    config = yaml.safe_load(made.path.read_text())
    config["summaries"] = list(summaries)
    made.path.write_text(yaml.safe_dump(config))
    return Bridge(made.path, made.redis_url, made.rq)


def deliver(url: str, topic: str, payload: dict, webhook_id: str | None = None) -> int:
    body = body_of(payload)
    headers = shopify_headers(topic, webhook_id)
    headers["X-Shopify-Hmac-Sha256"] = sign(TEST_SECRET.encode(), body)
    return httpx.post(f"{url}/webhooks/shop", content=body, headers=headers).status_code


def summaries_posted(fake_pumble) -> list[str]:
    return [text for text in texts(fake_pumble, "orders") if text.startswith("📊")]


def set_clock(b: Bridge, year: int, month: int, day: int, hour: int, minute: int = 0,
              second: int = 0) -> None:
    """The bridge's clock at this time in Berlin (the workers' and the summaries')."""
    target = dt.datetime(year, month, day, hour, minute, second, tzinfo=BERLIN).timestamp()
    b.clock.offset = target - (b.clock.time() - b.clock.offset)


def test_three_orders_and_a_refund_then_summary_now_posts_one_message(
        bridge, fake_pumble, capsys):
    b = with_summaries(bridge)
    eur, usd = shopify_order(2001), {**shopify_order(2002), "currency": "USD"}
    test_order = {**shopify_order(2004), "test": True}
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        assert deliver(server.url, "orders/create", eur, "wh-1") == 202
        assert deliver(server.url, "orders/create", eur, "wh-1") == 200  # a re-delivery
        assert deliver(server.url, "orders/create", shopify_order(2003)) == 202
        assert deliver(server.url, "orders/create", usd) == 202
        assert deliver(server.url, "refunds/create", shopify_refund(eur)) == 202
        assert deliver(server.url, "orders/create", test_order) == 202  # left out
    assert main(["--config", str(b.path), "summary", "daily", "--now"]) == 0
    assert "queued" in capsys.readouterr().out
    b.drain()
    [summary] = summaries_posted(fake_pumble)
    first, *rest = summary.splitlines()
    assert first.endswith(": 3 orders, 736.80 EUR, 368.40 USD")
    assert "Refunds: 19.90 EUR" in rest
    assert "Events: order.created 3 · refund.created 1" in rest
    [products] = [line for line in rest if line.startswith("Top products: ")]
    assert products.startswith("Top products: Organic Cotton Tee - White / L × 9, ")
    assert "Merino Wool Sweater - Forest Green / M × 6" in products
    assert products.count(" × ") == 5  # the five ordered most
    # The period is closed: the next covers nothing yet.
    assert main(["--config", str(b.path), "summary", "daily", "--dry-run"]) == 0
    assert "No events in this period." in capsys.readouterr().out


def test_a_due_period_is_posted_once_however_many_workers(bridge, fake_pumble, rq_queue):
    b = with_summaries(bridge, routes=[])
    set_clock(b, 2027, 3, 10, 17, 59)
    b.work()  # a first look: the summary's first period starts at yesterday's 18:00
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        assert deliver(server.url, "orders/create", shopify_order(3001)) == 202
    b.work()
    assert summaries_posted(fake_pumble) == []
    set_clock(b, 2027, 3, 10, 18, 0, 30)
    other = SummaryPoster(b.config, b.queue, b.clock)  # a second worker's
    b.work()
    assert other.post_due() == []
    b.work()
    [summary] = summaries_posted(fake_pumble)
    assert summary.startswith("📊 daily · Yesterday 18:00 \u2013 today 18:00: 1 order, 368.40 EUR")
    assert "late" not in summary
    assert other.post_due() == []  # the next period is tomorrow's


def test_periods_missed_while_down_are_posted_once_late(bridge, fake_pumble):
    b = with_summaries(bridge, routes=[])
    set_clock(b, 2027, 3, 8, 19)
    b.work()
    set_clock(b, 2027, 3, 11, 19, 30)  # three 18:00s went by with no worker running
    b.work()
    b.work()
    [summary] = summaries_posted(fake_pumble)
    assert summary.startswith("📊 daily · Mon 8 Mar 18:00 \u2013 today 18:00: 0 orders")
    assert "⏰ Posted late: the bridge was not running at 18:00." in summary


def test_a_worker_process_posts_a_due_summary_with_no_process_of_its_own(bridge, fake_pumble):
    b = with_summaries(bridge, routes=[], summaries=[{**DAILY, "schedule": "* * * * *"}])
    # Posted last two minutes ago: a period (a minute) has ended since, which is due now.
    poster = SummaryPoster(b.config, b.queue, b.clock)
    poster.totals.last_end("daily", (math.floor(b.clock.time() / 60) - 2) * 60)
    worker = cli("--config", str(b.path), "worker", "--burst", env=clean_env())
    assert worker.returncode == 0, worker.stderr
    [summary] = summaries_posted(fake_pumble)
    assert summary.startswith("📊 daily · ") and "No events in this period." in summary
    assert "late" not in summary


def test_a_claim_whose_worker_died_is_finished_by_the_next(bridge, fake_pumble):
    b = with_summaries(bridge, routes=[])
    set_clock(b, 2027, 3, 10, 12)
    poster = SummaryPoster(b.config, b.queue, b.clock)
    assert poster.post_due() == []
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        assert deliver(server.url, "orders/create", shopify_order(4001)) == 202
    set_clock(b, 2027, 3, 10, 18, 1)
    ends = dt.datetime(2027, 3, 10, 18, tzinfo=BERLIN).timestamp()
    first = dt.datetime(2027, 3, 9, 18, tzinfo=BERLIN).timestamp()
    assert poster.totals.claim("daily", ends, False, first)  # then the worker died
    assert not poster.totals.claim("daily", ends, False, first)  # nobody claims it again
    b.work()  # the next worker's maintenance queues it from the totals put aside
    b.work()
    [summary] = summaries_posted(fake_pumble)
    assert ": 1 order, 368.40 EUR" in summary.splitlines()[0]


@pytest.mark.parametrize(("flags", "said"), [
    ([], "is not due: next at"), (["--dry-run"], "📊 daily · "),
])
def test_summary_command_without_now(bridge, capsys, flags, said):
    b = with_summaries(bridge, routes=[])
    assert main(["--config", str(b.path), "summary", "daily", *flags]) == 0
    assert said in capsys.readouterr().out
    assert len(b.rq) == 0


def test_an_unknown_summary_is_one_clear_line(bridge, capsys):
    b = with_summaries(bridge, routes=[])
    assert main(["--config", str(b.path), "summary", "weekly"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"pumble-bridge: no summary named 'weekly' in {b.path} (configured: daily)"]


def test_the_admin_page_shows_upcoming_summaries(bridge):
    b = with_summaries(bridge, routes=[])
    config = yaml.safe_load(b.path.read_text())
    config["admin"] = {"token": ADMIN_TOKEN}
    b.path.write_text(yaml.safe_dump(config))
    app = create_app(Bridge(b.path, b.redis_url, b.rq).config, b.redis_url, watch=False)
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answer = app.test_client().get("/admin/queue",
                                   headers={**bearer, "Accept": "application/json"})
    [daily] = answer.json["summaries"]
    assert (daily["name"], daily["channel"]) == ("daily", "orders")
    assert " 18:00 " in daily["next"]
    html = app.test_client().get("/admin/queue", headers=bearer).text
    assert "Upcoming summaries" in html and f"<td>{daily['next']}</td>" in html
