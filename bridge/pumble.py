"""Client for Pumble's API Keys addon. Knows nothing of shops.

Errors come as a small typed hierarchy so the delivery worker decides without parsing strings.
Writes are sent exactly once: the API has no idempotency key, so whether to send again is the
worker's decision, never this client's. The key never appears in a repr, a log line or an error.
"""

from __future__ import annotations

import email.utils
import logging
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge import pumble_http
from bridge.config import DEFAULT_PUMBLE_BASE_URL
from bridge.retry import READ_RETRIES, read_retries

log = logging.getLogger(__name__)


class PumbleError(Exception):
    """Base of every failure talking to Pumble."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class AuthError(PumbleError):
    """The key is missing, unknown or not allowed to do this."""


class PumbleValidationError(PumbleError):
    """Pumble refused the request's content; ``code`` is Pumble's numeric code when given."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message, status=status)
        self.code = code


class NotFoundError(PumbleError):
    """The channel or message does not exist (or is not visible to this key)."""


class RateLimitedError(PumbleError):
    retryable = True

    def __init__(self, message: str, *, status: int | None = 429,
                 retry_after: float | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class TransientError(PumbleError):
    """The request was certainly not applied (5xx, refused connection): safe to send again."""

    retryable = True


class AmbiguousError(PumbleError):
    """The request may have been applied (timeout after sending, connection dropped before the
    answer). Sending again may post twice: look before re-sending."""


@dataclass(frozen=True)
class MessageRef:
    """What Pumble answers to a post: the new message's id and its channel's id."""

    id: str
    channel_id: str


@dataclass(frozen=True)
class ChannelRef:
    id: str
    name: str


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    type: str  # PUBLIC, PRIVATE, or another kind (DMs) Pumble may add
    is_member: bool
    data: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Channel:
        channel = entry.get("channel", entry)
        return cls(id=channel["id"], name=channel.get("name", ""),
                   type=channel.get("channelType", ""), is_member=bool(channel.get("isMember")),
                   data=channel)


@dataclass(frozen=True)
class Message:
    id: str
    channel_id: str
    text: str
    author: str
    timestamp_milli: int
    data: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Message:
        return cls(id=data["id"], channel_id=data.get("channelId", ""),
                   text=data.get("text", ""), author=data.get("author", ""),
                   timestamp_milli=int(data.get("timestampMilli") or 0), data=data)


@dataclass(frozen=True)
class MessagePage:
    messages: list[Message]
    has_more_before: bool | None
    has_more_after: bool | None


STRATEGIES = ("BEFORE", "AFTER", "AROUND")


def normalize_channel_name(name: str) -> str:
    """As Pumble stores names: no leading '#', lower case, spaces to '-'."""
    return name.strip().removeprefix("#").strip().lower().replace(" ", "-")


def _target(channel: str, channel_id: str) -> dict[str, str]:
    """A channel by id (Pumble's preference) or by name."""
    if channel_id:
        return {"channelId": channel_id}
    if not normalize_channel_name(channel):
        raise ValueError("a channel name or channel_id is required")
    return {"channel": normalize_channel_name(channel)}


class PumbleClient:
    """One per process: keeps connections alive across calls.

    Reads (list, fetch) are retried here on transient failures, ``read_retries`` times, with
    bridge.retry's backoff; writes are sent exactly once (a retried write can post twice).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_PUMBLE_BASE_URL,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        read_retries: int = READ_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ):
        if not api_key:
            raise AuthError("no Pumble API key configured (pumble.api_key or PUMBLE_API_KEY)")
        self.base_url = base_url.rstrip("/")
        self.read_retries = read_retries
        # Public docs say Api-Key, the live-checked contract says ApiKey: send both.
        headers = {"ApiKey": api_key, "Api-Key": api_key}
        timeouts = {"connect_timeout": connect_timeout, "read_timeout": read_timeout}
        self._http: pumble_http.Transport
        if transport is not None or urllib.request.getproxies():
            self._http = pumble_http.ThroughHttpx(self.base_url, headers, **timeouts,
                                                  transport=transport)
        else:
            self._http = pumble_http.KeepAlive(self.base_url, headers, **timeouts)

    def __repr__(self) -> str:
        return f"<PumbleClient {self.base_url}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PumbleClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes: sent once -----------------------------------------------------------------------

    def send_message(self, channel: str = "", text: str = "", *, channel_id: str = "",
                     as_bot: bool = False, thread_root_id: str = "") -> MessageRef:
        """Post ``text`` to a channel by name, or by id (``channel_id``, which Pumble prefers)."""
        return self.start_message(channel, text, channel_id=channel_id, as_bot=as_bot,
                                  thread_root_id=thread_root_id)()

    def start_message(self, channel: str = "", text: str = "", *, channel_id: str = "",
                      as_bot: bool = False, thread_root_id: str = "") -> Callable[[], MessageRef]:
        """``send_message``, sent: the returned call waits for Pumble's answer."""
        body: dict[str, Any] = {"text": text, "asBot": as_bot, **_target(channel, channel_id)}
        if thread_root_id:
            body["threadRootId"] = thread_root_id
        return self._posting("/sendMessage", body)

    def send_reply(self, message_id: str, text: str, *, channel: str = "", channel_id: str = "",
                   also_send_to_channel: bool = False, as_bot: bool = False) -> MessageRef:
        """Reply in the thread of ``message_id``."""
        return self.start_reply(message_id, text, channel=channel, channel_id=channel_id,
                                also_send_to_channel=also_send_to_channel, as_bot=as_bot)()

    def start_reply(self, message_id: str, text: str, *, channel: str = "", channel_id: str = "",
                    also_send_to_channel: bool = False,
                    as_bot: bool = False) -> Callable[[], MessageRef]:
        """``send_reply``, sent: the returned call waits for Pumble's answer."""
        body: dict[str, Any] = {"messageId": message_id, "text": text, "asBot": as_bot,
                                "alsoSendToChannel": also_send_to_channel}
        if channel or channel_id:
            body.update(_target(channel, channel_id))
        return self._posting("/sendReply", body)

    def add_reaction(self, message_id: str, reaction: str, *, channel_id: str = "",
                     skin_tone: int | None = None) -> None:
        """``reaction`` in Pumble's colon form, e.g. ``:tada:`` (a bare name is refused)."""
        body: dict[str, Any] = {"messageId": message_id, "reaction": reaction}
        if channel_id:
            body["channelId"] = channel_id
        if skin_tone is not None:
            body["skinTone"] = skin_tone
        self._write("POST", "/addReaction", json=body)

    def create_channel(self, name: str, *, private: bool = False,
                       description: str = "") -> ChannelRef:
        body = {"name": normalize_channel_name(name), "type": "PRIVATE" if private else "PUBLIC",
                "description": description}
        data = self._write("POST", "/createChannel", json=body)
        return ChannelRef(id=data["id"], name=data["name"])

    def delete_message(self, message_id: str, *, channel: str = "",
                       channel_id: str = "") -> None:
        params = {"messageId": message_id, **_target(channel, channel_id)}
        self._write("DELETE", "/deleteMessage", params=params)

    # -- reads: retried on transient failures ---------------------------------------------------

    def list_channels(self) -> list[Channel]:
        """Every channel and DM visible to the key (Pumble answers a bare array)."""
        return [Channel.of(entry) for entry in self._read("/listChannels")]

    def fetch_message(self, message_id: str, *, channel: str = "",
                      channel_id: str = "") -> Message:
        params = {"messageId": message_id, **_target(channel, channel_id)}
        return Message.of(self._read("/fetchMessage", params=params))

    def list_messages(self, channel: str = "", *, channel_id: str = "", cursor: str = "",
                      limit: int = 100, strategy: str = "BEFORE") -> MessagePage:
        """One page. Without a cursor, the newest page; BEFORE walks back from the cursor."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        params: dict[str, Any] = {**_target(channel, channel_id), "limit": limit,
                                  "strategy": strategy}
        if cursor:
            params["cursor"] = cursor
        data = self._read("/listMessages", params=params)
        return MessagePage(messages=[Message.of(m) for m in data.get("messages") or []],
                           has_more_before=data.get("hasMoreBefore"),
                           has_more_after=data.get("hasMoreAfter"))

    def iter_messages(self, channel: str = "", *, channel_id: str = "", limit: int = 100,
                      strategy: str = "BEFORE", cursor: str = "",
                      max_pages: int = 10_000) -> Iterator[Message]:
        """Every message, page after page (newest first with BEFORE). The cursor of the next page
        is the last message of this one; the walk stops when Pumble says there is no more,
        on an empty page, or on a page with nothing new."""
        if strategy == "AROUND":
            raise ValueError("AROUND is one page, not a walk: use list_messages")
        seen: set[str] = set()
        for _ in range(max_pages):
            page = self.list_messages(channel, channel_id=channel_id, cursor=cursor,
                                      limit=limit, strategy=strategy)
            fresh = [m for m in page.messages if m.id not in seen]
            yield from fresh
            seen.update(m.id for m in fresh)
            more = page.has_more_after if strategy == "AFTER" else page.has_more_before
            if not fresh or more is not True:
                return
            cursor = page.messages[-1].id

    def iter_replies(self, root_id: str, *, channel_id: str = "", limit: int = 100,
                     max_pages: int = 10_000) -> Iterator[Message]:
        """Every reply in the thread of ``root_id`` (fetchThreadReplies: a bare array a page, the
        next cursor the last reply's id). Whether a page includes its cursor is disputed, so
        replies already seen are skipped; the walk ends on a short page or one with nothing new."""
        seen: set[str] = set()
        cursor = ""
        for _ in range(max_pages):
            params: dict[str, Any] = {"rootMessageId": root_id, "limit": limit}
            if channel_id:
                params["channelId"] = channel_id
            if cursor:
                params["cursor"] = cursor
            data = self._read("/fetchThreadReplies", params=params)
            page = [Message.of(m) for m in (data if isinstance(data, list)
                                           else (data or {}).get("messages") or [])]
            fresh = [m for m in page if m.id not in seen]
            yield from fresh
            seen.update(m.id for m in fresh)
            if not fresh or len(page) < limit:
                return
            cursor = page[-1].id

    def my_info(self) -> dict[str, Any]:
        """The key owner's user record: a cheap check that the key works."""
        return self._read("/myInfo")

    # -- transport -------------------------------------------------------------------------------

    def _posting(self, path: str, body: dict[str, Any]) -> Callable[[], MessageRef]:
        answer = self._start("POST", path, write=True, json=body)
        return lambda: _message_ref(answer())

    def _write(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, write=True, **kwargs)

    def _read(self, path: str, **kwargs: Any) -> Any:
        for attempt in read_retries((TransientError, RateLimitedError), self.read_retries + 1):
            with attempt:
                return self._request("GET", path, write=False, **kwargs)
        raise AssertionError("unreachable: the last failed try raises")

    def _request(self, method: str, path: str, *, write: bool,
                 params: dict[str, Any] | None = None, json: Any = None) -> Any:
        return self._start(method, path, write=write, params=params, json=json)()

    def _start(self, method: str, path: str, *, write: bool,
               params: dict[str, Any] | None = None, json: Any = None) -> Callable[[], Any]:
        """Send the request; the returned call waits for its answer: its JSON, or the error."""
        body = None if json is None else pumble_http.encode(json)
        try:
            pending = self._http.start(method, path, params=params, body=body)
        except pumble_http.CannotConnect as exc:
            raise TransientError(f"{method} {path}: cannot connect: {exc}") from None
        except pumble_http.NoAnswer as exc:
            raise _no_answer(method, path, exc, write=write) from None

        def answered() -> Any:
            try:
                answer = pending.answer()
            except pumble_http.NoAnswer as exc:
                raise _no_answer(method, path, exc, write=write) from None
            log.debug("%s %s -> %s", method, path, answer.status)
            if not answer.is_success:
                raise _error_for(method, path, answer)
            try:
                return answer.json() if answer.body else None
            except ValueError:
                raise TransientError(f"{method} {path}: answer is not JSON",
                                     status=answer.status) from None

        return answered


def _message_ref(data: dict[str, Any]) -> MessageRef:
    return MessageRef(id=data["id"], channel_id=data["channelId"])


def _no_answer(method: str, path: str, error: pumble_http.NoAnswer, *,
               write: bool) -> PumbleError:
    """Sent (at least partly) and no answer: a write may have been applied."""
    kind = AmbiguousError if write else TransientError
    return kind(f"{method} {path}: no answer: {error}")


def _error_for(method: str, path: str, answer: pumble_http.Answer) -> PumbleError:
    status = answer.status
    message, code = _error_body(answer)
    text = f"{method} {path}: HTTP {status}: {message}"
    if status == 429:
        return RateLimitedError(text, status=status,
                                retry_after=_retry_after(answer.retry_after))
    if status >= 500 or status in (408, 425):
        return TransientError(text, status=status)
    if status == 404 or code == 404100 or "could not find" in message.lower():
        return NotFoundError(text, status=status)
    if status == 401:
        return AuthError(text, status=status)
    # Pumble answers 403 for auth and validation alike; the structured body (with a numeric
    # code) means validation, the legacy {"error": ...} shape means the key.
    if code is not None or status in (400, 422):
        return PumbleValidationError(text, status=status, code=code)
    return AuthError(text, status=status)


def _error_body(answer: pumble_http.Answer) -> tuple[str, int | None]:
    try:
        body = answer.json()
    except ValueError:
        return (answer.body.decode(errors="replace")[:200] or answer.reason), None
    if isinstance(body, dict):
        if "error" in body:  # legacy shape
            return str(body["error"]), None
        if "message" in body:  # structured shape
            code = body.get("code")
            return str(body["message"]), code if isinstance(code, int) else None
    return str(body)[:200], None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait, from ``Retry-After`` in seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
