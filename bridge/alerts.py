"""Alerts about the bridge itself: what each condition says, and about which subject.

An alert names its condition and its subject (a route, an account, a source, the queue); at most
one is posted per condition and subject within ``ALERT_EVERY`` seconds. The texts name accounts,
routes and sources by their names in the config, never a key or a secret; any value that came
from elsewhere (Pumble's error text, an event id) is made chat-safe, as payload values are.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.filters import chat_safe

ALERT_EVERY = 600  # seconds: at most one alert per condition and subject in this time


@dataclass(frozen=True)
class Alert:
    condition: str
    subject: str
    text: str


def dead_letter(route: str, event_id: str, reason: str) -> Alert:
    return Alert("dead_letter", route,
                 f"⚠️ pumble-bridge: a notification of route {route} gave up (event "
                 f"{chat_safe(event_id)}): {chat_safe(reason)}. See `pumble-bridge dlq list`.")


def key_rejected(account: str, status: int) -> Alert:
    return Alert("key_rejected", account,
                 f"🔑 pumble-bridge: Pumble refused the API key of account {account} "
                 f"({status}): was it revoked? Nothing is posted with it until the config has "
                 "a working key.")


def signature_failures(source: str, count: int, within: int) -> Alert:
    return Alert("signature_failures", source,
                 f"🔏 pumble-bridge: source {source}: {count} webhooks with a bad signature in "
                 f"{_duration(within)}. Was the shop's secret rotated?")


def queue_stalled(oldest_age: float, older_than: int) -> Alert:
    return Alert("queue_stalled", "queue",
                 f"⏳ pumble-bridge: the oldest waiting notification is {_duration(oldest_age)} "
                 f"old (alert after {_duration(older_than)}). Are the workers running?")


def source_silent(source: str, silent_for: float | None) -> Alert:
    heard = ("has never sent a webhook" if silent_for is None
             else f"has sent no webhook for {_duration(silent_for)}")
    return Alert("source_silent", source,
                 f"🔇 pumble-bridge: source {source} {heard}. A shop deletes a webhook "
                 "subscription after repeated failed deliveries: check it is still there.")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
