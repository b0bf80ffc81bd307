"""The Python API takes what people write and refuses, in one StreamError line, what it
would otherwise have taken wrongly: strings where lists belong, a second window or
aggregate list, masked rows, a size string, an observer missing a method."""

from __future__ import annotations

import operator
import warnings
from typing import Any

import numpy as np
import pytest

from wattspan.engines.stream import (
    Agg,
    EmitEvent,
    Engine,
    Query,
    Schema,
    StaticTable,
    StreamError,
    TaskEvent,
    col,
    collect,
)

S = Schema({"t": np.int64, "k": np.int32, "v": np.float64}, time="t")
N = 200


def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "t": np.arange(N, dtype=np.int64),
        "k": rng.integers(0, 5, N).astype(np.int32),
        "v": rng.uniform(0.5, 4.0, N),
    }


def run(q: Query, b: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    return collect(Engine(0, task_size=256).run(q, [batch() if b is None else b]), q)


COLS = {"v": np.array([0.5, 1.0, 2.0, 4.0]), "k": np.array([1, 2, 3, 6])}


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        (1 / col("v"), 1 / COLS["v"]),
        (10 - col("v"), 10 - COLS["v"]),
        (7 // col("k"), 7 // COLS["k"]),
        (7 % col("k"), 7 % COLS["k"]),
        (2 ** col("k"), 2 ** COLS["k"]),
        (col("k") ** 2, COLS["k"] ** 2),
        (-col("v"), -COLS["v"]),
        (+col("v"), COLS["v"]),
        (abs(col("v") - 2), abs(COLS["v"] - 2)),
        (col("k") ^ 1, COLS["k"] ^ 1),
        (True & (col("k") > 1), COLS["k"] > 1),
        (False | (col("k") > 2), COLS["k"] > 2),
        (1 ^ (col("k") > 2), 1 ^ (COLS["k"] > 2)),
    ],
)
def test_reflected_and_unary_operators_build_expressions(expr: Any, want: np.ndarray) -> None:
    """``1 / col("x")`` and ``-col("x")`` were a raw TypeError before."""
    assert np.array_equal(expr.eval(COLS), want)
    assert expr.columns() <= {"v", "k"}


def test_reflected_operators_keep_operand_order_in_a_query() -> None:
    q = (
        Query(S)
        .derive(r=100 / -col("v"))
        .window(size=50, range_="t")
        .group_by("k")
        .agg(lo=Agg.min("r"))
    )
    got = run(q)
    b = batch()
    for start, k, lo in zip(got["window_start"], got["k"], got["lo"], strict=True):
        sel = (b["t"] >= start) & (b["t"] < start + 50) & (b["k"] == k)
        assert lo == pytest.approx((100 / -b["v"][sel]).min())
    assert repr(100 / -col("v")) == "(100 / -v)" and repr(abs(col("v"))) == "abs(v)"


@pytest.mark.parametrize("values", ["12", b"12", 5, None, np.array(3)])
def test_isin_wants_a_list(values: Any) -> None:
    """``isin("12")`` meant ('1', '2') before."""
    with pytest.raises(StreamError, match="isin: expected a list"):
        col("k").isin(values)


def test_isin_takes_lists_tuples_sets_and_arrays() -> None:
    for values in ([1, 3], (1, 3), {1, 3}, np.array([1, 3])):
        got = col("k").isin(values).eval(COLS)
        assert got.tolist() == [True, False, True, False]


def test_join_columns_may_be_one_name() -> None:
    """``columns="c"`` was split into the columns 'c' (and, for "cx", 'c' and 'x')."""
    table = StaticTable("k", {"k": np.arange(5), "cx": np.arange(5) * 10, "d": np.arange(5)})
    one = Query(S).join(table, on="k", columns="cx")
    listed = Query(S).join(table, on="k", columns=["cx"])
    assert one.steps == listed.steps
    q = one.window(size=50, range_="t").group_by("cx").agg(n=Agg.count())
    got = run(q)
    assert set(got) == {"window_start", "window_end", "cx", "n"}
    assert sorted(set(got["cx"].tolist())) <= [0, 10, 20, 30, 40]
    assert int(got["n"].sum()) == N


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (
            lambda q: q.window(size=10, range_="t").window(size=20, range_="t"),
            "window is already set",
        ),
        (lambda q: q.group_by("k").group_by("v"), "group_by is already set"),
        (lambda q: q.agg(n=Agg.count()).agg(s=Agg.sum("v")), "agg is already set"),
    ],
)
def test_a_second_window_group_by_or_agg_is_refused(build: Any, says: str) -> None:
    """Each silently replaced the first before: ``group_by("a").group_by("b")`` grouped
    by b alone."""
    with pytest.raises(StreamError, match=says) as e:
        build(Query(S, name="q1"))
    assert "'q1'" in str(e.value) and "\n" not in str(e.value)


