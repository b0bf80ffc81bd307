"""CPU processors: a pool of worker threads that run tasks in parallel.

Threads, not processes. The kernels spend their time inside numpy calls that drop the GIL
(comparisons, ``flatnonzero``/``take``, floor-divide, ``ufunc.at`` scatters, sorts), and a
thread reads the input batches in place, while a process must be handed them through shared
memory (a copy of every input column) and send its fragments back pickled.

Measured with ``bench/bench_stream.py`` (YSB, 10 M events, 1 MiB tasks, best of 3) on this
project's 2-core machine while other jobs shared it:

=================================  ===============  ===============  =======
run                                1 worker         2 workers        scaling
=================================  ===============  ===============  =======
threads, quieter machine           81 M events/s    155 M events/s   1.91x
processes + shared memory, same    22 M events/s    27 M events/s    1.24x
threads, busier machine            186 M events/s   175 M events/s   0.94x
processes + shared memory, same    36 M events/s    34 M events/s    0.94x
=================================  ===============  ===============  =======

Threads were 5-6x the throughput of processes at every width (a process pays the copy into
shared memory and a pickle round trip per task), so the pool keeps threads. Since then the
inline engine got about 1.5x faster per task (glibc's freed memory kept, leaner kernels),
and at 1 MiB tasks the interpreter lock, handed over at each of a task's ~50 numpy calls,
now decides: the kernel alone runs at 0.93x in two threads against one, and the engine with
2 threads at 0.97x of 1 (1.53x at 16 MiB tasks). With a GIL-free fused kernel plugged in
(``fused=``) the engine reaches 1.32-1.36x at 1 MiB; docs/stream.md ("Workers and task size")
has the figures of 2026-12-02.

A :class:`Processor` is one *processor kind* for the scheduler: a name (``kind``), a
number of workers, the array namespace its kernels run on (``xp``) and the partials kernel
(vectorised, or the deliberately scalar reference kernel for tests and benches), or a
*fused* task kernel that replaces the operators and the partials kernel in one call (see
``fragments.TaskKernel``; ``bench/bench_stream_fused.py`` plugs a numba one in).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import StreamError
from .fragments import PartialsFn, Task, TaskKernel, TaskResult, run_task
from .kernels import pane_partials, scalar_partials

KERNELS: dict[str, PartialsFn] = {"vector": pane_partials, "scalar": scalar_partials}


class Processor:
    """A processor kind with ``workers`` threads; ``xp`` numpy (CPU) or CuPy (GPU)."""

    def __init__(
        self,
        kind: str = "cpu",
        workers: int = 1,
        *,
        xp: Any = np,
        kernel: str | PartialsFn = "vector",
        fused: TaskKernel | None = None,
    ) -> None:
        if workers < 1:
            raise StreamError(f"processor {kind!r} needs at least one worker, got {workers}")
        self.kind = kind
        self.workers = workers
        self.xp = xp
        if isinstance(kernel, str):
            if kernel not in KERNELS:
                raise StreamError(f"unknown kernel {kernel!r} ({', '.join(KERNELS)})")
            self.partials: PartialsFn = KERNELS[kernel]
        else:
            self.partials = kernel
        self.fused = fused
        self._threads: list[threading.Thread] = []

    @property
    def enabled(self) -> bool:
        return True

    def run(self, task: Task, worker: str) -> TaskResult:
        res = run_task(task, self.xp, self.partials, self.fused)
        res.kind = self.kind
        res.worker = worker
        return res

    def _worker_context(self, index: int) -> Any:
        """A context manager each worker thread runs in (a CUDA stream on the GPU)."""
        import contextlib

        return contextlib.nullcontext()

    def start(
        self,
        take: Callable[[str], Task | None],
        done: Callable[[Processor, Task, TaskResult], None],
        died: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        """Start the workers: each takes tasks until ``take`` answers ``None``. A worker that
        fails outside a task (its context, the scheduler, ``done``) calls ``died`` with its
        name and the error: its task's result may never come, and a caller waiting for it
        must hear so rather than wait forever."""

        def loop(i: int) -> None:
            try:
                work(i)
            except BaseException as e:
                if died is None:
                    raise
                died(f"{self.kind}-{i}", e)

        def work(i: int) -> None:
            name = f"{self.kind}-{i}"
            with self._worker_context(i):
                while True:
                    task = take(self.kind)
                    if task is None:
                        return
                    try:
                        res = self.run(task, name)
                    except BaseException as e:  # handed to the consumer, raised there
                        res = TaskResult(
                            task.id,
                            task.plan.qid,
                            task.rows,
                            task.nbytes,
                            task.first,
                            task.last,
                            0,
                            0,
                            None,
                            None,
                            kind=self.kind,
                            worker=name,
                            error=e,
                        )
                    done(self, task, res)

        self._threads = [
            threading.Thread(target=loop, args=(i,), name=f"stream-{self.kind}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
        self._threads = []


class CpuPool(Processor):
    """``workers`` CPU threads running the numpy kernels."""

    def __init__(self, workers: int = 1, *, kind: str = "cpu", kernel: str = "vector") -> None:
        super().__init__(kind, workers, xp=np, kernel=kernel)
