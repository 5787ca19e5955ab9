"""A fake of Pumble's API Keys addon, as docs/fake-pumble.md describes it, for tests and first runs.

The state (channels, messages, faults) lives in ``bridge.fake_pumble_state``; this module is the
HTTP surface. Where Pumble's public documentation is silent, the fake chooses, and this is the
one list of every such choice:

Statuses and bodies
- Pumble's own errors are all HTTP 403, as the live API answers:
  - a missing or unknown key: legacy ``{"error": "Invalid API key"}``;
  - an unknown channel (by ``channelId`` or ``channel`` name): legacy
    ``{"error": "Could not find channel with that identifier"}``;
  - an unknown message or cursor, or a message that is not in the channel named with it:
    structured ``{"message": "Not found", "localizedMessage": "Not found", "code": 404100}``;
  - a request that fails validation: structured, code 400000. A body that is not a JSON object
    sent as JSON, text that is not a non-empty string, a missing channel (sendMessage,
    listMessages) or messageId, a non-boolean ``asBot``/``alsoSendToChannel``, a reaction
    outside ``^:[a-zA-Z0-9_+\\-]+:$`` or 3..100 characters, ``skinTone`` not an integer 1..6,
    a channel ``type`` other than PUBLIC/PRIVATE (``"[Allowed values are PUBLIC|PRIVATE]"``), a
    channel name that is taken, ``limit`` not an integer 1..200, a ``strategy`` other than
    BEFORE/AFTER/AROUND (``"[Allowed values are BEFORE|AFTER|AROUND]"``);
  - listMessages on a PRIVATE channel the addon bot is not a member of: legacy
    ``{"error": "Addon Bot is not a member of this channel"}``. Only listing checks this (the
    one rule Pumble's help pages state); posting (even ``asBot``), fetching, reacting and
    deleting do not.
- Not Pumble's: an unknown path is 404 ``{"error": "Not found"}``, a wrong method 405
  ``{"error": "Method not allowed"}``.
- deleteMessage answers 200 with an empty body.

Keys, channels, messages
- Both ``ApiKey`` and ``Api-Key`` headers are accepted (which one Pumble reads is disputed),
  ``ApiKey`` first. With no keys configured any non-empty key is accepted. Every key belongs to
  the same owner, the user ``/myInfo`` returns.
- ``channelId`` wins over ``channel``. Names are normalised as ``normalize_channel_name`` does
  (a leading ``#`` is dropped).
- ``general``, ``random`` and the channels given at start-up are PUBLIC with the owner and the
  addon bot as members. A channel made by createChannel has the owner as creator and only
  member. listChannels' ``users`` are the member ids, the bot's id included when it is one.
- No length limit on text (none is documented); whitespace-only text is accepted.
- Timestamps are whole seconds (``timestampMilli`` ends in 000).
- A reply must be in its root's channel (sendReply's channel defaults to it); otherwise the
  root is "Not found". Replies count in the root's ``threadRootInfo``; a reply not sent with
  ``alsoSendToChannel`` is not listed in the channel but can be fetched.
- addReaction stores ``{user: owner id, code}``; the same reaction twice is stored once;
  ``skinTone`` is checked, not stored.
- A deleted message is removed: gone from listMessages, fetchMessage and ``/_fake/messages``.
  Deleting a reply leaves its root's ``threadRootInfo`` as it was.
- listMessages (``limit`` default 100, ``strategy`` default BEFORE; the cursor is a message id):
  - no cursor: the newest page, newest first, whatever the strategy; ``hasMoreBefore`` bool,
    ``hasMoreAfter`` null;
  - BEFORE: messages strictly older than the cursor, newest first (the last one is the oldest
    and the next cursor); ``hasMoreBefore`` bool, ``hasMoreAfter`` null;
  - AFTER: strictly newer, oldest first (the last one is the newest and the next cursor);
    ``hasMoreAfter`` bool, ``hasMoreBefore`` null;
  - AROUND: up to ``limit`` messages centred on the cursor, cursor included (an even limit
    takes one more newer than older), newest first; both flags bool.

- fetchThreadReplies (``rootMessageId``, optional channel, ``cursor``, ``limit`` default 100):
  a bare array of the root's replies, newest first; with a cursor, those strictly older than it.

Faults (set at start-up with ``Faults`` or through ``/_fake/faults``; never applied to
``/_fake/`` requests). Each API request meets them in this order:
1. ``delay``: sleep that long, then go on as usual (a client that timed out may still post);
2. the key check;
3. ``rate_limit``: each key may make ``per_minute`` requests in any sliding 60 s window; only
   admitted requests use a slot. Over it: 429, ``Retry-After`` the whole seconds until a slot
   frees (at least 1) or the fixed ``retry_after``, body ``{"error": "Too many requests"}``;
4. ``fail_next``: the next ``count`` requests answer ``status`` (default 503) with
   ``{"error": "Service unavailable"}``, whatever the status;
5. the request is handled; refused requests (3, 4) change nothing;
6. ``drop_next``: the next N writes (POST/DELETE) that succeed are applied, then their
   connection is shut without an answer. This needs werkzeug's server (``werkzeug.socket``);
   under another server the answer is sent.

Control endpoints under ``/_fake/`` are not Pumble's and need no key:
- ``GET /_fake/messages[?channel=NAME]``: ``{"messages": [...]}``, every message (replies too)
  in posting order, each with its ``channel`` name;
- ``POST /_fake/channels {name, type?, bot_member?}``: creates the channel (bot not a member
  unless ``bot_member``) or sets an existing one's bot membership; answers its listChannels
  entry ``{channel, users}``;
- ``GET|POST|DELETE /_fake/faults``: read, merge in, or clear the faults; answers them;
- ``GET /_fake/[?channel=NAME]``: the messages as a person would see them in a channel (HTML;
  each thread's replies under its root, reactions below each message, links clickable, times
  in the viewer's time zone by a small script, UTC without it);
- ``GET /_fake/stats``: ``{requests, rate_limited, failed, dropped}``: API requests that reached
  the fault stage (key accepted) and how many each fault refused or dropped, since start or the
  last reset or clear of the faults;
- ``POST /_fake/reset``: no messages, only the start-up channels (bot membership restored), no
  faults.
Malformed control requests answer 400 ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    render_template_string,
    request,
)
from markupsafe import Markup, escape

from bridge.config import REACTION
from bridge.fake_pumble_state import (
    ADDON_BOT_ID,
    CHANNEL_TYPES,
    OWNER,
    ApiError,
    FaultPlan,
    Faults,
    Workspace,
    channel_not_found,
    conversations,
    legacy_error,
    structured_error,
)
from bridge.pumble import STRATEGIES, normalize_channel_name

__all__ = ["Faults", "create_fake_pumble", "print_message"]

EXTENSION = "fake_pumble"


@dataclass(frozen=True)
class FakePumble:
    """What the fake's views read, from ``current_app.extensions[EXTENSION]``."""

    workspace: Workspace
    plan: FaultPlan
    accepted: frozenset[str]  # the keys accepted; empty: any non-empty key
    echo: Callable[[str], None] | None


