"""The window model, the fragment classification of a task, and the pane kernels, each
against a brute-force count over individual windows and rows."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wattspan.engines.stream.kernels import (
    Needs,
    pane_partials,
    scalar_partials,
    windows_from_partials,
)
from wattspan.engines.stream.window import WindowSpec

sizes = st.integers(1, 50)


@settings(max_examples=200, deadline=None)
@given(sizes, sizes, st.integers(-1, 300), st.integers(0, 300))
def test_task_bounds_match_brute_force(size: int, slide: int, prev: int, extra: int) -> None:
    """complete = starts after prev_last and ends by last; the rest as SABER defines them."""
    win = WindowSpec(size, slide, "t")
    last = prev + 1 + extra
    k_lo, k_open = win.task_bounds(prev, last)
    for k in range(0, last // slide + 3):
        start, end = k * slide, k * slide + size
        assert (start > prev) == (k >= k_lo), (k, start, prev)
        assert (end <= last) == (k < k_open), (k, end, last)
    assert win.pane * win.w == size and win.pane * win.s == slide
    assert win.tumbling == (size == slide)


def brute_windows(
    t: np.ndarray, keys: np.ndarray, v: np.ndarray, size: int, slide: int
) -> dict[tuple[int, int], tuple[int, float, float, float]]:
    out: dict[tuple[int, int], tuple[int, float, float, float]] = {}
    if len(t) == 0:
        return out
    for k in range(int(t.max()) // slide + 1):
        m = (t >= k * slide) & (t < k * slide + size)
        for g in np.unique(keys[m]):
            sel = v[m & (keys == g)]
            out[(k, int(g))] = (len(sel), float(sel.sum()), float(sel.min()), float(sel.max()))
    return out


@settings(max_examples=80, deadline=None)
@given(sizes, sizes, st.integers(0, 200), st.integers(1, 300), st.integers(0, 2**31), st.booleans())
def test_windows_from_partials_match_brute_force(
    size: int, slide: int, n: int, span: int, seed: int, scalar: bool
) -> None:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span, n)).astype(np.int64)
    keys = rng.integers(0, 4, n).astype(np.int16)
    v = rng.random(n)
    win = WindowSpec(size, slide, "t")
    needs = Needs(("v",), ("v",), ("v",))
    fn = scalar_partials if scalar else pane_partials
    part = fn(t, [keys], {"v": v}, win.pane, needs)
    want = brute_windows(t, keys, v, size, slide)
    k_hi = int(t.max()) // slide if n else -1
    got = windows_from_partials(part, win.w, win.s, 0, k_hi, needs, unique_entries=True)
    assert len(got) == len(want)
    pairs = list(zip(got.index.tolist(), got.keys[0].tolist(), strict=True))
    assert pairs == sorted(want)  # window order, then key order
    for i, kg in enumerate(pairs):
        c, s, lo, hi = want[kg]
        assert got.count[i] == c
        assert np.isclose(got.sums["v"][i], s)
        assert got.mins["v"][i] == lo and got.maxs["v"][i] == hi


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 400), st.integers(1, 10**6), st.integers(0, 2**31), st.sampled_from([1, 3, 1000])
)
def test_vector_and_scalar_kernels_agree(n: int, pane: int, seed: int, spread: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 10**7, n)).astype(np.int64)
    k1 = rng.integers(-spread, spread + 1, n).astype(np.int32)
    k2 = (rng.random(n) * 3).round(1)  # a float key: the sorted path
    y = rng.integers(-(2**40), 2**40, n).astype(np.int64)
    needs = Needs(("y",), ("y",), ("y",))
    a = pane_partials(t, [k1, k2], {"y": y}, pane, needs)
    b = scalar_partials(t, [k1, k2], {"y": y}, pane, needs)

    def rows(p: Any) -> list[tuple[Any, ...]]:
        return list(
            zip(
                p.index.tolist(),
                p.keys[0].tolist(),
                p.keys[1].tolist(),
                p.count.tolist(),
                p.sums["y"].tolist(),
                p.mins["y"].tolist(),
                p.maxs["y"].tolist(),
                strict=True,
            )
        )

    assert rows(a) == rows(b)
    assert a.sums["y"].dtype == np.int64 and a.keys[0].dtype == np.int32


def test_huge_key_ranges_fall_back_to_sorting() -> None:
    """Keys whose mixed-radix code would overflow int64 still group exactly."""
    n = 500
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 10**9, n)).astype(np.int64)
    ks = [rng.choice([-(2**62), 0, 2**62], n).astype(np.int64) for _ in range(3)]
    needs = Needs()
    a = pane_partials(t, ks, {}, 1000, needs)
    b = scalar_partials(t, ks, {}, 1000, needs)
    assert a.index.tolist() == b.index.tolist()
    for x, y in zip(a.keys, b.keys, strict=True):
        assert x.tolist() == y.tolist()
    assert a.count.tolist() == b.count.tolist()


def test_long_sliding_window_costs_what_a_tumbling_one_does() -> None:
    """Pane sharing: RANGE 3600 SLIDE 1 does not do 3600x the work of RANGE 1 SLIDE 1."""
    import time

    rng = np.random.default_rng(1)
    n = 200_000
    t = np.sort(rng.integers(0, 20_000, n)).astype(np.int64)
    v = rng.random(n)
    needs = Needs(("v",))

    def cost(size: int) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            part = pane_partials(t, [], {"v": v}, 1, needs)
            windows_from_partials(part, size, 1, 0, 20_000, needs, unique_entries=True)
            best = min(best, time.perf_counter() - t0)
        return best

    assert cost(3600) < 5 * cost(1)
