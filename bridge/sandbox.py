"""The one sandboxed Jinja environment that templates, channel names and ``when`` conditions share.

Nothing in a template can reach Python internals (Jinja's immutable sandbox), a missing field is
blank rather than an error, and every value written out is made chat-safe (``filters.chat_safe``:
no line, mention or link of its own). That rule rides on Jinja's autoescaping, which already
tells the template's own text (its lines, macros, ``{% set %}`` blocks, ``raw``) from values;
only its HTML escaping is replaced, by ``filters.finalize``. Rendering stops a little past
``delivery.max_message_chars``, and ``*`` or ``**`` that would build more is refused.

Routing and rendering run for every route of every event, so Jinja's per-call overheads are
avoided where that changes nothing (bench/receiver.py measures the whole receiver): an event's
names are handed to a template, or to all of its ``when`` conditions at once, without being
copied, and the event's own dataclass fields are read without the sandbox's per-access checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import tzinfo
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import TemplateModule
from jinja2.parser import Parser
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import consume

from bridge import events, filters
from bridge.config import DeliverySettings
from bridge.events import Event

DEFAULT_MAX_CHARS = DeliverySettings().max_message_chars

# The fields of the canonical event's dataclasses (Event, Order, Customer, …), by class. They are
# plain data that the sandbox's checks would pass anyway (no leading "_"; the object is not a
# function, type, frame or mutable container), and reading them is most of what templates do.
_EVENT_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))
    for cls in vars(events).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == events.__name__
}


class _ChatCodeGenerator(CodeGenerator):
    """Jinja's compiler with autoescaping's bookkeeping (what is Markup: the template's own) but
    none of its HTML escaping: ``filters.finalize`` is the only escaping a value gets.

    The two ``_output_child_*`` methods are Jinja's internals (3.1); tests/test_chat_safe.py
    fails if a Jinja upgrade changes them (``&`` turning into ``&amp;``)."""

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        """``{{ value }}`` is ``str(environment.finalize(value))``, never ``escape(…)``."""
        self.write("str(")
        if finalize.src is not None:
            self.write(finalize.src)

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        """A constant ``{{ "a & b" }}``, finalized at compile time."""
        const = node.as_const(frame.eval_ctx)
        return str(const) if isinstance(node, nodes.TemplateData) else finalize.const(const)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        """``a ~ b`` is plain text, written out as one value (Jinja would HTML-escape the parts
        that are not Markup)."""
        self.write("str_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with a short way to the canonical event's own fields, and a
    cap on what a template may build.

    Only an exact event class (not a subclass) and a declared field take the short way; any other
    attribute or item, of anything, goes through the sandbox's full checks.
    """

    code_generator_class = _ChatCodeGenerator
    intercepted_binops = frozenset({"*", "**"})
    max_chars = DEFAULT_MAX_CHARS  # set by environment()

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``'a' * 10**8`` or ``10 ** 10**8``: refused before Python builds it."""
        if operator == "*":
            for sized, times in ((left, right), (right, left)):
                if isinstance(sized, str | list | tuple) and isinstance(times, int) \
                        and len(sized) * times > self.max_chars:
                    raise SecurityError(f"a value of {len(sized) * times:,} characters or "
                                        f"items is over the limit of {self.max_chars:,}")
        elif (operator == "**" and isinstance(left, int) and isinstance(right, int)
              and right * abs(left).bit_length() > 4 * self.max_chars):  # ~ digits * 3.3
            raise SecurityError(f"{left} ** {right} is a number too large to write out")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:  # order.total, m.headline
        if attribute in _EVENT_FIELDS.get(type(obj), ()):
            return getattr(obj, attribute)
        if type(obj) is TemplateModule and not attribute.startswith("_"):
            # An imported template's macro: the sandbox's checks pass it whatever its name.
            value = getattr(obj, attribute, None)
            if type(value) is Macro:
                return value
        return super().getattr(obj, attribute)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """``m.headline(…)``: a template's own macro is called without the checks (attributes
        it does not have) that an object from the payload or the globals must pass."""
        if type(__obj) is Macro:
            return __context.call(__obj, *args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)

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


def environment(template_dirs: Sequence[Path], zone: tzinfo,
                max_chars: int = DEFAULT_MAX_CHARS) -> jinja2.Environment:
    """``max_chars``: ``delivery.max_message_chars``, the longest message or value rendered."""
    env = Sandbox(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
        undefined=jinja2.ChainableUndefined,  # order.customer.name on a refund: blank
        finalize=filters.finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=True,  # with finalize's chat-safe escaping, not HTML's (see the module doc)
        # Every template is compiled when the config loads, and a changed one is put in force by
        # reloading the whole config (bridge/reload.py), which checks it first. Jinja's own reload
        # would stat each included file on every render and swap in a changed one unchecked.
        auto_reload=False,
        cache_size=-1,  # all of them, in a plain dict: an include is a lookup, not an LRU update
    )
    env.max_chars = max_chars
    env.filters.update(
        money=filters.money,
        raw=filters.raw,
        quote=filters.quote,
        e=filters.escape,
        escape=filters.escape,
        forceescape=filters.escape,
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
    serve every template rendered for an event. The rendering stops a little past the
    environment's ``max_chars`` (the caller cuts the rest)."""
    output = template.root_render_func(template.new_context(names, shared=True))
    limit = template.environment.max_chars
    pieces: list[str] = []
    length = 0
    try:
        while length <= limit:  # taken in batches: most templates fit one, counted in C
            batch = list(islice(output, 64))
            if not batch:
                break
            pieces += batch
            length += sum(map(len, batch))
    except Exception:
        template.environment.handle_exception()
    return template.environment.concat(pieces)


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
