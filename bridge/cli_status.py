"""``pumble-bridge summary`` and ``pumble-bridge status``: thin, over bridge.summaries_post and
bridge.status.

summary NAME            post the summary that is due, if one is (as a worker would)
summary NAME --now      close the period now and post it (the next covers from now on)
summary NAME --dry-run  print what it would post now; nothing is claimed or sent
status [--json]         the bridge at a glance; exit 0 when healthy, 1 when degraded (says why)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from bridge.cli_tools import EXIT_FAILED, CommandError, command_config, command_redis
from bridge.config import ConfigError, config_path, load_config
from bridge.queue import NotificationQueue, connect
from bridge.status import Status, gather
from bridge.summaries import upcoming
from bridge.summaries_post import SummaryPoster, UnknownSummary

# What the summary command needs of the config: no source, so no webhook secret.
SUMMARY_SECTIONS = ("pumble", "redis", "delivery", "summaries", "templates_dir", "timezone")


def add_status_commands(commands: argparse._SubParsersAction,
                        common: argparse.ArgumentParser) -> None:
    summary = commands.add_parser(
        "summary", parents=[common], help="post (or print) a summary of the events accepted",
        description="Post the summary NAME (summaries: in the config) through the worker: the "
                    "period that is due, or with --now the one that ends now.")
    summary.add_argument("name")
    summary.add_argument("--now", action="store_true",
                         help="close the current period now and post it")
    summary.add_argument("--dry-run", action="store_true",
                         help="print the message it would post now; claim and send nothing")
    summary.set_defaults(command=cmd_summary)
    status = commands.add_parser(
        "status", parents=[common], help="the bridge at a glance; exit 1 when degraded",
        description="Queue, workers, sources' last webhooks, rate limits, config, summaries "
                    "and mutes. Exit 0 when healthy, 1 when degraded (each reason said).")
    status.add_argument("--json", action="store_true", help="as one JSON object")
    status.set_defaults(command=cmd_status)


def cmd_summary(args: argparse.Namespace) -> int:
    config = command_config(args, SUMMARY_SECTIONS)
    with command_redis(config, "summary") as url:
        connection = connect(url)
        try:
            poster = SummaryPoster(config, NotificationQueue(connection, config.redis.queue,
                                                             config.delivery))
            return _summary(poster, args)
        except UnknownSummary as exc:
            raise CommandError(str(exc)) from None
        finally:
            connection.close()


def _summary(poster: SummaryPoster, args: argparse.Namespace) -> int:
    if args.dry_run:
        print(poster.preview(args.name))
        return 0
    if args.now:
        if not poster.post_now(args.name):
            print(f"pumble-bridge: summary {args.name!r} is being posted by another process")
            return EXIT_FAILED
        print(f"summary {args.name!r} queued: a worker posts it")
        return 0
    if poster.post_if_due(poster.named(args.name)):
        print(f"summary {args.name!r} queued: a worker posts it")
    else:
        [coming] = [u for u in upcoming(poster.config.summaries, poster.clock.time())
                    if u.name == args.name]
        print(f"summary {args.name!r} is not due: next at {coming.at:%Y-%m-%d %H:%M %Z} "
              "(--now posts it now)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config, problems = command_config(args), []
    except ConfigError as exc:  # still report the rest, from what can be read
        config = load_config(config_path(getattr(args, "config", None)), sections=("redis",))
        problems = exc.problems
    with command_redis(config, "status") as url:
        connection = connect(url)
        try:
            status = gather(config, connection, problems)
        finally:
            connection.close()
    if args.json:
        print(json.dumps(status.as_json(), indent=2, default=str))
    else:
        print("\n".join(describe(status)))
    return 0 if status.healthy else 1


def describe(status: Status) -> list[str]:
    """The status for a person, a line a thing."""
    lines = ["healthy" if status.healthy else "DEGRADED",
             *(f"  - {problem}" for problem in status.problems)]
    oldest = ("" if status.oldest_queued_age is None
              else f", oldest {status.oldest_queued_age:.0f} s")
    lines.append(f"queue {status.queue}: {status.queued} queued{oldest}, {status.scheduled} "
                 f"scheduled, {status.dead_letters} dead letter(s)")
    workers = ", ".join(f"{w['host']}:{w['pid']} {w['state']}" for w in status.workers)
    lines.append(f"workers: {len(status.workers)} live{': ' + workers if workers else ''}")
    lines.append("sources (last webhook accepted):")
    for name, last in status.sources.items():
        lines.append(f"  {name}: " + ("none recently" if last is None else
                                      f"{_when(last.at)} {last.type}: {last.outcome}"))
    lines.append("rate limits (used/limit in the window):")
    lines += [f"  {account}: " + ", ".join(_bucket(kind, state) for kind, state in kinds.items())
              for account, kinds in status.rate_limits.items()]
    config = status.config
    lines.append(f"config {config['path']}: " + (
        f"{config['sources']} source(s), {config['routes']} route(s), "
        f"{config['summaries']} summary(ies)" if config["valid"] else "does NOT load"))
    lines += [f"summary {s['name']} -> #{s['channel']}: next {s['next']}"
              for s in status.summaries]
    lines.append("mutes: " + (", ".join(f"{m['route']} until {m['until']} (by {m['by']})"
                                        for m in status.mutes) or "none"))
    return lines


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bucket(kind: str, state: dict[str, Any]) -> str:
    wait = f" (full: {state['wait']:.1f} s)" if state["wait"] else ""
    return f"{kind} {state['used']}/{state['limit']}{wait}"
