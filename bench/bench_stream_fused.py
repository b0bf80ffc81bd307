"""What GIL-free task kernels would give the stream engine's thread pool: a design probe.

Run: ``pip install numba && python bench/bench_stream_fused.py [--events 20M] [--repeat 3]``

Issue 12 asks 2 workers for at least 1.7x one on the 2-core test machine, with 1 MiB tasks.
The engine's numpy kernels hand the interpreter lock over at each of a task's ~50 short
numpy calls, and two threads run at 0.90-0.99x of one (docs/stream.md). This script puts,
side by side in one run, the engine on 1 and 2 worker threads and YSB's task (filter views,
join ad -> campaign, count per campaign per 10 s window) as ONE fused numba function that
holds no lock (``nogil=True``), on the same events cut into the same 1 MiB tasks, in 1 and 2
threads. It answers whether compiled, fused kernels (numba: a new dependency, and per-query
code generation as LightSaber does it) would meet the target; it is not an engine path, and
the fused counts are checked against the engine's so that the comparison is of equal work.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import machine
from bench.bench_stream import best
from wattspan.cli.stream_cmd import parse_count
from wattspan.engines.stream import Engine, collect, datasets
from wattspan.engines.stream import queries as Q
from wattspan.engines.stream.malloc import keep_freed_memory
from wattspan.engines.stream.schema import YSB_VIEW

TARGET = 1.7
TASK_BYTES = 1 << 20


def threaded(fn: Callable[[list[tuple[int, int]]], None], parts: list[list[tuple[int, int]]]):
    ts = [threading.Thread(target=fn, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="20M")
    ap.add_argument("--repeat", type=int, default=3)
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
    et, ty, ad = b["event_time"], b["event_type"], b["ad_id"]

    @numba.njit(nogil=True, cache=False)
    def task(et: Any, ty: Any, ad: Any, lut: Any, view: int, w0: int, out: Any) -> None:
        for i in range(et.shape[0]):
            if ty[i] == view:
                k = ad[i]
                if 0 <= k < lut.shape[0] and lut[k] >= 0:
                    out[et[i] // 10_000 - w0, lut[k]] += 1

    row_bytes = sum(v.dtype.itemsize for v in b.values())
    rows = TASK_BYTES // row_bytes
    bounds = [(s, min(s + rows, n)) for s in range(0, n, rows)]
    w_first = int(et[0]) // 10_000
    total = np.zeros((int(et[-1]) // 10_000 - w_first + 1, groups), np.int64)

    def fused(part: list[tuple[int, int]], into: np.ndarray | None = None) -> None:
        for s, e in part:
            w0 = int(et[s]) // 10_000
            out = np.zeros((int(et[e - 1]) // 10_000 - w0 + 1, groups), np.int64)
            task(et[s:e], ty[s:e], ad[s:e], lut, YSB_VIEW, w0, out)
            if into is not None:
                into[w0 - w_first : w0 - w_first + len(out)] += out

    fused(bounds, total)  # compiles, and gives the counts to check
    engine_total = int(collect(Engine(0).run(q, [b]), q)["count"].sum())
    assert int(total.sum()) == engine_total, (int(total.sum()), engine_total)

    r = args.repeat
    print(f"# machine: {machine()}")
    print(f"# YSB, {n / 1e6:.0f} M events, {len(bounds)} tasks of {TASK_BYTES >> 10} KiB")
    e1 = n / best(lambda: collect(Engine(1).run(q, [b]), q), r)
    e2 = n / best(lambda: collect(Engine(2).run(q, [b]), q), r)
    f1 = n / best(lambda: threaded(fused, [bounds]), r)
    f2 = n / best(lambda: threaded(fused, [bounds[0::2], bounds[1::2]]), r)
    for label, one, two in (("engine, numpy kernels", e1, e2), ("fused numba, nogil", f1, f2)):
        print(
            f"  {label:22s} 1 thread {one / 1e6:7.1f}, 2 threads {two / 1e6:7.1f} M events/s: "
            f"{two / one:.2f}x (target >= {TARGET}): "
            f"{'target met' if two / one >= TARGET else 'target missed'}"
        )
    print(f"  fused / engine, 2 threads: {f2 / e2:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