def create_fake_pumble(
    keys: Iterable[str] = (),
    channels: Iterable[str] = (),
    echo: Callable[[str], None] | None = None,
    faults: Faults | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Flask:
    """The fake as a Flask app. ``keys`` empty: any non-empty key is accepted.

    ``echo`` gets one line per posted message; ``clock`` drives the rate limit's window.
    """
    app = Flask("fake_pumble")
    app.extensions[EXTENSION] = FakePumble(Workspace(channels), FaultPlan(faults, clock),
                                           frozenset(keys), echo)
    app.register_blueprint(api)
    app.register_blueprint(control)
    return app


def _fake() -> FakePumble:
    return current_app.extensions[EXTENSION]


# -- Pumble's API --------------------------------------------------------------------------------

api = Blueprint("api", __name__)


@api.app_errorhandler(ApiError)
def _api_error(error: ApiError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(error.body), error.status, error.headers


@api.app_errorhandler(404)
def _unknown_path(_exc: Exception) -> tuple[Response, int]:
    return jsonify({"error": "Not found"}), 404


@api.app_errorhandler(405)
def _wrong_method(_exc: Exception) -> tuple[Response, int]:
    return jsonify({"error": "Method not allowed"}), 405


@api.before_app_request  # every path but the control API's, unknown ones included
def _guard() -> None:
    if is_control():
        return
    fake = _fake()
    pause = fake.plan.delay()
    if pause > 0:
        time.sleep(pause)
    key = request.headers.get("ApiKey") or request.headers.get("Api-Key") or ""
    if not key or (fake.accepted and key not in fake.accepted):
        raise legacy_error("Invalid API key")
    refusal = fake.plan.refusal(key)
    if refusal is not None:
        raise refusal


@api.after_app_request
def _maybe_drop(response: Response) -> Response:
    if (request.method in ("POST", "DELETE") and not is_control()
            and response.status_code == 200 and _fake().plan.take_drop()):
        drop_connection()
    return response


def _post(channel_id: str, text: str, as_bot: bool, root_id: str = "",
          also_to_channel: bool = False) -> Response:
    fake = _fake()
    message = fake.workspace.post(channel_id, text, as_bot, root_id, also_to_channel)
    if fake.echo is not None:
        name = fake.workspace.find_channel(channel_id)["channel"]["name"]
        fake.echo(f"[fake-pumble] #{name}: {text}")
    return jsonify({"id": message["id"], "channelId": channel_id})


def _channel_in(params: Mapping[str, Any], required: bool) -> dict[str, Any] | None:
    """The target channel's entry, None when none was named and none is required."""
    channel_id, name = params.get("channelId") or "", params.get("channel") or ""
    if not isinstance(channel_id, str) or not isinstance(name, str):
        raise structured_error("channel and channelId must be strings")
    if not channel_id and not name:
        if required:
            raise structured_error("channel or channelId is required")
        return None
    entry = _fake().workspace.find_channel(channel_id, name)
    if entry is None:
        raise channel_not_found()
    return entry


def _channel_id_in(params: Mapping[str, Any]) -> str:
    """The id of the channel named with a message, "" when none is."""
    channel = _channel_in(params, required=False)
    return channel["channel"]["id"] if channel else ""


@api.post("/sendMessage")
def send_message() -> Response:
    params = json_body()
    text = text_in(params)
    as_bot = flag(params, "asBot")
    root_id = params.get("threadRootId") or ""
    if not isinstance(root_id, str):
        raise structured_error("threadRootId must be a string")
    channel = _channel_in(params, required=True)
    return _post(channel["channel"]["id"], text, as_bot, root_id)


@api.post("/sendReply")
def send_reply() -> Response:
    params = json_body()
    root_id, text = message_id(params), text_in(params)
    as_bot, also_to_channel = flag(params, "asBot"), flag(params, "alsoSendToChannel")
    channel_id = _channel_id_in(params) or _fake().workspace.fetch(root_id)["channelId"]
    return _post(channel_id, text, as_bot, root_id, also_to_channel)


@api.post("/addReaction")
def add_reaction() -> Response:
    params = json_body()
    target = message_id(params)
    reaction = params.get("reaction")
    if not isinstance(reaction, str) or not 3 <= len(reaction) <= 100 \
            or not REACTION.fullmatch(reaction):
        raise structured_error("reaction must be an emoji code like :grin:")
    tone = params.get("skinTone")
    if tone is not None and (not isinstance(tone, int) or isinstance(tone, bool)
                             or not 1 <= tone <= 6):
        raise structured_error("skinTone must be an integer from 1 to 6")
    _fake().workspace.react(target, _channel_id_in(params), reaction)
    return jsonify({"status": "ok"})


@api.post("/createChannel")
def create_channel() -> Response:
    params = json_body()
    name, description = params.get("name"), params.get("description") or ""
    if not isinstance(name, str) or not normalize_channel_name(name):
        raise structured_error("name must be a non-empty string")
    if params.get("type") not in CHANNEL_TYPES:
        raise structured_error("[Allowed values are PUBLIC|PRIVATE]")
    if not isinstance(description, str):
        raise structured_error("description must be a string")
    entry = _fake().workspace.create_channel(name, params["type"], description)
    if entry is None:
        raise structured_error("Channel with that name already exists")
    return jsonify({"id": entry["channel"]["id"], "name": entry["channel"]["name"]})


@api.delete("/deleteMessage")
def delete_message() -> Response:
    target = message_id(request.args)
    _fake().workspace.delete(target, _channel_id_in(request.args))
    return Response(status=200)


@api.get("/fetchMessage")
def fetch_message() -> Response:
    target = message_id(request.args)
    return jsonify(_fake().workspace.fetch(target, _channel_id_in(request.args)))


def _limit() -> int:
    limit = request.args.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,3}", limit) or not 1 <= int(limit) <= 200:
        raise structured_error("limit must be an integer from 1 to 200")
    return int(limit)


@api.get("/fetchThreadReplies")
def fetch_thread_replies() -> Response:
    root_id = request.args.get("rootMessageId") or ""
    if not root_id:
        raise structured_error("rootMessageId is required")
    limit = _limit()
    return jsonify(_fake().workspace.replies(root_id, _channel_id_in(request.args),
                                             request.args.get("cursor", ""), limit))


@api.get("/listMessages")
def list_messages() -> Response:
    limit = _limit()
    strategy = request.args.get("strategy", "BEFORE")
    if strategy not in STRATEGIES:
        raise structured_error("[Allowed values are BEFORE|AFTER|AROUND]")
    channel = _channel_in(request.args, required=True)
    if channel["channel"]["channelType"] == "PRIVATE" and ADDON_BOT_ID not in channel["users"]:
        raise legacy_error("Addon Bot is not a member of this channel")
    return jsonify(_fake().workspace.page(channel["channel"]["id"],
                                          request.args.get("cursor", ""), limit, strategy))


@api.get("/listChannels")
def list_channels() -> Response:
    return jsonify(_fake().workspace.channel_entries())


@api.get("/myInfo")
def my_info() -> Response:
    return jsonify(OWNER)


# -- control API: not Pumble's -------------------------------------------------------------------

control = Blueprint("control", __name__, url_prefix="/_fake")


@control.get("/messages")
def posted_messages() -> Response:
    return jsonify({"messages": _fake().workspace.posted(request.args.get("channel", ""))})


@control.post("/channels")
def control_channel() -> Response | tuple[Response, int]:
    workspace = _fake().workspace
    params = request.get_json(silent=True)
    if not isinstance(params, dict) or not isinstance(params.get("name"), str) \
            or not normalize_channel_name(params["name"]):
        return control_error("a JSON object with a non-empty name is required")
    channel_type, bot_member = params.get("type", "PUBLIC"), params.get("bot_member")
    if channel_type not in CHANNEL_TYPES:
        return control_error("type must be PUBLIC or PRIVATE")
    if bot_member is not None and not isinstance(bot_member, bool):
        return control_error("bot_member must be a boolean")
    entry = workspace.create_channel(params["name"], channel_type, bot_member=bool(bot_member))
    if entry is None and bot_member is not None:
        entry = workspace.set_bot_member(params["name"], bot_member)
    return jsonify(entry or workspace.find_channel(name=params["name"]))


@control.route("/faults", methods=["GET", "POST", "DELETE"])
def control_faults() -> Response | tuple[Response, int]:
    plan = _fake().plan
    if request.method == "POST":
        changes = request.get_json(silent=True)
        if not isinstance(changes, dict):
            return control_error("a JSON object of faults is required")
        try:
            plan.merge(changes)
        except ValueError as error:
            return control_error(str(error))
    elif request.method == "DELETE":
        plan.clear()
    return jsonify(plan.current().as_json())


@control.get("/")
def control_view() -> str:
    messages = _fake().workspace.posted(request.args.get("channel", ""))
    return render_template_string(CHANNEL_VIEW, emoji=EMOJI, count=len(messages),
                                  threads=conversations(messages), linked=linked)


@control.get("/stats")
def control_stats() -> Response:
    counts = _fake().plan.counts
    return jsonify({name: counts[name] for name in
                    ("requests", "rate_limited", "failed", "dropped")})


@control.post("/reset")
def control_reset() -> Response:
    fake = _fake()
    fake.workspace.reset()
    fake.plan.clear()
    return jsonify({"status": "ok"})


def print_message(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stdout, flush=True)


def is_control() -> bool:
    return request.path.startswith("/_fake/")


def control_error(text: str):
    return jsonify({"error": text}), 400


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise structured_error("Request body must be a JSON object")
    return body


def text_in(params: Mapping[str, Any]) -> str:
    text = params.get("text")
    if not isinstance(text, str) or not text:
        raise structured_error("text must be a non-empty string")
    return text


def message_id(params: Mapping[str, Any]) -> str:
    value = params.get("messageId")
    if not isinstance(value, str) or not value:
        raise structured_error("messageId is required")
    return value


def flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise structured_error(f"{name} must be a boolean")
    return value


def drop_connection() -> None:
    """Close the client's connection now, after the request was applied, before any answer.

    werkzeug then fails to write the answer with a BrokenPipeError, which it treats as a client
    that went away: silently.
    """
    sock = request.environ.get("werkzeug.socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the client may be gone already
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# A few reactions drawn as Pumble draws them; others show their code.
EMOJI = {":white_check_mark:": "✅", ":x:": "❌", ":tada:": "🎉", ":+1:": "👍", ":grin:": "😁",
         ":eyes:": "👀", ":package:": "📦", ":warning:": "⚠️"}

# A link in a message: Markdown's [label](url), or a bare http(s) URL (without the sentence's
# closing punctuation).
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)"
                   r"|(https?://[^\s<>\"]*[^\s<>\".,;:!?)\]])")


