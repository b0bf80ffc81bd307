"""Bad input and bad queries: one clear StreamError line naming what and where."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from wattspan.engines.stream import Agg, Engine, Query, Schema, StreamError, col, collect
from wattspan.engines.stream.workers import Processor

S = Schema({"t": np.int64, "k": np.int32, "v": np.float32}, time="t")
Q = Query(S).window(size=10, slide=5, range_="t").group_by("k").agg(s=Agg.sum("v"))


def batch(t: list[int], k: list[int] | None = None) -> dict[str, np.ndarray]:
    n = len(t)
    return {
        "t": np.asarray(t, np.int64),
        "k": np.asarray(k if k is not None else [1] * n, np.int32),
        "v": np.ones(n, np.float32),
    }


def fails(batches: list[dict[str, np.ndarray]], workers: int = 0) -> str:
    with pytest.raises(StreamError) as e:
        collect(Engine(workers, task_size=64).run(Q, batches), Q)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("workers", [0, 2])
def test_unordered_timestamps_name_the_offset(workers: int) -> None:
    msg = fails([batch([0, 1, 2]), batch([3, 4, 9, 7, 8])], workers)
    assert "batch 1, row 3" in msg and "stream row 6" in msg and "7" in msg


def test_a_batch_going_back_in_time() -> None:
    msg = fails([batch([0, 5, 10]), batch([9, 11])])
    assert "batch 1, row 0" in msg and "9" in msg and "10" in msg


def test_negative_timestamp() -> None:
    assert "negative timestamp -4" in fails([batch([-4, 1])])


def test_missing_column() -> None:
    b = batch([0, 1])
    del b["v"]
    msg = fails([batch([0]), b])
    assert "batch 1: missing column 'v'" in msg


def test_wrong_dtype() -> None:
    b = batch([0, 1])
    b["k"] = b["k"].astype(np.int64)
    msg = fails([b])
    assert "column 'k' has dtype int64, schema says int32" in msg


def test_unequal_lengths() -> None:
    b = batch([0, 1, 2])
    b["v"] = b["v"][:2]
    assert "'v' has 2 rows" in fails([b])


@pytest.mark.parametrize(
    "build,needle",
    [
        (
            lambda: Query(S).where(col("nope") > 1).window(size=1, range_="t").agg(n="count"),
            "unknown column 'nope'",
        ),
        (lambda: Query(S).window(size=1, range_="v").agg(n="count"), "must be int64"),
        (
            lambda: Query(S).window(size=0, range_="t").agg(n="count"),
            "size must be a positive integer",
        ),
        (lambda: Query(S).window(size=3, range_="t"), "no aggregate"),
        (lambda: Query(S).agg(n="count"), "no window"),
        (
            lambda: Query(S).window(size=3, range_="t").group_by("zz").agg(n="count"),
            "group_by: unknown column 'zz'",
        ),
        (lambda: Query(S).window(size=3, range_="t").agg(n=Agg.sum("zz")), "unknown column 'zz'"),
        (lambda: Query(S).window(size=3, range_="t").agg(n="median"), "unknown aggregate"),
        (
            lambda: Query(S).select("k").window(size=3, range_="t").agg(n="count"),
            "dropped by a select",
        ),
        (
            lambda: Query(S).window(size=3, range_="t").agg(n="count").having(col("q") > 1),
            "having: unknown column 'q'",
        ),
    ],
)
def test_bad_queries(build: object, needle: str) -> None:
    with pytest.raises(StreamError) as e:
        build().compile()  # type: ignore[operator]
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_unordered_rows_inside_a_task_name_the_offset(workers: int) -> None:
    # Tasks of 4 rows: the drop (6 -> 5) is inside the second task, a view of the batch,
    # which checks its own rows on its worker.
    with pytest.raises(StreamError) as e:
        collect(
            Engine(workers, task_size=4 * S.row_bytes).run(Q, [batch([0, 1, 2, 3, 4, 6, 5, 7])]), Q
        )
    msg = str(e.value)
    assert msg.startswith("batch 0, row 6 (stream row 6): timestamp 5 is before")
    assert "previous row's 6" in msg


class SlowFirst(Processor):
    """Task 1 finishes last, so task 3's error reaches the engine first."""

    def run(self, task: Any, worker: str) -> Any:
        if task.id == 1:
            time.sleep(0.2)
        return super().run(task, worker)


def test_errors_are_raised_in_task_order() -> None:
    # Tasks of 4 rows; task 1 (rows 4-7) and task 3 (rows 12-15) both go back in time.
    t = [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 12, 14, 13, 15]
    eng = Engine(processors=[SlowFirst("cpu", 2)], task_size=4 * S.row_bytes)
    with pytest.raises(StreamError) as e:
        collect(eng.run(Q, [batch(t)]), Q)
    assert "batch 0, row 6 " in str(e.value), str(e.value)


