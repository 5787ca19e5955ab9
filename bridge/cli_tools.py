"""Try routes before going live (as Alertmanager's amtool does): nothing here sends a message.

render        parse a saved webhook payload as a configured source would (signature NOT checked)
              and show every route's verdict, and the channel and text each match would post
routes test   the same for a synthetic event built from a few ``--set field=value``
check --online (the flag of ``check``): ask Pumble whether the key works and every static route
              channel exists

Exit codes: 0 rendered (or all well), 1 the payload cannot be parsed, a route failed to render
or Pumble reported a problem, 2 a config or usage error (as the rest of the CLI).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import sys
import time
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bridge import logs
from bridge.config import Config, RouteSettings, config_path, data_dir, load_config
from bridge.events import Event, SourceRef
from bridge.mutes import intervals_of, muted_now, zone_of
from bridge.pipeline import Pipeline
from bridge.pumble import PumbleClient, PumbleError, normalize_channel_name
from bridge.redis_embedded import redis_url
from bridge.render import RenderError
from bridge.sources import PayloadError, Source, WebhookRequest

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # every command's "it did not work" (exit 2 is a config or usage error)


class CommandError(Exception):
    """A usage or config problem: printed on one line by ``bridge.cli.main``, exit 2."""

# Platforms that take the topic from a header; the others read the event type from the body.
TOPIC_HEADERS = {"shopify": "X-Shopify-Topic", "woocommerce": "X-WC-Webhook-Topic"}
TOPIC_EXAMPLES = {"shopify": "orders/create", "woocommerce": "order.created"}


def _event_parts() -> dict[str, type]:
    """Event's optional parts (order, customer, …) by field name, in Event's order."""
    hints = typing.get_type_hints(Event)
    return {field.name: part for field in dataclasses.fields(Event)
            for part in typing.get_args(hints[field.name]) if dataclasses.is_dataclass(part)}


# The parts of an Event ``routes test`` can fill, in the order they are shown.
PARTS: dict[str, type] = _event_parts()
# Required constructor arguments of a part, when --set does not give them.
PART_DEFAULTS: dict[str, dict[str, Any]] = {"order": {"id": "test-order"}}
SYNTHETIC_ID = "routes-test"


def add_tools_commands(commands: argparse._SubParsersAction,
                       common: argparse.ArgumentParser) -> None:
    render = commands.add_parser(
        "render", parents=[common], help="show what a saved webhook payload would post",
        description="Parse a payload as the named source would (the signature is NOT "
                    "verified), then show every route's verdict and each match's channel and "
                    "text. Nothing is sent.")
    render.set_defaults(command=cmd_render)
    render.add_argument("--source", required=True, metavar="NAME",
                        help="the configured source (as in /webhooks/NAME) that receives it")
    render.add_argument("--topic", default=None,
                        help="the topic header's value, for platforms that send the topic in a "
                             "header (shopify: orders/create, woocommerce: order.created)")
    render.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="another request header, e.g. 'X-Shopify-Shop-Domain: "
                             "demo.myshopify.com' (repeatable)")
    render.add_argument("payload", help="the JSON body, as a file (- for stdin)")

    routes = commands.add_parser("routes", parents=[common], help="try the routes",
                                 description="Try the routes on a synthetic event.")
    actions = routes.add_subparsers(title="actions", required=True, metavar="ACTION")
    test = actions.add_parser(
        "test", parents=[common], help="route and render a synthetic event",
        description="Build an event from --type and --set, then show every route's verdict and "
                    "each match's channel and text. Nothing is sent.")
    test.set_defaults(command=cmd_routes_test)
    test.add_argument("--type", required=True, dest="event_type", metavar="TYPE",
                      help="the canonical event type, e.g. order.created")
    test.add_argument("--source", default=None, metavar="NAME",
                      help="the source it comes from (default: the first configured)")
    test.add_argument("--set", action="append", default=[], dest="values",
                      metavar="FIELD=VALUE",
                      help="a field of the event, e.g. order.total=600 or customer.tags=vip,b2b "
                           "(repeatable)")


def command_config(args: argparse.Namespace, sections: Collection[str] | None = None) -> Config:
    """The config a command names (``--config``, else the default path), its keys and secrets
    masked in every log line from now on. Every subcommand loads its config through here;
    ``sections``: only those it needs (see ``load_config``)."""
    config = load_config(config_path(getattr(args, "config", None)), sections=sections)
    logs.redact_secrets(config, args.redactor)
    return config


@contextlib.contextmanager
def command_redis(config: Config, command: str) -> Iterator[str]:
    """The Redis URL a command uses: the configured one, else the embedded server's, said on
    stderr with its data dir (a command run with another data dir would see an empty Redis)."""
    if config.redis.url:
        yield config.redis.url
        return
    directory = data_dir(config_file=config.path)
    with redis_url(None, directory) as url:
        said = (f"embedded Redis at {url}, data in {directory} (BRIDGE_DATA_DIR, else beside "
                "the config file)")
        if log.isEnabledFor(logging.INFO):  # a long-running command: a line of its log
            log.info("%s", said)
        else:  # a one-shot command, which logs nothing else
            print(f"pumble-bridge {command}: {said}", file=sys.stderr, flush=True)
        yield url


# -- render ------------------------------------------------------------------------------------

def cmd_render(args: argparse.Namespace) -> int:
    config = command_config(args)
    pipeline = Pipeline.from_config(config)
    source = pipeline.sources.get(args.source)
    if source is None:
        raise CommandError(f"no source named {args.source!r} in {config.path} "
                           f"(configured: {', '.join(config.sources) or 'none'})")
    request = _request(source, config, args)
    label = "stdin" if args.payload == "-" else args.payload
    topic = f", topic {args.topic}" if args.topic else ""
    print(f"render: signature NOT verified, nothing sent: {label} as source {source.name!r} "
          f"({source.platform}){topic}")
    if source.is_ping(request):
        print(f"this is {source.platform}'s set-up ping: it is answered 200 and routed nowhere")
        return 0
    try:
        event = source.parse(request)
    except Exception as exc:  # as the receiver: PayloadError, or a shape the source cannot read
        reason = str(exc) if isinstance(exc, PayloadError) else (
            f"the payload could not be read ({type(exc).__name__}: {exc}); the receiver "
            "would answer 400")
        print(f"pumble-bridge: render: {label}: cannot be parsed as {source.platform}: {reason}",
              file=sys.stderr)
        return EXIT_FAILED
    return report(pipeline, event, mute_note(config))


def _request(source: Source, config: Config, args: argparse.Namespace) -> WebhookRequest:
    """The request the source would receive: the payload as the body, the headers it needs."""
    body = _read_payload(args.payload)
    headers = {"Content-Type": "application/json"}
    header = TOPIC_HEADERS.get(source.platform) or getattr(
        source.options, "event_type_header", "")  # an hmac source may take it from a header
    if header:
        if not args.topic:
            example = TOPIC_EXAMPLES.get(source.platform, "the sender's event name")
            raise CommandError(f"{source.platform} source {source.name!r} takes the event "
                               f"topic from the {header} header: give --topic (e.g. {example})")
        headers[header] = args.topic
    elif args.topic is not None:
        raise CommandError(f"--topic does not apply to {source.platform} source {source.name!r}: "
                           "its event type is read from the body")
    if source.platform == "bigcommerce":  # not checked here, but present as BigCommerce sends it
        headers[source.options.header] = config.sources[source.name].secrets[0]
    for line in args.header:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise CommandError(f"--header {line!r}: write it as 'Name: value'")
        headers[name.strip()] = value.strip()
    return WebhookRequest.of(headers, body)


def _read_payload(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: cannot read the payload: {exc.strerror}") from None


# -- routes test -------------------------------------------------------------------------------

def cmd_routes_test(args: argparse.Namespace) -> int:
    config = command_config(args)
    pipeline = Pipeline.from_config(config)
    if not config.sources:
        raise CommandError(f"no sources in {config.path}")
    name = args.source or next(iter(config.sources))
    if name not in config.sources:
        raise CommandError(f"no source named {name!r} in {config.path} "
                           f"(configured: {', '.join(config.sources)})")
    event = synthetic_event(args.event_type, SourceRef(name, config.sources[name].type),
                            args.values)
    print(f"routes test: synthetic event, nothing sent: source {name!r} "
          f"({config.sources[name].type})")
    return report(pipeline, event, mute_note(config))


def settable_fields() -> dict[str, Callable[[str], Any]]:
    """``part.field`` -> how its text is read, for every field ``--set`` accepts."""
    known: dict[str, Callable[[str], Any]] = {}
    for part, cls in PARTS.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            reader = _reader(hints[field.name])
            if reader is not None:
                known[f"{part}.{field.name}"] = reader
    return known


def _reader(hint: Any) -> Callable[[str], Any] | None:
    kinds = set(typing.get_args(hint)) - {type(None)} or {hint}
    if kinds == {Decimal}:
        return _decimal
    if kinds == {int}:
        return _integer
    if kinds == {str}:
        return str
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is str:
        return lambda text: tuple(t.strip() for t in text.split(",") if t.strip())
    return None  # line items, addresses: not settable from one string


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError("is not a number") from None
    if not value.is_finite():
        raise ValueError("is not a number")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def synthetic_event(event_type: str, source: SourceRef, assignments: Sequence[str]) -> Event:
    """An Event of ``event_type`` with the ``part.field=value`` assignments filled in."""
    known = settable_fields()
    values: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        dotted, equals, text = assignment.partition("=")
        dotted = dotted.strip()
        if not equals:
            raise CommandError(f"--set {assignment!r}: write it as FIELD=VALUE, "
                               "e.g. order.total=600")
        if dotted not in known:
            hint = difflib.get_close_matches(dotted, known, n=1)
            guess = f" (did you mean {hint[0]}?)" if hint else ""
            raise CommandError(f"--set {dotted}: unknown field{guess}; known fields: "
                               f"{', '.join(known)}")
        try:
            value = known[dotted](text.strip())
        except ValueError as exc:
            raise CommandError(f"--set {dotted}: {text.strip()!r} {exc}") from None
        part, _, field = dotted.partition(".")
        values.setdefault(part, {})[field] = value
    parts = {part: PARTS[part](**{**PART_DEFAULTS.get(part, {}), **fields})
             for part, fields in values.items()}
    return Event(id=SYNTHETIC_ID, type=event_type, source=source, **parts)


# -- the report both commands print ------------------------------------------------------------

def report(pipeline: Pipeline, event: Event,
           muted: Callable[[RouteSettings], str] = lambda route: "") -> int:
    """The event, every route's verdict and reason, and each match's channel and text, and
    ``muted``'s line for it when it has one. 1 when a matched route fails to render, else 0."""
    for line in describe_event(event):
        print(line)
    decisions = pipeline.router.explain(event)
    print(f"routes ({len(decisions)}, in order; the first match stops unless continue: true):"
          if decisions else "routes: none configured")
    failed = sent = 0
    for decision in decisions:
        route = decision.route
        if not decision.matched:
            print(f"  no match  {route.name}: {decision.reason}")
            continue
        print(f"  MATCH     {route.name}: {decision.reason}")
        try:
            message = pipeline.renderer.render(route, event)
        except RenderError as exc:
            print(f"    render error: {exc}")
            failed += 1
            continue
        sent += 1
        print(f"    channel: {message.channel}  ({_sender(route)})")
        if muted(route):
            print(f"    {muted(route)}")
        print("    text:")
        for line in message.text.splitlines():
            print(f"      {line}" if line else "")
    matched = sum(decision.matched for decision in decisions)
    summary = (f"{matched} of {len(decisions)} route(s) matched: {sent} message(s) would be sent"
               if matched else "no route matched: nothing would be sent")
    if failed:
        summary += f"; {failed} route(s) failed to render"
    print(summary)
    return EXIT_FAILED if failed else 0


