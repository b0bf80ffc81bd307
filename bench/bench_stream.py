"""Stream engine benchmarks, side by side in one run (issue #12).

1. YSB end to end from in-memory batches (generation not counted): the engine on one core
   (tasks inline on the calling thread), with 1 and 2 worker threads, against a bare numpy
   kernel of the same query over the whole array and the pandas baseline
   (bench/_stream_baselines.py). Targets: >= 30 M events/s per core, >= 0.5x bare numpy.
2. Workers: 2 worker threads against 1 (target >= 1.7x), and, for the record, the same
   task kernels in 1 vs 2 processes fed through multiprocessing.shared_memory; a control
   (two independent processes on twice the work) says how much parallelism the machine
   had to give during the run.
3. SG1-style ``RANGE w SLIDE 1`` for w = 1 ... 3600, avg(value) and max(value) (min/max
   incremental too): throughput varies < 20 % (panes), in the steady state: the first
   3600 s of event time go in untimed for every w (a w-second window closes nothing in the
   stream's first w s, so over a whole stream a large w emits fewer windows and looks
   faster; that spread is printed too, for the record).
   The sizes run interleaved (round robin, best of ``--repeat``) and the spread is given in
   wall time and in the process's CPU time (the inline engine is one thread: on a shared
   machine CPU time is the steadier figure).
3b. Every shipped query inline on ``--query-events`` generated events (default 2M): events/s
   and result rows/s, the output consumed batch by batch (not concatenated).
4. Task-size sweep 64 KiB ... 16 MiB on YSB (SABER's figure).
   Target: the default 1 MiB within 20 % of the best size.
5. Instrumentation: the observer ``wattspan stream run`` attaches (1 % task spans into a
   real OpenTelemetry SDK tracer, the latency histogram) against the bare engine, on YSB and
   on SG1 (a window per second of event time), inline and on 2 worker threads
   (target: cost <= 5 %).
6. ``--spark``: Spark Structured Streaming on local[2] on the same events, written as Parquet
   files of ``--spark-files-rows`` rows (2M: one large micro-batch each), after a warm-up
   query (target: engine >= 20x), through bench/_stream_baselines.py.
7. Events per joule of each shipped query, measured through the agent: ``wattspan stream
   run`` (the embedded agent of ``wattspan run``) on ``--agent-events`` generated events per
   query, from the attributed energy of its ``stream.query`` span (target: every query
   measured).

    python bench/bench_stream.py [--events 20M] [--repeat 3] [--spark] [--agent-events 1M]

The machine may be shared: every figure is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import machine
from wattspan.cli.stream_cmd import parse_count
from wattspan.engines.stream import Agg, Engine, Query, collect, datasets
from wattspan.engines.stream import queries as Q
from wattspan.engines.stream.assembly import ResultStage
from wattspan.engines.stream.dispatcher import Dispatcher
from wattspan.engines.stream.fragments import Task, run_task
from wattspan.engines.stream.schema import SG_SCHEMA


def best(f: Callable[[], Any], repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t0)
    return out


def met(ok: bool) -> str:
    return "target met" if ok else "target missed"


def bare_ysb(b: dict[str, np.ndarray], rank: np.ndarray) -> np.ndarray:
    """The YSB query as one numpy pipeline over the whole array (campaign ranks
    precomputed, positions-then-gather selection: the fastest plain numpy we know)."""
    idx = np.flatnonzero(b["event_type"] == 0)
    camp = rank[b["ad_id"].take(idx)]
    w = b["event_time"].take(idx) // 10_000
    return np.bincount((w - w[0]) * (int(rank.max()) + 1) + camp)


# --- processes with shared memory -------------------------------------------------------

_SHM: dict[str, Any] = {}


def _attach(spec: dict[str, tuple[str, str, int]], plan: Any) -> None:
    for c, (name, dtype, n) in spec.items():
        shm = shared_memory.SharedMemory(name=name)
        _SHM[c] = (shm, np.ndarray(n, dtype=dtype, buffer=shm.buf))
    _SHM["plan"] = plan


def _run_slice(args: tuple[int, int, int, int, int, int]) -> Any:
    tid, a, z, first, last, prev = args
    cols = {c: v[1][a:z] for c, v in _SHM.items() if c != "plan"}
    # batch_row: the task checks its rows' time order, as the engine's tasks do.
    plan = _SHM["plan"]
    row = None if plan.window.rows else a
    task = Task(tid, plan, cols, z - a, 0, a, first, last, prev, batch_row=row)
    return run_task(task)


def process_run(q: Query, b: dict[str, np.ndarray], procs: int, task_size: int) -> float:
    """YSB through ``procs`` processes: input copied once into shared memory (counted),
    tasks sent as row ranges, results merged by the same result stage."""
    plan = q.compile()
    t0 = time.perf_counter()
    shms, spec = [], {}
    for c in plan.input_cols:
        v = b[c]
        shm = shared_memory.SharedMemory(create=True, size=max(v.nbytes, 1))
        np.ndarray(len(v), v.dtype, buffer=shm.buf)[:] = v
        shms.append(shm)
        spec[c] = (shm.name, v.dtype.str, len(v))
    t_copy = time.perf_counter() - t0
    tasks = [
        (t.id, t.row0, t.row0 + t.rows, t.first, t.last, t.prev_last)
        for t in Dispatcher(plan, task_size).tasks([b])
    ]
    ctx = mp.get_context("fork")
    try:
        with ctx.Pool(procs, initializer=_attach, initargs=(spec, plan)) as pool:
            pool.map(abs, range(procs))  # the pool is up: its start-up is not the engine's
            t1 = time.perf_counter()
            stage = ResultStage(plan, len(tasks) + 1)
            for res in pool.imap_unordered(_run_slice, tasks, chunksize=4):
                res.qid = plan.qid
                stage.put(res)
                stage.drain()
            stage.finish()
            t_run = time.perf_counter() - t1
    finally:
        for shm in shms:
            shm.close()
            shm.unlink()
    return t_copy + t_run


# --- instrumentation, Spark, the agent ------------------------------------------------------


def instrumentation_cost(
    cases: dict[str, tuple[Query, dict[str, np.ndarray]]], repeat: int, workers: int = 2
) -> None:
    """Each query with the observer ``wattspan stream run`` attaches (1 % task spans into a
    real SDK tracer, the latency histogram's bucketing) against the bare engine,
    the two interleaved so that a busy spell of the machine hits both."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from wattspan.engines.stream.instrument import ArrivalClock, StreamObserver, _Metrics

    where = f"{workers} worker threads" if workers else "inline, one core"
    print(f"\n## instrumentation ({where}, 1 Mi-row batches; best of interleaved runs)")
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("wattspan")
    for label, (q, b) in cases.items():
        n = len(next(iter(b.values())))
        chunks = [{k: v[i : i + (1 << 20)] for k, v in b.items()} for i in range(0, n, 1 << 20)]
        windows = 0

        def traced(q: Query = q, chunks: list[dict[str, np.ndarray]] = chunks) -> None:
            nonlocal windows
            with tracer.start_as_current_span("stream.query") as parent:
                metrics = _Metrics(exporter=None)  # what is sent at the end is not timed
                obs = StreamObserver(
                    ArrivalClock(q.compile()), 0.01, parent, metrics, tracer=tracer
                )
                eng = Engine(workers, observer=obs)
                collect(eng.run(q, obs.clock.feed(chunks)), q)
                windows = eng.stats.windows

        t_plain = t_inst = float("inf")
        spans.clear()
        for _ in range(max(repeat, 5)):
            t_plain = min(
                t_plain, best(lambda q=q, c=chunks: collect(Engine(workers).run(q, c), q), 1)
            )
            t_inst = min(t_inst, best(traced, 1))
        per_run = len(spans.get_finished_spans()) // max(repeat, 5)
        cost = t_inst / t_plain - 1
        print(
            f"  {label}: plain {n / t_plain / 1e6:.1f}, instrumented {n / t_inst / 1e6:.1f} M "
            f"events/s ({per_run} task spans + {windows:,} latency values a run): cost "
            f"{cost:.1%} (target <= 5 %): {met(cost <= 0.05)}"
        )


def spark_section(
    b: dict[str, np.ndarray], ads: dict[str, np.ndarray], engine_rate: float, file_rows: int
) -> None:
    """Spark Structured Streaming on local[2] over the same events as Parquet files of
    ``file_rows`` rows (one file per micro-batch), after a warm-up query on other data."""
    import shutil
    import tempfile

    print("\n## Spark Structured Streaming, local[2], same events")
    try:
        import bench._stream_baselines as sb
    except ImportError as e:
        print(f"  unavailable ({e}); target >= 20x: not measured")
        return
    n = len(b["event_time"])
    tmp = Path(tempfile.mkdtemp(prefix="wattspan-bench-spark-"))
    try:
        chunks = [{k: v[i : i + (1 << 20)] for k, v in b.items()} for i in range(0, n, 1 << 20)]
        files = sb.write_parquet_parts(chunks, tmp / "events", file_rows)
        warm = datasets.generator("ysb", seed=2)
        sb.write_parquet_parts([warm.take(400_000)], tmp / "warm", 100_000)
        spark = sb.spark_session(cores=2)
        try:
            sb.spark_ysb(spark, tmp / "warm", warm.ads)  # JVM warm-up: codegen, class loading
            res = sb.spark_ysb(spark, tmp / "events", ads)
        finally:
            spark.stop()
    except Exception as e:  # no Java, a Spark failure: the other sections still count
        print(f"  Spark failed ({type(e).__name__}: {e}); target >= 20x: not measured")
        return
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from bench._stream_baselines import pandas_ysb

    same = res.counts.equals(pandas_ysb(chunks, ads))
    ratio = engine_rate / res.events_per_s if res.events_per_s else float("inf")
    print(
        f"  spark: {res.events_per_s / 1e6:.2f} M events/s ({res.events:,} rows in "
        f"{res.seconds:.1f} s, {res.micro_batches} micro-batches of {file_rows:,} rows from "
        f"{files} Parquet files; counts equal pandas: {same})"
    )
    print(
        f"  engine (2 worker threads, in memory) {engine_rate / 1e6:.1f} M events/s / spark: "
        f"{ratio:.1f}x (target >= 20): {met(ratio >= 20 and same)}"
    )


def agent_section(events: int) -> None:
    """Each shipped query through ``wattspan stream run`` (the embedded agent): its events
    per joule from the attributed energy of the ``stream.query`` span."""
    import json
    import tempfile

    from wattspan.engines.stream.cli_worker import DATASET_OF

    print(f"\n## events per joule, each query through the agent ({events / 1e6:g} M events)")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="wattspan-bench-agent-") as tmp:
        files: dict[str, Path] = {}
        for ds in dict.fromkeys(DATASET_OF.values()):
            files[ds] = Path(tmp) / f"{ds}.parquet"
            wattspan_cli("stream", "generate", ds, "--events", str(events), "--seed", "1",
                         "-o", str(files[ds]))  # fmt: skip
        store = str(Path(tmp) / "wattspan.db")
        for name, ds in DATASET_OF.items():
            p = wattspan_cli(
                "stream", "run", name, "--input", str(files[ds]), "--store", store, "--json",
                "--workers", "2",
            )  # fmt: skip
            if p.returncode != 0:
                print(f"  {name:5s} failed: {p.stderr.strip().splitlines()[-1:]}")
                continue
            results[name] = json.loads(p.stdout)["stream"]
    print(
        f"  {'query':5s} {'M events/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'joules':>8s} "
        f"{'k events/J':>11s}  basis"
    )
    for name, f in results.items():
        e, lat = f["energy"], f["latency_seconds"]
        epj = e["events_per_joule"]
        print(
            f"  {name:5s} {f['events_per_second'] / 1e6:10.2f} "
            f"{(lat['p50'] or 0) * 1e3:8.1f} {(lat['p99'] or 0) * 1e3:8.1f} "
            f"{e['joules'] or 0:8.2f} {(epj or 0) / 1e3:11.1f}  {e['basis']}"
            f"{', estimated' if e.get('estimated') else ''}"
        )
    ok = len(results) == len(DATASET_OF) and all(
        f["energy"]["basis"].startswith("query span") for f in results.values()
    )
    print(
        f"  every query measured with its span's attributed energy (target: all "
        f"{len(DATASET_OF)}): {met(ok)}"
    )


