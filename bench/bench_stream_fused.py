"""What GIL-free task kernels would give the stream engine's thread pool: a design probe.

Run: ``pip install numba && python bench/bench_stream_fused.py [--events 20M] [--repeat 3]``

Issue 12 asks 2 workers for at least 1.7x one on the 2-core test machine, with 1 MiB tasks.
The engine's numpy kernels hand the interpreter lock over at each of a task's ~50 short
numpy calls, and two threads run at 0.8-1.0x of one (docs/stream.md). This script puts,
side by side in one run, the engine on 1 and 2 worker threads and YSB's task (filter views,
join ad -> campaign, count per campaign per 10 s window) as ONE fused numba function that
holds no lock (``nogil=True``), on the same events cut into the same 1 MiB tasks, in 1 and 2
threads. It answers whether compiled, fused kernels (numba: a new dependency, and per-query
code generation as LightSaber does it) would meet the target; the fused counts are checked
against the engine's so that the comparison is of equal work.

A third pair of rows runs the real engine (dispatcher, scheduler, worker threads, result
stage) with a fused task kernel plugged in through ``Processor(fused=...)``: a numba
function from a task's rows to its pane partials, checked equal to the engine's own on every
task. Its 2-thread ratio says how much of the gap the kernels close and how much is the
engine's per-task Python around them (dispatch, the batch function's tail, the result stage).

The last section measures that Python directly: the engine with the fused kernel followed by
a GIL-free spin of S microseconds per task (pure register work, so it scales on any two
cores), for several S. With a kernel of K us a task, one worker takes about K + a us per task
and two about (K + P) / 2 + b, P being the per-task time that holds the interpreter lock;
the rows give the ratio as a function of K, and the script prints the kernel cost per task
above which two workers reach the target at this task size.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import machine
from bench.bench_stream import best
from wattspan.cli.stream_cmd import parse_count, parse_size
from wattspan.engines.stream import Engine, collect, datasets
from wattspan.engines.stream import queries as Q
from wattspan.engines.stream.dispatcher import Dispatcher
from wattspan.engines.stream.fragments import Task, task_partials
from wattspan.engines.stream.kernels import Partials
from wattspan.engines.stream.malloc import keep_freed_memory
from wattspan.engines.stream.schema import YSB_VIEW
from wattspan.engines.stream.workers import Processor

TARGET = 1.7


def threaded(fn: Callable[[list[Task]], None], parts: list[list[Task]]) -> None:
    ts = [threading.Thread(target=fn, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="20M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--task-size", default="1M", help="bytes per task (default 1M)")
    args = ap.parse_args()
    try:
        import numba
    except ImportError:
        print("numba is not installed: pip install numba (a probe, not a wattspan dependency)")
        return 2
    keep_freed_memory()
    n = parse_count(args.events)
    gen = datasets.generator("ysb", seed=1)
    b = gen.take(n)
    ads = gen.ads
    q = Q.ysb(ads["ad_id"], ads["campaign_id"])
    ranks = np.unique(ads["campaign_id"], return_inverse=True)[1].astype(np.int32)
    lut = np.full(int(ads["ad_id"].max()) + 1, -1, np.int32)
    lut[ads["ad_id"]] = ranks
    groups = int(ranks.max()) + 1

    @numba.njit(nogil=True, cache=False)
    def task_panes(et: Any, ty: Any, ad: Any, lut: Any, view: int, pane: int, groups: int):  # type: ignore[no-untyped-def]
        # Filter, join and count per (pane, campaign rank) in one pass, then the sorted
        # non-empty cells: what pane_partials gives after the engine's operators.
        p0 = et[0] // pane
        cnt = np.zeros((et[-1] // pane - p0 + 1) * groups, np.int64)
        for i in range(et.shape[0]):
            if ty[i] == view:
                k = ad[i]
                if 0 <= k < lut.shape[0] and lut[k] >= 0:
                    cnt[(et[i] // pane - p0) * groups + lut[k]] += 1
        nnz = 0
        for c in cnt:
            nnz += c != 0
        index = np.empty(nnz, np.int64)
        key = np.empty(nnz, np.int32)
        count = np.empty(nnz, np.int64)
        j = 0
        for code in range(cnt.shape[0]):
            if cnt[code]:
                index[j], key[j], count[j] = code // groups + p0, code % groups, cnt[code]
                j += 1
        return index, key, count

    plan = q.compile()
    pane = plan.window.pane

    def fused_task(task: Task) -> Partials:
        c = task.cols
        index, key, count = task_panes(
            c["event_time"], c["event_type"], c["ad_id"], lut, YSB_VIEW, pane, groups
        )
        return Partials(index, [key], count)

    # The engine's own tasks (views of the events): the kernel-alone rows run the same
    # function on the same tasks as the engine-with-the-fused-kernel rows.
    task_bytes = parse_size(args.task_size)
    tasks = list(Dispatcher(plan, task_bytes).tasks([b]))
    for t in tasks:  # compiles, and checks every task
        mine, theirs = fused_task(t), task_partials(t)
        for x, y in ((mine.index, theirs.index), (mine.count, theirs.count)):
            assert np.array_equal(x, y), t.id
        assert np.array_equal(mine.keys[0], theirs.keys[0].astype(np.int32)), t.id

    def alone(part: list[Task]) -> None:
        for t in part:
            fused_task(t)

    engine_total = int(collect(Engine(0).run(q, [b]), q)["count"].sum())

    def engine_with(workers: int, kernel: Callable[[Task], Partials] | None) -> Engine:
        kw: dict[str, Any] = {"fused": kernel} if kernel is not None else {}
        return Engine(processors=[Processor("cpu", workers, **kw)], task_size=task_bytes)

    def engine(workers: int, fused: bool = False) -> Engine:
        return engine_with(workers, fused_task if fused else None)

    fused_total = collect(engine(2, fused=True).run(q, [b]), q)
    assert int(fused_total["count"].sum()) == engine_total

    r = args.repeat
    print(f"# machine: {machine()}")
    print(f"# YSB, {n / 1e6:.0f} M events, {len(tasks)} tasks of {task_bytes >> 10} KiB")
    e1 = n / best(lambda: collect(engine(1).run(q, [b]), q), r)
    e2 = n / best(lambda: collect(engine(2).run(q, [b]), q), r)
    f1 = n / best(lambda: threaded(alone, [tasks]), r)
    f2 = n / best(lambda: threaded(alone, [tasks[0::2], tasks[1::2]]), r)
    g1 = n / best(lambda: collect(engine(1, fused=True).run(q, [b]), q), r)
    g2 = n / best(lambda: collect(engine(2, fused=True).run(q, [b]), q), r)
    for label, one, two in (
        ("engine, numpy kernels", e1, e2),
        ("fused numba, nogil", f1, f2),
        ("engine, fused kernel", g1, g2),
    ):
        print(
            f"  {label:22s} 1 thread {one / 1e6:7.1f}, 2 threads {two / 1e6:7.1f} M events/s: "
            f"{two / one:.2f}x (target >= {TARGET}): "
            f"{'target met' if two / one >= TARGET else 'target missed'}"
        )
    print(f"  fused / engine, 2 threads: {f2 / e2:.2f}x")
    print(f"  engine with the fused kernel / engine, 2 threads: {g2 / e2:.2f}x")
    floor(numba, engine_total, tasks, fused_task, engine_with, q, b, r)
    return 0


def floor(
    numba: Any,
    total: int,
    tasks: list[Task],
    fused_task: Callable[[Task], Partials],
    engine_with: Callable[[int, Callable[[Task], Partials]], Engine],
    q: Any,
    b: dict[str, np.ndarray],
    r: int,
) -> None:
    """The engine's per-task Python, from the ratio at several kernel costs (docstring)."""

    @numba.njit(nogil=True, cache=False)
    def spin(n: int) -> int:  # register work only: no memory traffic to share
        x = 1
        for i in range(n):
            x = (x * 1103515245 + i) & 0xFFFFFFFF
        return x

    spin(10)
    n_cal = 2_000_000
    per_iter = min(_timed(lambda: spin(n_cal)) for _ in range(5)) / n_cal
    k0 = best(lambda: [fused_task(t) for t in tasks], r) / len(tasks)
    print(
        f"# the engine's per-task floor: the fused kernel ({k0 * 1e6:.0f} us a task alone) "
        "plus a GIL-free spin of S us a task"
    )
    rows: list[tuple[float, float]] = []  # (kernel us a task, 2/1 ratio)
    for extra_us in (0, 50, 100, 200, 400):
        iters = int(extra_us * 1e-6 / per_iter)

        def slow(task: Task, iters: int = iters) -> Partials:
            out = fused_task(task)
            if iters:
                spin(iters)
            return out

        us = []
        for w in (1, 2):
            e = engine_with(w, slow)
            got = collect(e.run(q, [b]), q)
            assert int(got["count"].sum()) == total
            us.append(best(lambda w=w: collect(engine_with(w, slow).run(q, [b]), q), r))
        per1, per2 = (u / len(tasks) * 1e6 for u in us)
        k = k0 * 1e6 + extra_us
        rows.append((k, per1 / per2))
        print(
            f"  kernel {k:5.0f} us/task: 1 worker {per1:6.1f} us/task (kernel + {per1 - k:4.1f}), "
            f"2 workers {per2:6.1f} us/task: {per1 / per2:.2f}x "
            f"({'target met' if per1 / per2 >= TARGET else 'target missed'})"
        )
    above = [k for k, ratio in rows if ratio >= TARGET]
    if above:
        print(
            f"  two workers reach {TARGET}x once a task's kernel takes about {above[0]:.0f} us "
            f"or more here; the fused YSB kernel takes {k0 * 1e6:.0f} us"
        )
    else:
        print(f"  two workers stay below {TARGET}x up to a {rows[-1][0]:.0f} us kernel here")


def _timed(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
