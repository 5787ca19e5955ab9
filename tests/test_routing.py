from datetime import UTC
from decimal import Decimal

import pytest

from bridge import sandbox
from bridge.config import RouteSettings, shipped_templates_dir
from bridge.events import Customer, Event, LineItem, Order, SourceRef
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


def test_match_test_leaves_test_events_out_or_takes_only_them():
    table = router({"name": "live", "match": {"event": ["order.*"], "test": False}},
                   {"name": "sandbox", "match": {"test": True}}, {"name": "rest"})
    test_order = Event(id="1", type="order.paid", source=SourceRef("shop", "shopify"), test=True)
    assert names(table, event("order.paid")) == ["live"]
    assert names(table, test_order) == ["sandbox"]  # the same kind, remembered apart
    assert names(table, event("order.paid")) == ["live"]
    verdicts = {d.route.name: d.reason for d in table.explain(test_order)}
    assert verdicts["live"] == "a test event"


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


@pytest.mark.parametrize("when", [
    "order.__class__",
    "order.__dataclass_fields__",
    'order["__class__"]',
    "order.items[0].__class__.__mro__",
    "(order.items | map(attribute='__class__') | first).__init__",
    "order.total.__class__.__subclasses__()",
    "raw.clear() is none",
])
def test_when_cannot_reach_internals_through_event_fields(when):
    table = router({"name": "x", "when": f"({when}) is not none and ({when}) is defined"},
                   {"name": "rest"})
    event = event_with_items()
    assert names(table, event) == ["rest"]
    assert event.raw == {"id": 1}


def event_with_items() -> Event:
    return event("order.created", order=Order(id="1", total=Decimal("1"),
                                              items=(LineItem(name="Tee", sku="T-1"),)),
                 raw={"id": 1})


def test_conditions_share_nothing_but_the_event():
    # One context serves all of an event's conditions: what one stores is not seen by the next.
    table = router({"name": "a", "when": "order.total > 0", "continue": True},
                   {"name": "b", "when": "result is defined", "continue": True},
                   {"name": "c", "when": "order.nope.deeper > 1", "continue": True},
                   {"name": "d", "when": "result is undefined"})
    assert names(table, big_order("5")) == ["a", "d"]


def test_match_is_what_explain_calls_matched():
    table = router({"name": "eu", "match": {"source": ["shop-eu*"]}, "continue": True},
                   {"name": "big", "when": "order.total >= 500", "continue": True},
                   {"name": "refunds", "match": {"event": ["refund.*"]}},
                   {"name": "vip", "when": '"vip" in customer.tags'},
                   {"name": "orders", "match": {"event": ["order.*"]}},
                   {"name": "rest"})
    events = [big_order("900"), big_order("1", tags=("vip",)), big_order("10"),
              event("refund.created"), event("refund.created", "shop-eu-1"),
              event("order.paid", "shop-eu-2"), event("customer.created")]
    for one in events * 2:  # twice: the second time from the remembered glob verdicts
        explained = [d.route.name for d in table.explain(one) if d.matched]
        assert names(table, one) == explained, one


def test_glob_verdicts_are_per_source_and_event_type():
    table = router({"name": "eu-orders", "match": {"source": ["shop-eu*"], "event": ["order.*"]}},
                   {"name": "rest"})
    for _ in range(2):
        assert names(table, event("order.paid", "shop-eu-2")) == ["eu-orders"]
        assert names(table, event("order.paid", "shop-us")) == ["rest"]
        assert names(table, event("refund.created", "shop-eu-2")) == ["rest"]
