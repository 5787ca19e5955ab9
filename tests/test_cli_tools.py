"""`pumble-bridge render`, `routes test` and `check --online`, through main() with real files."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from bridge.samples import shopify_order
from tests.conftest import TEST_KEY, TEST_SECRET

PAYLOADS = Path(__file__).parent / "payloads"
SOURCES = {
    "shop": {"type": "shopify", "secret": TEST_SECRET},
    "woo": {"type": "woocommerce", "secret": TEST_SECRET},
    "pay": {"type": "stripe", "secret": "whsec_test"},
}
BIG_ORDERS = {"name": "big-orders", "match": {"event": "order.created"},
              "when": "order.total >= 500", "channel": "big-orders",
              "text": "Big order: {{ order.total | money(order.currency) }}"}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for name in ("PUMBLE_API_KEY", "PUMBLE_BASE_URL", "BRIDGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config(tmp_path):
    def write(routes: list[dict[str, Any]], *, pumble_url: str = "http://127.0.0.1:9",
              api_key: str | None = TEST_KEY) -> str:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "pumble": {"base_url": pumble_url, "api_key": api_key},
            "sources": SOURCES, "routes": routes}, sort_keys=False))
        return str(path)

    return write


@pytest.fixture
def run(capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- render ------------------------------------------------------------------------------------

def test_render_shows_every_verdict_and_the_exact_message(config, run, tmp_path, fake_pumble):
    path = config([
        {"name": "new-orders", "match": {"source": "shop", "event": "order.created"},
         "channel": "orders", "template": "order_created.j2"},
        {"name": "refunds", "match": {"event": "refund.created"}, "channel": "refunds"},
    ], pumble_url=fake_pumble.url)
    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(shopify_order(1001)))

    code, out, err = run("render", "--config", path, "--source", "shop",
                         "--topic", "orders/create", str(payload))

    assert code == 0, err
    lines = out.splitlines()
    assert "signature NOT verified" in lines[0] and "nothing sent" in lines[0]
    assert lines[1].startswith("event: order.created  id=")
    assert "  order: id=5000000001001 number=1001 name=#1001 total=368.40" in out
    assert '  customer: name="Ada Lovelace" email=ada@example.com tags=vip' in out
    assert "  MATCH     new-orders: matched" in lines
    assert ("  no match  refunds: not reached: route 'new-orders' matched first (no continue)"
            in lines)
    channel = lines.index("    channel: orders  (as the bot)")
    assert lines[channel + 1:channel + 3] == ["    text:", "      🛒 New order #1001 · 368.40 EUR"]
    assert "      • 2 × Merino Wool Sweater - Forest Green / M" in lines
    assert lines[-1] == "1 of 2 route(s) matched: 1 message(s) would be sent"
    assert fake_pumble.messages() == []  # nothing was posted


def test_render_reason_of_a_route_that_does_not_match(config, run, tmp_path):
    path = config([
        {"name": "refunds", "match": {"event": "refund.*"}, "channel": "refunds"},
        {"name": "all", "channel": "everything", "text": "{{ event.type }} {{ order.name }}"},
    ])
    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(shopify_order(1002)))

    code, out, _ = run("render", "--config", path, "--source", "shop",
                       "--topic", "orders/create", str(payload))

    assert code == 0
    assert "  no match  refunds: event type 'order.created' is not in ['refund.*']" in out
    assert "    channel: everything  (as the bot)\n    text:\n      order.created #1002\n" in out


def test_render_woocommerce_payload_takes_the_topic_header(config, run):
    path = config([
        {"name": "shop-only", "match": {"source": "shop"}, "channel": "orders"},
        {"name": "paid", "match": {"source": "woo", "event": "order.paid"}, "channel": "paid",
         "text": "{{ order.name }} paid by {{ customer.name }}: "
                 "{{ order.total | money(order.currency) }}"},
    ])
    payload = PAYLOADS / "woocommerce" / "order_updated_processing.json"

    code, out, err = run("render", "--config", path, "--source", "woo",
                         "--topic", "order.updated", str(payload))

    assert code == 0, err
    assert "event: order.paid  id=" in out  # order.updated with status processing is a payment
    assert "  no match  shop-only: source 'woo' is not in ['shop']" in out
    assert "  MATCH     paid: matched" in out
    assert "    channel: paid  (as the bot)\n    text:\n      #727 paid by Ada Lovelace: " in out


def test_render_reads_stdin(config, run, monkeypatch):
    path = config([BIG_ORDERS])
    body = (PAYLOADS / "stripe" / "checkout_session_completed.json").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))

    code, out, _ = run("render", "--config", path, "--source", "pay", "-")

    assert code == 0
    assert "stdin as source 'pay' (stripe)" in out.splitlines()[0]
    assert "event: order.paid  id=evt_" in out
    assert "  no match  big-orders: event type 'order.paid' is not in ['order.created']" in out


def test_render_payload_that_is_not_json_exits_1(config, run, tmp_path):
    payload = tmp_path / "broken.json"
    payload.write_text("{not json")

    code, out, err = run("render", "--config", config([BIG_ORDERS]), "--source", "shop",
                         "--topic", "orders/create", str(payload))

    assert code == 1
    assert err.count("\n") == 1
    assert "broken.json: cannot be parsed as shopify: body is not valid JSON" in err
    assert "MATCH" not in out and "no match" not in out


def test_render_unknown_source_exits_2(config, run, tmp_path):
    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(shopify_order()))

    code, out, err = run("render", "--config", config([BIG_ORDERS]), "--source", "shopp",
                         "--topic", "orders/create", str(payload))

    assert code == 2
    assert out == ""
    assert "no source named 'shopp'" in err and "(configured: shop, woo, pay)" in err


def test_render_topic_is_required_or_refused_by_platform(config, run, tmp_path):
    path = config([BIG_ORDERS])
    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(shopify_order()))

    code, _, err = run("render", "--config", path, "--source", "shop", str(payload))
    assert code == 2
    assert "X-Shopify-Topic header: give --topic (e.g. orders/create)" in err

    code, _, err = run("render", "--config", path, "--source", "pay", "--topic", "x",
                       str(payload))
    assert code == 2
    assert "--topic does not apply to stripe source 'pay'" in err


def test_render_exits_1_when_a_matched_route_fails_to_render(config, run, tmp_path):
    path = config([{"name": "broken", "channel": "orders",
                    "text": "{{ order.total + 'EUR' }}"}])
    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(shopify_order()))

    code, out, _ = run("render", "--config", path, "--source", "shop",
                       "--topic", "orders/create", str(payload))

    assert code == 1
    assert "    render error: route 'broken': TypeError" in out
    assert out.splitlines()[-1].endswith("1 route(s) failed to render")


# -- routes test -------------------------------------------------------------------------------

def test_routes_test_total_over_the_threshold_matches(config, run):
    path = config([BIG_ORDERS])

    code, out, err = run("routes", "test", "--config", path, "--type", "order.created",
                         "--set", "order.total=600", "--set", "order.currency=EUR")

    assert code == 0, err
    assert "synthetic event" in out.splitlines()[0] and "source 'shop' (shopify)" in out
    assert "event: order.created  id=routes-test  source=shop (shopify)" in out
    assert "  MATCH     big-orders: matched" in out
    assert "    channel: big-orders  (as the bot)\n    text:\n      Big order: 600.00 EUR\n" in out


def test_routes_test_total_under_the_threshold_does_not_match(config, run):
    code, out, _ = run("routes", "test", "--config", config([BIG_ORDERS]),
                       "--type", "order.created", "--set", "order.total=400")

    assert code == 0
    assert "  no match  big-orders: when is false: order.total >= 500" in out
    assert out.splitlines()[-1] == "no route matched: nothing would be sent"


def test_routes_test_coerces_tags_and_counts_and_takes_a_source(config, run):
    path = config([
        {"name": "b2b", "match": {"source": "pay"},
         "when": "customer.tags | length == 2 and customer.orders_count > 9",
         "channel": "b2b", "text": "{{ customer.tags | join('+') }}"},
    ])

    code, out, _ = run("routes", "test", "--config", path, "--type", "customer.created",
                       "--source", "pay", "--set", "customer.tags=vip, b2b",
                       "--set", "customer.orders_count=10")

    assert code == 0
    assert "source=pay (stripe)" in out
    assert "  customer: tags=vip,b2b orders_count=10" in out
    assert "      vip+b2b\n" in out


def test_routes_test_unknown_field_lists_the_known_ones(config, run):
    code, out, err = run("routes", "test", "--config", config([BIG_ORDERS]),
                         "--type", "order.created", "--set", "order.totl=600")

    assert code == 2
    assert out == ""
    assert "--set order.totl: unknown field (did you mean order.total?)" in err
    assert "known fields: order.id, " in err and "customer.tags" in err and "refund.amount" in err


def test_routes_test_value_that_is_not_a_number(config, run):
    code, _, err = run("routes", "test", "--config", config([BIG_ORDERS]),
                       "--type", "order.created", "--set", "order.total=lots")

    assert code == 2
    assert "--set order.total: 'lots' is not a number" in err


# -- check --online ----------------------------------------------------------------------------

def test_check_online_ok_against_the_fake(config, run, fake_pumble):
    path = config([
        {"name": "new-orders", "channel": "#Orders", "template": "order_created.j2"},
        {"name": "per-shop", "channel": "shop-{{ source.name }}"},
    ], pumble_url=fake_pumble.url)

    code, out, err = run("check", "--online", "--config", path)

    assert code == 0, err
    assert out.startswith(f"{path}: OK (3 source(s), 2 route(s))\n")
    assert "online: account 'default': the key works (Fake Owner <owner@example.com>" in out
    assert "route 'per-shop': channel 'shop-{{ source.name }}' is chosen per event" in out
    assert out.splitlines()[-1] == "online: OK (every static route channel exists)"


def test_check_online_names_the_route_whose_channel_is_missing(config, run, fake_pumble):
    path = config([
        {"name": "new-orders", "channel": "orders"},
        {"name": "vip", "channel": "vip-orders"},
    ], pumble_url=fake_pumble.url)

    code, out, err = run("check", "--config", path, "--online")

    assert code == 1
    assert err == ("pumble-bridge: check --online: route 'vip': channel 'vip-orders' does not "
                   "exist (or account 'default' cannot see it)\n")
    assert out.splitlines()[-1] == "online: 1 problem(s)"


def test_check_online_with_a_key_pumble_refuses(config, run, fake_pumble):
    path = config([{"name": "new-orders", "channel": "orders"}], pumble_url=fake_pumble.url,
                  api_key="not-the-key")

    code, _, err = run("check", "--config", path, "--online")

    assert code == 1
    assert "account 'default'" in err and "GET /myInfo: HTTP 403: Invalid API key" in err
    assert "not-the-key" not in err


def test_check_online_without_a_key_is_a_clear_error(config, run, fake_pumble):
    path = config([{"name": "new-orders", "channel": "orders"}], pumble_url=fake_pumble.url,
                  api_key=None)

    code, _, err = run("check", "--config", path, "--online")

    assert code == 2
    assert "check --online needs a Pumble API key" in err


def test_check_offline_is_unchanged(config, run):
    # The unreachable Pumble at 127.0.0.1:9 is not asked without --online.
    code, out, err = run("check", "--config", config([{"name": "x", "channel": "nowhere"}]))

    assert code == 0, err
    assert "online" not in out
