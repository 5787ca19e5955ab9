"""``pumble-bridge mute / unmute / mutes``: silence a route for a while, from the shell.

mute ROUTE --for DURATION [--comment TEXT] [--by WHO]   hold its notifications until then
unmute ROUTE                                            end it; the held ones are sent now
mutes                                                   what is muted, by whom, why, until when

A route with ``when_muted: drop`` drops what comes while it is muted instead of holding it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import getpass
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

from bridge.cli_tools import CommandError, command_config, command_redis
from bridge.config import Config
from bridge.mutes import Mutes, intervals_of, muted_now, parse_duration, release_held, zone_of
from bridge.queue import NotificationQueue, connect

Handler = Callable[[Config, NotificationQueue, Mutes, argparse.Namespace], int]
# What muting needs of the config: no source, so no webhook secret.
MUTING = ("pumble", "redis", "delivery", "routes", "time_intervals", "timezone")


def add_mutes_commands(commands: argparse._SubParsersAction,
                       common: argparse.ArgumentParser) -> None:
    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text,
                                  description=help_text)
        sub.set_defaults(command=lambda args: _with_mutes(handler, args, name))
        return sub

    mute = command("mute", _mute, "hold a route's notifications for a while (sent when the "
                   "mute ends, or dropped with when_muted: drop)")
    mute.add_argument("route")
    mute.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                      help="how long: 30m, 1h30m, 2d")
    mute.add_argument("--comment", default="", help="why, for whoever reads `mutes`")
    mute.add_argument("--by", default=None, help="who (default: your user name)")
    unmute = command("unmute", _unmute, "end a route's mute: its held notifications are sent now")
    unmute.add_argument("route")
    command("mutes", _list, "the routes muted now: by whom, why, until when")


def _with_mutes(handler: Handler, args: argparse.Namespace, name: str) -> int:
    config = command_config(args, MUTING)
    with command_redis(config, name) as url:
        connection = connect(url)
        try:
            queue = NotificationQueue(connection, config.redis.queue, config.delivery)
            return handler(config, queue, Mutes(connection, config.redis.queue), args)
        finally:
            connection.close()


def _route(config: Config, name: str) -> None:
    names = [route.name for route in config.routes]
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        raise CommandError(f"no route named {name!r} in {config.path}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else
                              f" (routes: {', '.join(names) or 'none'})"))


def _mute(config: Config, _queue: NotificationQueue, mutes: Mutes,
          args: argparse.Namespace) -> int:
    _route(config, args.route)
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise CommandError(f"--for: {exc}") from None
    now = time.time()
    mute = mutes.mute(args.route, now + seconds, args.by or getpass.getuser(), args.comment)
    route = next(r for r in config.routes if r.name == args.route)
    what = "dropped" if route.when_muted == "drop" else "held, and sent when it ends"
    print(f"muted {mute.route} until {_when(mute.until, config)}: its notifications are {what}")
    return 0


def _unmute(config: Config, queue: NotificationQueue, mutes: Mutes,
            args: argparse.Namespace) -> int:
    _route(config, args.route)
    ended = mutes.unmute(args.route)
    released = release_held(queue.rq, args.route)
    said = f"unmuted {args.route}" if ended else f"{args.route} was not muted by hand"
    print(said + (f" ({released} held notification(s) sent now)" if released else ""))
    route = next(r for r in config.routes if r.name == args.route)
    intervals = intervals_of(config)
    still = muted_now(route, intervals, None, time.time())
    if still:
        zone = zone_of(route, intervals, ZoneInfo(config.timezone))
        print(f"still muted: {still.describe(zone)}")
    return 0


def _list(config: Config, _queue: NotificationQueue, mutes: Mutes,
          _args: argparse.Namespace) -> int:
    now = time.time()
    by_hand = mutes.all(now)
    for mute in by_hand:
        why = f": {mute.why}" if mute.why else ""
        print(f"{mute.route}  until {_when(mute.until, config)}  by {mute.by}{why}")
    intervals = intervals_of(config)
    by_interval = 0
    for route in config.routes:
        muted = muted_now(route, intervals, None, now)
        if muted:
            by_interval += 1
            zone = zone_of(route, intervals, ZoneInfo(config.timezone))
            print(f"{route.name}  muted now ({muted.describe(zone)})")
    print(f"{len(by_hand)} mute(s) set by hand, {by_interval} route(s) in a muted time interval")
    return 0


def _when(until: float, config: Config) -> str:
    zone = ZoneInfo(config.timezone)
    return f"{dt.datetime.fromtimestamp(until, zone):%Y-%m-%d %H:%M} {zone}"
