"""A task and its batch function: rows -> window fragments.

A task is a contiguous run of input rows cut by size, wherever windows begin or end. Its
rows span window time ``(prev_last, last]``; relative to that span each window touched by
the task is one of SABER's four fragment kinds:

* *complete*: starts after ``prev_last`` and ends by ``last``: finished here, and the task
  emits its final result rows;
* *closing* (opened in an earlier task, ends here), *pending* (spans the whole task) and
  *opening* (starts here, ends in a later task): the task ships the pane partials these
  windows need from its rows (its *boundary panes*); the result stage merges them with the
  neighbours' and finishes the windows once the stream has passed their end.

Every fragment is computed from the same pane partials, so overlapping windows share the
work: a window of 3,600 panes costs a prefix-sum difference, not 3,600 additions.

A task with few complete windows (fewer than a window spans, or than ``DEFER_WINDOWS``)
whose aggregates the result stage computes incrementally (any, over integer keys)
*defers* them: it ships all its pane partials and the stage finishes those windows in the
same pass as the closing ones (one output array per task, no second kernel call). Tasks with
many complete windows compute them here, in parallel, with the stage's incremental kernel
run on the task alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import incremental
from .backend import to_device, to_host
from .kernels import Partials, pane_partials, windows_from_partials
from .operators import run_steps
from .query import ROW_COLUMN, Plan
from .schema import check_order
from .window import WindowSpec

PartialsFn = Callable[..., Partials]
# A fused task kernel: a task's rows -> its pane partials, the operators and the partials
# kernel in one call (a compiled, per-query function, as LightSaber generates them). It
# must give what ``task_partials`` gives; the rest of the batch function is shared.
TaskKernel = Callable[["Task"], Partials]
# A task with fewer complete windows than this leaves them to the result stage (see
# run_task); more, and it computes them itself, in parallel with the other workers.
DEFER_WINDOWS = 64


@dataclass
class Task:
    """Rows ``row0 .. row0+rows`` of the stream; ``first``/``last`` are the window times of
    its first and last rows, ``prev_last`` that of the task before (``-1`` for the first)."""

    id: int
    plan: Plan
    cols: dict[str, np.ndarray]
    rows: int
    nbytes: int
    row0: int
    first: int
    last: int
    prev_last: int
    batch: int = 0
    # Where the rows start in batch ``batch`` when the task is a view of that one batch on
    # an event-time column: run_task then checks its rows' time order. None: nothing left to
    # check (the dispatcher did, or row windows).
    batch_row: int | None = None
    t_dispatch: float = 0.0


@dataclass
class Fragments:
    """How many windows of each kind the task touched (for observers and tests)."""

    closing: int = 0
    pending: int = 0
    complete: int = 0
    opening: int = 0


@dataclass
class TaskResult:
    task_id: int
    qid: int
    rows: int
    nbytes: int
    first: int
    last: int
    k_lo: int
    k_open: int
    complete: dict[str, np.ndarray] | None
    boundary: Partials | None
    kind: str = ""
    worker: str = ""
    defer: bool = False  # complete windows left to the result stage (boundary: every pane)
    t_start: float = 0.0
    t_end: float = 0.0
    error: BaseException | None = None


def fragment_counts(win: WindowSpec, first: int, last: int, k_lo: int, k_open: int) -> Fragments:
    """How many windows of each kind a task spanning window times ``first..last`` touched
    (``k_lo``, ``k_open``: :meth:`WindowSpec.task_bounds`)."""
    k_first = max(0, (first - win.size) // win.slide + 1)
    k_last = last // win.slide

    def n(a: int, b: int) -> int:
        return max(0, b - a + 1)

    return Fragments(
        closing=n(k_first, min(k_lo, k_open) - 1),
        pending=n(max(k_first, k_open), min(k_lo - 1, k_last)),
        complete=n(max(k_first, k_lo), min(k_open - 1, k_last)),
        opening=n(max(k_lo, k_open, k_first), k_last),
    )


def _complete(
    part: Partials, plan: Plan, k_a: int, k_b: int, xp: Any, inc: bool
) -> dict[str, np.ndarray] | None:
    """Result columns of windows ``k_a..k_b``, all of whose panes are in ``part``."""
    win = plan.window
    needs = plan.needs
    # Keyless min/max: the window kernel's sparse table over the task's panes is faster here
    # than the stage's per-step set-up (about 1.4x at w = 10 ... 60, bench_stream.py).
    sparse = not plan.keys and bool(needs.mins or needs.maxs)
    if inc and not win.tumbling and not sparse:
        # The stage's incremental kernel on this task alone: cost ~ panes + result rows.
        iw = incremental.for_plan(plan)
        if iw.add(part):
            chunks = [plan.finalize(r) for r in iw.windows(k_a, k_b)]
            chunks = [c for c in chunks if len(c["window_start"])]
            if not chunks:
                return None
            if len(chunks) == 1:
                return chunks[0]
            return {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}
    rows = windows_from_partials(part, win.w, win.s, k_a, k_b, plan.needs, xp, unique_entries=True)
    return plan.finalize(rows.map(to_host)) if len(rows) else None


def task_partials(task: Task, xp: Any = np, partials: PartialsFn = pane_partials) -> Partials:
    """The operators over a task's rows, then their pane partials."""
    plan = task.plan
    win = plan.window
    cols: dict[str, Any] = {c: to_device(xp, task.cols[c]) for c in plan.input_cols}
    if win.rows:
        cols[ROW_COLUMN] = xp.arange(task.row0, task.row0 + task.rows, dtype=np.int64)
    cols = run_steps(plan.steps, cols, xp)
    return partials(
        cols[plan.time_col],
        [cols[k] for k in plan.keys],
        {c: cols[c] for c in plan.value_dtypes},
        win.pane,
        plan.needs,
        xp,
        plan.key_ranges,
    )


