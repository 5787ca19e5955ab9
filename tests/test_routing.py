from bridge.config import RouteSettings
from bridge.events import Event, SourceRef
from bridge.routing import match_routes


def event(type_: str, source: str = "shop") -> Event:
    return Event(id="1", type=type_, source=SourceRef(source, "shopify"))


def routes(*specs: dict) -> list[RouteSettings]:
    return [RouteSettings(**{"channel": "c", "text": "t", **spec}) for spec in specs]


def test_first_match_wins():
    table = routes({"name": "a", "match": {"event": ["order.*"]}}, {"name": "b"})
    assert [r.name for r in match_routes(table, event("order.paid"))] == ["a"]
    assert [r.name for r in match_routes(table, event("refund.created"))] == ["b"]


def test_continue_keeps_matching():
    table = routes({"name": "a", "continue": True}, {"name": "b"}, {"name": "c"})
    assert [r.name for r in match_routes(table, event("order.paid"))] == ["a", "b"]


def test_source_globs():
    table = routes({"name": "eu", "match": {"source": ["shop-eu*"]}})
    assert match_routes(table, event("order.paid", "shop-eu-2"))
    assert not match_routes(table, event("order.paid", "shop-us"))
