"""The stream engine against the plain pandas reference (tests/stream_reference.py): every
shipped query, and random queries over window kind, size, slide, task size, group keys,
aggregates and selectivity, with tasks finishing in random order."""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stream_reference import assert_same, engine_frame, reference
from wattspan.engines.stream import (
    Agg,
    CpuPool,
    Engine,
    GpuWorker,
    Processor,
    Query,
    Schema,
    col,
    collect,
)
from wattspan.engines.stream import queries as Q
from wattspan.engines.stream.assembly import ResultStage
from wattspan.engines.stream.dispatcher import Dispatcher
from wattspan.engines.stream.fragments import run_task
from wattspan.engines.stream.operators import StaticTable
from wattspan.engines.stream.schema import CM_SCHEMA, LRB_SCHEMA, SG_SCHEMA, YSB_SCHEMA

Batch = dict[str, np.ndarray]


def run_frame(engine: Engine, query: Query, batches: list[Batch]) -> pd.DataFrame:
    return engine_frame(collect(engine.run(query, batches), query))


def split(b: Batch, n: int, rng: np.random.Generator) -> list[Batch]:
    """``b`` cut into ``n`` batches at random places (some possibly empty)."""
    rows = len(next(iter(b.values())))
    cuts = np.sort(rng.integers(0, rows + 1, max(n - 1, 0)))
    bounds = [0, *cuts.tolist(), rows]
    return [{k: v[a:z] for k, v in b.items()} for a, z in itertools.pairwise(bounds)]


