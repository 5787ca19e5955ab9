"""``pumble-bridge dlq …``: the dead letters, from the shell.

list           one line each: id, when, route, channel, attempts, reason
show ID        everything about one: the message, the reason, the webhook it came from
retry ID|--all put back on the queue with fresh attempts (the worker sends it again)
purge [ID]     delete one, or every dead letter
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bridge.cli_tools import EXIT_FAILED, command_config, command_redis
from bridge.config import Config
from bridge.dlq import DeadLetterRecord, DeadLetters
from bridge.queue import NotificationQueue, connect

# What reading the dead letters needs of the config: no source, so no webhook secret.
READING = ("redis", "delivery")

Handler = Callable[[DeadLetters, argparse.Namespace, Config], int]


def add_dlq_commands(commands: argparse._SubParsersAction,
                     common: argparse.ArgumentParser) -> None:
    dlq = commands.add_parser("dlq", parents=[common], help="list, show, retry or purge the "
                              "notifications that could not be delivered",
                              description="The notifications the worker gave up on, kept with "
                              "their reason and the webhook they came from.")
    actions = dlq.add_subparsers(title="actions", required=True, metavar="ACTION")

    def action(name: str, handler: Handler, help_text: str,
               sections: tuple[str, ...] | None = READING) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(command=lambda args: _with_dead_letters(handler, args, sections))
        return sub

    action("list", _list, "one line per dead letter")
    show = action("show", _show, "one dead letter in full, with the webhook it came from")
    show.add_argument("id")
    retry = action("retry", _retry, "send again (fresh attempts)", sections=None)  # renders
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?")
    which.add_argument("--all", action="store_true", help="every dead letter")
    purge = action("purge", _purge, "delete one dead letter, or (no ID) all of them")
    purge.add_argument("id", nargs="?")


def _with_dead_letters(handler: Handler, args: argparse.Namespace,
                       sections: tuple[str, ...] | None) -> int:
    config = command_config(args, sections)
    with command_redis(config, "dlq") as url:
        connection = connect(url)
        try:
            return handler(DeadLetters(NotificationQueue(connection, config.redis.queue,
                                                         config.delivery)), args, config)
        finally:
            connection.close()


def _list(dead: DeadLetters, _args: argparse.Namespace, _config: Config) -> int:
    records = dead.list()
    for record in records:
        when = record.failed_at.strftime("%Y-%m-%d %H:%M:%S") if record.failed_at else "-"
        n = record.notification
        print(f"{record.id}  {when}  {n.route}  #{n.channel}  {record.attempts} attempt(s)  "
              f"{record.reason}")
    print(f"{len(records)} dead letter(s)")
    return 0


def _show(dead: DeadLetters, args: argparse.Namespace, _config: Config) -> int:
    record = dead.get(args.id)
    if record is None:
        return _not_found(args.id)
    print(_describe(record))
    return 0


def _describe(record: DeadLetterRecord) -> str:
    n = record.notification
    lines = [
        f"id:        {record.id}",
        f"reason:    {record.reason}",
        f"attempts:  {record.attempts}",
        f"failed at: {record.failed_at or '-'}",
        f"event:     {n.event_type} {n.event_id} from source {n.source}",
        f"route:     {n.route} -> #{n.channel} (account {n.account})",
        "message:",
        *(f"  {line}" for line in n.text.splitlines()),
    ]
    if record.webhook_body is not None:
        lines += ["webhook body:", *(f"  {line}" for line in record.webhook_body.splitlines())]
    else:
        lines.append("webhook body: no longer kept")
    return "\n".join(lines)


def _retry(dead: DeadLetters, args: argparse.Namespace, config: Config) -> int:
    from bridge.pipeline import Pipeline
    from bridge.render import RenderError

    pipeline = Pipeline.from_config(config)  # renders again those whose template failed
    try:
        if args.all:
            print(f"{dead.retry_all(pipeline)} dead letter(s) queued again")
            return 0
        if not dead.retry(args.id, pipeline):
            return _not_found(args.id)
    except RenderError as exc:
        print(f"pumble-bridge: still cannot render: {exc}")
        return EXIT_FAILED
    print(f"{args.id} queued again")
    return 0


def _purge(dead: DeadLetters, args: argparse.Namespace, _config: Config) -> int:
    if args.id and dead.get(args.id) is None:
        return _not_found(args.id)
    print(f"{dead.purge(args.id)} dead letter(s) deleted")
    return 0


def _not_found(job_id: str) -> int:
    print(f"pumble-bridge: no dead letter {job_id!r} (see `pumble-bridge dlq list`)")
    return EXIT_FAILED