def mute_note(config: Config, now: float | None = None) -> Callable[[RouteSettings], str]:
    """What a route's time intervals do to a notification sent ``now`` (default: the time):
    held or dropped, until when; "" for a route not muted then. (Mutes set by hand are in
    Redis: ``pumble-bridge mutes`` lists them.)"""
    intervals = intervals_of(config)
    moment = time.time() if now is None else now

    def note(route: RouteSettings) -> str:
        muted = muted_now(route, intervals, None, moment)
        if muted is None:
            return ""
        fate = "would be dropped" if route.when_muted == "drop" else "would be held"
        zone = zone_of(route, intervals, ZoneInfo(config.timezone))
        return f"muted now ({muted.describe(zone)}): {fate}"

    return note


def _sender(route: RouteSettings) -> str:
    who = "as the bot" if route.as_bot else "as the key's owner"
    return who if route.account == "default" else f"{who}, account {route.account}"


def describe_event(event: Event) -> list[str]:
    """The event's type and id, then each part it carries with its non-empty fields."""
    head = (f"event: {event.type}  id={event.id}  "
            f"source={event.source.name} ({event.source.platform})")
    if event.occurred_at is not None:
        head += f"  occurred_at={event.occurred_at.isoformat()}"
    lines = [head]
    for part in PARTS:
        value = getattr(event, part)
        if value is None:
            continue
        filled = [f"{field.name}={_brief(getattr(value, field.name))}"
                  for field in dataclasses.fields(value) if _filled(getattr(value, field.name))]
        lines.append(f"  {part}: {' '.join(filled) or '(nothing filled)'}")
    return lines


