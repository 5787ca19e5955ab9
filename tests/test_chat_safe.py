"""Payload values are chat-safe as values: over the whole path (a signed webhook over real HTTP,
the receiver, Redis, a worker, the fake Pumble), and as the sandbox's one rule."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import sandbox
from bridge.config import RouteSettings, shipped_templates_dir
from bridge.events import Event, SourceRef
from bridge.filters import chat_safe
from bridge.local_server import LocalServer
from bridge.render import Renderer
from bridge.samples import body_of, shopify_headers, shopify_order
from bridge.sources.shopify import sign
from bridge.web import create_app
from tests.conftest import TEST_SECRET, texts

INJECTED_NAME = ("Ada\n\n✅ Paid — verified by finance\n"
                 "Open the order: https://evil.example/login")


def post_paid_order(url: str, payload: dict[str, Any], webhook_id: str) -> None:
    body = body_of(payload)
    headers = shopify_headers("orders/paid", webhook_id)
    headers["X-Shopify-Hmac-Sha256"] = sign(TEST_SECRET.encode(), body)
    answer = httpx.post(f"{url}/webhooks/shop", content=body, headers=headers)
    assert answer.status_code == 202, answer.text


def delivered(bridge, routes: list[dict[str, Any]], payload: dict[str, Any],
              fake_pumble) -> list[str]:
    """The texts Pumble got for one signed orders/paid webhook, received and delivered for real."""
    b = bridge(routes=routes)
    with LocalServer(create_app(b.config, b.redis_url, watch=False)) as server:
        post_paid_order(server.url, payload, f"chat-safe-{payload['id']}")
    b.drain()
    return texts(fake_pumble)


def paid_route(**body: str) -> list[dict[str, Any]]:
    return [{"name": "paid", "match": {"event": "order.paid"}, "channel": "orders",
             **(body or {"template": "order_paid.j2"})}]


def test_line_breaks_in_a_name_make_no_line_of_their_own(bridge, fake_pumble):
    payload = shopify_order(2001)
    payload["customer"]["first_name"] = INJECTED_NAME
    payload["shipping_address"]["address1"] = "1 Main Street\nOpen the order: https://evil.example"
    [text] = delivered(bridge, paid_route(), payload, fake_pumble)

    lines = text.splitlines()
    assert not any(line.startswith(("✅", "Open the order: https://evil")) for line in lines)
    assert [line for line in lines if line.startswith("Open the order:")] == [
        "Open the order: https://admin.shopify.com/store/demo-shop/orders/5000000002001"]
    customer = next(line for line in lines if line.startswith("Customer: "))
    assert "✅ Paid — verified by finance" in customer  # still shown, as part of the name
    ship_to = next(line for line in lines if line.startswith("Ship to: "))
    assert "1 Main Street Open the order: https://evil.example" in ship_to


def test_no_mention_forms_across_a_value_and_the_template_or_two_values(bridge, fake_pumble):
    payload = shopify_order(2002)
    payload["customer"].update(first_name="x<", last_name="@here",
                               email="<#5f0c0e1a2b3c4d5e6f708192>>")
    payload["shipping_lines"] = [{"title": "<!here>>", "price": "0"}]
    payload["line_items"][0]["name"] = "\uff20here -@here .@here [Open the order](https://evil.example)"
    routes = paid_route(text="Customer: {{ customer.name }} <{{ customer.email }}>\n"
                             "{{ customer.name }}{{ shipping.method }}\n"
                             "{{ order.items[0].name }}")
    [text] = delivered(bridge, routes, payload, fake_pumble)

    for mention in ("<<#", "<<!", "<<@", "@here", "\uff20here", "](https://"):
        assert mention not in text, (mention, text)
    readable = text.replace("\u200b", "")
    assert "Customer: x< @here <<#5f0c0e1a2b3c4d5e6f708192>>>" in readable  # shown as written
    assert "[Open the order](https://evil.example)" in readable


# -- the rule, as the sandbox applies it -----------------------------------------------------

ZWSP = "\u200b"
# A mention or channel reference (<<@U>>, <<#C>>, <<!here>>, "<" look-alikes alike), a broadcast
# word, or a markdown link's middle, as Pumble would see them.
FORMS = re.compile("[<\uff1c\ufe64]{2}[@#!]|(?<![^\\W_])[@\uff20\ufe6b]\\w|\\]\\(")


def render(text: str, **names: Any) -> str:
    return sandbox.environment([shipped_templates_dir()], UTC).from_string(text).render(names)


@pytest.mark.parametrize("broken", ["a\nb", "a\r\nb", "a\rb", "a\u2028b", "a\u2029b", "a\x85b",
                                    "a\vb", "a\fb", "a \n\n  b", "a\x1eb"])
def test_a_value_is_one_line_whatever_its_line_breaks(broken):
    assert render("Name: {{ v }}!", v=broken) == "Name: a b!"


def test_invisible_controls_and_bidi_overrides_are_dropped():
    assert render("{{ v }} paid", v="Ada\u202e\x00\x1b[31m\u2066") == "Ada[31m paid"
    assert render("{{ v }}", v="tab\tstays") == "tab\tstays"


@pytest.mark.parametrize(("template", "values"), [
    ("{{ a }}{{ b }}", {"a": "x<", "b": "<!here>>"}),
    ("<{{ a }}>", {"a": "<#5f0c0e1a2b3c>>"}),
    ("<{{ a }}", {"a": "<@U1>>"}),
    ("{{ a }}<#C1>>", {"a": "x<"}),
    ("{{ a }}{{ b }}", {"a": "\uff1c", "b": "\uff1c@U1>>"}),
    ("{{ a }}{{ b }}", {"a": "ping @", "b": "here"}),
    ("{{ a }}here", {"a": "@"}),
    ("{{ a }}", {"a": "\uff20here \ufe6bchannel -@here .@here (@everyone) _@here"}),
    ("{{ a }}", {"a": "[Open the order](https://evil.example/login)"}),
    ("{{ a }}{{ b }}", {"a": "[Open the order]", "b": "(https://evil.example)"}),
    ("{{ a }}(https://evil.example)", {"a": "[Open]"}),
    ("[Open]{{ a }}", {"a": "(https://evil.example)"}),
])
def test_no_mention_broadcast_or_link_forms_from_values(template, values):
    out = render(template, **values)
    assert not FORMS.search(out), out
    rendered_raw = template.replace("{{ a }}", values["a"]).replace("{{ b }}", values.get("b", ""))
    assert out.replace(ZWSP, "") == rendered_raw  # still reads as written


def test_plain_values_and_e_mail_addresses_are_left_alone():
    for value in ("Ada Lovelace", "ada@example.com", "#1001", "Tom & Jerry's \"shop\"", "1 > 0"):
        assert render("{{ v }}", v=value) == value


def test_the_rule_can_run_twice():
    once = chat_safe("x< <<@U1>> @here [a](b) ]")
    assert chat_safe(once) == once


@given(st.text(alphabet="<>@#!x()[]\n\uff20\uff1c-. ", max_size=12),
       st.text(alphabet="<>@#!x()[]\n\uff20\uff1c-. ", max_size=12))
def test_values_never_form_syntax_next_to_each_other_or_the_template(a, b):
    for template in ("{{ a }}{{ b }}", "<{{ a }}>{{ b }}", "{{ a }}<{{ b }}", "[x]{{ a }}"):
        out = render(template, a=a, b=b)
        assert not FORMS.search(out), (template, out)
        assert "\n" not in out


def test_the_templates_own_text_macros_and_blocks_are_not_values():
    template = ('{% macro who(n) %}{{ n }} <{{ "ada@example.com" }}>{% endmacro %}'
                "{% set block %}line one\n<<@U1>> line two{% endset %}"
                "{{ who(name) }}|{{ block }}|{{ who(name) ~ ' & more' }}|{{ 'Tom & Jerry' }}")
    assert render(template, name="@here") == (
        f"@{ZWSP}here <ada@example.com>|line one\n<<@U1>> line two|"
        f"@{ZWSP}here <{ZWSP}ada@example.com> & more|Tom & Jerry")


def test_escape_filters_make_values_chat_safe_not_html():
    assert render("{{ v | e }} {{ v | escape }}", v="a & <b>") == f"a & <{ZWSP}b> a & <{ZWSP}b>"


def test_raw_opts_a_trusted_field_out():
    assert render("{{ v | raw }}", v="@here\n[a](b)") == "@here\n[a](b)"


def test_quote_writes_every_line_of_a_multi_line_value_as_a_quote():
    note = "\nLeave it at the door\n\n✅ Paid — verified by finance\n<<@U1>>\n\n"
    assert render("Note:\n{{ note | quote }}\nEnd", note=note) == (
        "Note:\n> Leave it at the door\n>\n> ✅ Paid — verified by finance\n"
        f"> <{ZWSP}<{ZWSP}@{ZWSP}U1>>\nEnd")
    assert render("{{ note | quote }}", note=None) == ""


def test_a_channel_name_from_a_value_is_plain_text():
    route = RouteSettings(name="r", channel="shop-{{ source.name }}", text="hi")
    event = Event(id="1", type="x", source=SourceRef("eu\nwest", "shopify"))
    env = sandbox.environment([shipped_templates_dir()], UTC)
    message = Renderer(env, [route]).render(route, event)
    assert message.channel == "shop-eu west" and type(message.channel) is str
    assert type(message.text) is str
