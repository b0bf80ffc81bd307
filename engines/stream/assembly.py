"""The result stage: merge fragments across tasks and emit windows strictly in order.

Finished tasks land in a ring of slots indexed by ``task_id % size``, in whatever order the
workers finish them. The stage consumes the slots in task order; for task ``i`` it

1. adds the task's boundary pane partials to its pane buffer (panes that windows still open
   need; a pane split between neighbouring tasks is simply two entries),
2. finishes the windows that became final with task ``i`` but that no single task held
   whole (closing windows, and windows that ended in a gap between tasks) from the buffer,
3. forwards task ``i``'s complete windows, which all start after those,
4. drops buffered panes that no open window covers any more.

For count, sum, avg, min and max over integer keys (every shipped query) the buffer is an
:class:`~.incremental.IncrementalWindows`: step 2 costs the panes entering and leaving the
windows plus the result rows, not window length x groups (min and max through
:mod:`.extrema`). Otherwise (keys that are not integers, or too spread for an int64 code) it
is a :class:`RecomputeBuffer`, which recomputes the windows to finish from all buffered
panes with the window kernel.

So window results come out in window order, then group-key order, whatever the order of
task completion. At end of stream every window still open with at least one row is
finished from the buffer.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import incremental
from .errors import StreamError
from .fragments import TaskResult
from .incremental import IncrementalWindows
from .kernels import Partials, windows_from_partials
from .query import Plan


@dataclass
class WindowBatch:
    """Result rows of consecutive complete windows, in window then key order.

    ``columns``: ``window_start``, ``window_end``, the group keys, the aggregates (numpy
    arrays of equal length). ``task_id`` is the task whose arrival made them final, ``None``
    at end of stream.
    """

    columns: dict[str, np.ndarray]
    task_id: int | None

    def __len__(self) -> int:
        return len(self.columns["window_start"])

    @property
    def window_ends(self) -> np.ndarray:
        """Distinct window ends, ascending (rows are in window order: no sort needed)."""
        e = self.columns["window_end"]
        if len(e) < 2:
            return e.copy()
        return e[np.concatenate([[True], e[1:] != e[:-1]])]

    def windows(self) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        """``(window_start, window_end, columns)`` per window."""
        ws = self.columns["window_start"]
        if len(ws) == 0:
            return []
        cuts = np.flatnonzero(np.diff(ws)) + 1
        bounds = [0, *cuts.tolist(), len(ws)]
        out = []
        for a, b in itertools.pairwise(bounds):
            cols = {k: v[a:b] for k, v in self.columns.items()}
            out.append((int(ws[a]), int(self.columns["window_end"][a]), cols))
        return out

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.columns)


def _concat_cols(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class RecomputeBuffer:
    """Buffered pane partials, windows recomputed from all of them (keys that are not
    integers, or too spread for an int64 code)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        # (min pane, max pane, partials) per task, in task order: both bounds never decrease
        # along the deque, as time does not.
        self.buffer: deque[tuple[int, int, Partials]] = deque()
        self.buffered = 0

    def __len__(self) -> int:
        return self.buffered

    def add(self, part: Partials) -> bool:
        self.buffer.append((int(part.index[0]), int(part.index[-1]), part))
        self.buffered += len(part)
        return True

    def last_pane(self) -> int | None:
        return self.buffer[-1][1] if self.buffer else None

    def windows(self, k_a: int, k_b: int) -> list[Partials]:
        if not self.buffered:
            return []
        win = self.plan.window
        allp = Partials.concat([p for _, _, p in self.buffer])
        rows = windows_from_partials(allp, win.w, win.s, k_a, k_b, self.plan.needs)
        return [rows] if len(rows) else []

    def prune(self, next_window: int) -> None:
        """Drop buffered panes that no window from ``next_window`` on covers."""
        pane = next_window * self.plan.window.s
        buf = self.buffer
        while buf and buf[0][1] < pane:
            self.buffered -= len(buf.popleft()[2])
        i = 0
        while i < len(buf) and buf[i][0] < pane:
            _, hi, p = buf[i]
            # A task's partials are sorted by pane: the survivors are a suffix.
            q = p.take(slice(int(np.searchsorted(p.index, pane)), len(p)))
            self.buffered -= len(p) - len(q)
            buf[i] = (int(q.index[0]), hi, q)
            i += 1