def _filled(value: Any) -> bool:
    return value is not None and value != "" and value != ()


def _brief(value: Any) -> str:
    if isinstance(value, tuple):
        if all(isinstance(item, str) for item in value):
            return ",".join(value)
        return str(len(value))  # line items: how many
    text = str(value)
    return f'"{text}"' if any(ch.isspace() for ch in text) else text


# -- check --online ----------------------------------------------------------------------------

def check_online(config: Config) -> int:
    """Ask Pumble, with each account the routes use, whether the key works (myInfo) and whether
    every static route channel exists (listChannels). Problems go to stderr; 1 if any."""
    pumble = config.pumble
    by_account: dict[str, list[RouteSettings]] = {}
    for route in config.routes:
        by_account.setdefault(route.account, []).append(route)
    if not by_account or pumble.api_key is not None:
        by_account.setdefault("default", [])  # the key `pumble` and the worker fall back to
    if "default" in by_account and pumble.api_key is None:
        raise CommandError("check --online needs a Pumble API key: set pumble.api_key in the "
                           "config or PUMBLE_API_KEY (make one in Pumble with /api-keys generate)")
    problems: list[str] = []
    for account in sorted(by_account, key=lambda name: (name != "default", name)):
        key, base_url = pumble.account(account)  # every named account has a key (config.py)
        with PumbleClient(key, base_url, connect_timeout=pumble.connect_timeout,
                          read_timeout=pumble.read_timeout) as client:
            try:
                owner = client.my_info()
                channels = client.list_channels()
            except PumbleError as exc:
                problems.append(f"account {account!r} ({base_url}): Pumble refused or did not "
                                f"answer, so its routes' channels are unchecked: {exc}")
                continue
        print(f"online: account {account!r}: the key works ({owner.get('name', '?')} "
              f"<{owner.get('email', '?')}> at {base_url}); {len(channels)} channel(s) visible")
        problems.extend(_missing_channels(by_account[account], account,
                                          {normalize_channel_name(c.name) for c in channels}))
    for problem in problems:
        print(f"pumble-bridge: check --online: {problem}", file=sys.stderr)
    if problems:
        print(f"online: {len(problems)} problem(s)")
        return EXIT_FAILED
    print("online: OK (every static route channel exists)")
    return 0


def _missing_channels(routes: Iterable[RouteSettings], account: str,
                      existing: set[str]) -> list[str]:
    problems = []
    for route in routes:
        if "{" in route.channel:
            print(f"online: route {route.name!r}: channel {route.channel!r} is chosen per "
                  "event: not checked")
        elif normalize_channel_name(route.channel) not in existing:
            problems.append(f"route {route.name!r}: channel {route.channel!r} does not exist "
                            f"(or account {account!r} cannot see it)")
    return problems
