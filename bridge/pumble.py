"""Client for Pumble's API Keys addon (see shared/pumble-api.md). Knows nothing of shops.

Errors come as a small typed hierarchy so the delivery worker decides without parsing strings.
Writes are sent exactly once: the API has no idempotency key, so whether to send again is the
worker's decision, never this client's. The key never appears in a repr, a log line or an error.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.config import DEFAULT_PUMBLE_BASE_URL


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
    id: str
    channel_id: str


@dataclass(frozen=True)
class ChannelRef:
    id: str
    name: str


def normalize_channel_name(name: str) -> str:
    """As Pumble stores names: no leading '#', lower case, spaces to '-'."""
    return name.strip().removeprefix("#").strip().lower().replace(" ", "-")


class PumbleClient:
    """One per process: keeps connections alive across sends."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_PUMBLE_BASE_URL,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if not api_key:
            raise AuthError("no Pumble API key configured (pumble.api_key or PUMBLE_API_KEY)")
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            # Public docs say Api-Key, the live-checked contract says ApiKey: send both (§1).
            headers={"ApiKey": api_key, "Api-Key": api_key},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_keepalive_connections=4),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<PumbleClient {self.base_url}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PumbleClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send_message(self, channel: str = "", text: str = "", *, channel_id: str = "",
                     as_bot: bool = False) -> MessageRef:
        """Post ``text`` to a channel by name, or by id (``channel_id``, which Pumble prefers)."""
        body: dict[str, Any] = {"text": text, "asBot": as_bot}
        if channel_id:
            body["channelId"] = channel_id
        else:
            body["channel"] = normalize_channel_name(channel)
        data = self._request("POST", "/sendMessage", json=body, write=True)
        return MessageRef(id=data["id"], channel_id=data["channelId"])

    def create_channel(self, name: str, *, private: bool = False,
                       description: str = "") -> ChannelRef:
        body = {"name": normalize_channel_name(name), "type": "PRIVATE" if private else "PUBLIC",
                "description": description}
        data = self._request("POST", "/createChannel", json=body, write=True)
        return ChannelRef(id=data["id"], name=data["name"])

    def list_channels(self) -> list[dict[str, Any]]:
        """Every channel and DM visible to the key (Pumble answers a bare array)."""
        return self._request("GET", "/listChannels", write=False)

    def _request(self, method: str, path: str, *, write: bool, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientError(f"{method} {path}: cannot connect: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            # Sent (at least partly) and no answer: a write may have been applied.
            kind = AmbiguousError if write else TransientError
            raise kind(f"{method} {path}: no answer: {type(exc).__name__}") from None
        if response.is_success:
            try:
                return response.json() if response.content else None
            except ValueError:
                raise TransientError(f"{method} {path}: answer is not JSON",
                                     status=response.status_code) from None
        raise _error_for(method, path, response)


def _error_for(method: str, path: str, response: httpx.Response) -> PumbleError:
    status = response.status_code
    message, code = _error_body(response)
    text = f"{method} {path}: HTTP {status}: {message}"
    if status == 429:
        return RateLimitedError(text, status=status,
                                retry_after=_retry_after(response.headers.get("Retry-After")))
    if status >= 500 or status in (408, 425):
        return TransientError(text, status=status)
    if status == 404 or code == 404100 or "could not find" in message.lower():
        return NotFoundError(text, status=status)
    if status == 401:
        return AuthError(text, status=status)
    # Pumble answers 403 for auth and validation alike; the structured body (with a numeric
    # code) means validation, the legacy {"error": ...} shape means the key (§4).
    if code is not None or status in (400, 422):
        return PumbleValidationError(text, status=status, code=code)
    return AuthError(text, status=status)


def _error_body(response: httpx.Response) -> tuple[str, int | None]:
    try:
        body = response.json()
    except ValueError:
        return (response.text[:200] or response.reason_phrase), None
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
