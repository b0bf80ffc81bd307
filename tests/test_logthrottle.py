"""LogThrottle: one line per interval, counting what happened in between."""

from __future__ import annotations

from wattspan.agent.logthrottle import LogThrottle


def test_first_event_is_logged_then_quiet_then_the_count():
    t = LogThrottle(60.0)
    assert t.hit(now=0.0) == 1
    assert t.hit(now=1.0) == 0
    assert t.hit(5, now=59.9) == 0
    # The next line stands for everything since the last one, this event included.
    assert t.hit(now=60.0) == 7
    assert t.hit(now=61.0) == 0
    assert t.hit(2, now=200.0) == 3
