"""One log line per interval for events that can repeat many times a second.

A client retrying a malformed request, a server rejecting every batch, a full disk: each
must be said clearly, but once a minute, with a count of what happened in between, not
once per event.
"""

from __future__ import annotations

import time


class LogThrottle:
    """Counts events; says when one should be logged and how many it stands for.

    Not thread-safe: call :meth:`hit` under the lock that guards the owner's counters.
    """

    __slots__ = ("_last", "_pending", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = float("-inf")
        self._pending = 0

    def hit(self, n: int = 1, now: float | None = None) -> int:
        """Record ``n`` events. Returns 0 while the interval since the last line runs, else
        the number of events since then, this call's included (and starts a new interval)."""
        now = time.monotonic() if now is None else now
        self._pending += n
        if now - self._last < self.interval:
            return 0
        due, self._pending, self._last = self._pending, 0, now
        return due
