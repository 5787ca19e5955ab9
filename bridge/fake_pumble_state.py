"""The fake Pumble's state: the workspace (channels, messages) and the injected faults.

Both are shared by the threaded server's request threads, so every read and write holds a lock.
The choices this state makes where Pumble is silent are listed in ``bridge.fake_pumble``.
"""

from __future__ import annotations

import copy
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from bridge.pumble import normalize_channel_name

WORKSPACE_ID = "5f0c0e1a2b3c4d5e6f708192"
OWNER_USER_ID = "5f0c0e1a2b3c4d5e6f708193"
ADDON_BOT_ID = "5f0c0e1a2b3c4d5e6f708194"
OWNER = {"id": OWNER_USER_ID, "name": "Fake Owner", "email": "owner@example.com",
         "workspaceId": WORKSPACE_ID, "role": "ADMINISTRATOR"}
DEFAULT_CHANNELS = ("general", "random")
CHANNEL_TYPES = ("PUBLIC", "PRIVATE")
RATE_WINDOW_SECONDS = 60.0


class ApiError(Exception):
    """An answer other than 200, raised anywhere while handling a request."""

    def __init__(self, body: dict[str, Any], status: int = 403,
                 headers: dict[str, str] | None = None):
        super().__init__(body)
        self.body, self.status, self.headers = body, status, headers or {}


def legacy_error(text: str, status: int = 403) -> ApiError:
    return ApiError({"error": text}, status)


def structured_error(text: str, code: int = 400000) -> ApiError:
    return ApiError({"message": text, "localizedMessage": text, "code": code})


def not_found() -> ApiError:
    return structured_error("Not found", 404100)


def channel_not_found() -> ApiError:
    return legacy_error("Could not find channel with that identifier")


def new_id() -> str:
    """Pumble ids are 24 lowercase hex characters."""
    return secrets.token_hex(12)


