"""Reading fields out of platform payloads: exact amounts, timestamps, tags. Lenient by design:
a field a platform left out or shaped oddly becomes None or empty, never an error."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any


def amount(value: Any) -> Decimal | None:
    """``"12.50"`` or ``12.5`` -> ``Decimal("12.50")``; anything else -> None. Floats go through
    ``str`` so ``0.1`` stays ``0.1``."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def minor_units(value: Any, exponent: int = 2) -> Decimal | None:
    """``1250`` cents -> ``Decimal("12.50")`` (for platforms that send integers of minor units)."""
    whole = amount(value)
    return None if whole is None else whole.scaleb(-exponent)


def timestamp(value: Any) -> datetime | None:
    """ISO 8601 (with ``Z``), or unix seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):  # out of datetime's range
            return None
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def tags(value: Any) -> tuple[str, ...]:
    """``"vip, wholesale"`` or ``["vip", "wholesale"]`` -> ``("vip", "wholesale")``."""
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list | tuple):
        return tuple(str(t).strip() for t in value if t is not None and str(t).strip())
    return ()


def text(value: Any) -> str:
    return "" if value is None else str(value)


def integer(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def mapping(value: Any) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one (payloads are not always as
    documented)."""
    return value if isinstance(value, dict) else {}


def records(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in a list; anything else is no records."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def dig(payload: Any, path: str) -> Any:
    """``dig({"a": {"b": 1}}, "a.b") == 1``; None where the path leads nowhere."""
    for part in path.split("."):
        if isinstance(payload, dict):
            payload = payload.get(part)
        elif isinstance(payload, list) and part.isdigit() and int(part) < len(payload):
            payload = payload[int(part)]
        else:
            return None
    return payload
