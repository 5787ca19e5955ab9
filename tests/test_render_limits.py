"""delivery.max_message_chars, and templates or values that would build too much: a message is
cut with a marker; a pathological value or expression is a short RenderError, quickly."""

from __future__ import annotations

import logging
import time
from datetime import UTC
from typing import Any

import httpx
import pytest
import yaml

from bridge import sandbox
from bridge.config import ConfigError, DeliverySettings, RouteSettings, load_config
from bridge.events import Event, SourceRef
from bridge.local_server import LocalServer
from bridge.render import CUT_MARKER, Renderer, RenderError
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources.shopify import sign
from bridge.web import create_app
from tests.conftest import TEST_SECRET

EVENT = Event(id="limits-1", type="order.created", source=SourceRef("shop", "shopify"))


def render(text: str, event: Event = EVENT, max_chars: int = 1_000) -> str:
    route = RouteSettings(name="r", channel="orders", text=text)
    env = sandbox.environment([], UTC, max_chars)
    return Renderer(env, [route]).render(route, event).text


def test_the_default_cap_is_12000_and_the_key_is_checked(write_config):
    assert DeliverySettings().max_message_chars == 12_000
    path = write_config()
    config = yaml.safe_load(path.read_text())
    config["delivery"] = {"max_message_chars": 10}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="max_message_chars"):
        load_config(path, {})


def test_a_long_message_is_cut_with_a_visible_marker_and_a_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.render"):
        text = render("{% for i in range(300) %}line {{ i }}\n{% endfor %}", max_chars=500)
    assert len(text) <= 500 and text.endswith(CUT_MARKER) and "…" in CUT_MARKER
    assert text.startswith("line 0\nline 1\n")
    [record] = caplog.records
    assert "limits-1" in record.getMessage() and "max_message_chars (500)" in record.getMessage()
    assert render("short") == "short" and len(caplog.records) == 1


def test_a_template_that_writes_without_end_stops_at_the_cap():
    started = time.monotonic()
    text = render("{% for i in range(100000) %}{{ 'a' * 900 }}{% endfor %}")
    assert text.endswith(CUT_MARKER) and len(text) <= 1_000
    assert time.monotonic() - started < 2  # not 90 MB built and thrown away


@pytest.mark.parametrize(("expression", "says"), [
    ("'a' * 10**8", "100,000,000 characters or items is over the limit of 1,000"),
    ("10**8 * 'a'", "over the limit"),
    ("[1, 2] * 10**6", "over the limit"),
    ("10 ** 100000000", "too large to write out"),
])
def test_a_template_cannot_build_a_huge_value(expression, says):
    started = time.monotonic()
    with pytest.raises(RenderError, match=says) as raised:
        render("{{ " + expression + " }}")
    assert len(str(raised.value)) < 150 and time.monotonic() - started < 1
    assert render("{{ 'ab' * 3 }} {{ 2 ** 10 }}") == "ababab 1024"  # small ones still work


def test_a_deeply_nested_value_is_a_short_render_error():
    nested: Any = "x"
    for _ in range(5_000):
        nested = {"a": nested}
    event = Event(id="deep", type="order.created", source=SourceRef("shop", "shopify"),
                  raw={"note_attributes": nested})
    with pytest.raises(RenderError) as raised:
        render("{{ raw.note_attributes }}", event)
    assert str(raised.value) == "route 'r': a value is nested too deeply to write out"
    assert raised.value.__suppress_context__  # no RecursionError traceback behind it


def test_a_deeply_nested_webhook_value_is_one_short_failure(bridge):
    """Over real HTTP: the webhook is accepted (202) and its route's failure is one short line."""
    b = bridge(routes=[{"name": "dump", "match": {"event": "order.created"},
                        "channel": "orders", "text": "{{ raw.note_attributes }}"}])
    payload = shopify_order(3001)
    payload["note_attributes"] = [[]]
    body = body_of(payload).replace(b"[[]]", b"[" * 1000 + b"]" * 1000)
    headers = shopify_headers(webhook_id="deep-1")
    headers["X-Shopify-Hmac-Sha256"] = sign(TEST_SECRET.encode(), body)
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        answer = httpx.post(f"{server.url}/webhooks/shop", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["failed"] == ["route 'dump': a value is nested too deeply to write out"]