def window_buffer(plan: Plan) -> IncrementalWindows | RecomputeBuffer:
    """The incremental buffer where the aggregates and keys allow it."""
    return incremental.for_plan(plan) if incremental.supports(plan) else RecomputeBuffer(plan)


class ResultStage:
    """Ring of ``size`` slots; ``put`` from any thread holding the engine's lock order,
    ``drain`` from the consumer."""

    def __init__(self, plan: Plan, size: int) -> None:
        if size < 1:
            raise StreamError("the result ring needs at least one slot")
        self.plan = plan
        self.size = size
        self.slots: list[TaskResult | None] = [None] * size
        self.next_task = 0
        self.next_window = 0
        self.buffer: IncrementalWindows | RecomputeBuffer = window_buffer(plan)

    @property
    def buffered(self) -> int:
        """Pane partials held for windows still open."""
        return len(self.buffer)

    def free(self, task_id: int) -> bool:
        """Whether task ``task_id`` has a slot (it is less than a ring ahead)."""
        return task_id < self.next_task + self.size

    def put(self, res: TaskResult) -> None:
        i = res.task_id % self.size
        if self.slots[i] is not None or not self.free(res.task_id):
            raise StreamError(f"result slot {i} for task {res.task_id} is still taken")
        self.slots[i] = res

    def drain(self) -> list[tuple[TaskResult, WindowBatch | None]]:
        """Consume every slot that is next in task order. A failed task's result ends the
        list (with no windows) and stays in its slot: errors come in task order too."""
        out = []
        while True:
            i = self.next_task % self.size
            res = self.slots[i]
            if res is None or res.task_id != self.next_task:
                return out
            if res.error is not None:
                out.append((res, None))
                return out
            self.slots[i] = None
            self.next_task += 1
            out.append((res, self._step(res)))

    def _add(self, part: Partials) -> None:
        if not self.buffer.add(part):
            # Keys too spread for an int64 code: carry on recomputing windows instead.
            assert isinstance(self.buffer, IncrementalWindows)
            old = self.buffer
            self.buffer = RecomputeBuffer(self.plan)
            if len(old):
                self.buffer.add(old.to_partials())
            self.buffer.add(part)

    def _step(self, res: TaskResult) -> WindowBatch | None:
        if res.boundary is not None:
            self._add(res.boundary)
        parts: list[dict[str, np.ndarray]] = []
        # A task that deferred its complete windows left them to the buffer too.
        hi = (res.k_open if res.defer else min(res.k_lo, res.k_open)) - 1
        if hi >= self.next_window and len(self.buffer):
            parts.extend(self._finalize(self.buffer.windows(self.next_window, hi)))
        if res.complete is not None and len(res.complete["window_start"]):
            parts.append(res.complete)
        self.next_window = max(self.next_window, res.k_open)
        self.buffer.prune(self.next_window)
        if not parts:
            return None
        return WindowBatch(_concat_cols(parts), res.task_id)

    def finish(self) -> WindowBatch | None:
        """End of stream: every window still open that holds rows."""
        pmax = self.buffer.last_pane()
        if pmax is None:
            return None
        parts = self._finalize(self.buffer.windows(self.next_window, pmax // self.plan.window.s))
        self.buffer = window_buffer(self.plan)
        return WindowBatch(_concat_cols(parts), None) if parts else None

    def _finalize(self, rows: list[Partials]) -> list[dict[str, np.ndarray]]:
        out = []
        for r in rows:
            cols = self.plan.finalize(r)
            if len(cols["window_start"]):
                out.append(cols)
        return out
