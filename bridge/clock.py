"""The time delivery goes by: passed to what waits, so tests move it on instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """The system's clock, ``offset`` seconds ahead (0 here; a test's clock moves it on by
    sleeping). Times kept in Redis (rate-limit windows) are read from Redis and shifted by the
    same offset, so every part of a delivery sees one time."""

    offset: float = 0.0

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
