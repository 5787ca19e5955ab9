"""``pumble-bridge events`` and ``pumble-bridge replay``: the admin page's events, from the shell.

events [--q TEXT] [--state S] [--source NAME] [--type TYPE] [--limit N] [--json]
    what the admin page lists (the same search), one line an event, or its JSON
replay EVENT_ID [--route NAME]
    send an accepted event again through today's routes and templates, marked as a replay
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from zoneinfo import ZoneInfo

from bridge.activity import STATES, Activity, Filters
from bridge.admin import RECENT_EVENTS, event_json
from bridge.cli_tools import EXIT_FAILED, command_config, command_redis
from bridge.config import Config
from bridge.queue import NotificationQueue, connect

# What listing needs of the config: no source, so no webhook secret.
READING = ("redis", "delivery", "timezone")

Handler = Callable[[NotificationQueue, argparse.Namespace, Config], int]


def add_events_commands(commands: argparse._SubParsersAction,
                        common: argparse.ArgumentParser) -> None:
    events = commands.add_parser(
        "events", parents=[common], help="list the recent events, as the admin page does",
        description="The recent webhooks and what became of each notification, newest first.")
    events.add_argument("--q", default="", metavar="TEXT",
                        help="order number, customer name or email, event or Pumble message id")
    events.add_argument("--state", default="", choices=STATES,
                        help="only events with a notification in this state")
    events.add_argument("--source", default="", help="only this source's events")
    events.add_argument("--type", default="", help="only events of this type (order.paid…)")
    events.add_argument("--limit", type=int, default=RECENT_EVENTS, help="at most this many")
    events.add_argument("--json", action="store_true", help="the admin page's JSON")
    events.set_defaults(command=lambda args: _with_queue(_events, args, READING, "events"))

    replay = commands.add_parser(
        "replay", parents=[common], help="send an accepted event again",
        description="Run an accepted event's webhook through today's routes and templates "
        "and queue its notifications again, marked as a replay (a worker sends them).")
    replay.add_argument("event_id", metavar="EVENT_ID")
    replay.add_argument("--route", default="", metavar="NAME", help="only this route's message")
    replay.set_defaults(command=lambda args: _with_queue(_replay, args, None, "replay"))


def _with_queue(handler: Handler, args: argparse.Namespace,
                sections: tuple[str, ...] | None, name: str) -> int:
    config = command_config(args, sections)
    with command_redis(config, name) as url:
        connection = connect(url)
        try:
            return handler(NotificationQueue(connection, config.redis.queue, config.delivery),
                           args, config)
        finally:
            connection.close()


def _events(queue: NotificationQueue, args: argparse.Namespace, config: Config) -> int:
    filters = Filters(q=args.q, state=args.state, source=args.source, type=args.type)
    zone = ZoneInfo(config.timezone)
    found = [event_json(event, zone)
             for event in Activity(queue).search(filters, max(args.limit, 1))]
    if args.json:
        print(json.dumps({"events": found}, indent=2, ensure_ascii=False))
        return 0
    for event in found:
        money = f"{event['amount']} {event['currency']}".strip()
        marks = [mark for mark, on in (("test", event["test"]),
                                       (f"replay of {event['replay_of']}", event["replay_of"]),
                                       ("re-delivery", event["duplicate"])) if on]
        print("  ".join(part for part in (
            event["received"], event["type"], event["ref"], money, event["customer"],
            event["event_id"], ",".join(event["states"]) or "-", *marks) if part))
    print(f"{len(found)} event(s)")
    return 0


def _replay(queue: NotificationQueue, args: argparse.Namespace, config: Config) -> int:
    from bridge.pipeline import Pipeline
    from bridge.replay import ReplayError, replay

    try:
        replayed = replay(queue, Pipeline.from_config(config), args.event_id, route=args.route)
    except ReplayError as exc:
        print(f"pumble-bridge replay: {exc}")
        return EXIT_FAILED
    routes = ", ".join(n.route for n in replayed.notifications)
    print(f"{args.event_id} queued again as {replayed.delivery_id} (routes: {routes})")
    for failure in replayed.failures:
        print(f"not sent: {failure}")
    return 0
