"""The dispatcher: checks each input batch and cuts the stream into tasks of ``task_size``
bytes (whole rows of the input schema), independent of where windows begin or end.

A task is a view of one batch where it can be, a copy of the pieces where it spans batch
boundaries. Timestamps must not decrease, within a batch or across batches: the first row
that goes back in time is reported with its batch and offsets. The dispatcher checks each
task's first row against the row before it; a task cut from one batch checks its other rows
itself, on its worker (``Task.batch_row``), and the engine raises errors in task order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .errors import StreamError
from .fragments import Task
from .query import Plan
from .schema import check_order

DEFAULT_TASK_SIZE = 1 << 20  # SABER's default: 1 MiB of input per task


class Dispatcher:
    def __init__(self, plan: Plan, task_size: int = DEFAULT_TASK_SIZE) -> None:
        if task_size <= 0:
            raise StreamError(f"task size must be positive, got {task_size}")
        self.plan = plan
        self.row_bytes = plan.query.schema.row_bytes
        self.task_rows = max(1, task_size // self.row_bytes)
        self.rows_in = 0  # rows dispatched so far (the next task's row offset)
        self._next_id = 0
        self._prev_last = -1  # window time of the last row of the last task
        self._last_time: int | None = None  # last event time seen, for the order check
        self._seen = 0  # rows checked so far (stream offsets in errors)

    def tasks(self, batches: Iterable[Mapping[str, Any]]) -> Iterator[Task]:
        schema = self.plan.query.schema
        cols = self.plan.input_cols
        time_col = None if self.plan.window.rows else self.plan.time_col
        carry: list[dict[str, np.ndarray]] = []
        carry_rows = 0
        carry_batch = 0
        r = self.task_rows
        for bi, batch in enumerate(batches):
            n = schema.validate(batch, bi)
            if n == 0:
                continue
            view = {c: batch[c] for c in cols}
            t = batch[time_col] if time_col is not None else None
            pos = 0
            if carry:
                take = min(r - carry_rows, n)
                if t is not None:
                    self._check_time(t, bi, 0, take)
                carry.append({c: v[:take] for c, v in view.items()})
                carry_rows += take
                pos = take
                if carry_rows == r:
                    yield self._task(_concat(carry), carry_rows, carry_batch)
                    carry, carry_rows = [], 0
            while n - pos >= r:
                # A task cut from one batch checks the order of its own rows on its worker:
                # a serial pass here would cost the calling thread two numpy calls a task,
                # each a hand-over of the interpreter lock (bench/bench_stream_fused.py).
                if t is not None:
                    self._check_time(t, bi, pos, pos + r, rows=False)
                piece = {c: v[pos : pos + r] for c, v in view.items()}
                yield self._task(piece, r, bi, pos if t is not None else None)
                pos += r
            if pos < n:
                if t is not None:
                    self._check_time(t, bi, pos, n)
                if not carry:
                    carry_batch = bi
                carry.append({c: v[pos:] for c, v in view.items()})
                carry_rows += n - pos
        if carry:
            yield self._task(_concat(carry), carry_rows, carry_batch)

    def _check_time(self, times: np.ndarray, bi: int, a: int, b: int, rows: bool = True) -> None:
        """Rows ``a..b`` of batch ``bi`` against the row before them (the pieces of a batch
        come in order), and against each other unless ``rows`` is false (the task does it)."""
        first = int(times[a])
        if self._last_time is not None and first < self._last_time:
            before = "the previous batch's last timestamp" if a == 0 else "the previous row's"
            raise StreamError(
                f"batch {bi}, row {a} (stream row {self._seen}): timestamp {first} is "
                f"before {before} {self._last_time}"
            )
        if first < 0:
            raise StreamError(f"batch {bi}, row {a}: negative timestamp {first}")
        if rows:
            check_order(times[a:b], bi, a, self._seen)
        self._last_time = int(times[b - 1])
        self._seen += b - a

    def _task(
        self, cols: dict[str, np.ndarray], rows: int, bi: int, batch_row: int | None = None
    ) -> Task:
        row0 = self.rows_in
        if self.plan.window.rows:
            first, last = row0, row0 + rows - 1
        else:
            t = cols[self.plan.time_col]
            first, last = int(t[0]), int(t[-1])
        task = Task(
            id=self._next_id,
            plan=self.plan,
            cols=cols,
            rows=rows,
            nbytes=rows * self.row_bytes,
            row0=row0,
            first=first,
            last=last,
            prev_last=self._prev_last,
            batch=bi,
            batch_row=batch_row,
        )
        self._next_id += 1
        self.rows_in += rows
        self._prev_last = last
        return task


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
