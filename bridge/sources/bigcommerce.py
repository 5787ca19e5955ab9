"""BigCommerce. Two ways to authenticate a delivery, by ``verify``:

- ``standard-webhooks``: BigCommerce signs every delivery the Standard Webhooks way
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), keyed with the app's client
  secret as is (its UTF-8 bytes, not base64-decoded).
- ``header`` (the default): the webhook was created with custom ``headers``; the receiver checks
  that one of them (``header``, default ``X-Webhook-Secret``) equals a configured secret, in
  constant time.

The body is thin: ``scope`` (``store/order/created``…), ``data`` (``type`` and ``id``, plus
``status``, ``inventory``, ``orderId``… for some scopes), ``hash``, ``created_at`` (unix seconds)
and ``producer`` (``stores/{store_hash}``). ``hash`` is the SHA-1 of ``data`` alone, so the
created, updated and archived webhooks of one order share it: it identifies the object, not the
delivery, and is never the delivery id. That is ``webhook-id`` when sent (the same on
BigCommerce's retries), else a digest of scope, data and ``created_at``.

With an API token the order (and a refund's amount), cart, product, shipment (carrier and
tracking) or customer (name) is fetched from the store API within ``enrich_timeout`` seconds; a
failed fetch is logged and the thin event is returned, so the webhook is never refused for it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from bridge import events
from bridge.config import SourceSettings
from bridge.events import (
    Address,
    Customer,
    Event,
    LineItem,
    Order,
    Payment,
    Product,
    Refund,
    Shipment,
    Shipping,
)
from bridge.sources import fields
from bridge.sources.base import PayloadError, SignatureError, Source, WebhookRequest, matches_any
from bridge.sources.standard_webhooks import check_signature

log = logging.getLogger(__name__)

SCOPES = {
    "store/order/created": events.ORDER_CREATED,
    "store/order/updated": events.ORDER_UPDATED,
    "store/order/archived": events.ORDER_DELETED,
    "store/order/refund/created": events.REFUND_CREATED,
    "store/order/message/created": events.MESSAGE_CREATED,
    "store/shipment/created": events.SHIPMENT_CREATED,
    "store/cart/converted": events.CHECKOUT_COMPLETED,
    "store/customer/created": events.CUSTOMER_CREATED,
    "store/customer/updated": events.CUSTOMER_UPDATED,
    "store/product/created": events.PRODUCT_CREATED,
    "store/product/updated": events.PRODUCT_UPDATED,
    "store/product/inventory/updated": events.INVENTORY_UPDATED,
    "store/product/inventory/order/updated": events.INVENTORY_UPDATED,
    "store/cart/abandoned": events.CHECKOUT_ABANDONED,
    # store/order/statusUpdated: by the new status (STATUS_TYPES); store/order/transaction/*:
    # payment.succeeded or payment.failed by the result's type.
}
# BigCommerce order status ids (GET /v2/order_statuses) -> canonical type of a status change.
STATUS_TYPES = {
    11: events.ORDER_PAID,  # Awaiting Fulfillment: paid, waiting to be shipped
    2: events.ORDER_FULFILLED,  # Shipped
    10: events.ORDER_FULFILLED,  # Completed
    3: events.ORDER_PARTIALLY_FULFILLED,  # Partially Shipped
    5: events.ORDER_CANCELLED,  # Cancelled
    4: events.REFUND_CREATED,  # Refunded
    14: events.REFUND_CREATED,  # Partially Refunded
}
STATUS_NAMES = {
    0: "Incomplete", 1: "Pending", 2: "Shipped", 3: "Partially Shipped", 4: "Refunded",
    5: "Cancelled", 6: "Declined", 7: "Awaiting Payment", 8: "Awaiting Pickup",
    9: "Awaiting Shipment", 10: "Completed", 11: "Awaiting Fulfillment",
    12: "Manual Verification Required", 13: "Disputed", 14: "Partially Refunded",
}
STORE_HASH = re.compile(r"stores/([a-z0-9]+)")
# A converted cart is gone (its order has the details); the others can still be read.
ENRICHED_CART_SCOPES = ("store/cart/abandoned", "store/cart/created", "store/cart/updated")
# Scopes whose data.id is the customer's id (an address scope's is the address's).
ENRICHED_CUSTOMER_SCOPES = ("store/customer/created", "store/customer/updated")
# store/shipment/updated is not mapped (the generic message shows no tracking); a deleted
# shipment cannot be read.
ENRICHED_SHIPMENT_SCOPES = ("store/shipment/created",)
INVENTORY_SCOPES = ("store/product/inventory/updated", "store/product/inventory/order/updated")


class EnrichmentError(Exception):
    """The store API did not answer usefully in time; the thin event is used instead."""


class BigCommerceSource(Source):
    platform = "bigcommerce"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        verify: Literal["header", "standard-webhooks"] = "header"
        header: str = Field("X-Webhook-Secret", min_length=1)  # the custom header to check
        tolerance: int = Field(300, ge=0)  # standard-webhooks: seconds either side of now
        store_hash: str = ""  # else read from the body's producer "stores/{hash}"
        api_token: SecretStr | None = None  # X-Auth-Token; enables enrichment
        api_base_url: str = "https://api.bigcommerce.com"
        enrich_timeout: float = Field(2.0, gt=0)  # seconds for all API calls of one webhook
        low_stock_threshold: int = 5

        @field_validator("api_token", mode="before")
        @classmethod
        def _empty_token_is_none(cls, value: Any) -> Any:
            return None if value in ("", None) else value

    def __init__(self, name: str, settings: SourceSettings, *,
                 clock: Callable[[], float] = time.time):
        super().__init__(name, settings)
        self._clock = clock  # injectable so tests need no sleeps
        self._client: httpx.Client | None = None  # created on first use, then kept alive
        self._client_lock = threading.Lock()

    def verify(self, request: WebhookRequest) -> None:
        if self.options.verify == "standard-webhooks":
            check_signature(request, self._secrets, self._clock(), self.options.tolerance)
            return
        header = self.options.header
        given = request.header(header)
        if not given:
            raise SignatureError(f"missing {header} header")
        if not matches_any(given, (secret.decode() for secret in self._secrets)):
            raise SignatureError(f"{header} does not match the configured secret")

    def parse(self, request: WebhookRequest) -> Event:
        payload = request.json()
        scope = fields.text(payload.get("scope"))
        if not scope:
            raise PayloadError("missing scope in the body")
        data = fields.mapping(payload.get("data"))
        store_hash = self.options.store_hash or _producer_hash(payload.get("producer"))
        event_type = _event_type(scope, data)
        parts = _parts(scope, data, store_hash)
        if self._can_enrich(store_hash):
            parts = self._with_enrichment(store_hash, scope, event_type, parts)
        stock = getattr(parts.get("product"), "stock", None)
        if scope in INVENTORY_SCOPES and stock is not None and (
                stock <= self.options.low_stock_threshold):
            event_type = events.INVENTORY_LOW
        created_at = payload.get("created_at")
        return Event(id=request.header("webhook-id") or _delivery_digest(scope, data, created_at),
                     type=event_type, source=events.SourceRef(self.name, self.platform),
                     occurred_at=fields.timestamp(created_at), raw=payload, **parts)

    def _with_enrichment(self, store_hash: str, scope: str, event_type: str,
                         parts: dict[str, Any]) -> dict[str, Any]:
        """The thin parts, completed from the store API where it answers: all calls of one
        webhook share one ``enrich_timeout``, as BigCommerce retries a slow answer."""
        deadline = time.monotonic() + self.options.enrich_timeout
        base = f"/stores/{store_hash}"
        order, product, customer = parts.get("order"), parts.get("product"), parts.get("customer")
        shipment = parts.get("shipment")
        if order is not None and scope.startswith("store/order/"):
            enriched = self._enriched(base, order, event_type, deadline)
            refund = parts.get("refund")
            if refund is not None:  # the webhook's refund, not the order's refunded_amount (all)
                currency = enriched["order"].currency if enriched else ""
                enriched["refund"] = self._enriched_refund(base, refund, currency, deadline)
            return parts | enriched
        if order is not None and scope in ENRICHED_CART_SCOPES:
            cart = self._api_answer(f"{base}/v3/carts/{order.id}", f"cart {order.id}", deadline)
            return parts if cart is None else parts | _cart_parts(cart, order)
        if order is not None and shipment is not None and scope in ENRICHED_SHIPMENT_SCOPES:
            found = self._api_answer(f"{base}/v2/orders/{order.id}/shipments/{shipment.id}",
                                     f"shipment {shipment.id} of order {order.id}", deadline,
                                     v3=False)
            return parts if found is None else parts | _shipment_parts(found, shipment)
        if customer is not None and scope in ENRICHED_CUSTOMER_SCOPES:
            return parts | {"customer": self._enriched_customer(base, customer, deadline)}
        if product is not None:
            found = self._enriched_product(base, product.id, deadline)
            if found is not None:  # the webhook's own new stock level is the fresher one
                stock = found.stock if product.stock is None else product.stock
                return parts | {"product": replace(found, id=product.id, stock=stock)}
        return parts

    def _can_enrich(self, store_hash: str) -> bool:
        return self.options.api_token is not None and bool(store_hash)

    def _enriched(self, base: str, thin: Order, event_type: str,
                  deadline: float) -> dict[str, Any]:
        """Order, customer, shipping (and refund) from the store API; {} if that fails."""
        try:
            path = f"{base}/v2/orders/{thin.id}"
            order = self._get(path, deadline)
            items = self._get(f"{path}/products", deadline)
            addresses = self._get(f"{path}/shipping_addresses", deadline)
            if not (isinstance(order, dict) and isinstance(items, list | None)
                    and isinstance(addresses, list | None)):
                raise EnrichmentError("unexpected JSON shape")
        except EnrichmentError as exc:
            log.warning("source %r: order %s not enriched: %s", self.name, thin.id, exc)
            return {}
        return _order_parts(order, items or [], addresses or [], thin, event_type)

    def _enriched_refund(self, base: str, thin: Refund, currency: str,
                         deadline: float) -> Refund:
        """The webhook's refund among its order's (GET /v3/orders/{id}/payment_actions/refunds):
        its amount and reason. A refund carries no currency: the order's is the one refunded."""
        if not thin.id:  # no refund to look for among the order's
            return replace(thin, currency=currency)
        what = f"refund {thin.id} of order {thin.order_id}"
        refunds = self._api_answer(f"{base}/v3/orders/{thin.order_id}/payment_actions/refunds",
                                   what, deadline, shape=list)
        found = next((r for r in fields.records(refunds) if fields.text(r.get("id")) == thin.id),
                     None)
        if found is None:
            if refunds is not None:
                log.warning("source %r: %s not enriched: not among the order's refunds",
                            self.name, what)
            return replace(thin, currency=currency)
        return replace(thin, amount=fields.amount(found.get("total_amount")), currency=currency,
                       reason=_api_text(found.get("reason")))

    def _enriched_customer(self, base: str, thin: Customer, deadline: float) -> Customer:
        """The customer's name and email (GET /v3/customers?id:in={id}); the thin one without."""
        customer_id = fields.integer(thin.id)  # a number only: it goes into a query
        if customer_id is None:
            return thin
        found = self._api_answer(f"{base}/v3/customers?id:in={customer_id}",
                                 f"customer {customer_id}", deadline, shape=list)
        records = fields.records(found)  # id:in filters: the one customer, or none if deleted
        if not records:
            return thin
        return replace(thin, name=_name(records[0]), email=_api_text(records[0].get("email")))

    def _enriched_product(self, base: str, product_id: str, deadline: float) -> Product | None:
        product = self._api_answer(f"{base}/v3/catalog/products/{product_id}",
                                   f"product {product_id}", deadline)
        if product is None:
            return None
        return Product(name=_api_text(product.get("name")), sku=_api_text(product.get("sku")),
                       stock=fields.integer(product.get("inventory_level")))

    def _api_answer(self, path: str, what: str, deadline: float, *, v3: bool = True,
                    shape: type = dict) -> Any:
        """A store API answer, if it is a ``shape``: a v3 answer's ``data``, a v2 answer as is.
        None (logged) without one in time."""
        try:
            body = self._get(path, deadline)
            found = body.get("data") if v3 and isinstance(body, dict) else body
            if not isinstance(found, shape):
                raise EnrichmentError("unexpected JSON shape")
        except EnrichmentError as exc:
            log.warning("source %r: %s not enriched: %s", self.name, what, exc)
            return None
        return found

    def _get(self, path: str, deadline: float) -> Any:
        """GET one store API path as JSON within what is left of the deadline. 204 -> None."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise EnrichmentError("out of time")
        try:
            response = self._http().get(
                self.options.api_base_url.rstrip("/") + path, timeout=left,
                headers={"X-Auth-Token": self.options.api_token.get_secret_value(),
                         "Accept": "application/json"})
        except httpx.HTTPError as exc:  # its message names the URL, never the header
            raise EnrichmentError(f"{type(exc).__name__} on GET {path}: {exc}") from None
        if response.status_code == 204:  # BigCommerce's answer for an empty list
            return None
        if response.status_code != 200:
            raise EnrichmentError(f"GET {path} answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise EnrichmentError(f"GET {path} answered invalid JSON") from None

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(follow_redirects=False)
            return self._client


def _event_type(scope: str, data: dict[str, Any]) -> str:
    if scope == "store/order/statusUpdated":
        status_id = fields.integer(fields.dig(data, "status.new_status_id"))
        return STATUS_TYPES.get(status_id, events.ORDER_UPDATED)
    if scope.startswith("store/order/transaction/"):
        result = fields.text(fields.dig(data, "result.type")).lower()
        if result == "success":
            return events.PAYMENT_SUCCEEDED
        if result in ("failure", "failed", "error", "declined"):
            return events.PAYMENT_FAILED
    return SCOPES.get(scope, f"bigcommerce.{scope.removeprefix('store/')}")


def _parts(scope: str, data: dict[str, Any], store_hash: str) -> dict[str, Any]:
    """What the thin body says, by scope: the ids, and the little else it carries."""
    object_id = fields.text(data.get("id"))
    if scope.startswith("store/order/transaction/"):
        result = fields.mapping(data.get("result"))
        failed = fields.text(result.get("type")).lower() != "success"
        return {"order": _order_ref(fields.text(data.get("order_id")), store_hash),
                "payment": Payment(id=fields.text(data.get("transaction_id")),
                                   kind=fields.text(data.get("transaction_type")),
                                   status=fields.text(data.get("transaction_status")),
                                   reason=fields.text(result.get("message")) if failed else "")}
    if scope.startswith("store/order/"):
        status_id = fields.integer(fields.dig(data, "status.new_status_id"))
        status = "Archived" if scope == "store/order/archived" else STATUS_NAMES.get(status_id, "")
        order = _order_ref(object_id, store_hash, status)
        refund_id = fields.text(fields.dig(data, "refund.refund_id"))
        return {"order": order, "refund": Refund(id=refund_id, order_id=object_id)
                if scope == "store/order/refund/created" else None}
    if scope.startswith("store/shipment/"):
        return {"order": _order_ref(fields.text(data.get("orderId")), store_hash),
                "shipment": Shipment(id=object_id)}
    if scope == "store/cart/converted":
        return {"order": _order_ref(fields.text(data.get("orderId")), store_hash)}
    if scope.startswith("store/cart/"):  # a cart is known by its id alone
        return {"order": Order(id=object_id) if object_id else None}
    if scope.startswith("store/customer/"):
        return {"customer": Customer(id=object_id)}
    if scope.startswith("store/product/") and object_id:
        inventory = fields.mapping(data.get("inventory"))
        absolute = inventory.get("method") == "absolute"  # else "relative": a change, not a level
        return {"product": Product(id=object_id, stock=fields.integer(inventory.get("value"))
                                   if absolute else None)}
    return {}


def _order_ref(order_id: str, store_hash: str, status: str = "") -> Order | None:
    if not order_id:
        return None
    return Order(id=order_id, number=order_id, name=f"#{order_id}", status=status,
                 admin_url=_admin_url(store_hash, order_id))


def _order_parts(order: dict[str, Any], items: list[Any], addresses: list[Any], thin: Order,
                 event_type: str) -> dict[str, Any]:
    billing = order.get("billing_address") if isinstance(order.get("billing_address"),
                                                         dict) else {}
    currency = _api_text(order.get("currency_code"))
    number = thin.number  # the webhook's order: the API's answer is only its details
    parts: dict[str, Any] = {
        "order": Order(
            id=thin.id, number=number, name=f"#{number}", admin_url=thin.admin_url,
            total=fields.amount(order.get("total_inc_tax")),
            subtotal=fields.amount(order.get("subtotal_inc_tax")),
            currency=currency,
            status=_api_text(order.get("status")) or thin.status,
            financial_status=_api_text(order.get("payment_status")),
            note=_api_text(order.get("customer_message")),
            items=tuple(_line_item(item, "price_inc_tax") for item in items
                        if isinstance(item, dict)),
        ),
        "customer": Customer(name=_name(billing), email=_api_text(billing.get("email"))),
    }
    first = next((a for a in addresses if isinstance(a, dict)), None)
    if first is not None:
        parts["shipping"] = Shipping(_address(first), _api_text(first.get("shipping_method")))
    if event_type == events.REFUND_CREATED:
        parts["refund"] = Refund(amount=fields.amount(order.get("refunded_amount")),
                                 currency=currency)
    return parts


def _shipment_parts(found: dict[str, Any], thin: Shipment) -> dict[str, Any]:
    """A shipment from the store API (GET /v2/orders/{id}/shipments/{id}): its carrier and
    tracking, and whom and where it goes to."""
    carrier = next((text for key in ("shipping_provider_display_name", "tracking_carrier",
                                     "shipping_provider")
                    if (text := _api_text(found.get(key)))), "")
    # tracking_link is the shop's own; BigCommerce generates one only when there is none.
    link = _api_text(found.get("tracking_link")) or _api_text(found.get("generated_tracking_link"))
    parts: dict[str, Any] = {"shipment": replace(
        thin, carrier=carrier, tracking_number=_api_text(found.get("tracking_number")),
        tracking_url=link)}
    billing = fields.mapping(found.get("billing_address"))
    customer = Customer(name=_name(billing), email=_api_text(billing.get("email")))
    if customer.name or customer.email:
        parts["customer"] = customer
    address = fields.mapping(found.get("shipping_address"))
    if address:
        parts["shipping"] = Shipping(_address(address), _api_text(found.get("shipping_method")))
    return parts


def _api_text(value: Any) -> str:
    """A text field of the store API, where BigCommerce writes "None" for no value (an order's
    ``shipping_method``, for one)."""
    text = fields.text(value).strip()
    return "" if text == "None" else text


def _producer_hash(producer: Any) -> str:
    """The store hash of ``stores/{hash}``; "" for anything else (BigCommerce's own examples
    carry the placeholder ``stores/{store_hash}``, which must not become a link)."""
    found = STORE_HASH.fullmatch(fields.text(producer))
    return found.group(1) if found else ""


def _delivery_digest(scope: str, data: dict[str, Any], created_at: Any) -> str:
    """An id for a delivery without ``webhook-id``: the same for a retry (same body), different
    for another scope or another moment of the same object."""
    described = orjson.dumps([scope, data, created_at], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(described).hexdigest()[:32]


def _cart_parts(cart: dict[str, Any], thin: Order) -> dict[str, Any]:
    """A cart from the store API (GET /v3/carts/{id}): its value, items and shopper's email."""
    lines = fields.mapping(cart.get("line_items"))
    items = [item for kind in ("physical_items", "digital_items", "custom_items")
             for item in fields.records(lines.get(kind))]
    email = _api_text(cart.get("email"))
    return {
        "order": replace(
            thin, total=fields.amount(cart.get("cart_amount")),
            currency=_api_text(fields.dig(cart, "currency.code")),
            items=tuple(_line_item(item, "sale_price") for item in items)),
        "customer": Customer(email=email) if email else None,
    }


def _line_item(item: dict[str, Any], price_key: str) -> LineItem:
    return LineItem(name=_api_text(item.get("name")), sku=_api_text(item.get("sku")),
                    quantity=fields.integer(item.get("quantity")) or 1,
                    price=fields.amount(item.get(price_key)))


def _name(address: dict[str, Any]) -> str:
    return " ".join(p for p in (_api_text(address.get("first_name")),
                                _api_text(address.get("last_name"))) if p)


def _address(value: dict[str, Any]) -> Address:
    return Address(
        name=_name(value),
        line1=_api_text(value.get("street_1")),
        line2=_api_text(value.get("street_2")),
        city=_api_text(value.get("city")),
        region=_api_text(value.get("state")),
        postal_code=_api_text(value.get("zip")),
        country=_api_text(value.get("country_iso2") or value.get("country")),
    )


def _admin_url(store_hash: str, order_id: str) -> str:
    if not (store_hash and order_id):
        return ""
    return f"https://store-{store_hash}.mybigcommerce.com/manage/orders/{order_id}"
