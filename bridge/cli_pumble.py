"""``pumble-bridge pumble …``: try a Pumble API key from the shell (the help article's "try it
from Postman" step). Reads the key from PUMBLE_API_KEY or the config; one line per result, and a
one-line reason with a non-zero exit on any error."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from bridge import logs
from bridge.cli_tools import EXIT_FAILED
from bridge.config import DEFAULT_PUMBLE_BASE_URL, ConfigError, config_path, load_config
from bridge.pumble import Message, PumbleClient, PumbleError

PUMBLE = ("pumble",)  # all of the config these commands read: no webhook secret is needed


def add_pumble_commands(commands: argparse._SubParsersAction,
                        common: argparse.ArgumentParser) -> None:
    # Before or after the action, as --config (SUPPRESS: an action's absent flag keeps the
    # value given before it).
    base_url = argparse.ArgumentParser(add_help=False)
    base_url.add_argument("--base-url", default=argparse.SUPPRESS,
                          help="API base URL (default: $PUMBLE_BASE_URL, the config, else "
                               "Pumble's)")
    pumble = commands.add_parser(
        "pumble", parents=[common, base_url], help="call Pumble's API with your key",
        description="Call Pumble's API with the key from PUMBLE_API_KEY or the config.")
    actions = pumble.add_subparsers(title="actions", required=True, metavar="ACTION")

    def action(name: str, handler: Callable[[PumbleClient, argparse.Namespace], None],
               help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[common, base_url], help=help_text,
                                 description=help_text)
        sub.set_defaults(command=lambda args: _call(handler, args))
        return sub

    action("channels", _channels, "list the channels and DMs the key can see")
    action("whoami", _whoami, "show the key's owner (checks the key)")

    messages = action("messages", _messages, "list a channel's messages, newest first")
    messages.add_argument("channel")
    messages.add_argument("--limit", type=int, default=20, help="how many")
    messages.add_argument("--cursor", default="", metavar="MESSAGE_ID",
                          help="start before this message: the last id of a previous listing")

    send = action("send", _send, "post a message")
    send.add_argument("channel")
    send.add_argument("text")
    send.add_argument("--as-bot", action="store_true", help="post as the API addon's bot")

    reply = action("reply", _reply, "reply in a message's thread")
    reply.add_argument("channel")
    reply.add_argument("message_id")
    reply.add_argument("text")
    reply.add_argument("--as-bot", action="store_true")
    reply.add_argument("--also-to-channel", action="store_true",
                       help="show the reply in the channel too")

    react = action("react", _react, "add a reaction to a message")
    react.add_argument("message_id")
    react.add_argument("reaction", help="an emoji code, e.g. tada or :tada:")

    create = action("create-channel", _create_channel, "create a channel")
    create.add_argument("name")
    create.add_argument("--private", action="store_true")
    create.add_argument("--description", default="")

    delete = action("delete", _delete, "delete a message")
    delete.add_argument("channel")
    delete.add_argument("message_id")


def _call(handler: Callable[[PumbleClient, argparse.Namespace], None],
          args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            handler(client, args)
    except (PumbleError, ValueError) as exc:
        print(f"pumble-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _client(args: argparse.Namespace) -> PumbleClient:
    """Key and URL from the environment first, then the config file if there is one."""
    key = os.environ.get("PUMBLE_API_KEY", "")
    base_url = getattr(args, "base_url", "") or os.environ.get("PUMBLE_BASE_URL", "")
    path = config_path(getattr(args, "config", None))
    if (not key or not base_url) and (path.exists() or getattr(args, "config", None)):
        config = load_config(path, sections=PUMBLE)  # ConfigError is reported by the caller
        logs.redact_secrets(config, args.redactor)
        pumble = config.pumble
        key = key or (pumble.api_key.get_secret_value() if pumble.api_key else "")
        base_url = base_url or pumble.base_url
    if not key:
        raise ConfigError(["no Pumble API key: set PUMBLE_API_KEY or pumble.api_key in the "
                           "config (make one in Pumble with /api-keys generate)"])
    args.redactor.add([key])  # from the environment, it is in no config
    return PumbleClient(key, base_url or DEFAULT_PUMBLE_BASE_URL)


def _channels(client: PumbleClient, args: argparse.Namespace) -> None:
    for channel in sorted(client.list_channels(), key=lambda c: (c.type, c.name)):
        member = "" if channel.is_member else "  (not a member)"
        print(f"{channel.id}  {channel.type:<8} #{channel.name}{member}")


def _whoami(client: PumbleClient, args: argparse.Namespace) -> None:
    info = client.my_info()
    print(f"{info.get('id', '')}  {info.get('name', '')} <{info.get('email', '')}>")


def _messages(client: PumbleClient, args: argparse.Namespace) -> None:
    walk = client.iter_messages(args.channel, limit=min(max(args.limit, 1), 200),
                                cursor=args.cursor)
    for message in itertools.islice(walk, args.limit):
        print(_message_line(message))


def _message_line(message: Message) -> str:
    when = datetime.fromtimestamp(message.timestamp_milli / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    text = message.text.replace("\n", " ⏎ ")
    return f"{message.id}  {when}  {text[:120]}{'…' if len(text) > 120 else ''}"


def _send(client: PumbleClient, args: argparse.Namespace) -> None:
    ref = client.send_message(args.channel, args.text, as_bot=args.as_bot)
    print(f"sent {ref.id} to channel {ref.channel_id}")


def _reply(client: PumbleClient, args: argparse.Namespace) -> None:
    ref = client.send_reply(args.message_id, args.text, channel=args.channel,
                            as_bot=args.as_bot, also_send_to_channel=args.also_to_channel)
    print(f"replied {ref.id} in channel {ref.channel_id}")


def _react(client: PumbleClient, args: argparse.Namespace) -> None:
    code = f":{args.reaction.strip(':')}:"  # Pumble wants the colon form; people type either
    client.add_reaction(args.message_id, code)
    print(f"reacted {code} to {args.message_id}")


def _create_channel(client: PumbleClient, args: argparse.Namespace) -> None:
    ref = client.create_channel(args.name, private=args.private, description=args.description)
    print(f"created #{ref.name} ({ref.id})")


def _delete(client: PumbleClient, args: argparse.Namespace) -> None:
    client.delete_message(args.message_id, channel=args.channel)
    print(f"deleted {args.message_id}")