def test_a_second_having_is_anded_with_the_first() -> None:
    base = Query(S).window(size=20, range_="t").group_by("k").agg(s=Agg.sum("v"), n=Agg.count())
    chained = run(base.having(col("s") > 8).having(col("n") < 6))
    both = run(base.having((col("s") > 8) & (col("n") < 6)))
    only_first = run(base.having(col("s") > 8))
    assert chained["s"].tolist() == both["s"].tolist() and len(both["s"]) > 0
    assert len(only_first["s"]) > len(both["s"])  # the second clause filtered something


def test_masked_rows_are_refused_and_an_unmasked_masked_array_runs() -> None:
    b = batch()
    b["v"] = np.ma.masked_array(b["v"], mask=b["v"] > 3.5)
    masked = int(np.ma.count_masked(b["v"]))
    assert masked > 0
    q = Query(S).window(size=50, range_="t").agg(s=Agg.sum("v"))
    with pytest.raises(StreamError, match=f"column 'v' has {masked} masked rows"):
        run(q, b)
    plain = batch()
    b["v"] = np.ma.masked_array(plain["v"], mask=False)
    assert run(q, b)["s"].tolist() == pytest.approx(run(q, plain)["s"].tolist())


@pytest.mark.parametrize(("size", "rows"), [("1M", 1 << 20), ("64KiB", 1 << 16), (4096, 4096)])
def test_task_size_takes_what_the_cli_takes(size: Any, rows: int) -> None:
    assert Engine(0, task_size=size).task_size == rows
    assert Engine(0, task_size=np.int64(4096)).task_size == 4096


@pytest.mark.parametrize("size", ["1x", "", 0, -5, 1.5, True])
def test_a_bad_task_size_is_one_line(size: Any) -> None:
    with pytest.raises(StreamError, match=r"^task_size: ") as e:
        Engine(0, task_size=size)
    assert "\n" not in str(e.value)


class OnlyTasks:
    def __init__(self) -> None:
        self.tasks = 0

    def task_done(self, event: TaskEvent) -> None:
        self.tasks += 1


class Both(OnlyTasks):
    def __init__(self) -> None:
        super().__init__()
        self.windows = 0

    def windows_emitted(self, event: EmitEvent) -> None:
        self.windows += event.windows


def test_an_observer_missing_a_method_is_refused_up_front() -> None:
    """It failed with an AttributeError at the first emitted window, mid-run."""
    with pytest.raises(StreamError, match="OnlyTasks has no windows_emitted"):
        Engine(0, observer=OnlyTasks())  # type: ignore[arg-type]
    eng = Engine(0, task_size=256)
    with pytest.raises(StreamError, match="has no task_done"):
        eng.observer = object()  # type: ignore[assignment]
    obs = Both()
    eng.observer = obs
    q = Query(S).window(size=50, range_="t").agg(n=Agg.count())
    got = collect(eng.run(q, [batch()]), q)
    assert obs.tasks > 1 and obs.windows == len(got["n"]) == N // 50
    assert operator.attrgetter("observer")(eng) is obs


