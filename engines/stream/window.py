"""The window model: row- or range-based windows of ``size`` and ``slide``, cut into panes.

Window ``k`` (``k >= 0``) covers ``[k*slide, k*slide + size)`` of the window's time axis:
the event-time column for a range window (in the schema's unit), the stream's input row
index for a row window (rows before any selection: a filtered-out row still advances a row
window, and a window whose rows were all filtered out produces nothing). A pane is
``gcd(size, slide)`` units; window ``k`` is the panes ``[k*s, k*s + w)`` with ``s = slide /
pane`` and ``w = size / pane``. Tumbling windows (``size == slide``) are one pane each;
with ``slide > size`` (hopping windows with gaps) rows between windows belong to none.

Tasks are cut independently of windows; what a task can finish on its own follows from the
time span of its rows (see :meth:`WindowSpec.task_bounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .errors import StreamError


@dataclass(frozen=True)
class WindowSpec:
    """``on`` is the event-time column of a range window, ``None`` for a row window."""

    size: int
    slide: int
    on: str | None = None

    def __post_init__(self) -> None:
        for name in ("size", "slide"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise StreamError(f"window {name} must be a positive integer, got {v!r}")

    @property
    def rows(self) -> bool:
        return self.on is None

    # Cached: tasks and the result stage read these several times per task.
    @cached_property
    def pane(self) -> int:
        return math.gcd(self.size, self.slide)

    @cached_property
    def w(self) -> int:
        """Window length in panes."""
        return self.size // self.pane

    @cached_property
    def s(self) -> int:
        """Slide in panes."""
        return self.slide // self.pane

    @property
    def tumbling(self) -> bool:
        return self.size == self.slide

    def first_open_after(self, t: int) -> int:
        """The lowest window index whose end is after ``t``: windows below it are final once
        the stream has reached time ``t`` (later rows have time ``>= t``)."""
        return max(0, (t - self.size) // self.slide + 1)

    def task_bounds(self, prev_last: int, last: int) -> tuple[int, int]:
        """``(k_lo, k_open)`` for a task whose rows span ``(prev_last, last]`` in window time
        (``prev_last`` is the last time of the task before it, ``-1`` for the first).

        Windows ``k_lo <= k < k_open`` are *complete* in the task (they start after the
        previous task's last row and end by this task's last row); windows ``k < k_lo`` that
        end by ``last`` are *closing*; windows ``k < k_lo`` that end after ``last`` are
        *pending*; windows ``k >= max(k_lo, k_open)`` that start by ``last`` are *opening*.
        """
        k_lo = prev_last // self.slide + 1
        return k_lo, self.first_open_after(last)

    def describe(self) -> str:
        axis = "ROWS" if self.rows else f"RANGE on {self.on}"
        return f"{axis} {self.size} SLIDE {self.slide}"