def run_task(
    task: Task,
    xp: Any = np,
    partials: PartialsFn = pane_partials,
    fused: TaskKernel | None = None,
) -> TaskResult:
    """The batch function: one task's rows -> finished complete windows + boundary panes."""
    t0 = time.time()
    plan = task.plan
    win = plan.window
    if task.batch_row is not None:
        check_order(task.cols[plan.time_col], task.batch, task.batch_row, task.row0)
    part = fused(task) if fused is not None else task_partials(task, xp, partials)
    k_lo, k_open = win.task_bounds(task.prev_last, task.last)
    complete = None
    inc = xp is np and incremental.supports(plan)
    n_complete = k_open - k_lo
    # Few complete windows (fewer than a window spans, or than DEFER_WINDOWS): the result
    # stage, which finishes the closing ones from its running state anyway, does them in
    # the same pass (one output array, no concatenation, no second kernel call) for the
    # price of shipping every pane.
    defer = inc and 0 < n_complete < max(-(-win.w // win.s), DEFER_WINDOWS) and len(part) > 0
    if n_complete > 0 and len(part) and not defer:
        complete = _complete(part, plan, k_lo, k_open - 1, xp, inc)
    boundary = None
    if defer or (n_complete <= 0 and win.w >= win.s):
        # Every pane serves a closing, pending or opening window (the usual task when
        # windows are longer than tasks): nothing to cut.
        boundary = part
    elif len(part):
        # Panes the closing/pending windows need (before head_end) and those the opening and
        # pending ones need (from tail_start): the rest only served complete windows.
        head_end = (k_lo - 1) * win.s + win.w if k_lo >= 1 else None
        tail_start = k_open * win.s
        idx = part.index
        n = len(idx)
        bounds = [tail_start, head_end if head_end is not None else -1]
        i_tail, i_head = (int(i) for i in xp.searchsorted(idx, xp.asarray(bounds)))
        if i_head >= i_tail:
            boundary = part
        elif i_head == 0:
            boundary = part.take(slice(i_tail, n))
        else:
            sel = xp.concatenate([xp.arange(i_head), xp.arange(i_tail, n)])
            boundary = part.take(sel)
    if boundary is not None:
        if not len(boundary):
            boundary = None
        elif xp is not np:
            boundary = boundary.map(to_host)
    return TaskResult(
        task_id=task.id,
        qid=plan.qid,
        rows=task.rows,
        nbytes=task.nbytes,
        first=task.first,
        last=task.last,
        k_lo=k_lo,
        k_open=k_open,
        complete=complete,
        boundary=boundary,
        defer=defer,
        t_start=t0,
        t_end=time.time(),
    )
