"""The real-payload corpus: webhook bodies nobody here wrote, posted signed through the receiver.

tests/real_payloads/ holds the platforms' published examples and bodies captured from real shops;
its MANIFEST.md says where each comes from, which header it arrives with and what a support
agent expects to see. Each file is posted, signed as its platform signs, to the receiver (real
Redis; the config below: one source per platform, routes as a support team would set them up),
and what it enqueues (route, channel and text of each message) is compared with a snapshot under
tests/snapshots/real-payloads/. A file dropped into that folder with its MANIFEST line is picked
up without code changes. ``UPDATE_SNAPSHOTS=1`` rewrites the snapshots: read every one, as the
agent who receives it would, before committing it. The whole corpus also goes through one
receiver (no delivery may be taken for another's), and each body again with its fields, its
currencies or its names and numbers null (what is left must still read right).

BigCommerce bodies whose manifest line names the custom ``X-Webhook-Secret`` header go to a
source verified that way; the others are signed the Standard Webhooks way, as BigCommerce signs
its deliveries now. Some (ENRICHED) also run through a source with an API token, against a stub
store API answering BigCommerce's documented examples (tests/real_payloads/bigcommerce-api).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from bridge.config import load_config
from bridge.local_server import LocalServer
from bridge.sources import shopify, standard_webhooks, stripe, woocommerce
from bridge.web import create_app
from tests.conftest import new_queue_name
from tests.test_templates import UPDATE, assert_tidy

CORPUS = Path(__file__).parent / "real_payloads"
SNAPSHOTS = Path(__file__).parent / "snapshots" / "real-payloads"
STORE_API = CORPUS / "bigcommerce-api"
SECRET = "corpus-webhook-secret"
SIGNING_KEY = b"corpus-standard-webhooks-key"
SHOP_DOMAIN = "demo-shop.myshopify.com"
WOO_SHOP = "https://shop.example.com/"
# The corpus's platform folders -> the source each is posted to.
SOURCES = {"shopify": "shopify", "woocommerce": "woo", "stripe": "stripe",
           "standard-webhooks": "svix"}
ENRICHED = ("bigcommerce/order_created.json", "bigcommerce/order_updated.json",
            "bigcommerce/order_statusUpdated.json", "bigcommerce/cart_abandoned.json",
            "bigcommerce/shipment_created.json", "bigcommerce/order_refund_created.json",
            "bigcommerce/customer_created.json")


def corpus_config(redis_url: str, queue: str, store_api: str) -> dict[str, Any]:
    bigcommerce = {"type": "bigcommerce", "secret": SECRET}
    return {
        "pumble": {"base_url": "http://127.0.0.1:9", "api_key": "corpus-key"},
        "redis": {"url": redis_url, "queue": queue},
        "sources": {
            "shopify": {"type": "shopify", "secret": SECRET},
            "woo": {"type": "woocommerce", "secret": SECRET},
            "stripe": {"type": "stripe", "secret": SECRET},
            "bc": bigcommerce,
            "bc-signed": bigcommerce | {"verify": "standard-webhooks"},
            "bc-api": bigcommerce | {"api_token": "corpus-token", "api_base_url": store_api,
                                     "store_hash": "abc123"},
            "svix": {"type": "standard-webhooks",
                     "secret": "whsec_" + base64.b64encode(SIGNING_KEY).decode()},
            # docs/platforms/hmac.md's two recipes, as a shop would copy them.
            "lemon": {"type": "hmac", "secret": SECRET, "header": "X-Signature",
                      "event_type_header": "X-Event-Name",
                      "types": {"order_created": "order.created"}},
            "paddle": {"type": "hmac", "secret": SECRET, "header": "Paddle-Signature",
                       "signature_pattern": "h1=([0-9a-fA-F]+)", "timestamp_pattern": r"ts=(\d+)",
                       "signed_payload": "{timestamp}:{body}", "event_type_path": "event_type",
                       "delivery_id_path": "event_id",
                       "types": {"transaction.completed": "order.paid"}},
        },
        "routes": [
            {"name": "lemon-orders", "match": {"source": ["lemon"], "event": ["order.created"]},
             "channel": "sales",
             "text": "🍋 Order #{{ raw.data.attributes.order_number }} from "
                     "{{ raw.data.attributes.user_name }} ({{ raw.data.attributes.user_email }}): "
                     "{{ (raw.data.attributes.total / 100) "
                     "| money(raw.data.attributes.currency) }}"},
            {"name": "paddle-sales", "match": {"source": ["paddle"], "event": ["order.paid"]},
             "channel": "sales",
             "text": "💰 Paddle sale {{ raw.data.invoice_number or raw.data.id }}: "
                     "{{ ((raw.data.details.totals.total | int) / 100) "
                     "| money(raw.data.currency_code) }}"},
            {"name": "disputes", "match": {"event": ["dispute.*"]}, "channel": "disputes"},
            {"name": "money-back", "match": {"event": ["refund.*", "return.*"]},
             "channel": "refunds"},
            {"name": "orders", "match": {"event": ["order.*", "draft_order.*", "checkout.*",
                                                   "shipment.*", "payment.*", "invoice.*",
                                                   "message.*"],
                                         "test": False},
             "channel": "orders"},
            {"name": "subscriptions", "match": {"event": ["subscription.*"], "test": False},
             "channel": "subscriptions"},
            {"name": "catalogue", "match": {"event": ["product.*", "inventory.*",
                                                      "customer.*"]},
             "channel": "catalogue"},
            {"name": "test-events", "match": {"test": True}, "channel": "sandbox"},
            {"name": "everything-else", "channel": "shop-events"},
        ],
    }


# --- the manifest: what each file arrives with ----------------------------------------------------

@dataclass(frozen=True)
class Entry:
    path: str  # relative to the corpus, e.g. "shopify/orders_create.json"
    arrives_with: str
    expected: str  # what a support agent expects to see (MANIFEST's words)

    def header(self, name: str) -> str:
        """The value the manifest gives a header (``X-Shopify-Topic: orders/create``), or ""."""
        found = re.search(rf"{re.escape(name)}: ([^\s;,]+)", self.arrives_with)
        return found.group(1) if found else ""


def manifest() -> dict[str, Entry]:
    rows = {}
    for line in (CORPUS / "MANIFEST.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith(".json`"):
            path = cells[0].strip("`")
            rows[path] = Entry(path, cells[2], cells[3])
    return rows


MANIFEST = manifest()
FILES = sorted(str(path.relative_to(CORPUS)) for path in CORPUS.glob("*/*.json")
               if path.parent != STORE_API)
RUNS = [*FILES, *(f"{path}+api" for path in ENRICHED)]


def test_every_corpus_file_has_its_manifest_line():
    assert set(FILES) == set(MANIFEST), "tests/real_payloads/MANIFEST.md and the files differ"


# --- signing, as each platform signs --------------------------------------------------------------

def signed(run: str, body: bytes | None = None) -> tuple[str, bytes, dict[str, str]]:
    """The source to post to, the body (the file's, unless given) and its headers for one run."""
    path, _, enriched = run.partition("+")
    entry = MANIFEST[path]
    body = (CORPUS / path).read_bytes() if body is None else body
    platform, stem = path.split("/")[0], Path(path).stem
    delivery = f"corpus-{stem}"
    now = int(time.time())
    headers = {"Content-Type": "application/json"}
    if platform == "shopify":
        headers |= {"X-Shopify-Topic": entry.header("X-Shopify-Topic"),
                    "X-Shopify-Webhook-Id": delivery, "X-Shopify-Shop-Domain": SHOP_DOMAIN,
                    "X-Shopify-Hmac-Sha256": shopify.sign(SECRET.encode(), body)}
    elif platform == "woocommerce":
        headers |= {"X-WC-Webhook-Topic": entry.header("X-WC-Webhook-Topic"),
                    "X-WC-Webhook-Delivery-ID": delivery, "X-WC-Webhook-Source": WOO_SHOP,
                    "X-WC-Webhook-Signature": woocommerce.sign(SECRET.encode(), body)}
    elif platform == "stripe":
        headers["Stripe-Signature"] = stripe.sign(SECRET.encode(), body, now)
    elif platform == "bigcommerce" and ("X-Webhook-Secret" in entry.arrives_with or enriched):
        headers["X-Webhook-Secret"] = SECRET
        return ("bc-api" if enriched else "bc"), body, headers
    elif platform in ("bigcommerce", "standard-webhooks"):
        key = SECRET.encode() if platform == "bigcommerce" else SIGNING_KEY
        headers |= {"webhook-id": delivery, "webhook-timestamp": str(now),
                    "webhook-signature": "v1," + standard_webhooks.sign(
                        key, delivery, str(now), body)}
        return ("bc-signed" if platform == "bigcommerce" else "svix"), body, headers
    elif platform == "hmac" and entry.header("X-Event-Name"):
        headers |= {"X-Event-Name": entry.header("X-Event-Name"),
                    "X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
        return "lemon", body, headers
    elif platform == "hmac" and "Paddle-Signature" in entry.arrives_with:
        digest = hmac.new(SECRET.encode(), f"{now}:".encode() + body, hashlib.sha256)
        headers["Paddle-Signature"] = f"ts={now};h1={digest.hexdigest()}"
        return "paddle", body, headers
    else:
        raise AssertionError(f"{path}: no way to sign {entry.arrives_with!r}")
    return SOURCES[platform], body, headers


# --- the receiver, with a stub store API for the enriched BigCommerce runs ------------------------

def stub_store_api() -> Flask:
    app = Flask("stub-bigcommerce")
    answers = {"/v2/orders/<int:order_id>": "order.json",
               "/v2/orders/<int:order_id>/products": "order_products.json",
               "/v2/orders/<int:order_id>/shipping_addresses": "order_shipping_addresses.json",
               "/v2/orders/<int:order_id>/shipments/<int:shipment_id>": "order_shipment.json",
               "/v3/carts/<cart_id>": "cart.json",
               "/v3/customers": "customers.json"}
    for path, name in answers.items():
        app.add_url_rule(f"/stores/<store>{path}", name,
                         lambda name=name, **_: json.loads((STORE_API / name).read_text()))
    app.add_url_rule("/stores/<store>/v3/orders/<int:order_id>/payment_actions/refunds",
                     "refunds", order_refunds)
    return app


def order_refunds(**_: Any) -> dict[str, Any]:
    """An order's refunds: the documented refund (12, of order 180) as the one the corpus's
    refund webhook names, as the order examples are answered for any order; wrapped in the
    documented shape of the list, which has no example of its own."""
    webhook = json.loads((CORPUS / "bigcommerce" / "order_refund_created.json").read_text())
    refund = json.loads((STORE_API / "refund.json").read_text())["data"]
    return {"data": [refund | {"id": webhook["data"]["refund"]["refund_id"]}], "meta": {}}


@pytest.fixture(scope="module")
def store_api() -> Iterator[str]:
    with LocalServer(stub_store_api()) as server:
        yield server.url


@pytest.fixture(scope="module")
def queue_name() -> str:
    """One queue for the module's receiver; rq_queue still deletes its jobs and keys after each
    test, so each test starts with it empty."""
    return new_queue_name()


@pytest.fixture(scope="module")
def receiver_app(tmp_path_factory, redis_url, queue_name, store_api) -> Flask:
    """One receiver for the module: building one compiles every template (0.2 s of CPU), which
    per test was a third of the suite's CPU time."""
    path = tmp_path_factory.mktemp("corpus") / "config.yaml"
    path.write_text(yaml.safe_dump(corpus_config(redis_url, queue_name, store_api),
                                   allow_unicode=True))
    return create_app(load_config(path, {}), redis_url, watch=False)


@pytest.fixture
def receiver(receiver_app, rq_queue):
    return receiver_app.test_client()


def post(receiver, run: str, body: bytes | None = None):
    source, body, headers = signed(run, body)
    return source, receiver.post(f"/webhooks/{source}", data=body, headers=headers)


# --- the corpus -----------------------------------------------------------------------------------

# Customer-facing texts must not show what a template had no value for.
UNFILLED = re.compile(r"\bNone\b|\bnull\b|#(?!\w)|\(\)|: ·|· ·")
# A decimal amount not followed by a currency code (the rendered money filter writes "12.50 EUR").
BARE_AMOUNT = re.compile(r"(?<![\w.,])\d[\d,]*\.\d{2,3}(?![\d.]| [A-Z]{3}\b|%)")


@pytest.mark.parametrize("run", RUNS)
def test_real_payload_renders_as_its_snapshot(receiver, rq_queue, run):
    source, response = post(receiver, run)
    assert response.status_code == 202, response.json
    assert response.json["duplicate"] is False
    messages = sorted((job.args[0] for job in rq_queue.get_jobs()), key=lambda m: m["route"])
    assert messages, f"{run}: no route sent anything"
    # The manifest's expectation heads the snapshot: the reviewer reads the two side by side.
    lines = [f"expected: {MANIFEST[run.partition('+')[0]].expected}",
             f"POST /webhooks/{source} -> {response.json['type']}"]
    for message in messages:
        lines += ["", f"[route {message['route']} -> #{message['channel']}]", message["text"]]
    text = "\n".join(lines) + "\n"
    snapshot = SNAPSHOTS / (run.replace("/", "__").replace(".json", "") + ".txt")
    if UPDATE:
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        snapshot.write_text(text, encoding="utf-8")
    for message in messages:
        assert_tidy(message["text"])
        for pattern in (UNFILLED, BARE_AMOUNT):
            found = pattern.search(message["text"])
            assert not found, f"{run}: {found.group(0)!r} in:\n{message['text']}"
    assert snapshot.is_file(), f"no snapshot {snapshot.name}: run with UPDATE_SNAPSHOTS=1"
    assert text == snapshot.read_text(encoding="utf-8")


def test_no_corpus_snapshot_is_left_without_its_run():
    if UPDATE:
        return
    runs = {run.replace("/", "__").replace(".json", "") for run in RUNS}
    assert {path.stem for path in SNAPSHOTS.glob("*.txt")} <= runs


def test_the_whole_corpus_through_one_receiver_is_one_delivery_each(receiver, rq_queue):
    # One bridge receives everything: no body may be taken for another's re-delivery
    # (BigCommerce's examples share their hash: its order webhooks were dropped as duplicates).
    # Stripe's event id is in the body, and the recorded fixtures reuse some: those alone are,
    # rightly, re-deliveries.
    answers, stripe_ids, reused = {}, set(), set()
    for run in FILES:
        if run.startswith("stripe/"):
            event_id = json.loads((CORPUS / run).read_bytes())["id"]
            if event_id in stripe_ids:
                reused.add(run)
            stripe_ids.add(event_id)
        answers[run] = post(receiver, run)[1]
    assert {run for run, answer in answers.items() if answer.json["duplicate"]} == reused
    assert all(answer.status_code == 202 for run, answer in answers.items() if run not in reused)
    bigcommerce_orders = [job.args[0]["text"].splitlines()[0] for job in rq_queue.get_jobs()
                          if job.args[0]["source"] == "bc" and job.args[0]["route"] == "orders"]
    assert "🛒 New order #250" in bigcommerce_orders
    assert "📝 Order updated #250" in bigcommerce_orders


def nulled(value: Any, null: Callable[[str], bool], key: str = "") -> Any:
    """The body with the values of the keys ``null`` picks (and all under them) null."""
    if key and null(key):
        return None
    if isinstance(value, dict):
        return {k: nulled(v, null, k) for k, v in value.items()}
    if isinstance(value, list):
        return [nulled(v, null, key) for v in value]
    return value


INLINE_TEXT_ROUTES = frozenset({"lemon-orders", "paddle-sales"})
TYPE_KEYS = frozenset({"type", "scope", "event_type", "livemode", "test", "data", "object"})
HOLLOWINGS: dict[str, Callable[[str], bool]] = {
    "every field": lambda key: key not in TYPE_KEYS,
    "every currency": lambda key: "currency" in key.lower(),
    "every name and number": lambda key: any(
        part in key.lower() for part in ("name", "number", "title", "email")),
}


@pytest.mark.parametrize("hollowing", HOLLOWINGS)
@pytest.mark.parametrize("run", FILES)
def test_real_payload_with_fields_null_renders_what_is_left(receiver, rq_queue, run, hollowing):
    body = json.loads((CORPUS / run).read_bytes())
    _, response = post(receiver, run, json.dumps(nulled(body, HOLLOWINGS[hollowing])).encode())
    assert response.status_code in (202, 400), response.json
    # The shipped templates' messages; the recipes' inline texts are the docs' own examples.
    for message in (job.args[0] for job in rq_queue.get_jobs()):
        if message["route"] in INLINE_TEXT_ROUTES:
            continue
        assert_tidy(message["text"])
        for pattern in (UNFILLED, BARE_AMOUNT):
            found = pattern.search(message["text"])
            assert not found, f"{run}: {found.group(0)!r} in:\n{message['text']}"
