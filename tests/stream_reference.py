"""A plain pandas evaluator of a stream :class:`Query`, the reference the engine's results
are compared with: filter, join, window assignment by exploding each row into the windows
that hold it, groupby, aggregate, having. No panes, no tasks, no incremental anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from wattspan.engines.stream.query import ROW_COLUMN, Query


def frame(batches: Iterable[Mapping[str, np.ndarray]]) -> pd.DataFrame:
    parts = [pd.DataFrame(dict(b)) for b in batches]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def reference(query: Query, batches: Iterable[Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """The contract's result frame: window_start, window_end, keys, aggregates; sorted."""
    df = frame(batches)
    if df.empty:
        df = pd.DataFrame({c: np.empty(0, d) for c, d in query.schema.items()})
    win = query.window_spec
    assert win is not None
    if win.rows:
        df[ROW_COLUMN] = np.arange(len(df), dtype=np.int64)
    for kind, arg in query.steps:
        if kind == "where":
            df = df[np.asarray(arg.eval(df), dtype=bool)]
        elif kind == "derive":
            df = df.assign(**{k: e.eval(df) for k, e in arg.items()})
        elif kind == "select":
            names, exprs = arg
            out = df[list(names)].copy()
            for k, e in exprs.items():
                out[k] = e.eval(df)
            df = out
        elif kind == "join":
            table, on, take = arg
            right = pd.DataFrame({table.key: table.columns[table.key]})
            for c in take:
                right[c] = table.columns[c]
            df = df.merge(right, left_on=on, right_on=table.key, how="inner", sort=False)
            if table.key != on and table.key not in take:
                df = df.drop(columns=[table.key])
    t = df[ROW_COLUMN if win.rows else win.on].to_numpy(np.int64)
    # Windows holding time t: k*slide <= t < k*slide + size, k >= 0.
    lo = np.maximum(0, -((win.size - 1 - t) // win.slide))
    hi = t // win.slide
    n = np.maximum(hi - lo + 1, 0)
    rows = np.repeat(np.arange(len(df)), n)
    k = np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    ex = df.iloc[rows].reset_index(drop=True)
    ex["__k__"] = k.astype(np.int64)
    keys = list(query.keys)
    specs: dict[str, Any] = {}
    for name, a in query.aggs:
        if a.fn == "count":
            specs[name] = pd.NamedAgg(column="__k__", aggfunc="size")
            continue
        c = a.column
        assert c is not None
        if a.fn in ("sum", "avg") and ex[c].dtype.kind == "f":
            ex[c + "__f64"] = ex[c].astype(np.float64)
            c = c + "__f64"
        func = {"sum": "sum", "avg": "mean", "min": "min", "max": "max"}[a.fn]
        specs[name] = pd.NamedAgg(column=c, aggfunc=func)
    if len(ex):
        g = ex.groupby(["__k__", *keys], sort=True).agg(**specs).reset_index()
    else:
        g = pd.DataFrame(
            {"__k__": np.empty(0, np.int64)} | {k: np.empty(0, df[k].dtype) for k in keys}
        )
        for name in specs:
            g[name] = np.empty(0, np.float64)
    g.insert(0, "window_end", g["__k__"].astype(np.int64) * win.slide + win.size)
    g.insert(0, "window_start", g["__k__"].astype(np.int64) * win.slide)
    g = g.drop(columns=["__k__"])
    for name, a in query.aggs:
        if a.fn == "count":
            g[name] = g[name].astype(np.int64)
        elif a.fn == "sum":
            kind = df[a.column].dtype.kind
            g[name] = g[name].astype(np.float64 if kind == "f" else np.int64)
        elif a.fn == "avg":
            g[name] = g[name].astype(np.float64)
        else:
            g[name] = g[name].astype(df[a.column].dtype)
    if query.having_expr is not None and len(g):
        g = g[np.asarray(query.having_expr.eval(g), dtype=bool)]
    return g.sort_values(["window_start", *keys], kind="stable").reset_index(drop=True)


def engine_frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame(dict(columns))


def assert_same(got: pd.DataFrame, want: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Window by window, value by value: same rows, keys and counts exactly, floats close."""
    assert list(got.columns) == list(want.columns), (list(got.columns), list(want.columns))
    assert len(got) == len(want), f"{len(got)} result rows, reference has {len(want)}"
    for c in want.columns:
        a, b = got[c].to_numpy(), want[c].to_numpy()
        assert a.dtype == b.dtype, f"column {c}: dtype {a.dtype}, reference {b.dtype}"
        if b.dtype.kind == "f" or a.dtype.kind == "f":
            np.testing.assert_allclose(
                a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=1e-9, err_msg=c
            )
        else:
            np.testing.assert_array_equal(a, b, err_msg=c)