def times(rng: np.random.Generator, n: int, span: int, gaps: bool = True) -> np.ndarray:
    t = np.sort(rng.integers(0, span, n)).astype(np.int64)
    if gaps and n > 10:  # a quiet stretch, so some windows hold nothing
        t[n // 2 :] += span // 3
    return t


def random_rows(
    schema: Schema, n: int, rng: np.random.Generator, span: int, small: dict[str, int] | None = None
) -> Batch:
    """Random columns of ``schema``; ``small`` caps integer columns' ranges (key skew)."""
    small = small or {}
    out: Batch = {}
    for c, d in schema.items():
        if c == schema.time:
            out[c] = times(rng, n, span)
        elif d.kind == "f":
            out[c] = (rng.random(n) * 100).astype(d)
        else:
            hi = small.get(c, 50)
            out[c] = rng.integers(0, hi, n).astype(d)
    return out


# --- every shipped query -------------------------------------------------------------


def ysb_input(rng: np.random.Generator, n: int) -> tuple[Batch, np.ndarray, np.ndarray]:
    ads = np.arange(1000, dtype=np.int32)
    campaigns = rng.choice(1_000_000, 100, replace=False).astype(np.int64)
    camp_of_ad = np.repeat(campaigns, 10)[rng.permutation(1000)]
    b = random_rows(YSB_SCHEMA, n, rng, 60_000, {"event_type": 3, "ad_type": 5, "ad_id": 1100})
    return b, ads, camp_of_ad  # ad ids >= 1000 miss the table: the inner join drops them


SHIPPED: list[tuple[str, Schema, dict[str, int], int, int]] = [
    # name, schema, key ranges, rows, time span
    ("cm1", CM_SCHEMA, {"category": 4, "eventType": 6}, 400, 200),
    ("cm2", CM_SCHEMA, {"jobId": 6, "eventType": 6}, 400, 200),
    ("sg1", SG_SCHEMA, {}, 120, 400),
    ("sg2", SG_SCHEMA, {"plug": 3, "household": 2, "house": 2}, 300, 300),
    ("sg3", SG_SCHEMA, {"plug": 3, "household": 5, "house": 2}, 150, 400),
    ("lrb1", LRB_SCHEMA, {"highway": 2, "direction": 2, "position": 20000, "speed": 0}, 400, 600),
    ("lrb2", LRB_SCHEMA, {"vehicle": 5, "highway": 2, "direction": 2, "position": 12000}, 400, 200),
]


@pytest.mark.parametrize("workers,task_size", [(0, 64 * 36), (2, 1000)])
@pytest.mark.parametrize("name,schema,small,n,span", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_query_equals_reference(
    name: str,
    schema: Schema,
    small: dict[str, int],
    n: int,
    span: int,
    workers: int,
    task_size: int,
) -> None:
    rng = np.random.default_rng(hash(name) % 1000)
    b = random_rows(schema, n, rng, span, small)
    if name == "lrb1":
        b["speed"] = (rng.random(n) * 80).astype(np.float32)  # some averages under 40
    q = Q.QUERIES[name]()
    want = reference(q, [b])
    assert len(want) > 0
    got = run_frame(Engine(workers, task_size=task_size), q, split(b, 4, rng))
    assert_same(got, want, rtol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_ysb_equals_reference(workers: int) -> None:
    rng = np.random.default_rng(7)
    b, ads, camps = ysb_input(rng, 6000)
    q = Q.ysb(ads, camps)
    want = reference(q, [b])
    assert want["campaign_id"].isin(camps).all() and len(want) > 100
    got = run_frame(Engine(workers, task_size=16 * 1024), q, split(b, 5, rng))
    assert_same(got, want)


def test_ysb_on_generated_events() -> None:
    """The data helper's YSB generator (real skew and rates) through the shipped query."""
    from wattspan.engines.stream import datasets

    gen = datasets.generator("ysb", seed=3)
    batches = list(gen.batches(200_000, chunk_rows=70_000))
    q = Q.ysb(gen.ads["ad_id"], gen.ads["campaign_id"])
    want = reference(q, batches)
    got = run_frame(Engine(2), q, batches)
    assert_same(got, want)
    assert got["count"].sum() == sum(int((b["event_type"] == 0).sum()) for b in batches)


def test_a_fused_task_kernel_stands_in_for_operators_and_partials() -> None:
    """Processor(fused=...) runs the given task kernel instead of the operators and the
    partials kernel, on every task, and the engine uses what it returns."""
    from wattspan.engines.stream import datasets
    from wattspan.engines.stream.fragments import task_partials
    from wattspan.engines.stream.kernels import scalar_partials

    gen = datasets.generator("ysb", seed=3)
    batches = list(gen.batches(60_000, chunk_rows=25_000))
    q = Q.ysb(gen.ads["ad_id"], gen.ads["campaign_id"])
    calls: list[int] = []

    def scalar(task: Any) -> Any:  # another implementation of the same partials
        calls.append(task.id)
        return task_partials(task, np, scalar_partials)

    def doubled(task: Any) -> Any:
        part = task_partials(task)
        part.count = part.count * 2
        return part

    size = 64 << 10
    want = reference(q, batches)
    got = run_frame(
        Engine(processors=[Processor("cpu", 2, fused=scalar)], task_size=size), q, batches
    )
    assert_same(got, want)
    n_tasks = -(-60_000 // (size // YSB_SCHEMA.row_bytes))
    assert sorted(calls) == list(range(n_tasks)) and n_tasks > 4
    twice = run_frame(
        Engine(processors=[Processor("cpu", 2, fused=doubled)], task_size=size), q, batches
    )
    assert list(twice["count"]) == [2 * c for c in want["count"]]


class BrokenContext(Processor):
    """A processor whose worker cannot even start (a CUDA stream that fails, say)."""

    def _worker_context(self, index: int) -> Any:
        raise RuntimeError("no device context")


@pytest.mark.timeout(60)
def test_a_worker_that_dies_outside_a_task_is_an_error_not_a_hang() -> None:
    from wattspan.engines.stream import StreamError, datasets

    gen = datasets.generator("ysb", seed=3)
    b = gen.take(50_000)
    q = Q.ysb(gen.ads["ad_id"], gen.ads["campaign_id"])
    eng = Engine(processors=[BrokenContext("gpu", 1)], task_size=64 << 10)
    with pytest.raises(StreamError, match="stream worker gpu-0 stopped: RuntimeError: no device"):
        collect(eng.run(q, [b]), q)


def test_finished_results_wake_the_caller_once_enough_are_in() -> None:
    import threading

    from wattspan.engines.stream.engine import _Finished

    fin = _Finished()
    got: list[list[Any]] = []
    waiter = threading.Thread(target=lambda: got.append(fin.take(3)))
    waiter.start()
    fin.put("r0")  # type: ignore[arg-type]
    fin.put("r1")  # type: ignore[arg-type]
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # two of the three it asked for
    fin.put("r2")  # type: ignore[arg-type]
    waiter.join(5)
    assert got == [["r0", "r1", "r2"]]
    assert fin.take(0) == []  # nothing left, and no wait
    # A worker with nothing queued wakes the caller at once, whatever it asked for.
    waiter = threading.Thread(target=lambda: got.append(fin.take(4)))
    waiter.start()
    fin.put("r3")  # type: ignore[arg-type]
    waiter.join(0.2)
    assert waiter.is_alive()
    fin.put("r4", wake=True)  # type: ignore[arg-type]
    waiter.join(5)
    assert got[-1] == ["r3", "r4"]


# --- random queries ------------------------------------------------------------------

RSCHEMA = Schema(
    {"t": np.int64, "a": np.int32, "b": np.int8, "x": np.float64, "y": np.int64}, time="t"
)


@st.composite
def random_case(draw: Any) -> dict[str, Any]:
    rows = draw(st.booleans())
    size = draw(st.integers(1, 40))
    slide = draw(st.one_of(st.integers(1, size), st.integers(1, 60)))
    keys = draw(st.sampled_from([(), ("a",), ("b",), ("a", "b"), ("b", "a")]))
    # A join on a: its column c as a key (travels as table ranks), or written over after the
    # join by a derive (travels as its own values), or no join.
    join = draw(st.sampled_from(["none", "none", "key", "overwritten"]))
    if join != "none":
        keys = draw(st.sampled_from([("c",), ("c", "b"), ("b", "c")]))
    fns = draw(
        st.lists(
            st.sampled_from(
                ["count", "sum_x", "sum_y", "avg_x", "min_x", "max_y", "min_y", "max_x"]
            ),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    n = draw(st.integers(0, 300))
    span = draw(st.integers(1, 500))
    # Row bytes of RSCHEMA: 8+4+1+8+8 = 29; tasks from 1 row to far above the stream.
    task_rows = draw(st.sampled_from([1, 2, 7, 33, 100, 1000, 100000]))
    threshold = draw(st.sampled_from([0.0, 0.5, 0.95, 1.1]))  # 1.1: nothing survives
    having = draw(st.booleans())
    seed = draw(st.integers(0, 2**31))
    return dict(
        rows=rows,
        size=size,
        slide=slide,
        keys=keys,
        fns=fns,
        n=n,
        span=span,
        task_rows=task_rows,
        threshold=threshold,
        having=having,
        seed=seed,
        join=join,
    )


def build(case: dict[str, Any]) -> tuple[Query, Batch]:
    rng = np.random.default_rng(case["seed"])
    n = case["n"]
    b = {
        "t": times(rng, n, case["span"]),
        "a": rng.integers(-3, 4, n).astype(np.int32),
        "b": rng.integers(0, 3, n).astype(np.int8),
        "x": rng.random(n),
        "y": rng.integers(-1000, 1000, n).astype(np.int64),
    }
    aggs: dict[str, Agg] = {}
    for f in case["fns"]:
        if f == "count":
            aggs["n"] = Agg.count()
        else:
            fn, c = f.split("_")
            aggs[f] = Agg(fn, c)
    q = Query(RSCHEMA).where(col("x") < case["threshold"]).derive(z=col("y") * 2)
    if case.get("join", "none") != "none":
        # a in -3..3; the table lacks 3 (an inner join drops those rows), its ids scattered.
        ids = np.arange(-3, 3, dtype=np.int32)
        table = StaticTable("a", {"a": ids, "c": (ids.astype(np.int64) * 7919) % 1000})
        q = q.join(table, on="a", columns=["c"])
        if case["join"] == "overwritten":
            q = q.derive(c=col("b") * 10)
    if case["rows"]:
        q = q.window(size=case["size"], slide=case["slide"], rows=True)
    else:
        q = q.window(size=case["size"], slide=case["slide"], range_="t")
    q = q.group_by(*case["keys"]).agg(**aggs)
    if case["having"]:
        first = next(iter(aggs))
        q = q.having(col(first) > 0)
    return q, b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case())
def test_random_queries_equal_reference(case: dict[str, Any]) -> None:
    q, b = build(case)
    want = reference(q, [b])
    got = run_frame(
        Engine(0, task_size=case["task_rows"] * 29),
        q,
        split(b, 3, np.random.default_rng(case["seed"])),
    )
    assert_same(got, want)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case(), st.randoms(use_true_random=False))
def test_tasks_finishing_in_any_order(case: dict[str, Any], rnd: random.Random) -> None:
    """The result stage gets the tasks' results in a random order: same windows, in order."""
    q, b = build(case)
    plan = q.compile()
    results = [run_task(t) for t in Dispatcher(plan, case["task_rows"] * 29).tasks([b])]
    stage = ResultStage(plan, max(len(results), 1))
    rnd.shuffle(results)
    parts = []
    for r in results:
        stage.put(r)
        parts.extend(batch.columns for _, batch in stage.drain() if batch is not None)
    assert stage.next_task == len(results)
    last = stage.finish()
    if last is not None:
        parts.append(last.columns)
    got = engine_frame(
        {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if parts
        else plan.empty_result()
    )
    assert_same(got, reference(q, [b]))


class Jittery(Processor):
    """A processor whose tasks take a random extra moment: completions come out of order."""

    def __init__(self, workers: int) -> None:
        super().__init__("jitter", workers)
        self.rng = random.Random(5)

    def run(self, task: Any, worker: str) -> Any:
        time.sleep(self.rng.random() * 0.004)
        return super().run(task, worker)


def test_threaded_engine_with_out_of_order_completion() -> None:
    case = dict(
        rows=False,
        size=25,
        slide=5,
        keys=("a", "b"),
        fns=["count", "avg_x", "min_y"],
        n=3000,
        span=2000,
        task_rows=50,
        threshold=0.9,
        having=False,
        seed=11,
    )
    q, b = build(case)
    eng = Engine(processors=[Jittery(4)], task_size=50 * 29, max_in_flight=16)
    order: list[int] = []
    ends: list[int] = []

    class Obs:
        def task_done(self, ev: Any) -> None:
            order.append(ev.task_id)

        def windows_emitted(self, ev: Any) -> None:
            ends.extend(ev.window_ends.tolist())

    eng.observer = Obs()
    got = run_frame(eng, q, [b])
    assert_same(got, reference(q, [b]))
    assert order == list(range(len(order))) and len(order) == 3000 // 50
    assert ends == sorted(ends) and len(ends) == len(set(ends))
    assert eng.stats.rows == 3000


def test_gpu_worker_as_numpy_processor_kind() -> None:
    """The GPU worker's scheduling path, with numpy standing in for CuPy, next to CPUs."""
    rng = np.random.default_rng(2)
    b, ads, camps = ysb_input(rng, 20000)
    q = Q.ysb(ads, camps)
    eng = Engine(processors=[CpuPool(1), GpuWorker(depth=3, xp=np)], task_size=8 * 1024)
    got = run_frame(eng, q, [b])
    assert_same(got, reference(q, [b]))
    assert eng.stats.tasks["gpu"] > 0 and eng.stats.tasks["cpu"] > 0


def test_gpu_worker_off_without_cupy(caplog: pytest.LogCaptureFixture) -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:  # a CuPy machine: the worker must be on instead
        assert GpuWorker().enabled
        return
    with caplog.at_level("INFO", logger="wattspan.engines.stream.gpu"):
        g = GpuWorker()
    assert not g.enabled
    lines = [r for r in caplog.records if "GPU worker off" in r.getMessage()]
    assert len(lines) == 1
    eng = Engine(1, gpu=True)  # the GPU drops out, the CPU pool runs
    assert [p.kind for p in eng.processors] == ["cpu"]


def test_observer_sees_every_task_and_window() -> None:
    rng = np.random.default_rng(4)
    b, ads, camps = ysb_input(rng, 5000)
    q = Q.ysb(ads, camps)
    tasks: list[Any] = []
    emits: list[Any] = []

    class Obs:
        def task_done(self, ev: Any) -> None:
            tasks.append(ev)

        def windows_emitted(self, ev: Any) -> None:
            emits.append(ev)

    res = run_frame(Engine(2, task_size=8000, observer=Obs()), q, [b])
    assert sum(t.rows for t in tasks) == 5000
    assert sum(t.nbytes for t in tasks) == 5000 * YSB_SCHEMA.row_bytes
    assert all(t.kind == "cpu" and t.t_end >= t.t_start for t in tasks)
    assert sum(e.rows for e in emits) == len(res)
    assert sum(e.windows for e in emits) == res["window_end"].nunique()
    frag = [t.fragments for t in tasks]
    assert sum(f.complete for f in frag) + sum(f.closing for f in frag) >= 1


KEEP_FREED = """
import numpy as np
from wattspan.engines.stream import Engine, collect, datasets
from wattspan.engines.stream import queries as Q
from wattspan.engines.stream.malloc import keep_freed_memory

gen = datasets.generator("ysb", seed=3)
b = gen.take(200_000)
q = Q.ysb(gen.ads["ad_id"], gen.ads["campaign_id"])
before = collect(Engine(2, task_size=64 << 10).run(q, [b]), q)
print(keep_freed_memory())
after = collect(Engine(2, task_size=64 << 10).run(q, [b]), q)
assert before.keys() == after.keys()
for k in before:
    np.testing.assert_array_equal(before[k], after[k])
print("same")
"""


def test_keep_freed_memory_is_taken_by_glibc_and_results_do_not_change() -> None:
    # In a process of its own: the setting is process-wide and would outlive the test.
    import platform
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-c", KEEP_FREED], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    glibc = platform.libc_ver()[0] == "glibc"
    assert p.stdout.split() == [str(glibc), "same"]


@pytest.mark.parametrize("workers", [0, 2])
def test_ysb_join_drops_negative_and_unknown_ad_ids(workers: int) -> None:
    # The join's one-gather path (key -> campaign rank) must drop what the table lacks: ids
    # past its end (clipped onto the sentinel) and negative ones (clipped onto slot 0).
    rng = np.random.default_rng(11)
    b, ads, camps = ysb_input(rng, 5000)
    b["ad_id"] = (b["ad_id"] - 60).astype(b["ad_id"].dtype)  # -60 .. 1039: some miss each side
    q = Q.ysb(ads, camps)
    want = reference(q, [b])
    assert len(want) > 50
    got = run_frame(Engine(workers, task_size=8 * 1024), q, split(b, 3, rng))
    assert_same(got, want)
    assert int(got["count"].sum()) < int((b["event_type"] == 0).sum())  # some were dropped


@pytest.mark.parametrize("step", ["derive", "select"])
def test_a_joined_key_written_over_later_groups_by_the_new_values(step: str) -> None:
    """A joined column used only as a group key travels as the table's ranks; a later step
    that writes the column (without reading it) makes the key another column's values,
    which must then travel as themselves (they used to be decoded as table ranks)."""
    schema = Schema({"t": np.int64, "ad": np.int32, "u": np.int32}, time="t")
    rng = np.random.default_rng(1)
    n = 2000
    b = {
        "t": np.sort(rng.integers(0, 1000, n)).astype(np.int64),
        "ad": rng.integers(0, 10, n).astype(np.int32),
        "u": rng.integers(0, 50, n).astype(np.int32),
    }
    table = StaticTable(
        "ad", {"ad": np.arange(10, dtype=np.int32), "c": np.arange(10, dtype=np.int64) * 1000}
    )
    q = Query(schema).join(table, on="ad", columns=["c"])
    q = q.derive(c=col("u")) if step == "derive" else q.select("t", c=col("u"))
    q = q.window(size=100, slide=50, range_="t").group_by("c").agg(n=Agg.count())
    assert q.compile().key_ranges == [None]
    want = reference(q, [b])
    for workers in (0, 2):
        assert_same(engine_frame(collect(Engine(workers, task_size=4800).run(q, [b]), q)), want)
