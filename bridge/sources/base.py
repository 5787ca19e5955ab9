"""The small interface every shop platform implements: verify, then parse into an Event."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict

from bridge.config import SourceSettings
from bridge.events import Event


class SignatureError(Exception):
    """The request is not provably from the shop (answered 401). Never holds the secret."""


def matches_any(given: str, expected: Iterable[str]) -> bool:
    """Constant-time comparison of a received signature against each acceptable one."""
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(candidate.encode(), given.encode())
    return found


class PayloadError(Exception):
    """The request is authentic but its body cannot be understood (answered 400)."""


@dataclass(frozen=True)
class WebhookRequest:
    """What a source needs of an HTTP request: headers (any case) and the raw body bytes."""

    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def of(cls, headers: Mapping[str, str], body: bytes) -> WebhookRequest:
        return cls({name.lower(): value for name, value in headers.items()}, body)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "").strip()

    def json(self) -> dict[str, Any]:
        try:
            payload = orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise PayloadError("body is JSON but not an object")
        return payload

    def body_digest(self) -> str:
        """A stable id for a delivery whose platform sent none."""
        return hashlib.sha256(self.body).hexdigest()[:32]


_SENSITIVE = re.compile(r"signature|hmac|auth|token|secret|key|cookie", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)  # a platform sends the same dozen header names every time
def _sensitive(name: str) -> bool:
    return bool(_SENSITIVE.search(name))


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(ABC):
    """One configured webhook endpoint of one platform.

    A platform with settings of its own (a header name, a tolerance…) declares them as an
    ``Options`` model; they are written beside ``type`` and ``secret`` in the config and checked
    when the config is loaded (pydantic.ValidationError)."""

    platform: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, name: str, settings: SourceSettings):
        self.name = name
        self.options = self.Options.model_validate(settings.options)
        # Several while secrets rotate; any one verifies.
        self._secrets = tuple(secret.encode() for secret in settings.secrets)

    def __repr__(self) -> str:  # the secret stays out of reprs and tracebacks
        return f"<{type(self).__name__} {self.name!r}>"

    def keepable_headers(self, request: WebhookRequest) -> dict[str, str]:
        """The headers worth keeping with a stored webhook (to read it again for a dead letter):
        none that carries a signature, a token or this source's secret."""
        kept = {name: value for name, value in request.headers.items() if not _sensitive(name)}
        # One search of all the values at once; header by header only when a secret is there.
        values = "\n".join(kept.values()).encode()
        if any(secret in values for secret in self._secrets):
            kept = {name: value for name, value in kept.items()
                    if not any(secret in value.encode() for secret in self._secrets)}
        return kept

    def is_ping(self, request: WebhookRequest) -> bool:
        """A platform's set-up check (answered 200, routed nowhere); most platforms have none."""
        return False

    @abstractmethod
    def verify(self, request: WebhookRequest) -> None:
        """Raise SignatureError unless the request was signed with this source's secret."""

    @abstractmethod
    def parse(self, request: WebhookRequest) -> Event:
        """Turn a verified request into a canonical Event; raise PayloadError if it cannot."""
