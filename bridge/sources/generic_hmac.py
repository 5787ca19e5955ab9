"""Any sender that signs with an HMAC, described by configuration (Paddle, Lemon Squeezy, …).

The signature is ``encoding``(HMAC-``algorithm``(secret, signed payload)) in ``header``, after an
optional ``prefix`` (``sha256=``). The signed payload is ``signed_payload`` with ``{body}``
replaced by the raw body bytes and ``{timestamp}`` by the timestamp the sender sent (in
``timestamp_header``, or taken out of the signature header by ``timestamp_pattern``). When the
header holds more than the signature (Paddle's ``ts=…;h1=…``), ``signature_pattern`` picks each
signature out of it; any one that matches verifies. A signed timestamp further than
``tolerance`` seconds from now is refused. The secret is used as is (its UTF-8 bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.config import SourceSettings
from bridge.events import CANONICAL_TYPES, Event, SourceRef
from bridge.sources import fields
from bridge.sources.base import (
    PayloadError,
    SignatureError,
    Source,
    WebhookRequest,
    matches_any,
)

PLACEHOLDERS = frozenset({"body", "timestamp"})


class HmacSource(Source):
    platform = "hmac"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        header: str = Field(min_length=1)  # the header holding the signature
        algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
        encoding: Literal["hex", "base64"] = "hex"
        prefix: str = ""  # e.g. "sha256=", stripped before comparing
        signed_payload: str = "{body}"  # e.g. "{timestamp}:{body}"
        signature_pattern: str = ""  # regex, one group: each signature in the header
        timestamp_header: str = ""
        timestamp_pattern: str = ""  # regex, one group: the timestamp in the signature header
        tolerance: int = Field(300, ge=0)  # seconds either side of now
        event_type_header: str = ""
        event_type_path: str = ""  # dotted path in the JSON body, e.g. "meta.event_name"
        delivery_id_header: str = ""
        delivery_id_path: str = ""
        types: dict[str, str] = {}  # sender type -> canonical type

        @model_validator(mode="after")
        def _consistent(self) -> HmacSource.Options:
            used = _placeholders(self.signed_payload)
            if "body" not in used:
                raise ValueError("signed_payload must contain {body}")
            has_timestamp = bool(self.timestamp_header or self.timestamp_pattern)
            if "timestamp" in used and not has_timestamp:
                raise ValueError("signed_payload uses {timestamp} but neither timestamp_header "
                                 "nor timestamp_pattern says where the timestamp is")
            if has_timestamp and "timestamp" not in used:
                raise ValueError("a timestamp is configured but signed_payload does not contain "
                                 "{timestamp}: an unsigned timestamp proves nothing")
            _one_of(self, "timestamp_header", "timestamp_pattern", required=False)
            _one_of(self, "event_type_header", "event_type_path", required=True)
            _one_of(self, "delivery_id_header", "delivery_id_path", required=False)
            for key in ("signature_pattern", "timestamp_pattern"):
                pattern = getattr(self, key)
                try:
                    groups = re.compile(pattern).groups if pattern else 1
                except re.error as exc:
                    raise ValueError(f"{key} is not a valid regular expression: {exc}") from None
                if groups != 1:
                    raise ValueError(f"{key} must have exactly one capture group (has {groups})")
            return self

    def __init__(self, name: str, settings: SourceSettings, *,
                 clock: Callable[[], float] = time.time):
        super().__init__(name, settings)
        self._clock = clock  # injectable so tests need no sleeps

    def verify(self, request: WebhookRequest) -> None:
        opts = self.options
        value = request.header(opts.header)
        if not value:
            raise SignatureError(f"missing {opts.header} header")
        stamp = self._timestamp(request, value)
        if opts.signature_pattern:
            given = re.findall(opts.signature_pattern, value)
            if not given:
                raise SignatureError(f"{opts.header} holds no signature matching "
                                     "signature_pattern")
        else:
            given = [value]
        if opts.prefix:
            if not all(sig.startswith(opts.prefix) for sig in given):
                raise SignatureError(f"{opts.header} does not start with {opts.prefix!r}")
            given = [sig.removeprefix(opts.prefix) for sig in given]
        if opts.encoding == "hex":  # some senders write hex in capitals
            given = [sig.lower() for sig in given]
        signed = signed_bytes(opts.signed_payload, request.body, stamp)
        expected = [sign(secret, signed, opts.algorithm, opts.encoding)
                    for secret in self._secrets]
        if not any(matches_any(sig.strip(), expected) for sig in given):
            raise SignatureError(f"{opts.header} does not match the body")

    def parse(self, request: WebhookRequest) -> Event:
        opts = self.options
        payload = request.json()
        if opts.event_type_header:
            sender_type, where = request.header(opts.event_type_header), opts.event_type_header
        else:
            sender_type = fields.text(fields.dig(payload, opts.event_type_path))
            where = f"{opts.event_type_path!r} in the body"
        if not sender_type:
            raise PayloadError(f"no event type in {where}")
        event_type = opts.types.get(sender_type) or (
            sender_type if sender_type in CANONICAL_TYPES else f"{self.platform}.{sender_type}")
        if opts.delivery_id_header:
            delivery_id = request.header(opts.delivery_id_header)
        else:
            delivery_id = fields.text(fields.dig(payload, opts.delivery_id_path)) \
                if opts.delivery_id_path else ""
        stamp, _ = _find_timestamp(opts, request, request.header(opts.header))
        return Event(
            id=delivery_id or request.body_digest(),
            type=event_type,
            source=SourceRef(self.name, self.platform),
            occurred_at=fields.timestamp(fields.integer(stamp)),
            raw=payload,
        )

    def _timestamp(self, request: WebhookRequest, signature_header: str) -> str:
        """The sender's timestamp ("" when none is configured); refused outside tolerance."""
        stamp, where = _find_timestamp(self.options, request, signature_header)
        if not where:
            return ""
        if not stamp:
            raise SignatureError(f"missing timestamp in {where}")
        try:
            sent_at = int(stamp)
        except ValueError:
            raise SignatureError(f"timestamp in {where} is not unix seconds") from None
        age, tolerance = self._clock() - sent_at, self.options.tolerance
        if abs(age) > tolerance:
            state = "too old" if age > 0 else "too new"
            raise SignatureError(f"timestamp in {where} is {state} (outside the "
                                 f"{tolerance} s tolerance)")
        return stamp


