"""The engine: dispatcher -> scheduler -> processors -> result stage.

    engine = Engine(workers=2, task_size=1 << 20, scheduler="hls")
    for batch in engine.run(query, batches):   # WindowBatch objects, in window order
        ...
    engine.stats                               # tasks per processor kind, rows, seconds

The calling thread cuts tasks and runs the result stage; processor threads run the tasks.
At most ``max_in_flight`` tasks are between the dispatcher and the result stage (the ring
of result slots), which bounds memory and makes a slow task hold back the stream, as in
SABER; with the ring full the calling thread sleeps until another half ring of tasks has
finished (or the workers run out of queued tasks), so that it wakes once per batch of
results, not per task: windows are emitted up to half a ring of tasks later than they
could be. An error (a worker's, or the dispatcher's for bad input further on) is raised
in task order, after the tasks before it.
``workers=0`` runs every task inline in the calling thread (no threads at all).

Instrumentation attaches through ``observer`` (see :class:`Observer`): it is called on the
calling thread for each task in task order and for each batch of windows emitted, with the
task's processor kind, rows, bytes, start and end times and CPU seconds, and the windows'
end times.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .assembly import ResultStage, WindowBatch
from .dispatcher import DEFAULT_TASK_SIZE, Dispatcher
from .errors import StreamError
from .fragments import Fragments, Task, TaskResult, fragment_counts, run_task
from .gpu import GpuWorker
from .query import Plan, Query
from .scheduler import Scheduler, make_scheduler
from .units import size_bytes
from .window import WindowSpec
from .workers import CpuPool, Processor


@dataclass
class TaskEvent:
    """A finished task (times are ``time.time()`` seconds)."""

    task_id: int
    query: str
    kind: str
    worker: str
    rows: int
    nbytes: int
    t_start: float
    t_end: float
    first: int
    last: int
    # CPU seconds of the thread that ran the task (time.thread_time), from the end of its
    # previous task (the scheduler's take included); None where not measured.
    cpu_seconds: float | None = None
    # What ``fragments`` is counted from: the window and the task's bounds in it.
    window: WindowSpec | None = field(default=None, kw_only=True)
    k_lo: int = field(default=0, kw_only=True)
    k_open: int = field(default=0, kw_only=True)

    @property
    def fragments(self) -> Fragments:
        """Windows of each kind the task touched (counted on demand: an observer that
        traces 1 % of the tasks should not pay for the other 99 %)."""
        if self.window is None:
            return Fragments()
        return fragment_counts(self.window, self.first, self.last, self.k_lo, self.k_open)


@dataclass
class EmitEvent:
    """Windows made final by task ``task_id`` (``None``: end of stream)."""

    task_id: int | None
    query: str
    windows: int
    rows: int
    window_ends: np.ndarray  # distinct window ends (window time units), ascending
    t_emit: float


class Observer(Protocol):
    def task_done(self, event: TaskEvent) -> None: ...

    def windows_emitted(self, event: EmitEvent) -> None: ...


@dataclass
class RunStats:
    tasks: Counter[str] = field(default_factory=Counter)  # per processor kind
    busy: dict[str, float] = field(default_factory=dict)  # task seconds per kind
    rows: int = 0
    nbytes: int = 0
    windows: int = 0
    result_rows: int = 0
    wall: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall if self.wall > 0 else 0.0


class Engine:
    def __init__(
        self,
        workers: int = 1,
        *,
        task_size: int | str = DEFAULT_TASK_SIZE,
        scheduler: str | Scheduler = "fcfs",
        processors: Sequence[Processor] | None = None,
        gpu: bool = False,
        max_in_flight: int | None = None,
        observer: Observer | None = None,
        switch_threshold: int = 10,
        refresh: float = 1.0,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if workers < 0:
            raise StreamError(f"workers must be >= 0, got {workers}")
        procs = (
            list(processors) if processors is not None else ([CpuPool(workers)] if workers else [])
        )
        if gpu:
            procs.append(GpuWorker())
        self.processors = [p for p in procs if p.enabled]
        kinds = [p.kind for p in self.processors]
        if len(set(kinds)) != len(kinds):
            raise StreamError(f"two processors of the same kind: {kinds}")
        try:
            self.task_size = size_bytes(task_size)
        except ValueError as exc:
            raise StreamError(f"task_size: {exc}") from None
        self.scheduler_spec = scheduler
        self.sched_kw = {
            "switch_threshold": switch_threshold,
            "refresh": refresh,
            "weights": weights,
        }
        total = sum(p.workers for p in self.processors)
        self.max_in_flight = max_in_flight or max(8, 4 * total)
        self.observer = observer
        self.stats = RunStats()
        self._task_cpu: dict[int, float] = {}  # task id -> CPU seconds, until observed
        self.scheduler: Scheduler | None = None
        self._running = False

    @property
    def observer(self) -> Observer | None:
        return self._observer

    @observer.setter
    def observer(self, obs: Observer | None) -> None:
        # Checked here, not found missing at the first task's end, deep in a run.
        if obs is not None:
            for method in ("task_done", "windows_emitted"):
                if not callable(getattr(obs, method, None)):
                    raise StreamError(
                        f"observer {type(obs).__name__} has no {method}(event) method "
                        "(an observer has task_done and windows_emitted)"
                    )
        self._observer = obs

    def run(
        self, query: Query | Plan, batches: Iterable[Mapping[str, Any]]
    ) -> Iterator[WindowBatch]:
        """Window results of ``query`` over ``batches``, in window order. One run at a time
        per engine (its workers and figures are the run's); a batch must not change once the
        source has yielded it (tasks are views of it until the run has consumed them)."""
        plan = query if isinstance(query, Plan) else query.compile()
        if self._running:
            raise StreamError(
                "this Engine is already running a query: finish or close that run first, "
                "or use another Engine"
            )
        stage = ResultStage(plan, self.max_in_flight)
        disp = Dispatcher(plan, self.task_size)
        self._running = True
        self.stats = RunStats()
        self._task_cpu = {}
        t0 = time.perf_counter()
        try:
            if not self.processors:
                for task in disp.tasks(batches):
                    c0 = time.thread_time()
                    res = run_task(task)
                    self._task_cpu[res.task_id] = time.thread_time() - c0
                    yield from self._consume(stage, res, "cpu")
            else:
                yield from self._threaded(plan, stage, disp, batches)
            last = stage.finish()
            if last is not None:
                yield self._emitted(plan, last)
        finally:
            self.stats.wall = time.perf_counter() - t0
            self._running = False

    def _threaded(
        self, plan: Plan, stage: ResultStage, disp: Dispatcher, batches: Iterable[Any]
    ) -> Iterator[WindowBatch]:
        sched = make_scheduler(self.scheduler_spec, **self.sched_kw)
        sched.attach({p.kind: p.workers for p in self.processors})
        self.scheduler = sched
        finished = _Finished()
        # A worker thread's CPU clock when its last task was handed back: a thread's clock
        # starts at 0, so the first task's figure is the thread's whole CPU so far.
        marks = threading.local()
        task_cpu = self._task_cpu

        def done(proc: Processor, task: Task, res: TaskResult) -> None:
            now = time.thread_time()
            task_cpu[res.task_id] = now - getattr(marks, "cpu", 0.0)
            marks.cpu = now
            # Nothing left queued for this kind: wake the calling thread now, before the
            # workers idle, rather than when its batch of results is complete.
            starving = sched.done(proc.kind, task, res.t_end - res.t_start)
            finished.put(res, wake=starving)

        # With the ring full, wait for half of it: the workers keep the other half queued.
        batch = max(1, stage.size // 2)
        submitted = received = 0

        def consume(want: int) -> Iterator[WindowBatch]:
            nonlocal received
            got = finished.take(min(want, submitted - received))
            received += len(got)
            for res in got:
                yield from self._consume(stage, res, None)

        def consume_all() -> Iterator[WindowBatch]:
            while received < submitted:
                yield from consume(batch)

        for p in self.processors:
            p.start(sched.take, done, finished.fail)
        tasks = disp.tasks(batches)
        try:
            while True:
                try:
                    task = next(tasks)
                except StopIteration:
                    break
                except Exception as e:  # bad input further on, or a source that failed
                    bad = e
                else:
                    bad = None
                if bad is not None:
                    # The tasks before it come first, and so do their errors.
                    yield from consume_all()
                    raise bad
                while not stage.free(task.id):
                    if received == submitted:  # nothing can free a slot: a bug, not a wait
                        raise RuntimeError(f"result ring full at task {task.id}, none in flight")
                    yield from consume(batch)
                sched.submit(task)
                submitted += 1
                yield from consume(0)
            yield from consume_all()
        finally:
            sched.cancel()
            for p in self.processors:
                p.join()

    def _consume(
        self, stage: ResultStage, res: TaskResult, kind: str | None
    ) -> Iterator[WindowBatch]:
        if kind is not None:  # ran inline on the calling thread
            res.kind, res.worker = kind, "inline"
        stage.put(res)
        plan = stage.plan
        st = self.stats
        for r, batch in stage.drain():
            if r.error is not None:
                # In task order, like the results: the first bad row of the stream is the
                # one reported, whichever worker found its error first.
                raise r.error
            st.tasks[r.kind] += 1
            st.busy[r.kind] = st.busy.get(r.kind, 0.0) + (r.t_end - r.t_start)
            st.rows += r.rows
            st.nbytes += r.nbytes
            if self.observer is not None:
                self.observer.task_done(
                    TaskEvent(
                        r.task_id,
                        plan.name,
                        r.kind,
                        r.worker,
                        r.rows,
                        r.nbytes,
                        r.t_start,
                        r.t_end,
                        r.first,
                        r.last,
                        self._task_cpu.pop(r.task_id, None),
                        window=plan.window,
                        k_lo=r.k_lo,
                        k_open=r.k_open,
                    )
                )
            else:
                self._task_cpu.pop(r.task_id, None)
            if batch is not None:
                yield self._emitted(plan, batch)

    def _emitted(self, plan: Plan, batch: WindowBatch) -> WindowBatch:
        ends = batch.window_ends
        self.stats.windows += len(ends)
        self.stats.result_rows += len(batch)
        if self.observer is not None:
            self.observer.windows_emitted(
                EmitEvent(batch.task_id, plan.name, len(ends), len(batch), ends, time.time())
            )
        return batch


_NOBODY = 1 << 62  # _Finished._want while nobody waits: no notify


class _Finished:
    """Finished tasks on their way from the workers to the calling thread.

    The calling thread asks for ``want`` results and sleeps until that many are in: one
    wake-up per batch of results rather than per task. Each wake-up takes the interpreter
    lock from a worker: at 1 MiB tasks with GIL-free kernels, waking per task (with the
    dispatcher's serial order check) held 2 threads to 1.16x of one, 1.32-1.36x now
    (``bench/bench_stream_fused.py``). A worker that finds nothing queued for it wakes the
    calling thread at once (``put(wake=True)``), so a wait never leaves the workers idle.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._items: list[TaskResult] = []
        self._want = _NOBODY
        self._died: StreamError | None = None

    def fail(self, worker: str, exc: BaseException) -> None:
        """A worker stopped outside a task: the next ``take`` raises, waiting or not."""
        with self._cv:
            if self._died is None:
                err = StreamError(f"stream worker {worker} stopped: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                self._died = err
            self._cv.notify()

    def put(self, res: TaskResult, wake: bool = False) -> None:
        with self._cv:
            self._items.append(res)
            if wake and self._want != _NOBODY:
                self._want = 1  # what is in will do
            if len(self._items) >= self._want:
                self._cv.notify()

    def take(self, want: int) -> list[TaskResult]:
        """Every result in, once there are at least ``want`` (0: without waiting) or a
        ``put(wake=True)`` came."""
        with self._cv:
            if len(self._items) < want:
                self._want = want
                try:
                    while len(self._items) < self._want and self._died is None:
                        self._cv.wait()
                finally:
                    self._want = _NOBODY
            if self._died is not None:
                raise self._died
            out, self._items = self._items, []
            return out


def collect(batches: Iterable[WindowBatch], plan: Plan | Query) -> dict[str, np.ndarray]:
    """All result rows of a run as one set of columns."""
    p = plan if isinstance(plan, Plan) else plan.compile()
    parts = [b.columns for b in batches]
    if not parts:
        return p.empty_result()
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
