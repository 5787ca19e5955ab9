"""Shop platforms. A new platform is one module here and one line in SOURCE_TYPES."""

from __future__ import annotations

from bridge.config import SourceSettings
from bridge.sources.base import PayloadError, SignatureError, Source, WebhookRequest
from bridge.sources.bigcommerce import BigCommerceSource
from bridge.sources.generic_hmac import HmacSource
from bridge.sources.shopify import ShopifySource
from bridge.sources.standard_webhooks import StandardWebhooksSource
from bridge.sources.stripe import StripeSource
from bridge.sources.woocommerce import WooCommerceSource

SOURCE_TYPES: dict[str, type[Source]] = {
    "shopify": ShopifySource,
    "woocommerce": WooCommerceSource,
    "stripe": StripeSource,
    "bigcommerce": BigCommerceSource,
    "standard-webhooks": StandardWebhooksSource,
    "hmac": HmacSource,
}


def build_source(name: str, settings: SourceSettings) -> Source:
    """The Source for one ``sources:`` entry; ValueError names the unknown type."""
    try:
        source_type = SOURCE_TYPES[settings.type]
    except KeyError:
        known = ", ".join(sorted(SOURCE_TYPES))
        raise ValueError(f"unknown source type {settings.type!r} (known: {known})") from None
    return source_type(name, settings)


__all__ = [
    "SOURCE_TYPES",
    "PayloadError",
    "SignatureError",
    "Source",
    "WebhookRequest",
    "build_source",
]