S8 = Schema({"t": np.int64, "k": np.int8, "f": np.float64}, time="t")
B8 = {"t": np.arange(10, dtype=np.int64), "k": np.arange(10, dtype=np.int8), "f": np.arange(10.0)}
TABLE = StaticTable("key", {"key": np.arange(10), "c": np.arange(10) * 3})


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (
            lambda q: q.derive(x=col("k") + 1000).window(size=5, range_="t").agg(s=Agg.sum("x")),
            "derive x=(k + 1000): Python integer 1000 out of bounds for int8 (cast the column",
        ),
        (
            lambda q: q.join(TABLE, on="f").window(size=5, range_="t").agg(n=Agg.count()),
            "join on 'f' (table key 'key', int64): Cannot cast",
        ),
    ],
)
def test_a_step_its_columns_types_cannot_compute_is_named_at_compile(build: Any, says: str) -> None:
    """numpy's own error, raised from the dry run, named neither the step nor a way out."""
    with pytest.raises(StreamError) as e:
        build(Query(S8)).compile()
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_cast_widens_a_column_and_makes_a_float_key_joinable() -> None:
    q = (
        Query(S8)
        .derive(x=col("k").cast("int64") + 1000, fk=col("f").cast(np.int64))
        .join(TABLE, on="fk", columns="c")
        .window(size=5, range_="t")
        .agg(s=Agg.sum("x"), c=Agg.sum("c"))
    )
    got = collect(Engine(0).run(q, [B8]), q)
    assert got["s"].tolist() == [5 * 1000 + 10, 5 * 1000 + 35]
    assert got["c"].tolist() == [3 * 10, 3 * 35]
    assert (col("k").cast("float32") / 2).eval({"k": B8["k"]}).dtype == np.float32
    assert col("k").cast("int16").eval({"k": B8["k"]}).dtype == np.int16
    assert repr(col("k").cast("int64")) == "k.cast('int64')"
    for bad in ("wat", None, "U3", "datetime64[s]", object):
        with pytest.raises(StreamError, match="is not a numeric numpy dtype"):
            col("k").cast(bad)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        (np.uint64, [2**63, 5, 2**62, 7, 1, 2**63 - 1]),  # past int64, within uint64
        (np.complex128, [1 + 2j, 3 - 1j, 0.5j, 2, -1j, 4 + 4j]),
        (np.complex64, [1 + 2j, 3 - 1j, 0.5j, 2, -1j, 4 + 4j]),
        (np.int64, [2**62, 2**61, -(2**62), 3, -5, 2**61]),
    ],
)
@pytest.mark.parametrize(("size", "slide"), [(2, 2), (3, 1), (1, 1)])
@pytest.mark.parametrize("workers", [0, 2])
def test_sums_keep_the_columns_kind(
    dtype: Any, values: list[Any], size: int, slide: int, workers: int
) -> None:
    """uint64 sums went through int64 and came out negative past 2**63; complex sums lost
    their imaginary part (with a ComplexWarning)."""
    schema = Schema({"t": np.int64, "v": dtype}, time="t")
    v = np.array(values, dtype=dtype)
    b = {"t": np.arange(len(v), dtype=np.int64), "v": v}
    q = Query(schema).window(size=size, slide=slide, range_="t").agg(s=Agg.sum("v"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning is a failure here
        got = collect(Engine(workers, task_size=16).run(q, [b]), q)
    for start, s in zip(got["window_start"].tolist(), got["s"].tolist(), strict=True):
        want = sum(values[max(start, 0) : start + size])
        assert s == pytest.approx(want) if np.dtype(dtype).kind == "c" else s == want


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_sliding_sums_do_not_keep_a_huge_panes_rounding(dtype: Any) -> None:
    """Panes of 1e17 then of -1e17 + 3 leave rounding in a running sum that takes them out
    again; float sums were rebuilt when that drift shows, complex ones were not (every
    later window off by |10 + 10j|)."""
    n = 6000
    one = 1 + 1j if np.dtype(dtype).kind == "c" else 1.0
    v = np.full(n, one, dtype)
    v[:100] = 1e17
    v[100:200] = -1e17 + 3
    schema = Schema({"t": np.int64, "v": dtype}, time="t")
    q = Query(schema).window(size=10, slide=1, range_="t").agg(s=Agg.sum("v"), a=Agg.avg("v"))
    got = collect(
        Engine(0, task_size=4096).run(q, [{"t": np.arange(n, dtype=np.int64), "v": v}]), q
    )
    late = (got["window_start"] >= 300) & (got["window_start"] <= n - 10)  # whole windows
    assert late.sum() > 5000
    assert np.all(got["s"][late] == 10 * one) and np.all(got["a"][late] == one)
    assert got["a"].dtype == (np.complex128 if np.dtype(dtype).kind == "c" else np.float64)


@pytest.mark.parametrize("fn", ["min", "max"])
def test_min_or_max_of_a_complex_column_is_refused_at_compile(fn: str) -> None:
    schema = Schema({"t": np.int64, "v": np.complex128}, time="t")
    q = Query(schema).window(size=10, range_="t").agg(m=(fn, "v"))
    with pytest.raises(StreamError, match=f"{fn} of complex column 'v'"):
        q.compile()
    ok = Query(schema).derive(r=abs(col("v"))).window(size=10, range_="t").agg(m=(fn, "r"))
    b = {"t": np.arange(4, dtype=np.int64), "v": np.array([3 + 4j, 1, -2j, 0])}
    assert collect(Engine(0).run(ok, [b]), ok)["m"].tolist() == [5.0 if fn == "max" else 0.0]
