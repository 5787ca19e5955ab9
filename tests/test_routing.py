from datetime import UTC
from decimal import Decimal

import pytest

from bridge import sandbox
from bridge.config import RouteSettings, shipped_templates_dir
from bridge.events import Customer, Event, Order, SourceRef
from bridge.routing import Router


def event(type_: str, source: str = "shop", **parts) -> Event:
    return Event(id="1", type=type_, source=SourceRef(source, "shopify"), **parts)


def router(*specs: dict) -> Router:
    routes = [RouteSettings(**{"channel": "c", "text": "t", **spec}) for spec in specs]
    return Router(sandbox.environment([shipped_templates_dir()], UTC), routes)


def names(router: Router, event: Event) -> list[str]:
    return [route.name for route in router.match(event)]


def test_first_match_wins():
    table = router({"name": "a", "match": {"event": ["order.*"]}}, {"name": "b"})
    assert names(table, event("order.paid")) == ["a"]
    assert names(table, event("refund.created")) == ["b"]


def test_continue_keeps_matching():
    table = router({"name": "a", "continue": True}, {"name": "b"}, {"name": "c"})
    assert names(table, event("order.paid")) == ["a", "b"]


def test_source_globs():
    table = router({"name": "eu", "match": {"source": ["shop-eu*"]}})
    assert names(table, event("order.paid", "shop-eu-2")) == ["eu"]
    assert names(table, event("order.paid", "shop-us")) == []


def big_order(total: str, currency: str = "EUR", tags: tuple[str, ...] = ()) -> Event:
    return event("order.created", order=Order(id="1", total=Decimal(total), currency=currency),
                 customer=Customer(name="Ada", tags=tags))


def test_when_compares_exact_amounts():
    table = router({"name": "big", "when": 'order.total >= 500 and order.currency == "EUR"'},
                   {"name": "rest"})
    assert names(table, big_order("500.00")) == ["big"]
    assert names(table, big_order("499.99")) == ["rest"]
    assert names(table, big_order("900", "USD")) == ["rest"]


def test_when_sees_tags():
    table = router({"name": "vip", "when": '"vip" in customer.tags'}, {"name": "rest"})
    assert names(table, big_order("1", tags=("vip", "b2b"))) == ["vip"]
    assert names(table, big_order("1")) == ["rest"]


def test_when_that_cannot_be_evaluated_is_false():
    table = router({"name": "big", "when": "order.total >= 500"}, {"name": "catch-all"})
    assert names(table, event("customer.created")) == ["catch-all"]  # no order at all


def test_when_with_a_syntax_error_fails_at_load():
    with pytest.raises(ValueError, match="route 'bad': when:"):
        router({"name": "bad", "when": "order.total >="})


def test_when_cannot_reach_python_internals():
    table = router({"name": "x", "when": "order.__class__.__mro__[1].__subclasses__()"},
                   {"name": "rest"})
    assert names(table, big_order("1")) == ["rest"]


def test_explain_says_why_each_route_did_or_did_not_match():
    table = router({"name": "eu", "match": {"source": ["shop-eu"]}},
                   {"name": "refunds", "match": {"event": ["refund.*"]}},
                   {"name": "big", "when": "order.total >= 500"},
                   {"name": "all"}, {"name": "after"})
    reasons = {d.route.name: (d.matched, d.reason) for d in table.explain(big_order("20"))}
    assert reasons["eu"] == (False, "source 'shop' is not in ['shop-eu']")
    assert reasons["refunds"] == (False, "event type 'order.created' is not in ['refund.*']")
    assert reasons["big"] == (False, "when is false: order.total >= 500")
    assert reasons["all"] == (True, "matched")
    assert reasons["after"] == (False, "not reached: route 'all' matched first (no continue)")