def linked(text: str) -> Markup:
    """The text escaped, its links made clickable (opening in a new tab)."""
    parts, at = [], 0
    for match in _LINK.finditer(text):
        label, url = (match[1], match[2]) if match[2] else (match[3], match[3])
        parts += [escape(text[at:match.start()]), Markup(
            '<a href="{}" target="_blank" rel="noopener noreferrer">{}</a>').format(url, label)]
        at = match.end()
    parts.append(escape(text[at:]))
    return Markup("").join(parts)


# What a person sees: messages as in a chat window (autoescaped; the text is shown as sent).
# The one script turns each UTC time into the viewer's own.
CHANNEL_VIEW = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>fake Pumble</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d1c1d; }
header { background: #1f2a44; color: #fff; padding: 10px 16px; font-weight: 600; }
main { max-width: 760px; margin: 0 auto; padding: 12px; }
.msg { background: #fff; border-radius: 8px; padding: 10px 14px; margin: 8px 0;
       box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.reply { margin-left: 36px; border-left: 3px solid #b6c2e2; }
.replies { color: #6b6f76; font-size: 13px; margin: -4px 0 0 36px; }
.who { font-weight: 700; } .when, .chan { color: #6b6f76; font-size: 13px; margin-left: 6px; }
.text { white-space: pre-wrap; margin-top: 4px; overflow-wrap: anywhere; }
.text a { color: #1264a3; }
.reaction { display: inline-block; background: #eef1f8; border-radius: 10px; padding: 1px 8px;
            margin-top: 6px; font-size: 13px; }
</style></head><body>
<header>fake Pumble · {{ count }} message(s)</header><main>
{% macro message(m) %}
<div class="msg{% if m.threadReplyInfo %} reply{% endif %}" id="m-{{ m.id }}">
  <span class="who">{{ "Pumble Bridge (bot)" if m.authorAppId else "Key owner" }}</span>
  <span class="chan">#{{ m.channel }}</span><time class="when" datetime="{{ m.timestamp }}">
  {{- m.timestamp.replace("T", " ").replace("Z", " UTC") }}</time>
  <div class="text">{{ linked(m.text) }}</div>
  {% for r in m.reactions %}
  <span class="reaction">{{ emoji.get(r.code, r.code) }}</span>
  {% endfor %}
</div>
{% endmacro %}
{% for root, replies in threads %}
{{ message(root) }}
{% if replies %}<div class="replies">{{ replies | length }} repl{{ "y" if replies | length == 1
  else "ies" }}</div>{% endif %}
{% for reply in replies %}{{ message(reply) }}{% endfor %}
{% endfor %}
</main>
<script>
for (const time of document.querySelectorAll("time[datetime]")) {
  time.textContent = new Date(time.dateTime).toLocaleString([], {
    dateStyle: "medium", timeStyle: "long"});  // "long": with the zone's name
}
</script>
</body></html>
"""
