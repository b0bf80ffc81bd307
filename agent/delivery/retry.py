"""Retry helpers: exponential backoff with jitter and ``Retry-After`` parsing.

Kept free of any HTTP library so that every exporter (InfluxDB, OTLP forward, ...) can share
the same policy: retry transient failures forever with a capped, jittered delay, and let the
server slow us down further with ``Retry-After`` on 429/503.
"""

from __future__ import annotations

import email.utils
import random
import time

#: Upper bound in seconds for a server-supplied ``Retry-After``. A misconfigured proxy can send
#: absurd values (days); past this bound we still retry, just not later than this.
MAX_RETRY_AFTER = 600.0


class Backoff:
    """Exponential backoff with jitter.

    Delay for attempt ``n`` (0-based) is ``min(maximum, initial * multiplier**n)`` scaled by a
    random factor in ``[1 - jitter, 1]``. Jitter spreads out the retries of many agents that
    lost the same server at the same moment (no thundering herd when it comes back).

    All durations are in seconds.
    """

    __slots__ = ("_attempt", "_rng", "initial", "jitter", "maximum", "multiplier")

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 30.0,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum <= 0:
            raise ValueError("initial and maximum must be > 0")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")
        if multiplier < 1.0:
            raise ValueError("multiplier must be >= 1")
        self.initial = float(initial)
        self.maximum = float(max(maximum, initial))
        self.multiplier = float(multiplier)
        self.jitter = float(jitter)
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempts(self) -> int:
        """Number of delays handed out since the last :meth:`reset`."""
        return self._attempt

    def peek(self) -> float:
        """The un-jittered delay (s) the next call to :meth:`next` is based on."""
        # Cap the exponent so that a long outage cannot overflow the float.
        exp = min(self._attempt, 64)
        return min(self.maximum, self.initial * self.multiplier**exp)

    def next(self) -> float:
        """Return the delay (s) before the next attempt and advance the attempt counter."""
        base = self.peek()
        self._attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from ``initial`` (call after a success)."""
        self._attempt = 0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse an HTTP ``Retry-After`` header into a delay in seconds.

    Accepts both forms of RFC 9110: delta-seconds (``"120"``) and an HTTP-date. Returns
    ``None`` when absent or unparsable, otherwise a delay clamped to ``[0, MAX_RETRY_AFTER]``.
    ``now`` (Unix seconds) is only for tests.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        delay = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        delay = when.timestamp() - (time.time() if now is None else now)
    if delay != delay:  # NaN
        return None
    return max(0.0, min(MAX_RETRY_AFTER, delay))
