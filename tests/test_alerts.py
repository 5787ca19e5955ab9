"""Alerts' texts: the subject named, payload-born values unable to pose as the message's own."""

from __future__ import annotations

from bridge import alerts
from bridge.filters import ZERO_WIDTH_SPACE


def test_a_dead_letters_reason_cannot_add_lines_or_mentions():
    alert = alerts.dead_letter("refunds", "evt_1\n@here", "refused: <https://evil.example|x>")
    assert (alert.condition, alert.subject) == ("dead_letter", "refunds")
    assert "\n" not in alert.text
    assert "@here" not in alert.text and f"@{ZERO_WIDTH_SPACE}here" in alert.text
    assert "<https://evil" not in alert.text


def test_durations_read_as_a_person_would_say_them():
    assert "20 webhooks with a bad signature in 10 min" in alerts.signature_failures(
        "shop", 20, 600).text
    assert "2 h old" in alerts.queue_stalled(7300, 900).text
    assert "for 3 days" in alerts.source_silent("shop", 3 * 86400 + 5).text
    assert "never sent" in alerts.source_silent("shop", None).text