def test_an_earlier_tasks_error_comes_before_the_dispatchers_later_one() -> None:
    # Task 1 (rows 4-7) goes back at row 6, found on its worker; the dispatcher finds the
    # tail piece (rows 8-9) going back at row 9 right after task 1 is handed out. Row 6
    # must be the one reported, and a later batch's missing column likewise waits its turn.
    eng = Engine(processors=[SlowFirst("cpu", 2)], task_size=4 * S.row_bytes)
    with pytest.raises(StreamError) as e:
        collect(eng.run(Q, [batch([0, 1, 2, 3, 4, 6, 5, 7, 8, 7])]), Q)
    assert "batch 0, row 6 " in str(e.value), str(e.value)
    broken = batch([9, 10])
    del broken["v"]
    eng = Engine(processors=[SlowFirst("cpu", 2)], task_size=4 * S.row_bytes)
    with pytest.raises(StreamError) as e:
        collect(eng.run(Q, [batch([0, 1, 2, 3, 4, 6, 5, 7]), broken]), Q)
    assert "batch 0, row 6 " in str(e.value), str(e.value)


def test_a_failing_source_waits_for_the_tasks_before_it() -> None:
    def source():  # type: ignore[no-untyped-def]
        yield batch([0, 1, 2, 3, 4, 6, 5, 7])
        raise OSError("disk went away")

    eng = Engine(processors=[SlowFirst("cpu", 2)], task_size=4 * S.row_bytes)
    with pytest.raises(StreamError) as e:
        collect(eng.run(Q, source()), Q)
    assert "batch 0, row 6 " in str(e.value)

    def good_then_gone():  # type: ignore[no-untyped-def]
        yield batch(list(range(30)))
        raise OSError("disk went away")

    got: list[int] = []
    with pytest.raises(OSError, match="disk went away"):
        for w in Engine(2, task_size=4 * S.row_bytes).run(Q, good_then_gone()):
            got.extend(int(x) for x in w.columns["window_start"])
    assert got  # the windows before the failure were emitted first


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda q: q.derive(t=col("t") // 3).window(size=4, range_="t"), "time column 't'"),
        (lambda q: q.select("k", t=col("k")).window(size=4, range_="t"), "time column 't'"),
        (lambda q: q.derive(__row__=col("k")).window(size=4, rows=True), "row index"),
        (lambda q: q.window(size=4, range_="t").group_by("k", "k"), "named twice"),
    ],
)
def test_queries_that_would_compute_nonsense_are_refused(build: Any, says: str) -> None:
    """A computed time column would put rows in windows the dispatcher never cut tasks for
    (wrong counts, or a crash deep in a kernel, before); a key named twice doubles a
    result column."""
    with pytest.raises(StreamError, match=says):
        build(Query(S)).agg(n=Agg.count()).compile()


@pytest.mark.parametrize("name", ["window_start", "window_end"])
def test_result_column_names_are_not_aggregate_or_key_names(name: str) -> None:
    q = Query(S).window(size=4, range_="t").group_by("k")
    with pytest.raises(StreamError, match="result column"):
        q.agg(**{name: Agg.count()}).compile()


def test_a_select_under_a_row_window_keeps_the_row_index() -> None:
    """The row index is the window's, not a column the user selects: a select used to drop
    it and fail with "time column '__row__' was dropped"."""
    q = Query(S).select("k", "v").window(size=4, rows=True).group_by("k").agg(n=Agg.count())
    b = batch(list(range(20)), [i % 2 for i in range(20)])
    got = collect(Engine(0, task_size=64).run(q, [b]), q)
    assert got["n"].tolist() == [2] * 10
    assert got["window_end"].tolist() == [e for e in range(4, 21, 4) for _ in range(2)]


def test_uint64_keys_past_int64_do_not_join_with_key_0() -> None:
    """The dense lookup's index cast wrapped 2**63 negative and clipped it onto slot 0."""
    from wattspan.engines.stream.operators import StaticTable

    table = StaticTable("k", {"k": np.arange(10), "c": np.arange(10) * 100})
    keys = np.array([3, 2**63, 2**64 - 1, 9, 10], np.uint64)
    assert table.lookup(keys, np).tolist() == [3, -1, -1, 9, -1]
    schema = Schema({"t": np.int64, "k": np.uint64}, time="t")
    q = (
        Query(schema)
        .join(table, on="k", columns=["c"])
        .window(size=10, range_="t")
        .group_by("c")
        .agg(n=Agg.count())
    )
    got = collect(Engine(0).run(q, [{"t": np.zeros(5, np.int64), "k": keys}]), q)
    assert got["c"].tolist() == [300, 900] and got["n"].tolist() == [1, 1]


def test_one_engine_runs_one_query_at_a_time() -> None:
    """Two runs of one engine consumed in turns used to hang: the second run's workers
    replaced the first's, and the first waited for them at its end."""
    eng = Engine(2, task_size=64)
    first = eng.run(Q, [batch(list(range(100)))])
    next(first)
    with pytest.raises(StreamError, match="already running"):
        next(eng.run(Q, [batch(list(range(100)))]))
    rest = list(first)
    assert rest  # the first run goes on
    again = collect(eng.run(Q, [batch(list(range(100)))]), Q)  # and the engine is free after
    assert len(again["window_start"])
