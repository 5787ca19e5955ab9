"""A fake Pumble API Keys server that follows shared/pumble-api.md, for tests and first runs.

Where the public record is silent (§4 to §8 of the notes mark it UNKNOWN), the fake chooses, and
every such choice is listed here:

- Every error is HTTP 403, as SPEC says the live API does (§4).
- A missing or unknown key: legacy body ``{"error": "Invalid API key"}``.
- An unknown channel: legacy body ``{"error": "Could not find channel with that identifier"}``.
- A request that fails validation: structured body ``{"message", "localizedMessage", "code"}``
  with code 400000, as SPEC's createChannel example.
- Both ``ApiKey`` and ``Api-Key`` headers are accepted (which one Pumble reads is disputed, §1).
- No length limit on message text (none is documented).

Control endpoints under ``/_fake/`` are not Pumble's: they let tests read what was posted.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, jsonify, request

from bridge.pumble import normalize_channel_name

WORKSPACE_ID = "5f0c0e1a2b3c4d5e6f708192"
OWNER_USER_ID = "5f0c0e1a2b3c4d5e6f708193"
ADDON_BOT_ID = "5f0c0e1a2b3c4d5e6f708194"
DEFAULT_CHANNELS = ("general", "random")


def new_id() -> str:
    """Pumble ids are 24 hex characters."""
    return secrets.token_hex(12)


class FakeWorkspace:
    """The fake's state: channels and their messages, in memory, safe across threads."""

    def __init__(self, channels: Iterable[str] = ()):
        self._lock = threading.Lock()
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        for name in (*DEFAULT_CHANNELS, *channels):
            self.create_channel(name)

    def create_channel(self, name: str, channel_type: str = "PUBLIC",
                       description: str = "") -> dict[str, Any] | None:
        """The new channel, or None when the name is taken."""
        name = normalize_channel_name(name)
        now = datetime.now(UTC)
        with self._lock:
            if self.find(name=name) is not None:
                return None
            channel = {
                "id": new_id(), "name": name, "channelType": channel_type,
                "workspaceId": WORKSPACE_ID, "description": description,
                "creatorId": OWNER_USER_ID, "isMember": True, "isArchived": False,
                "timestamp": _iso(now), "timestampMilli": _millis(now),
            }
            self.channels[channel["id"]] = channel
            self.messages[channel["id"]] = []
            return channel

    def find(self, *, name: str = "", channel_id: str = "") -> dict[str, Any] | None:
        if channel_id:
            return self.channels.get(channel_id)
        wanted = normalize_channel_name(name)
        return next((c for c in self.channels.values() if c["name"] == wanted), None)

    def post(self, channel: dict[str, Any], text: str, as_bot: bool) -> dict[str, Any]:
        now = datetime.now(UTC).replace(microsecond=0)  # Pumble keeps whole seconds
        message = {
            "id": new_id(), "channelId": channel["id"], "workspaceId": WORKSPACE_ID,
            "author": ADDON_BOT_ID if as_bot else OWNER_USER_ID,
            "authorAppId": ADDON_BOT_ID if as_bot else None,
            "text": text, "timestamp": _iso(now), "timestampMilli": _millis(now),
            "reactions": [], "attachments": [], "files": [], "subtype": "",
            "deleted": False, "edited": False,
        }
        with self._lock:
            self.messages[channel["id"]].append(message)
        return message

    def posted(self, channel_name: str = "") -> list[dict[str, Any]]:
        """Messages in posting order, each with its channel's name, optionally of one channel."""
        with self._lock:
            return [
                {**message, "channel": self.channels[channel_id]["name"]}
                for channel_id, messages in self.messages.items()
                for message in messages
                if not channel_name
                or self.channels[channel_id]["name"] == normalize_channel_name(channel_name)
            ]


def create_fake_pumble(
    keys: Iterable[str] = (),
    channels: Iterable[str] = (),
    echo: Callable[[str], None] | None = None,
) -> Flask:
    """The fake as a Flask app. ``keys`` empty: any non-empty key is accepted."""
    workspace = FakeWorkspace(channels)
    accepted = frozenset(keys)
    app = Flask("fake_pumble")
    app.config["workspace"] = workspace

    def legacy_error(message: str):
        return jsonify({"error": message}), 403

    def validation_error(message: str):
        return jsonify({"message": message, "localizedMessage": message, "code": 400000}), 403

    @app.before_request
    def check_key():
        if request.path.startswith("/_fake/"):
            return None
        key = request.headers.get("ApiKey") or request.headers.get("Api-Key") or ""
        if not key or (accepted and key not in accepted):
            return legacy_error("Invalid API key")
        return None

    def json_body() -> dict[str, Any] | None:
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else None

    def target_channel(body: dict[str, Any]) -> dict[str, Any] | None:
        return workspace.find(name=str(body.get("channel") or ""),
                              channel_id=str(body.get("channelId") or ""))

    @app.post("/sendMessage")
    def send_message():
        body = json_body()
        if body is None:
            return validation_error("Request body must be a JSON object")
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return validation_error("text must be a non-empty string")
        if not (body.get("channel") or body.get("channelId")):
            return validation_error("channel or channelId is required")
        if not isinstance(body.get("asBot", False), bool):
            return validation_error("asBot must be a boolean")
        channel = target_channel(body)
        if channel is None:
            return legacy_error("Could not find channel with that identifier")
        message = workspace.post(channel, text, bool(body.get("asBot", False)))
        if echo is not None:
            echo(f"[fake-pumble] #{channel['name']}: {text}")
        return jsonify({"id": message["id"], "channelId": channel["id"]})

    @app.post("/createChannel")
    def create_channel():
        body = json_body()
        if body is None:
            return validation_error("Request body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not normalize_channel_name(name):
            return validation_error("name must be a non-empty string")
        if body.get("type") not in ("PUBLIC", "PRIVATE"):
            return validation_error("[Allowed values are PUBLIC|PRIVATE]")
        channel = workspace.create_channel(name, body["type"], str(body.get("description") or ""))
        if channel is None:
            return validation_error("Channel with that name already exists")
        return jsonify({"id": channel["id"], "name": channel["name"]})

    @app.get("/listChannels")
    def list_channels():
        return jsonify([{"channel": c, "users": [OWNER_USER_ID]}
                        for c in list(workspace.channels.values())])

    @app.get("/_fake/messages")
    def posted_messages():
        return jsonify({"messages": workspace.posted(request.args.get("channel", ""))})

    return app


def print_message(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stdout, flush=True)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