def wattspan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args], capture_output=True, text=True, check=False
    )


def _inline(q: Query, b: dict[str, np.ndarray]) -> None:
    for _ in Engine(0).run(q, [b]):
        pass


def forked(q: Query, b: dict[str, np.ndarray], k: int) -> None:
    """``k`` forked processes each running the query inline on the same events."""
    ps = [mp.get_context("fork").Process(target=_inline, args=(q, b)) for _ in range(k)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()


def per_query_section(events: int, repeat: int) -> None:
    """Each shipped query inline (one core) on generated events: events/s, result rows/s."""
    print(f"\n## every shipped query, inline (1 core), {events / 1e6:g} M generated events")
    data: dict[str, Any] = {}
    rates: dict[str, float] = {}
    from wattspan.engines.stream.cli_worker import DATASET_OF

    for name, ds in DATASET_OF.items():
        if ds not in data:
            g = datasets.generator(ds, seed=1)
            data[ds] = (g, g.take(events))
        g, b = data[ds]
        q = Q.ysb(g.ads["ad_id"], g.ads["campaign_id"]) if name == "ysb" else Q.QUERIES[name]()
        out = [0]

        def consume(q: Query = q, b: dict[str, np.ndarray] = b, out: list[int] = out) -> None:
            out[0] = sum(len(x) for x in Engine(0).run(q, [b]))

        t = best(consume, repeat)
        rates[name] = events / t
        print(
            f"  {name:5s} {events / t / 1e6:8.2f} M events/s  {out[0] / t / 1e6:8.1f} M result "
            f"rows/s  ({out[0]} rows)"
        )
    # Issue #12 sets a per-core target for YSB only; applied to each query for the record.
    fast = [k for k, v in rates.items() if v >= 30e6]
    print(
        f"  at >= 30 M events/s per core (YSB's target, applied to each): {len(fast)} of "
        f"{len(rates)}: {met(len(fast) == len(rates))}"
    )


def sg1_sweep(events: int, repeat: int) -> dict[str, np.ndarray]:
    """SG1-style windows sliding by 1 s for w = 1 ... 3600: panes make the cost per event
    independent of w. Best of ``repeat`` interleaved rounds, each w once per round, so that
    a slow spell of a shared host hits every w alike rather than one. Returns the events."""
    print("\n## SG1-style RANGE w SLIDE 1 (avg(value), max(value), no group-by; interleaved runs)")
    sg = datasets.generator("sg", seed=1).take(events)
    ws = (1, 10, 60, 300, 1800, 3600)
    # A w-second window closes nothing in the stream's first w s, so over a whole stream a
    # large w emits fewer windows and looks faster. The steady state is what SABER's figure
    # measures: the first max(ws) s of event time go in untimed as one batch for every w, and
    # the rest is timed, where every w emits one window per second.
    cut = int(np.searchsorted(sg["timestamp"], max(ws)))
    warm = {k: v[:cut] for k, v in sg.items()}
    steady = {k: v[cut:] for k, v in sg.items()}
    m = len(sg["timestamp"]) - cut
    # max has no inverse to subtract: its windows slide by van Herk blocks (extrema.py).
    aggs = {"avg(value)": Agg.avg("value"), "max(value)": Agg.max("value")}
    runs = [(a, w) for a in aggs for w in ws]
    sqs = {
        (a, w): Query(SG_SCHEMA).window(size=w, slide=1, range_="timestamp").agg(v=aggs[a])
        for a, w in runs
    }
    wall = dict.fromkeys(runs, float("inf"))
    cpu = dict.fromkeys(runs, float("inf"))
    whole = dict.fromkeys(runs, float("inf"))

    def timed(q: Query) -> tuple[float, float, float]:
        mark: dict[str, float] = {}

        def source() -> Any:
            yield warm
            mark["t"], mark["c"] = time.perf_counter(), time.process_time()
            yield steady

        t0 = time.perf_counter()
        collect(Engine(0).run(q, source()), q)
        whole_s = time.perf_counter() - t0
        return time.perf_counter() - mark["t"], time.process_time() - mark["c"], whole_s

    for _ in range(repeat):
        for key in runs:
            tw, tc, tt = timed(sqs[key])
            wall[key], cpu[key] = min(wall[key], tw), min(cpu[key], tc)
            whole[key] = min(whole[key], tt)
    n_all = len(sg["timestamp"])
    print(
        f"  steady state: {m / 1e6:.1f} M events after the first {max(ws)} s "
        f"({int(sg['timestamp'][-1]) + 1 - max(ws)} s of event time)"
    )
    for a in aggs:
        print(f"  {a}")
        for w in ws:
            rw, rc = m / wall[a, w] / 1e6, m / cpu[a, w] / 1e6
            print(
                f"    w={w:5d}  {rw:8.1f} M events/s ({rc:.1f} per CPU s; whole stream "
                f"{n_all / whole[a, w] / 1e6:.1f})"
            )
        for label, tm in (("wall", wall), ("CPU", cpu)):
            rate = [m / tm[a, w] for w in ws]
            spread = (max(rate) - min(rate)) / max(rate)
            print(
                f"    spread (max-min)/max, steady state, {label}: {spread:.0%} "
                f"(target < 20 %): {met(spread < 0.2)}"
            )
        rate = [n_all / whole[a, w] for w in ws]
        print(
            f"    spread over the whole stream, for the record: "
            f"{(max(rate) - min(rate)) / max(rate):.0%} (w=3600 emits "
            f"{max(ws) / (int(sg['timestamp'][-1]) + 1):.0%} fewer windows there)"
        )
    return sg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="20M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--spark", action="store_true", help="add Spark Structured Streaming")
    ap.add_argument(
        "--spark-files-rows",
        type=int,
        default=2_000_000,
        help="rows per Parquet file, i.e. per Spark micro-batch (2M; at least that is fair)",
    )
    ap.add_argument(
        "--query-events", default="2M", help="events per query for the per-query section"
    )
    ap.add_argument(
        "--sg-events",
        default="40M",
        help="events of the SG1 window sweep (40M: 20,000 s of event time, so that w = 3600 "
        "is steady state, not mostly the stream's first window)",
    )
    ap.add_argument(
        "--sg-repeat",
        type=int,
        default=7,
        help="interleaved rounds of the SG1 sweep, best of (7: a round takes ~3 s, and on a "
        "shared VM three left the spread to the host's drift)",
    )
    ap.add_argument(
        "--agent-events",
        default="1M",
        help="events per query for the events-per-joule section, run through `wattspan "
        "stream run` (0: skip)",
    )
    args = ap.parse_args()
    n = parse_count(args.events)
    args.agent_events = parse_count(args.agent_events)
    args.query_events = parse_count(args.query_events)
    args.sg_events = parse_count(args.sg_events)
    print(f"# machine: {machine()}")
    from wattspan.engines.stream.malloc import keep_freed_memory

    # As `wattspan stream run`'s worker process does (engines/stream/malloc.py says why).
    kept = keep_freed_memory()
    print(f"# glibc malloc: freed memory {'kept (mallopt)' if kept else 'returned (default)'}")
    gen = datasets.generator("ysb", seed=1)
    b = gen.take(n)
    ads = gen.ads
    q = Q.ysb(ads["ad_id"], ads["campaign_id"])
    rank = np.unique(ads["campaign_id"], return_inverse=True)[1]
    r = args.repeat

    print(
        f"\n## YSB, {n / 1e6:.0f} M events in memory ({b['event_time'][-1] / 1e3:.0f} s of "
        "event time)"
    )
    t_bare = best(lambda: bare_ysb(b, rank), r)
    rates = {"bare numpy (1 core)": n / t_bare}
    t_inline = best(lambda: collect(Engine(0).run(q, [b]), q), r)
    rates["engine inline (1 core)"] = n / t_inline
    thr: dict[int, float] = {}
    for w in (1, 2):
        thr[w] = n / best(lambda w=w: collect(Engine(w).run(q, [b]), q), r)
        rates[f"engine {w} worker thread(s)"] = thr[w]
    try:
        from bench._stream_baselines import pandas_ysb

        chunks = [{k: v[i : i + 1 << 20] for k, v in b.items()} for i in range(0, n, 1 << 20)]
        rates["pandas, 1 Mi-row batches"] = n / best(lambda: pandas_ysb(chunks, ads), 1)
    except ImportError as e:
        print(f"  (pandas baseline unavailable: {e})")
    for k, v in rates.items():
        print(f"  {k:32s} {v / 1e6:8.1f} M events/s")
    per_core = rates["engine inline (1 core)"]
    print(f"  per core: {per_core / 1e6:.1f} M events/s (target >= 30): {met(per_core >= 30e6)}")
    ratio = t_bare / t_inline
    print(f"  engine / bare numpy: {ratio:.2f}x (target >= 0.5): {met(ratio >= 0.5)}")
    if "pandas, 1 Mi-row batches" in rates:
        print(f"  engine / pandas: {per_core / rates['pandas, 1 Mi-row batches']:.1f}x")

    print("\n## workers")
    scale = thr[2] / thr[1]
    print(
        f"  threads: 1 -> {thr[1] / 1e6:.1f}, 2 -> {thr[2] / 1e6:.1f} M events/s: "
        f"{scale:.2f}x (target >= 1.7): {met(scale >= 1.7)}"
    )
    # The task kernel alone, no scheduler, queue or result stage: pre-cut 1 MiB tasks run by
    # the calling thread, by one thread and split over two. Its 2-thread figure is the
    # ceiling threads can reach at this task size, whatever the engine does around them.
    plan = q.compile()
    cut = list(Dispatcher(plan, 1 << 20).tasks([b]))
    half = len(cut) // 2

    def kernel(tasks: list[Task]) -> None:
        for t in tasks:
            run_task(t)

    def threaded(parts: list[list[Task]]) -> None:
        ts = [threading.Thread(target=kernel, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    k0 = n / best(lambda: kernel(cut), r)
    k1 = n / best(lambda: threaded([cut]), r)
    k2 = n / best(lambda: threaded([cut[:half], cut[half:]]), r)
    print(
        f"  the task kernel alone (1 MiB tasks, no engine around it): calling thread "
        f"{k0 / 1e6:.1f}, 1 thread {k1 / 1e6:.1f}, 2 threads {k2 / 1e6:.1f} M events/s: "
        f"{k2 / k1:.2f}x (a task makes ~50 short numpy calls, each a GIL hand-over)"
    )
    big = 16 << 20
    t1 = n / best(lambda: collect(Engine(1, task_size=big).run(q, [b]), q), r)
    t2 = n / best(lambda: collect(Engine(2, task_size=big).run(q, [b]), q), r)
    print(
        f"  for the record, 16 MiB tasks: threads 1 -> {t1 / 1e6:.1f}, 2 -> {t2 / 1e6:.1f} "
        f"M events/s: {t2 / t1:.2f}x"
    )
    p1 = n / best(lambda: process_run(q, b, 1, 1 << 20), r)
    p2 = n / best(lambda: process_run(q, b, 2, 1 << 20), r)
    print(
        f"  processes + shared memory: 1 -> {p1 / 1e6:.1f}, 2 -> {p2 / 1e6:.1f} M events/s: "
        f"{p2 / p1:.2f}x; 2 threads / 2 processes: {thr[2] / p2:.2f}x"
    )
    # The control: two independent inline engines in two processes, on twice the work. On
    # a shared machine this says how much of a second core there was to get at all.
    c1 = best(lambda: forked(q, b, 1), r)
    c2 = best(lambda: forked(q, b, 2), r)
    print(
        f"  control, 2 independent processes on 2x the work: {2 * c1 / c2:.2f}x "
        "(what the machine offered; ~2x on an idle 2-core machine)"
    )

    sg = sg1_sweep(args.sg_events, args.sg_repeat)

    per_query_section(args.query_events, r)

    print("\n## YSB task-size sweep (engine, 2 worker threads)")
    sweep: dict[int, float] = {}
    for ts in (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20):
        rate = n / best(lambda ts=ts: collect(Engine(2, task_size=ts).run(q, [b]), q), r)
        sweep[ts] = rate
        print(f"  {ts >> 10:6d} KiB  {rate / 1e6:8.1f} M events/s")
    # No figure in the issue: the check is that the default (1 MiB) is a sound choice.
    near = sweep[1 << 20] / max(sweep.values())
    print(f"  default 1 MiB / best size: {near:.2f} (target >= 0.8): {met(near >= 0.8)}")

    sg1 = Q.sg1()
    # With worker threads the observer's Python on the calling thread also takes the GIL from
    # them, and the figure swings with the machine; inline it is the observer's own cost.
    for workers in (0, 2):
        instrumentation_cost({"YSB": (q, b), "SG1 (a window per second)": (sg1, sg)}, r, workers)
    if args.spark:
        spark_section(b, ads, thr[2], args.spark_files_rows)
    if args.agent_events:
        agent_section(args.agent_events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
