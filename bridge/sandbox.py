"""The one sandboxed Jinja environment that templates, channel names and ``when`` conditions share.

Nothing in a template can reach Python internals (Jinja's immutable sandbox), a missing field is
blank rather than an error, and every value written out is escaped against mentions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge import filters
from bridge.events import Event


def environment(template_dirs: Sequence[Path], zone: tzinfo) -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
        undefined=jinja2.ChainableUndefined,  # order.customer.name on a refund: blank
        finalize=filters.finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # HTML escaping means nothing to Pumble; mentions are escaped instead
    )
    env.filters.update(
        money=filters.money,
        raw=filters.raw,
        pluralize=filters.pluralize,
        and_more=filters.and_more,
        datetime=filters.make_datetime_filter(zone),
    )
    return env


def context(event: Event) -> dict[str, Any]:
    """The names templates and conditions see (documented in bridge/events.py)."""
    return {
        "event": event,
        "source": event.source,
        "order": event.order,
        "customer": event.customer,
        "shipping": event.shipping,
        "refund": event.refund,
        "payment": event.payment,
        "product": event.product,
        "raw": event.raw,
    }
