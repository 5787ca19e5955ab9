"""Routing + rendering one Shopify order through 50 routes, next to a bare ``json.loads``.

Run from the repository root:

    .venv/bin/python -m bench.route_render             # about 15 s
    .venv/bin/python -m bench.route_render --quick     # about 2 s, rougher numbers
    .venv/bin/python -m bench.route_render --profile   # also cProfile -> bench/results/

The goal (from the issue): routing + rendering an event costs under 10x a ``json.loads`` of the
same payload bytes, both measured in the same run on the same machine. Every call is timed on its
own with ``time.perf_counter_ns``, after a warm-up, in repeats that interleave the cases so drift
hits them alike; the median and p95 per call are reported. The garbage collector stays on, as in
the receiver. Parsing (signature check and payload -> Event) is the sources' cost: it is done once
before timing dispatch, and timed separately for reference.

What the goal counts: ``pipeline.dispatch(event)`` on the parsed event, i.e. ``router.match``
over all 50 routes plus, for each of the 17 routes it matches, rendering the channel and the
message and building the Notification. The same Event is dispatched on every call; nothing is
remembered from one event's rendering to the next (only which routes' globs match a (source,
event type) pair, as the receiver would for every order of a shop).

Results on one machine (Python 3.11, jinja2 3.1.6, 2 AMD EPYC CPUs), medians:

    before (6c4ec5c)  json.loads 11.0 µs · router.match 468 µs · dispatch 1,520 µs
                      = 138× json.loads per event, 8.2× per notification
    after             json.loads 10.9 µs · router.match  37 µs · dispatch   389 µs
                      = 36× json.loads per event, 2.1× per notification

10x per event is out of reach for this deliberately heavy config with Jinja templates: it leaves
~110 µs for 50 routes and 17 messages, ~6 µs a message, while a message from a shipped template
(an import and three or four partials) takes ~45 µs and a one-line inline text 4-10 µs; routing
alone is now ~3.4x. Per notification, the cost is well under 10x.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmark this working tree's bridge package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jinja2
import yaml

from bench import stack
from bridge import samples
from bridge.config import load_config
from bridge.events import Event
from bridge.pipeline import Pipeline
from bridge.sources.base import WebhookRequest
from bridge.sources.shopify import sign

GOAL = 10.0  # routing + rendering per event, in multiples of json.loads of the payload
SHOP_SECRET = "bench-shop-secret-not-real"
WOO_SECRET = "bench-woo-secret-not-real"
PROFILE_FILE = Path(__file__).resolve().parent / "results" / "route_render_profile.txt"
COUNTRIES = ("GB", "DE", "FR", "NL", "US", "CA", "AU", "IE")


# --- the config -----------------------------------------------------------------------------

def _route(name: str, event: str | list[str], channel: str, *, source: str | None = None,
           when: str | None = None, text: str | None = None, template: str | None = None,
           stop: bool = False) -> dict[str, Any]:
    """One ``routes:`` entry; ``continue: true`` unless ``stop``."""
    match: dict[str, Any] = {"event": event}
    if source is not None:
        match["source"] = source
    route: dict[str, Any] = {"name": name, "match": match, "channel": channel}
    for key, value in (("when", when), ("text", text), ("template", template)):
        if value is not None:
            route[key] = value
    if not stop:
        route["continue"] = True
    return route


def routes() -> list[dict[str, Any]]:
    """50 routes of the kind a shop with several teams writes: glob matches, ``when``
    conditions, templated channels, the shipped templates and inline text."""
    money = "{{ order.total | money(order.currency) }}"
    regions = [
        _route(f"orders-{cc.lower()}", "order.created",
               "orders-{{ shipping.address.country | lower }}",
               when=f'shipping.address.country == "{cc}"', template="order_created.j2")
        for cc in COUNTRIES
    ]
    result = [
        # Support and sales: every new order, the big ones, the VIPs.
        _route("support-new-orders", "order.created", "support", template="order_created.j2"),
        _route("orders-per-shop", "order.*", "orders-{{ source.name }}"),  # the type's template
        _route("big-orders", "order.created", "big-orders", when="order.total >= 500",
               text=f"💰 Big order {{{{ order.name }}}} · {money} from {{{{ customer.name }}}}"),
        _route("vip-orders", "order.*", "vip-{{ source.name }}", when='"vip" in customer.tags',
               text="⭐ VIP {{ customer.name }} ordered {{ order.items | pluralize('line') }}"
                    f" ({money})"),
        _route("small-orders", "order.created", "small-orders", when="order.total < 100",
               text=f"{{{{ order.name }}}}: {money}"),
        _route("gift-orders", "order.created", "gifts", when='"gift" in order.tags',
               text="🎁 Gift order {{ order.name }} to {{ shipping.address }}"),
        _route("priority-orders", "order.*", "fulfilment-priority",
               when='"priority" in order.tags', template="generic.j2"),
        *regions,
        # Finance.
        _route("finance-eur", "order.created", "finance-{{ order.currency | lower }}",
               when='order.currency == "EUR"',
               text=f"{{{{ order.name }}}}: {money} ({{{{ order.financial_status }}}}),"
                    " subtotal {{ order.subtotal | money(order.currency) }}"),
        _route("finance-usd", "order.created", "finance-usd", when='order.currency == "USD"',
               text=f"{{{{ order.name }}}}: {money}"),
        # Warehouse.
        _route("many-lines", "order.created", "warehouse", when="order.items | length > 5",
               text="📦 {{ order.name }}\n{% for item in order.items[:3] %}"
                    "• {{ item.quantity }} × {{ item.name }} ({{ item.sku }})\n{% endfor %}"
                    "{{ order.items | and_more(3) }}"),
        _route("bulk-quantity", "order.created", "warehouse-bulk",
               when="order.items | sum(attribute='quantity') >= 10",
               text="{{ order.items | sum(attribute='quantity') }} units in {{ order.name }}"),
        _route("gift-wrap", "order.created", "gift-wrap",
               when='"GIFT-WRAP" in order.items | map(attribute="sku") | list',
               text="🎀 Wrap {{ order.name }} for {{ customer.name }}"),
        # Marketing and customer care.
        _route("repeat-customers", "order.created", "marketing-loyal",
               when="customer.orders_count and customer.orders_count > 5",
               text="{{ customer.name }}: order number {{ customer.orders_count }}"),
        _route("first-orders", "order.created", "marketing-first",
               when="customer.orders_count == 1", text="First order from {{ customer.name }}"),
        _route("shipping-express", "order.created", "shipping-express",
               when='shipping.method == "Express"', template="order_created.j2"),
        _route("shipping-standard", "order.created", "shipping-{{ shipping.method | lower }}",
               when='shipping.method == "Standard"',
               text="{{ order.name }} ships {{ shipping.method }} to {{ shipping.address }}"),
        _route("qa-example-emails", "order.*", "qa",
               when='customer.email.endswith("@example.com")',
               text="Test-looking order {{ order.name }} from {{ customer.email }}"),
        _route("test-orders", "order.*", "qa-test", when='"test" in order.tags',
               text="{{ order.name }} is a test order", stop=True),
        # Other event types: never an order.created.
        _route("paid-orders", "order.paid", "finance", template="generic.j2"),
        _route("fulfilment", ["order.fulfilled", "order.partially_fulfilled"], "fulfilment"),
        _route("cancelled", "order.cancelled", "support-cancellations", stop=True),
        _route("order-updates", "order.updated", "orders-updates", template="generic.j2"),
        _route("big-refunds", "refund.*", "finance-refunds", when="refund.amount >= 100",
               text="↩️ {{ refund.amount | money(refund.currency) }}: {{ refund.reason }}"),
        _route("refunds", "refund.created", "support-refunds", stop=True,
               text="↩️ Refund {{ refund.amount | money(refund.currency) }}"),
        _route("new-customers", "customer.created", "marketing",
               text="👋 {{ customer.name }} <{{ customer.email }}>"),
        _route("checkouts", "checkout.*", "marketing-checkouts", template="generic.j2"),
        _route("inventory-low", "inventory.low", "purchasing", stop=True,
               text="⚠️ {{ product.sku }}: {{ product.stock }} left"),
        _route("inventory", "inventory.*", "inventory",
               text="{{ product.sku }}: {{ product.stock }}"),
        _route("payments-failed", "payment.failed", "finance-alerts",
               text="❌ {{ payment.amount | money(payment.currency) }}: {{ payment.reason }}"),
        _route("disputes", "dispute.*", "finance-alerts", stop=True,
               text="⚖️ Dispute {{ payment.id }}: {{ payment.reason }}"),
        _route("subscriptions", "subscription.*", "subscriptions", template="generic.j2"),
        _route("woo-orders", "order.*", "orders-{{ source.name }}", source="woo"),
        _route("woo-vip", "order.*", "vip-{{ source.name }}", source="woo",
               when='"vip" in customer.tags', text="⭐ {{ customer.name }}: {{ order.name }}"),
        _route("unmapped-topics", "shopify.*", "bridge-admin", template="generic.j2"),
        # Everything, for the record.
        _route("audit", "*", "audit-{{ source.platform }}",
               text="{{ event.type }} {{ event.id }} at {{ event.occurred_at | datetime }}"),
        # Management.
        _route("exec-big", "order.created", "exec", when="order.total >= 1000",
               template="order_created.j2"),
        _route("exec-vip", "order.created", "exec-vip",
               when='"vip" in customer.tags and order.total >= 300',
               text=f"{{{{ customer.name }}}} (VIP) spent {money}"),
        _route("pending-payment", "order.created", "finance-pending",
               when='order.financial_status == "pending"', template="generic.j2"),
        _route("paid-on-create", "order.created", "finance-paid",
               when='order.financial_status == "paid"', template="generic.j2"),
        _route("wholesale", "order.*", "sales-wholesale", when='"wholesale" in customer.tags',
               template="order_created.j2"),
        _route("shop-feed", "order.*", "shop-feed",
               text=f"{{{{ order.name }}}}: {{{{ order.items | pluralize('line') }}}}, {money}"
                    " · {{ order.admin_url | raw }}"),
        # The catch-all: what nothing above stopped.
        _route("everything-else", "*", "shop-events", stop=True,
               text="{{ event.type }} from {{ source.name }}"
                    "{% if order %}: order {{ order.number }}{% endif %}"),
    ]
    assert len(result) == 50, len(result)
    return result


def write_config(folder: Path) -> Path:
    config = {
        "timezone": "Europe/Berlin",
        "sources": {
            "shop": {"type": "shopify", "secret": SHOP_SECRET},
            "woo": {"type": "woocommerce", "secret": WOO_SECRET},
        },
        "routes": routes(),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "utf-8")
    return path


# --- timing ---------------------------------------------------------------------------------

@dataclass
class Timing:
    label: str
    samples: list[int]  # nanoseconds per call, every repeat pooled
    repeat_medians: list[float]  # nanoseconds

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _time_block(fn: Callable[[Any], object], arg: Any, calls: int) -> list[int]:
    clock = time.perf_counter_ns
    block = [0] * calls
    for i in range(calls):
        start = clock()
        fn(arg)
        block[i] = clock() - start
    return block


def measure(cases: dict[str, tuple[Callable[[Any], object], Any]], repeats: int,
            block_seconds: float, max_calls: int) -> dict[str, Timing]:
    """Warm every case up, size its blocks to ~block_seconds, then time ``repeats`` interleaved
    rounds of blocks."""
    calls = {}
    for name, (fn, arg) in cases.items():
        n, start = 0, time.perf_counter_ns()
        while n < 20 or time.perf_counter_ns() - start < block_seconds * 0.5e9:
            fn(arg)
            n += 1
        per_call = (time.perf_counter_ns() - start) / n
        calls[name] = max(20, min(max_calls, int(block_seconds * 1e9 / per_call)))
    timings = {name: Timing(name, [], []) for name in cases}
    for _ in range(repeats):
        for name, (fn, arg) in cases.items():
            gc.collect()
            block = _time_block(fn, arg, calls[name])
            timings[name].samples.extend(block)
            timings[name].repeat_medians.append(statistics.median(block))
    return timings


# --- report ---------------------------------------------------------------------------------

def machine() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"Python {platform.python_version()} ({platform.python_implementation()}) · "
            f"{platform.platform()} · {os.cpu_count()} CPUs ({usable} usable, "
            f"{stack.cpu_model()}) · jinja2 {jinja2.__version__}")


def _us(ns: float) -> str:
    return f"{ns / 1000:,.1f}" if ns >= 10_000 else f"{ns / 1000:,.2f}"


def _row(label: str, timing: Timing, per: int = 1) -> str:
    low, high = min(timing.repeat_medians) / per, max(timing.repeat_medians) / per
    return (f"  {label:<34} {_us(timing.median / per):>10} {_us(timing.p95 / per):>10}"
            f"   {_us(low) + '-' + _us(high):<18} {len(timing.samples):>8,}")


def profile(pipeline: Pipeline, event: Event, dispatches: int, out: Path, header: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(dispatches):
        pipeline.dispatch(event, 0.0)
    profiler.disable()
    text = io.StringIO()
    text.write(f"{header}\ncProfile of {dispatches:,} × pipeline.dispatch(event, 0.0) "
               "(profiler overhead inflates absolute times; compare shares)\n\n")
    for key in ("cumulative", "tottime"):
        text.write(f"=== top 15 by {key} ===\n")
        stats = pstats.Stats(profiler, stream=text)
        stats.strip_dirs().sort_stats(key).print_stats(15)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue(), "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter repeats (a smoke run: rougher numbers)")
    parser.add_argument("--profile", nargs="?", const=PROFILE_FILE, type=Path, metavar="FILE",
                        help=f"also cProfile dispatch; top 15 to FILE (default {PROFILE_FILE})")
    args = parser.parse_args(argv)
    repeats, block_seconds, max_calls = (3, 0.05, 5_000) if args.quick else (7, 0.35, 60_000)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-route-render-") as folder:
        config = load_config(write_config(Path(folder)), environ={})
        pipeline = Pipeline.from_config(config)

    body = samples.body_of(samples.shopify_order(1001))
    headers = samples.shopify_headers(webhook_id="bench-delivery-0001")
    headers["X-Shopify-Hmac-Sha256"] = sign(SHOP_SECRET.encode(), body)
    source = pipeline.sources["shop"]

    def source_parse(raw: bytes) -> Event:
        request = WebhookRequest.of(headers, raw)
        source.verify(request)
        return source.parse(request)

    event = source_parse(body)  # once: dispatch below is routing + rendering only
    result = pipeline.dispatch(event, 0.0)
    notifications = len(result.notifications)
    if not notifications:
        raise SystemExit("the event matched no route: the benchmark config is broken")

    timings = measure({
        "json": (json.loads, body),
        "parse": (source_parse, body),
        "route": (pipeline.router.match, event),
        "dispatch": (lambda e: pipeline.dispatch(e, 0.0), event),
        "timer": (lambda _: None, None),
    }, repeats, block_seconds, max_calls)

    cfg = config.routes
    header = stack.print_header("route_render", args.quick, machine())
    print(f"config:  {len(cfg)} routes ({sum(r.continue_ for r in cfg)} with continue, "
          f"{sum(r.when is not None for r in cfg)} with when, "
          f"{sum(r.text is not None for r in cfg)} inline text, "
          f"{sum(r.template is not None for r in cfg)} template:, "
          f"{sum(r.text is None and r.template is None for r in cfg)} by event type, "
          f"{sum('{{' in r.channel for r in cfg)} templated channels), "
          f"{len(config.sources)} sources")
    print(f"event:   Shopify orders/create, {len(body):,} bytes, {len(event.order.items)} lines "
          f"-> {event.type}; dispatch -> {notifications} notifications "
          f"({len(result.failures)} failures) from {len(cfg)} routes")
    print(f"\n  {'per call, µs':<34} {'median':>10} {'p95':>10}   {'repeat medians':<18} "
          f"{'calls':>8}")
    print(_row("json.loads(body)  [baseline]", timings["json"]))
    print(_row("source verify+parse -> Event", timings["parse"]))
    print(_row("router.match(event)", timings["route"]))
    print(_row("pipeline.dispatch(event)", timings["dispatch"]))
    print(_row("  ... per notification", timings["dispatch"], notifications))
    print(_row("timer overhead (empty call)", timings["timer"]))

    base = timings["json"].median
    ratio = timings["dispatch"].median / base
    per_notification = ratio / notifications
    rendering = timings["dispatch"].median - timings["route"].median
    print(f"\nrouting+rendering ÷ json.loads: {ratio:,.1f}× per event, "
          f"{per_notification:,.2f}× per notification "
          f"(p95/p95: {timings['dispatch'].p95 / timings['json'].p95:,.1f}×)")
    print(f"  routing alone (router.match) = {timings['route'].median / base:,.1f}× json.loads; "
          f"rendering alone (dispatch - match) = {rendering / base:,.1f}×, "
          f"{_us(rendering / notifications)} µs per notification")
    print(f"  for reference: source parse = {timings['parse'].median / base:,.1f}× json.loads; "
          f"dispatch = {timings['dispatch'].median / timings['parse'].median:,.1f}× source parse")
    met = ratio < GOAL
    print(f"goal (routing + rendering under {GOAL:g}× the parse, per event): "
          f"{'MEETS' if met else 'DOES NOT MEET'} ({ratio:,.1f}× {'<' if met else '≥'} {GOAL:g}×)")
    if not met:
        print(f"  the budget at {GOAL:g}× is {_us(GOAL * base)} µs per event: "
              f"{_us(GOAL * base / notifications)} µs for each of this config's {notifications} "
              f"messages, routing included; per notification the cost is "
              f"{per_notification:,.2f}× (see this file's docstring)")

    if args.profile:
        profile(pipeline, event, 300 if args.quick else 2_000, args.profile, header)
        print(f"profile: {args.profile}")
    print(f"(took {time.perf_counter() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