def _find_timestamp(opts: HmacSource.Options, request: WebhookRequest,
                    signature_header: str) -> tuple[str, str]:
    """(the timestamp as sent, where it was looked for); ("", "") when none is configured."""
    if opts.timestamp_header:
        return request.header(opts.timestamp_header), opts.timestamp_header
    if opts.timestamp_pattern:
        found = re.search(opts.timestamp_pattern, signature_header)
        return (found.group(1) if found else ""), f"{opts.header} (timestamp_pattern)"
    return "", ""


def signed_bytes(template: str, body: bytes, timestamp: str = "") -> bytes:
    """``template`` with ``{timestamp}`` filled in and ``{body}`` as the raw body bytes."""
    out = bytearray()
    for literal, field_name, _, _ in string.Formatter().parse(template):
        out += literal.encode()
        if field_name == "body":
            out += body
        elif field_name == "timestamp":
            out += timestamp.encode()
    return bytes(out)


def sign(secret: bytes, signed: bytes, algorithm: str = "sha256", encoding: str = "hex") -> str:
    digest = hmac.digest(secret, signed, getattr(hashlib, algorithm))
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


def _placeholders(template: str) -> set[str]:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # an unmatched brace
        raise ValueError(f"signed_payload is not a valid format: {exc}") from None
    unknown = names - PLACEHOLDERS
    if unknown:
        raise ValueError(f"signed_payload may use only {{body}} and {{timestamp}}, "
                         f"not {', '.join('{' + n + '}' for n in sorted(unknown))}")
    return names


def _one_of(options: BaseModel, first: str, second: str, *, required: bool) -> None:
    given = [key for key in (first, second) if getattr(options, key)]
    if len(given) == 2:
        raise ValueError(f"give {first} or {second}, not both")
    if required and not given:
        raise ValueError(f"give {first} or {second}: where the event type is")
