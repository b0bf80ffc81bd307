"""The result stage's incremental window state (engines/stream/incremental.py): against the
pandas reference and a brute force over rows, across many tasks and groups, groups that
vanish and come back, empty panes and long gaps, key ranges that keep growing, keys too
spread for an int64 code (the stage falls back to recomputing), and float sums whose large
values leave the window (cancellation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stream_reference import assert_same, engine_frame, reference
from wattspan.engines.stream import Agg, Engine, Query, Schema, col, collect, incremental
from wattspan.engines.stream.assembly import RecomputeBuffer, ResultStage
from wattspan.engines.stream.dispatcher import Dispatcher
from wattspan.engines.stream.fragments import run_task
from wattspan.engines.stream.incremental import IncrementalWindows, KeyCoder
from wattspan.engines.stream.kernels import Needs, pane_partials

S = Schema({"t": np.int64, "a": np.int32, "b": np.int8, "x": np.float64, "y": np.int64}, time="t")
ROW_BYTES = 8 + 4 + 1 + 8 + 8


def query(size: int, slide: int, keys: tuple[str, ...] = ("a", "b")) -> Query:
    return (
        Query(S)
        .window(size=size, slide=slide, range_="t")
        .group_by(*keys)
        .agg(n=Agg.count(), sx=Agg.sum("x"), ax=Agg.avg("x"), sy=Agg.sum("y"))
    )


def run(q: Query, b: dict[str, np.ndarray], task_rows: int, workers: int = 0) -> Any:
    eng = Engine(workers, task_size=task_rows * ROW_BYTES)
    return engine_frame(collect(eng.run(q, [b]), q))


def rows_of(
    t: np.ndarray, a: np.ndarray, rng: np.random.Generator, b_hi: int = 2, y_hi: int = 50
) -> dict[str, np.ndarray]:
    n = len(t)
    return {
        "t": t.astype(np.int64),
        "a": a.astype(np.int32),
        "b": rng.integers(0, b_hi, n).astype(np.int8),
        "x": rng.random(n),
        "y": rng.integers(-y_hi, y_hi, n).astype(np.int64),
    }


def bursts(rng: np.random.Generator, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Times of ``n`` bursts of 20-80 rows over 30 units each, and each row's burst; some
    bursts adjoin, some are far apart."""
    parts = []
    t0 = 0
    for _ in range(n):
        m = int(rng.integers(20, 80))
        parts.append(np.sort(rng.integers(t0, t0 + 30, m)))
        t0 += 30 + int(rng.choice([0, 5, 200, 1000]))
    burst_of = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return np.concatenate(parts), burst_of


