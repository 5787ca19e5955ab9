"""The one sandboxed Jinja environment that templates, channel names and ``when`` conditions share.

Nothing in a template can reach Python internals (Jinja's immutable sandbox), a missing field is
blank rather than an error, and every value written out is escaped against mentions.

Routing and rendering run for every route of every event, so Jinja's per-call overheads are
avoided where that changes nothing (bench/route_render.py measures it): an event's names are
handed to a template, or to all of its ``when`` conditions at once, without being copied, and the
event's own dataclass fields are read without the sandbox's per-access checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import consume

from bridge import events, filters
from bridge.events import Event

# The fields of the canonical event's dataclasses (Event, Order, Customer, …), by class. They are
# plain data that the sandbox's checks would pass anyway (no leading "_"; the object is not a
# function, type, frame or mutable container), and reading them is most of what templates do.
_EVENT_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))
    for cls in vars(events).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == events.__name__
}


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with a short way to the canonical event's own fields.

    Only an exact event class (not a subclass) and a declared field take the short way; any other
    attribute or item, of anything, goes through the sandbox's full checks.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:  # order.total
        if attribute in _EVENT_FIELDS.get(type(obj), ()):
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:  # order["total"], map(attribute="sku")
        # The event's dataclasses are not subscriptable: Jinja falls back to the attribute.
        if type(argument) is str and argument in _EVENT_FIELDS.get(type(obj), ()):
            return getattr(obj, argument)
        return super().getitem(obj, argument)

    def make_globals(self, d: dict[str, Any] | None) -> dict[str, Any]:
        """A template's globals as a plain dict rather than Jinja's ChainMap over the
        environment's: Jinja copies them for every render and include, and a ChainMap is slow to
        copy. The environment's globals never change once ``environment()`` has built it."""
        return {**self.globals, **(d or {})}


def environment(template_dirs: Sequence[Path], zone: tzinfo) -> jinja2.Environment:
    env = Sandbox(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
        undefined=jinja2.ChainableUndefined,  # order.customer.name on a refund: blank
        finalize=filters.finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # HTML escaping means nothing to Pumble; mentions are escaped instead
        # Every template is compiled when the config loads, and a changed one is put in force by
        # reloading the whole config (bridge/reload.py), which checks it first. Jinja's own reload
        # would stat each included file on every render and swap in a changed one unchecked.
        auto_reload=False,
        cache_size=-1,  # all of them, in a plain dict: an include is a lookup, not an LRU update
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
        "shipment": event.shipment,
        "refund": event.refund,
        "payment": event.payment,
        "product": event.product,
        "raw": event.raw,
    }


def scope(env: jinja2.Environment, event: Event) -> dict[str, Any]:
    """The event's names and the environment's globals (``range``, ``namespace``, …): everything
    a template rendered for the event can look up, as ``template.render`` would assemble it."""
    return {**env.globals, **context(event)}


def render(template: jinja2.Template, names: dict[str, Any]) -> str:
    """``template.render(names)``, without copying ``names`` first: Jinja never writes to the
    names a context is given (it keeps the template's own variables apart), so one ``scope`` can
    serve every template rendered for an event."""
    context = template.new_context(names, shared=True)
    try:
        return template.environment.concat(template.root_render_func(context))
    except Exception:
        template.environment.handle_exception()


class Condition:
    """A ``when`` expression, compiled once, as ``env.compile_expression`` compiles it.

    Unlike Jinja's compiled expression, which builds a fresh context for every call, it is
    evaluated in a context made once per event (``Condition.context``) and shared by all of a
    route list's conditions. An expression only ever stores its own value, which is taken out
    again, so no condition sees anything of another.
    """

    def __init__(self, env: jinja2.Environment, source: str):
        """Raises TemplateSyntaxError when ``source`` is not one Jinja expression."""
        parser = Parser(env, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise jinja2.TemplateSyntaxError("chunk after expression",
                                             parser.stream.current.lineno, None, None)
        expr.set_environment(env)
        self._template = env.from_string(nodes.Template(
            [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)], lineno=1))

    def context(self, names: dict[str, Any]) -> Context:
        """A context for one event's ``scope``, to evaluate any condition of this environment
        in (not only this one: a context is the names, and what each expression stores)."""
        return self._template.new_context(names, shared=True)

    def __call__(self, context: Context) -> Any:
        """The expression's value; whatever it raises (a missing field, a wrong type) propagates."""
        consume(self._template.root_render_func(context))
        return context.vars.pop("result")