def now_stamps() -> dict[str, Any]:
    """``timestamp`` and ``timestampMilli`` for now, in whole seconds as Pumble keeps them."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {"timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "timestampMilli": int(now.timestamp()) * 1000}


@dataclass
class _Channel:
    info: dict[str, Any]  # the Channel object as listChannels shows it
    members: list[str]

    def entry(self) -> dict[str, Any]:
        return copy.deepcopy({"channel": self.info, "users": self.members})


class Workspace:
    """Channels and their messages. Methods return copies, safe to serialise without the lock."""

    def __init__(self, channels: Iterable[str] = ()):
        self._lock = threading.RLock()
        self._channels: dict[str, _Channel] = {}
        self._messages: list[dict[str, Any]] = []  # every channel's, in posting order
        self._thread_only: set[str] = set()  # replies not shown in their channel
        for name in (*DEFAULT_CHANNELS, *channels):
            self.create_channel(name, bot_member=True)
        self._initial = {cid: list(c.members) for cid, c in self._channels.items()}

    def reset(self) -> None:
        """Back to the channels it started with, with no messages."""
        with self._lock:
            self._channels = {cid: _Channel(c.info, list(self._initial[cid]))
                              for cid, c in self._channels.items() if cid in self._initial}
            self._messages.clear()
            self._thread_only.clear()

    # -- channels ---------------------------------------------------------------------------

    def create_channel(self, name: str, channel_type: str = "PUBLIC", description: str = "",
                       bot_member: bool = False) -> dict[str, Any] | None:
        """The new channel's listChannels entry, or None when the name is taken."""
        name = normalize_channel_name(name)
        with self._lock:
            if self._by_name(name) is not None:
                return None
            info = {"id": new_id(), "name": name, "channelType": channel_type,
                    "workspaceId": WORKSPACE_ID, "description": description,
                    "creatorId": OWNER_USER_ID, "isMember": True, "isArchived": False,
                    "isAddonBot": False, **now_stamps()}
            members = [OWNER_USER_ID, ADDON_BOT_ID] if bot_member else [OWNER_USER_ID]
            self._channels[info["id"]] = channel = _Channel(info, members)
            return channel.entry()

    def set_bot_member(self, name: str, bot_member: bool) -> dict[str, Any] | None:
        """The channel's entry after adding or removing the bot; None when there is no such."""
        with self._lock:
            channel = self._by_name(normalize_channel_name(name))
            if channel is None:
                return None
            channel.members = [u for u in channel.members if u != ADDON_BOT_ID]
            if bot_member:
                channel.members.append(ADDON_BOT_ID)
            return channel.entry()

    def find_channel(self, channel_id: str = "", name: str = "") -> dict[str, Any] | None:
        """The channel's entry by id, else by name; the id wins when both are given."""
        with self._lock:
            channel = (self._channels.get(channel_id) if channel_id
                       else self._by_name(normalize_channel_name(name)))
            return channel.entry() if channel else None

    def channel_entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.entry() for c in self._channels.values()]

    def _by_name(self, name: str) -> _Channel | None:
        return next((c for c in self._channels.values() if c.info["name"] == name), None)

    # -- messages ---------------------------------------------------------------------------

    def post(self, channel_id: str, text: str, as_bot: bool, root_id: str = "",
             also_to_channel: bool = False) -> dict[str, Any]:
        """Post to the channel, as a reply to ``root_id`` if given (it must be in that channel)."""
        with self._lock:
            message = {
                "id": new_id(), "channelId": channel_id, "workspaceId": WORKSPACE_ID,
                "author": ADDON_BOT_ID if as_bot else OWNER_USER_ID,
                "authorAppId": ADDON_BOT_ID if as_bot else None,
                "text": text, **now_stamps(), "reactions": [], "attachments": [], "files": [],
                "threadRootInfo": None, "threadReplyInfo": None,
                "deleted": False, "edited": False, "subtype": "",
            }
            if root_id:
                root = self._message(root_id, channel_id)
                replies = (root["threadRootInfo"] or {}).get("replyCount", 0)
                root["threadRootInfo"] = {"replyCount": replies + 1,
                                          "lastReplyTimestampMilli": message["timestampMilli"]}
                message["threadReplyInfo"] = {"rootId": root_id,
                                              "replySentToChannel": also_to_channel,
                                              "rootText": root["text"]}
                if not also_to_channel:
                    self._thread_only.add(message["id"])
            self._messages.append(message)
            return copy.deepcopy(message)

    def fetch(self, message_id: str, channel_id: str = "") -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._message(message_id, channel_id))

    def react(self, message_id: str, channel_id: str, code: str) -> None:
        with self._lock:
            reactions = self._message(message_id, channel_id)["reactions"]
            reaction = {"user": OWNER_USER_ID, "code": code}
            if reaction not in reactions:  # one person adds a given reaction once
                reactions.append(reaction)

    def delete(self, message_id: str, channel_id: str = "") -> None:
        with self._lock:
            self._messages.remove(self._message(message_id, channel_id))

    def page(self, channel_id: str, cursor: str, limit: int, strategy: str) -> dict[str, Any]:
        """A listMessages answer; ``bridge.fake_pumble`` documents the orderings and flags."""
        with self._lock:
            listed = [m for m in self._messages
                      if m["channelId"] == channel_id and m["id"] not in self._thread_only]
            at = len(listed)
            if cursor:
                at = next((i for i, m in enumerate(listed) if m["id"] == cursor), -1)
                if at < 0:
                    raise not_found()
            if not cursor or strategy == "BEFORE":
                older = listed[:at]
                page = older[-limit:][::-1]
                before, after = len(older) > limit, None
            elif strategy == "AFTER":
                newer = listed[at + 1:]
                page = newer[:limit]
                before, after = None, len(newer) > limit
            else:  # AROUND: the cursor in the middle, as far as the channel's ends allow
                end = min(len(listed), max(0, at - (limit - 1) // 2) + limit)
                start = max(0, end - limit)
                page = listed[start:end][::-1]
                before, after = start > 0, end < len(listed)
            return copy.deepcopy({"messages": page, "hasMoreBefore": before,
                                  "hasMoreAfter": after})

    def replies(self, root_id: str, channel_id: str, cursor: str, limit: int) -> list[dict]:
        """A fetchThreadReplies answer: the root's replies older than ``cursor`` (all without
        one), newest first, at most ``limit``."""
        with self._lock:
            self._message(root_id, channel_id)
            thread = [m for m in self._messages
                      if (m["threadReplyInfo"] or {}).get("rootId") == root_id]
            if cursor:
                at = next((i for i, m in enumerate(thread) if m["id"] == cursor), -1)
                if at < 0:
                    raise not_found()
                thread = thread[:at]
            return copy.deepcopy(thread[::-1][:limit])

    def posted(self, channel_name: str = "") -> list[dict[str, Any]]:
        """Every message not deleted, replies too, in posting order, each with its channel name."""
        wanted = normalize_channel_name(channel_name)
        with self._lock:
            names = {cid: c.info["name"] for cid, c in self._channels.items()}
            return copy.deepcopy([{**m, "channel": names[m["channelId"]]} for m in self._messages
                                  if not wanted or names[m["channelId"]] == wanted])

    def _message(self, message_id: str, channel_id: str = "") -> dict[str, Any]:
        """The live record; the 404100 error when there is none (in ``channel_id`` if given)."""
        for message in self._messages:
            if message["id"] == message_id and channel_id in ("", message["channelId"]):
                return message
        raise not_found()


@dataclass
class Faults:
    """Misbehaviour to inject into API requests (never into ``/_fake/`` ones)."""

    rate_limit_per_minute: int | None = None
    rate_limit_retry_after: int | None = None
    fail_next_count: int = 0
    fail_next_status: int = 503
    delay: float = 0.0
    drop_next: int = 0

    def as_json(self) -> dict[str, Any]:
        rate_limit = None
        if self.rate_limit_per_minute is not None:
            rate_limit = {"per_minute": self.rate_limit_per_minute,
                          "retry_after": self.rate_limit_retry_after}
        return {"rate_limit": rate_limit,
                "fail_next": {"count": self.fail_next_count, "status": self.fail_next_status},
                "delay": self.delay, "drop_next": self.drop_next}

    def merged(self, changes: dict[str, Any]) -> Faults:
        """These faults with a ``POST /_fake/faults`` body merged in; ValueError if malformed."""
        updates: dict[str, Any] = {}
        if "rate_limit" in changes:
            limit = changes["rate_limit"] or {}
            if not isinstance(limit, dict):
                raise ValueError("rate_limit must be an object or null")
            per_minute = limit.get("per_minute")
            retry_after = limit.get("retry_after")
            if limit and not _whole(per_minute, 1):
                raise ValueError("rate_limit.per_minute must be an integer >= 1")
            if retry_after is not None and not _whole(retry_after, 1):
                raise ValueError("rate_limit.retry_after must be an integer >= 1 or null")
            updates |= {"rate_limit_per_minute": per_minute,
                        "rate_limit_retry_after": retry_after}
        if "fail_next" in changes:
            fail = changes["fail_next"]
            if not isinstance(fail, dict) or not _whole(fail.get("count"), 0) \
                    or not _whole(fail.get("status", 503), 100) or fail.get("status", 503) > 599:
                raise ValueError('fail_next must be {"count": int >= 0, "status": 100..599}')
            updates |= {"fail_next_count": fail["count"],
                        "fail_next_status": fail.get("status", 503)}
        if "delay" in changes:
            delay = changes["delay"]
            if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
                raise ValueError("delay must be a number of seconds >= 0")
            updates["delay"] = float(delay)
        if "drop_next" in changes:
            if not _whole(changes["drop_next"], 0):
                raise ValueError("drop_next must be an integer >= 0")
            updates["drop_next"] = changes["drop_next"]
        unknown = set(changes) - {"rate_limit", "fail_next", "delay", "drop_next"}
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        return replace(self, **updates)


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


class FaultPlan:
    """The faults in force and the rate limit's per-key history, shared by request threads."""

    def __init__(self, faults: Faults | None = None, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._faults = replace(faults) if faults else Faults()
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}  # per key: when its admitted requests came
        # What the faults did, for tests and benches: requests seen, and answers refused.
        self.counts: Counter[str] = Counter()

    def current(self) -> Faults:
        with self._lock:
            return replace(self._faults)

    def merge(self, changes: dict[str, Any]) -> Faults:
        with self._lock:
            self._faults = self._faults.merged(changes)
            return replace(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults = Faults()
            self._seen.clear()
            self.counts.clear()

    def delay(self) -> float:
        with self._lock:
            return self._faults.delay

    def refusal(self, key: str) -> ApiError | None:
        """The answer to give instead of handling this request, if a fault says so."""
        with self._lock:
            faults = self._faults
            self.counts["requests"] += 1
            if faults.rate_limit_per_minute is not None:
                now = self._clock()
                seen = self._seen.setdefault(key, deque())
                while seen and seen[0] <= now - RATE_WINDOW_SECONDS:
                    seen.popleft()
                if len(seen) >= faults.rate_limit_per_minute:
                    wait = faults.rate_limit_retry_after or max(
                        1, math.ceil(seen[-faults.rate_limit_per_minute]
                                     + RATE_WINDOW_SECONDS - now))
                    self.counts["rate_limited"] += 1
                    return ApiError({"error": "Too many requests"}, 429,
                                    {"Retry-After": str(wait)})
                seen.append(now)
            if faults.fail_next_count > 0:
                faults.fail_next_count -= 1
                self.counts["failed"] += 1
                return legacy_error("Service unavailable", faults.fail_next_status)
            return None

    def take_drop(self) -> bool:
        """Whether to drop this (applied) write's answer; uses up one ``drop_next``."""
        with self._lock:
            if self._faults.drop_next <= 0:
                return False
            self._faults.drop_next -= 1
            self.counts["dropped"] += 1
            return True


def conversations(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any],
                                                                list[dict[str, Any]]]]:
    """Messages as a chat shows them: each top-level one in posting order with its thread's
    replies under it. A reply whose root is not among ``messages`` (deleted, or another
    channel's view) stands alone where it was posted."""
    ids = {m["id"] for m in messages}
    replies: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        root = (m["threadReplyInfo"] or {}).get("rootId")
        if root in ids:
            replies.setdefault(root, []).append(m)
    return [(m, replies.get(m["id"], [])) for m in messages
            if (m["threadReplyInfo"] or {}).get("rootId") not in ids]
