"""``pumble-bridge status``: over a real Redis, after webhooks over real HTTP; exit 0 when
healthy, 1 when degraded, with the reasons."""

from __future__ import annotations

import json

from rq import Worker

from bridge.cli import main
from bridge.local_server import LocalServer
from bridge.queue import connect
from bridge.samples import shopify_order, shopify_refund
from bridge.status import STALE_QUEUE, gather
from bridge.web import create_app
from tests.conftest import MovedClock
from tests.test_summaries_e2e import deliver, with_summaries


def status(capsys, b, *flags: str) -> tuple[int, str]:
    code = main(["--config", str(b.path), "status", *flags])
    return code, capsys.readouterr().out


def test_status_shows_the_queue_sources_summaries_and_why_it_is_degraded(
        bridge, fake_pumble, rq_queue, capsys):
    b = with_summaries(bridge)
    order = shopify_order(5001)
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        assert deliver(server.url, "orders/create", order) == 202
        assert deliver(server.url, "refunds/create", shopify_refund(order)) == 202
        for payload in (shopify_order(5002), shopify_order(5003)):
            assert deliver(server.url, "orders/create", payload) == 202

    code, out = status(capsys, b, "--json")
    report = json.loads(out)
    assert code == 1 and not report["healthy"]
    assert report["problems"] == ["no live worker: nothing is being sent"]
    assert report["queued"] == 3  # the orders' messages (the refund has no route)
    assert report["oldest_queued_age"] is not None
    assert report["dead_letters"] == report["scheduled"] == 0
    assert report["sources"]["shop"]["type"] == "order.created"
    assert report["sources"]["shop"]["outcome"] == "waiting"
    assert report["rate_limits"]["default"]["messages"]["used"] == 0
    assert report["config"] == {"path": str(b.path), "valid": True, "problems": [],
                                "sources": 1, "routes": 1, "summaries": 1}
    [daily] = report["summaries"]
    assert (daily["name"], daily["channel"]) == ("daily", "orders")
    assert report["mutes"] == []

    b.drain()
    worker = Worker([rq_queue], connection=rq_queue.connection, name=f"{rq_queue.name}-w1")
    worker.register_birth()
    try:
        code, out = status(capsys, b)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0] == "healthy"
        assert f"queue {rq_queue.name}: 0 queued, 0 scheduled, 0 dead letter(s)" in lines
        assert any(line.startswith("  shop: ") and line.endswith(" order.created: sent")
                   for line in lines)
        assert any(line.startswith("  default: messages 3/") for line in lines)
        assert any(line.startswith("summary daily -> #orders: next ") for line in lines)
        assert "mutes: none" in lines
    finally:
        worker.register_death()


def test_a_config_that_does_not_load_is_degraded_and_said(bridge, capsys):
    b = with_summaries(bridge)
    b.path.write_text(b.path.read_text().replace("routes:", "rutes:"))
    code, out = status(capsys, b)
    assert code == 1
    assert f"  - config {b.path} does not load: {b.path}:" in out
    assert "unknown key (did you mean 'routes'?)" in out
    assert f"config {b.path}: does NOT load" in out


def test_a_queue_that_has_waited_too_long_is_degraded(bridge, rq_queue):
    b = with_summaries(bridge)
    b.enqueue()
    clock = MovedClock()
    clock.offset = STALE_QUEUE + 5
    connection = connect(b.redis_url)
    try:
        report = gather(b.config, connection, [], clock)
    finally:
        connection.close()
    assert report.problems[1].startswith("the oldest queued message has waited ")


def test_status_lists_a_mute_set_by_hand_with_who_and_until(bridge, capsys):
    b = with_summaries(bridge)
    assert main(["--config", str(b.path), "mute", "new-orders", "--for", "2h", "--by", "ada",
                 "--comment", "re-import"]) == 0
    capsys.readouterr()
    _, out = status(capsys, b, "--json")
    [mute] = json.loads(out)["mutes"]
    assert (mute["route"], mute["by"], mute["why"]) == ("new-orders", "ada", "re-import")
    assert mute["until"].startswith("20")  # an ISO time, about two hours from now
    _, out = status(capsys, b)
    assert any(line.startswith("mutes: new-orders until ") and line.endswith("(by ada)")
               for line in out.splitlines())