def growing_keys(rng: np.random.Generator, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Two rows a time unit; ids that grow past every range seen, negative in the second
    half."""
    t = np.arange(n) // 2
    a = np.arange(n) * 37 + rng.integers(0, 5, n)
    a[n // 2 :] = -a[n // 2 :]
    return t, a


@pytest.mark.parametrize("workers", [0, 2])
def test_many_tasks_many_groups(workers: int) -> None:
    """~500 tasks of 7 rows, ~1,600 groups, sliding windows spanning many tasks."""
    rng = np.random.default_rng(1)
    n = 3500
    t = np.sort(rng.integers(0, 1500, n))
    b = rows_of(t, rng.integers(0, 800, n), rng)
    q = query(40, 3)
    want = reference(q, [b])
    assert want[["a", "b"]].drop_duplicates().shape[0] > 1000
    assert_same(run(q, b, 7, workers), want)


def test_groups_vanish_and_return_across_gaps() -> None:
    """Each group is active in bursts; long stretches of time hold no rows at all, so the
    state empties, windows with no rows produce nothing, and groups come back later."""
    rng = np.random.default_rng(2)
    t, burst_of = bursts(rng)
    a = (burst_of % 3) * 10 + rng.integers(0, 4, len(t))  # group sets alternate by burst
    b = rows_of(t, a, rng)
    for size, slide in [(10, 1), (25, 5), (3, 7), (60, 60)]:
        q = query(size, slide)
        want = reference(q, [b])
        for task_rows in (1, 13, 200, 10_000):
            assert_same(run(q, b, task_rows), want)


def test_growing_and_negative_keys_recode_the_state() -> None:
    """Ids keep growing past every range seen so far (and later go negative): the codes
    widen, and the buffered panes and the running state are re-coded each time."""
    rng = np.random.default_rng(3)
    t, a = growing_keys(rng)
    b = rows_of(t, a, rng)
    q = query(30, 1)
    plan = q.compile()
    stage = ResultStage(plan, 1 << 12)
    coders: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    got = []
    for task in Dispatcher(plan, 16 * ROW_BYTES).tasks([b]):
        stage.put(run_task(task))
        got.extend(batch.columns for _, batch in stage.drain() if batch is not None)
        assert isinstance(stage.buffer, IncrementalWindows)
        coders.add((tuple(stage.buffer.coder.lo), tuple(stage.buffer.coder.span)))
    last = stage.finish()
    if last is not None:
        got.append(last.columns)
    assert len(coders) >= 5  # re-coded several times, not once per task
    frame = engine_frame({k: np.concatenate([g[k] for g in got]) for k in got[0]})
    assert_same(frame, reference(q, [b]))


@pytest.mark.parametrize("y_hi", [50, 10**9])
def test_tumbling_windows_over_many_tasks_sum_each_windows_panes(y_hi: int) -> None:
    """Tumbling windows that span many tasks are summed from their panes per group, on a
    dense (window x group) table where the groups are few and by sorting where keys are
    spread (y up to 1e9: more cells than entries); gaps leave windows empty."""
    rng = np.random.default_rng(11)
    t, a = bursts(rng, 20)
    b = rows_of(t, a % 7, rng, y_hi=y_hi)
    for keys in (("a", "b"), ("y",), ()):
        q = query(40, 40, keys)
        want = reference(q, [b])
        for task_rows in (1, 9, 64, 10_000):
            assert_same(run(q, b, task_rows), want)
        assert_same(run(q, b, 9, workers=2), want)


@pytest.mark.parametrize("kind", ["spread", "uint64"])
def test_keys_whose_code_would_overflow_int64_group_exactly(kind: str) -> None:
    """Keys whose ranges each fit an int64 code but not together (k1 spans 2**61 beside
    k0's 9 values), and uint64 keys past int64's range: every group exact, every window in
    order, tumbling and sliding, inline and threaded (merged groups and IndexErrors before)."""
    rng = np.random.default_rng(0)
    n = 180
    if kind == "spread":
        k1 = rng.choice(np.array([0, 2**61 - 1], np.int64), n)
    else:
        k1 = rng.choice(np.array([2**63, 2**64 - 1, 5], np.uint64), n)
    b = {
        "t": np.sort(rng.integers(0, 40, n)).astype(np.int64),
        "k0": rng.integers(0, 9, n).astype(np.int64),
        "k1": k1,
    }
    schema = Schema({c: v.dtype for c, v in b.items()}, time="t")
    for size, slide in ((40, 40), (10, 5), (10, 1)):
        q = (
            Query(schema)
            .window(size=size, slide=slide, range_="t")
            .group_by("k0", "k1")
            .agg(n=Agg.count())
        )
        want = reference(q, [b])
        for workers, task_rows in ((0, 7), (0, 1000), (2, 7)):
            got = collect(Engine(workers, task_size=task_rows * 24).run(q, [b]), q)
            assert_same(engine_frame(got), want)


def test_keys_too_spread_for_a_code_fall_back_to_recomputing() -> None:
    """Half way through, int64 keys spread over the whole range arrive: no int64 code holds
    (a, y-key) any more, and the stage carries on with the recomputing buffer."""
    rng = np.random.default_rng(4)
    n = 600
    t = np.sort(rng.integers(0, 300, n))
    b = rows_of(t, rng.integers(0, 5, n), rng)
    b["y"][n // 2 :] = rng.choice([-(2**62), 0, 2**62], n - n // 2)
    q = query(20, 4, keys=("a", "y"))
    plan = q.compile()
    stage = ResultStage(plan, 1 << 12)
    kinds = []
    got = []
    for task in Dispatcher(plan, 9 * ROW_BYTES).tasks([b]):
        stage.put(run_task(task))
        got.extend(batch.columns for _, batch in stage.drain() if batch is not None)
        kinds.append(type(stage.buffer))
    last = stage.finish()
    if last is not None:
        got.append(last.columns)
    assert kinds[0] is IncrementalWindows and kinds[-1] is RecomputeBuffer
    frame = engine_frame({k: np.concatenate([g[k] for g in got]) for k in got[0]})
    assert_same(frame, reference(q, [b]))


@pytest.mark.parametrize("task_rows", [3, 40, 5000])
def test_large_values_leaving_do_not_leave_rounding_behind(task_rows: int) -> None:
    """Sums of 1e12-sized values, then long stretches of values below 1: once the large ones
    left a window its sum is exact to 1e-9 (a running sum that only subtracted them would
    be off by ~1e-4)."""
    rng = np.random.default_rng(5)
    t = np.arange(1200) // 3
    b = rows_of(t, rng.integers(0, 3, len(t)), rng)
    big = (t // 100) % 2 == 0  # alternating stretches of large and small values
    b["x"] = np.where(big, rng.random(len(t)) * 1e12, rng.random(len(t)))
    q = query(10, 1, keys=("a",))
    assert_same(run(q, b, task_rows), reference(q, [b]))


# --- the incremental kernel alone, against a brute force over rows ---------------------


def brute(t: np.ndarray, g: np.ndarray, v: np.ndarray, w: int, s: int, k_hi: int) -> dict:
    out = {}
    for k in range(k_hi + 1):
        m = (t >= k * s) & (t < k * s + w)
        for key in np.unique(g[m]).tolist():
            sel = m & (g == key)
            out[(k, key)] = (int(sel.sum()), int(v[sel].sum()))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 150),
    st.integers(1, 120),
    st.integers(1, 30),
    st.integers(0, 2**31),
)
def test_incremental_windows_match_brute_force(
    w: int, s: int, n: int, span: int, piece: int, seed: int
) -> None:
    """Partials fed piece by piece (a pane may be split between pieces), windows asked for
    as they become final, panes pruned as the stage prunes them."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span, n)).astype(np.int64)
    g = rng.integers(-2, 3, n).astype(np.int16) * (1 + (t > span // 2)).astype(np.int16)
    v = rng.integers(-9, 10, n).astype(np.int64)
    needs = Needs(("v",))
    iw = IncrementalWindows(w, s, [np.dtype(np.int16)], {"v": np.dtype(np.int64)})
    got: dict = {}
    next_k = 0
    for a in range(0, n, piece):
        tt = t[a : a + piece]
        iw.add(pane_partials(tt, [g[a : a + piece]], {"v": v[a : a + piece]}, 1, needs))
        done = max(0, (int(tt[-1]) - w) // s + 1)  # windows ending by the last time
        for p in iw.windows(next_k, done - 1):
            for k, key, c, sv in zip(p.index, p.keys[0], p.count, p.sums["v"], strict=True):
                assert (int(k), int(key)) not in got
                got[(int(k), int(key))] = (int(c), int(sv))
        next_k = max(next_k, done)
        iw.prune(next_k)
    if n:
        for p in iw.windows(next_k, int(t[-1]) // s):
            for k, key, c, sv in zip(p.index, p.keys[0], p.count, p.sums["v"], strict=True):
                got[(int(k), int(key))] = (int(c), int(sv))
    want = brute(t, g, v, w, s, int(t[-1]) // s if n else -1)
    assert got == want


def test_key_coder_orders_like_the_keys() -> None:
    rng = np.random.default_rng(6)
    keys = [rng.integers(-100, 100, 500).astype(np.int32), rng.integers(0, 2, 500).astype(bool)]
    coder = KeyCoder([np.dtype(np.int32), np.dtype(bool)])
    ok, ext = coder.covers(keys)
    assert not ok
    coder = coder.widened(ext)
    assert coder is not None and coder.covers(keys)[0]
    code = coder.encode(keys, 500)
    back = coder.decode(code)
    assert all((x == y).all() and x.dtype == y.dtype for x, y in zip(back, keys, strict=True))
    order = np.lexsort((keys[1], keys[0]))
    assert (np.diff(code[order]) >= 0).all()


def test_a_known_key_range_is_never_scanned_and_survives_widening() -> None:
    """A key whose range the plan knows (a join's ranks) starts in the coder and is not
    scanned per task (``covers`` never calls its min or max); the other key still widens the
    codes as it grows, and the known one keeps its order through every re-coding."""

    class Unscanned(np.ndarray):
        def min(self, *a: Any, **k: Any) -> Any:
            raise AssertionError("a known range was scanned")

        max = min

    rng = np.random.default_rng(8)
    coder = KeyCoder([np.dtype(np.int32), np.dtype(np.int64)], [(0, 9), None])
    assert (coder.lo[0], coder.span[0]) == (0, 10) and coder.span[1] == 0
    seen: list[list[np.ndarray]] = []
    for top in (5, 50, 5_000, 500_000):
        keys = [
            rng.integers(0, 10, 300).astype(np.int32).view(Unscanned),
            rng.integers(-top, top, 300),
        ]
        ok, ext = coder.covers(keys)
        assert ext[0] == (0, 9)
        if not ok:
            new = coder.widened(ext)
            assert new is not None and new.known == coder.known
            assert (new.lo[0], new.span[0]) == (0, 10)  # a known range is never widened
            coder = new
        assert coder.covers(keys)[0]
        seen.append(keys)
    keys = [np.concatenate([np.asarray(k[j]) for k in seen]) for j in range(2)]
    code = coder.encode(keys, len(keys[0]))
    assert all((x == y).all() for x, y in zip(coder.decode(code), keys, strict=True))
    order = np.lexsort((keys[1], keys[0]))
    assert (np.diff(code[order]) >= 0).all()
    # Every key known: nothing to scan, nothing to widen.
    both = KeyCoder([np.dtype(np.int32)] * 2, [(0, 9), (3, 4)])
    threes = np.full(300, 3, np.int32).view(Unscanned)
    assert both.covers([seen[0][0], threes]) == (True, [(0, 9), (3, 4)])
    # A known key's span stays as it is however far the other key grows, so int64 codes
    # hold up to about 2**62 / 10 of it, not 2**62 / (10 * 2**widenings).
    wide = KeyCoder([np.dtype(np.int32), np.dtype(np.int64)], [(0, 9), None])
    for top in (2**k for k in range(4, 59, 6)):
        got = wide.widened([(0, 9), (0, top)])
        assert got is not None, top
        wide = got
    assert wide.span[0] == 10


def test_min_over_windows_whose_rows_were_all_filtered_out() -> None:
    """A task whose complete windows lost every row to the selection yields no rows for
    them (the window kernel used to fail on the empty range)."""
    t = np.array([0, 0, 1, 1, 1, 2, 2, 5, 6, 6, 6, 7, 7, 7], np.int64)
    x = np.array([0.1, 0.2, 0.9, 0.9, 0.9, 0.9, 0.3, 0.4, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9])
    b = {
        "t": t,
        "a": np.zeros(len(t), np.int32),
        "b": np.zeros(len(t), np.int8),
        "x": x,
        "y": np.zeros(len(t), np.int64),
    }
    q = Query(S).where(col("x") < 0.5).window(size=2, slide=1, range_="t").agg(m=Agg.min("x"))
    want = reference(q, [b])
    assert len(want) > 0
    for task_rows in (1, 2, 3, 100):
        assert_same(run(q, b, task_rows), want)


def test_steps_capped_by_matrix_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny cap on a step's (window x group) matrix, steps cover fewer windows each:
    the same result, no window skipped or repeated."""
    from wattspan.engines.stream import incremental

    rng = np.random.default_rng(8)
    n = 2500
    t = np.sort(rng.integers(0, 400, n))
    b = rows_of(t, rng.integers(0, 300, n), rng)
    q = query(30, 2)
    want = reference(q, [b])
    monkeypatch.setattr(incremental, "_CELLS", 64)
    for task_rows in (50, 5000):
        assert_same(run(q, b, task_rows), want)


# --- min and max, incremental over panes (engines/stream/extrema.py) ---------------------

MS = Schema(
    {
        "t": np.int64,
        "a": np.int32,
        "b": np.int8,
        "x": np.float64,
        "y": np.int64,
        "f": np.float32,
        "h": np.int16,
    },
    time="t",
)
MS_BYTES = 8 + 4 + 1 + 8 + 8 + 4 + 2


def ms_rows(t: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows = rows_of(t, a, rng, b_hi=3, y_hi=1000)  # the same draws, in the same order
    n = len(t)
    rows["f"] = (rng.random(n) * 10 - 5).astype(np.float32)
    rows["h"] = rng.integers(-300, 300, n).astype(np.int16)
    return rows


def stage_frame(q: Query, batches: list[dict[str, np.ndarray]], task_rows: int, rnd: Any) -> Any:
    """The tasks' results handed to the result stage in ``rnd``'s order (None: in order);
    the stage must keep the incremental buffer throughout."""
    plan = q.compile()
    results = [run_task(t) for t in Dispatcher(plan, task_rows * MS_BYTES).tasks(batches)]
    stage = ResultStage(plan, max(len(results), 1))
    if rnd is not None:
        rnd.shuffle(results)
    parts = []
    for r in results:
        stage.put(r)
        parts.extend(b.columns for _, b in stage.drain() if b is not None)
        assert isinstance(stage.buffer, IncrementalWindows)
    last = stage.finish()
    if last is not None:
        parts.append(last.columns)
    cols = (
        {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if parts
        else plan.empty_result()
    )
    return engine_frame(cols)


def test_min_max_plans_use_the_incremental_buffer() -> None:
    """Min/max over integer keys (none, one, two columns) are incremental, in the stage
    and in a task's complete windows; float keys still recompute."""
    base = Query(MS).window(size=30, slide=1, range_="t")
    for keys in ((), ("a",), ("a", "b")):
        plan = base.group_by(*keys).agg(mx=Agg.max("x"), n=Agg.count()).compile()
        assert incremental.supports(plan)
        assert isinstance(ResultStage(plan, 4).buffer, IncrementalWindows)
    plan = base.group_by("x").agg(mx=Agg.max("y")).compile()
    assert not incremental.supports(plan)
    assert isinstance(ResultStage(plan, 4).buffer, RecomputeBuffer)


@st.composite
def minmax_case(draw: Any) -> dict[str, Any]:
    size = draw(st.integers(1, 150))
    slide = draw(st.one_of(st.sampled_from([1, 2, 3, size]), st.integers(1, 200)))
    keys = draw(st.sampled_from([(), ("a",), ("b",), ("a", "b"), ("b", "a")]))
    aggs = {
        "mx": Agg.max(draw(st.sampled_from("xyfh"))),
        "mn": Agg.min(draw(st.sampled_from("xyfh"))),
    }
    extra = draw(st.lists(st.sampled_from(["count", "avg", "sum"]), max_size=3, unique=True))
    if "count" in extra:
        aggs["n"] = Agg.count()
    if "avg" in extra:
        aggs["ax"] = Agg.avg("x")
    if "sum" in extra:
        aggs["sy"] = Agg.sum("y")
    return dict(
        size=size,
        slide=slide,
        keys=keys,
        aggs=aggs,
        n=draw(st.integers(0, 300)),
        span=draw(st.integers(1, 800)),
        # Tasks from one row (a window spans hundreds of tasks) to the whole stream.
        task_rows=draw(st.sampled_from([1, 2, 7, 33, 100, 1000, 100000])),
        threshold=draw(st.sampled_from([0.3, 0.9, 1.1])),  # low: many empty windows
        seed=draw(st.integers(0, 2**31)),
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(minmax_case(), st.booleans(), st.randoms(use_true_random=False))
def test_min_max_equal_reference_in_any_task_order(
    case: dict[str, Any], shuffle: bool, rnd: Any
) -> None:
    """Sliding, hopping and tumbling min/max (float and int columns, their dtypes kept) with
    or without count/sum/avg beside them, group keys of one or two columns, a quiet stretch
    and a selection that leave windows empty, tasks in order or in a random one."""
    rng = np.random.default_rng(case["seed"])
    n, span = case["n"], case["span"]
    t = np.sort(rng.integers(0, span, n))
    if n > 10:
        t[n // 2 :] += span // 2
    b = ms_rows(t, rng.integers(-3, 4, n), rng)
    q = (
        Query(MS)
        .where(col("x") < case["threshold"])
        .window(size=case["size"], slide=case["slide"], range_="t")
        .group_by(*case["keys"])
        .agg(**case["aggs"])
    )
    got = stage_frame(q, [b], case["task_rows"], rnd if shuffle else None)
    assert_same(got, reference(q, [b]))


def test_min_max_groups_vanish_and_return_across_gaps() -> None:
    """Bursts of alternating group sets with long empty stretches between some: windows
    with no rows yield nothing, groups leave the state and come back."""
    rng = np.random.default_rng(12)
    t, burst_of = bursts(rng)
    b = ms_rows(t, (burst_of % 3) * 10 + rng.integers(0, 4, len(t)), rng)
    for size, slide in [(10, 1), (64, 1), (25, 5), (3, 7), (60, 60)]:
        q = (
            Query(MS)
            .window(size=size, slide=slide, range_="t")
            .group_by("a", "b")
            .agg(mx=Agg.max("h"), mn=Agg.min("f"), n=Agg.count(), ax=Agg.avg("x"))
        )
        want = reference(q, [b])
        for task_rows in (1, 13, 200, 10_000):
            assert_same(stage_frame(q, [b], task_rows, None), want)


def test_min_max_keys_growing_recode_the_carried_state() -> None:
    """Ids grow past every range seen (then go negative): the prefix and suffix rows the
    extrema carry are re-coded with the ring."""
    rng = np.random.default_rng(13)
    t, a = growing_keys(rng)
    b = ms_rows(t, a, rng)
    q = Query(MS).window(size=40, slide=1, range_="t").group_by("a").agg(mx=Agg.max("y"))
    assert_same(stage_frame(q, [b], 16, None), reference(q, [b]))


def test_min_max_step_touches_each_pane_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 100-window-long stream in tasks that each finish a few windows of 50 panes: the
    dense (pane x group) cells the extrema build over the whole stream stay within a few
    times panes x groups (recomputing every window from its panes would build ~50x that),
    and the state carried between tasks stays about one window of panes."""
    from wattspan.engines.stream import extrema

    w, groups = 50, 3
    rng = np.random.default_rng(14)
    n = 15_000
    t = np.sort(rng.integers(0, 100 * w, n))
    b = ms_rows(t, rng.integers(0, groups, n), rng)
    q = (
        Query(MS)
        .window(size=w, slide=1, range_="t")
        .group_by("a")
        .agg(mx=Agg.max("y"), mn=Agg.min("x"), n=Agg.count())
    )
    built = [0]
    real = extrema.SlidingExtrema._dense

    def counting(self: Any, ring: Any, cols: Any, lo: int, hi: int, *rest: Any) -> Any:
        out = real(self, ring, cols, lo, hi, *rest)
        built[0] += sum(m.size for m in out.values())
        return out

    monkeypatch.setattr(extrema.SlidingExtrema, "_dense", counting)
    plan = q.compile()
    stage = ResultStage(plan, 1 << 12)
    parts, state, ring = [], [], []
    tasks = 0
    for task in Dispatcher(plan, 10 * MS_BYTES).tasks([b]):
        stage.put(run_task(task))
        parts.extend(x.columns for _, x in stage.drain() if x is not None)
        buf = stage.buffer
        assert isinstance(buf, IncrementalWindows) and buf.ext is not None
        state.append(buf.ext.cells())
        ring.append(len(buf))
        tasks += 1
    last = stage.finish()
    if last is not None:
        parts.append(last.columns)
    got = engine_frame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    assert_same(got, reference(q, [b]))
    assert tasks >= 1000  # most windows are finished by the stage, a few per task
    panes = int(t[-1]) + 1
    specs = 2  # max(y), min(x)
    assert built[0] <= 4 * panes * groups * specs, (built[0], panes * groups * specs)
    # A block of suffix rows (w x groups, and an identity column) plus a prefix row.
    assert max(state) <= specs * ((w + 1) * (groups + 1)), max(state)
    assert max(ring) <= 2 * (w + 10) * groups  # a window of panes and a task's


@pytest.mark.parametrize("with_min", [False, True])
@pytest.mark.parametrize("keys", [(), ("b",)])
def test_an_inf_or_nan_stays_in_the_windows_that_hold_it(
    keys: tuple[str, ...], with_min: bool
) -> None:
    """Running sums subtract what leaves a window, and prefix sums subtract what came
    before: an inf or NaN once added made inf - inf = NaN of every later window (256 of
    them, until the state was rebuilt). Each window must sum as numpy sums its rows."""
    rng = np.random.default_rng(4)
    n = 600
    t = np.sort(rng.integers(0, 300, n)).astype(np.int64)
    b = rows_of(t, rng.integers(0, 3, n), rng)
    b["x"][[40, 41, 300, 420, 421]] = [np.inf, np.inf, np.nan, -np.inf, np.inf]
    aggs: dict[str, Any] = {"n": Agg.count(), "sx": Agg.sum("x")}
    if with_min:
        aggs["lo"] = Agg.min("y")
    q = Query(S).window(size=10, slide=1, range_="t").group_by(*keys).agg(**aggs)
    for workers, task_rows in ((0, 7), (0, 10_000), (2, 13)):
        got = collect(Engine(workers, task_size=task_rows * ROW_BYTES).run(q, [b]), q)
        for i in range(len(got["window_start"])):
            a, e = got["window_start"][i], got["window_end"][i]
            rows = (b["t"] >= a) & (b["t"] < e)
            for k in keys:
                rows &= b[k] == got[k][i]
            want = np.sum(b["x"][rows])
            same = np.isclose(got["sx"][i], want, rtol=1e-9, atol=1e-9, equal_nan=True)
            assert same, (a, want, got["sx"][i])
