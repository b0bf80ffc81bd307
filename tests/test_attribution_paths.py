"""Attribution's two implementations give the same results, and a daemon sent small batches
never loads numpy.

``attribute_python`` (batches under ``NUMPY_MIN_SPANS``) and ``attribute_numpy`` are compared
on random sample series: irregular intervals, long gaps, samples sharing a time, the RAPL
counter wrapping (through the real collector on a powercap-shaped tree), spans inside,
across and outside the samples, processes with and without series, self-reported CPU,
high-water marks, GPUs, and CPU history spliced in from the node-wide collector.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_attribution import node_samples
from wattspan.agent.attribution import (
    NUMPY_MIN_SPANS,
    NodeSeries,
    SpanWindow,
    add_history,
    attribute,
    attribute_numpy,
    attribute_python,
    build_series,
    interp,
    min_interval_power,
)
from wattspan.agent.idle import fit_line, interval_power, interval_rates, regression
from wattspan.collectors.base import Sample

T0 = 1000.0


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal results: the same keys in the same order, numbers equal to rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, float), path
        assert b == pytest.approx(a, rel=1e-12, abs=1e-9), path
    else:
        assert type(a) is type(b) and a == b, path


def _times(draw: st.DrawFn, n: int) -> list[float]:
    """Sample times with irregular steps, long gaps and repeated times."""
    steps = draw(
        st.lists(
            st.one_of(
                st.floats(0.01, 2.0),
                st.just(0.0),  # two samples at one time (the clock read twice)
                st.floats(20.0, 200.0),  # a gap: the agent stopped, or a collector stalled
            ),
            min_size=n - 1,
            max_size=n - 1,
        )
    )
    ts = [T0]
    for s in steps:
        ts.append(ts[-1] + s)
    return ts


def _cumulative(draw: st.DrawFn, n: int, top: float) -> list[float]:
    incs = draw(st.lists(st.floats(0.0, top), min_size=n - 1, max_size=n - 1))
    out = [draw(st.floats(0.0, 1e6))]
    for x in incs:
        out.append(out[-1] + x)
    return out


@st.composite
def node(draw: st.DrawFn) -> tuple[list[Sample], list[SpanWindow], dict[int, tuple[Any, Any]]]:
    samples: list[Sample] = []
    domains = draw(
        st.lists(
            st.sampled_from(["package-0", "package-1", "package-0/dram", "psys", "cpu"]),
            unique=True,
            max_size=4,
        )
    )
    for d in domains:
        n = draw(st.integers(1, 12))
        ts, vs = _times(draw, n), _cumulative(draw, n, 500.0)
        est = "true" if d == "cpu" else "false"
        src = "power_model" if d == "cpu" else "rapl"
        samples += [
            Sample(src, t, {"domain": d, "estimated": est}, {"energy_joules_total": v})
            for t, v in zip(ts, vs, strict=True)
        ]
    if draw(st.booleans()):
        n = draw(st.integers(1, 12))
        ts, vs = _times(draw, n), _cumulative(draw, n, 8.0)
        samples += [
            Sample("cpu", t, {"cpu": "total"}, {"user_seconds_total": v, "idle_seconds_total": 0})
            for t, v in zip(ts, vs, strict=True)
        ]
    # pid 1: a watched tree; pid 2: a process with its high-water mark; pid 3: no samples.
    for src, tag, pid in (("process_tree", "root", 1), ("process", "pid", 2)):
        if not draw(st.booleans()):
            continue
        n = draw(st.integers(1, 10))
        ts, cpu = _times(draw, n), _cumulative(draw, n, 2.0)
        rss = draw(st.lists(st.floats(1e5, 1e9), min_size=n, max_size=n))
        hwm = _cumulative(draw, n, 1e7)
        for i, t in enumerate(ts):
            fields: dict[str, float] = {
                "cpu_user_seconds_total": cpu[i],
                "cpu_system_seconds_total": 0.25 * i,
                "rss_bytes": rss[i],
            }
            if src == "process":
                fields["peak_rss_bytes"] = hwm[i]
            samples.append(Sample(src, t, {tag: str(pid)}, fields))
    for g in range(draw(st.integers(0, 2))):
        n = draw(st.integers(1, 8))
        ts, vs = _times(draw, n), _cumulative(draw, n, 300.0)
        samples += [
            Sample("gpu", t, {"gpu": str(g)}, {"energy_joules_total": v})
            for t, v in zip(ts, vs, strict=True)
        ]
    # Node-wide history for pids 1 (spliced before its tree's samples) and 3 (its only series).
    history = {}
    for pid in draw(st.lists(st.sampled_from([1, 3]), unique=True)):
        n = draw(st.integers(1, 8))
        ts = [t - 30.0 for t in _times(draw, n)]
        history[pid] = (ts, _cumulative(draw, n, 1.5))
    spans = []
    for _ in range(draw(st.integers(1, 40))):
        a = draw(st.floats(T0 - 50.0, T0 + 400.0))
        d = draw(st.one_of(st.just(0.0), st.floats(0.0, 5.0), st.floats(5.0, 300.0)))
        spans.append(
            SpanWindow(
                a,
                a + d,
                draw(st.sampled_from([None, 1, 2, 3])),
                draw(st.one_of(st.none(), st.floats(0.0, 1e4))),
                draw(st.one_of(st.none(), st.floats(0.0, 100.0))),
            )
        )
    return samples, spans, history


def _series(samples: list[Sample], history: dict[int, tuple[Any, Any]]) -> NodeSeries:
    series = build_series(samples)
    for pid, (ts, vs) in history.items():
        add_history(series, pid, list(ts), list(vs))
    return series


@settings(max_examples=300, deadline=None)
@given(
    case=node(),
    idle=st.one_of(st.none(), st.floats(0.0, 200.0)),
    method=st.sampled_from([None, "regression"]),
)
def test_python_and_numpy_paths_agree(
    case: tuple[list[Sample], list[SpanWindow], dict[int, tuple[Any, Any]]],
    idle: float | None,
    method: str | None,
) -> None:
    samples, spans, history = case
    series = _series(samples, history)
    py = attribute_python(spans, series, idle, method)
    vec = attribute_numpy(spans, series, idle, method)
    assert len(py) == len(vec) == len(spans)
    for a, b in zip(vec, py, strict=True):
        _same(a, b)
    # The CPU figure of a span read from the history is reproducible from its points alone.
    for s, r in zip(spans, py, strict=True):
        if "cpu_points" in r:
            pts = np.array(r["cpu_points"])
            again = np.interp([s.start, s.end], pts[:, 0], pts[:, 1])
            assert max(float(again[1] - again[0]), 0.0) == pytest.approx(r["cpu_seconds"])
            assert s.pid in history and s.cpu_seconds is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    watts=st.lists(st.floats(1.0, 400.0), min_size=3, max_size=10),
    busy=st.lists(st.floats(0.0, 2.0), min_size=10, max_size=10),
    drop=st.sets(st.integers(0, 60), max_size=20),
    spans=st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(0.0, 1.0)), min_size=1, max_size=60),
)
def test_paths_agree_across_rapl_wraps_and_gaps(
    tmp_path_factory: pytest.TempPathFactory,
    watts: list[float],
    busy: list[float],
    drop: set[int],
    spans: list[tuple[float, float]],
) -> None:
    # A 5 J counter range: the package counter wraps about every interval.
    samples = node_samples(
        tmp_path_factory.mktemp("pc"), watts, 2.0, 0.5, busy, [b / 2 for b in busy], 4242, 5_000_000
    )
    # Gaps: samples lost (a collector that failed a tick), never the first of a series.
    kept = [s for i, s in enumerate(samples) if i < 6 or i not in drop]
    series = build_series(kept)
    n = len(watts)
    windows = [SpanWindow(T0 + a * n * 0.5, T0 + (a + d) * n * 0.5, 4242) for a, d in spans]
    idle = min_interval_power(series, ["package-0"])
    for a, b in zip(
        attribute_numpy(windows, series, idle), attribute_python(windows, series, idle), strict=True
    ):
        _same(a, b)


@settings(max_examples=200, deadline=None)
@given(
    ts=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
    vs=st.lists(st.floats(-1e6, 1e6), min_size=20, max_size=20),
    t=st.floats(-2e3, 2e3),
)
def test_interp_is_numpys_to_the_bit(ts: list[float], vs: list[float], t: float) -> None:
    ts = sorted(ts)
    vs = vs[: len(ts)]
    assert interp(t, ts, vs) == float(np.interp(t, ts, vs))


@settings(max_examples=100, deadline=None)
@given(
    busy=st.lists(st.floats(0.0, 4.0), min_size=10, max_size=60),
    idle=st.floats(0.0, 100.0),
    k=st.floats(0.0, 30.0),
    noise=st.lists(st.floats(-3.0, 3.0), min_size=60, max_size=60),
)
def test_idle_fit_is_polyfits(busy: list[float], idle: float, k: float, noise: list[float]) -> None:
    if max(busy) - min(busy) < 1e-3:
        return
    power = [idle + k * b + e for b, e in zip(busy, noise, strict=False)]
    slope, intercept = fit_line(busy, power)
    ref_slope, ref_intercept = np.polyfit(busy, power, 1)
    assert slope == pytest.approx(ref_slope, rel=1e-7, abs=1e-7)
    assert intercept == pytest.approx(ref_intercept, rel=1e-7, abs=1e-7)


def test_idle_regression_and_intervals_without_numpy_match_the_arrays(tmp_path: Path) -> None:
    # 40 intervals of 0.5 s at 20 W + 15 W per busy core, utilisation stepping 0..3 cores.
    busy = [(i % 7) * 0.5 for i in range(40)]
    samples = node_samples(tmp_path, [20.0 + 15.0 * b for b in busy], 0.0, 0.5, busy, busy)
    series = build_series(samples)
    power, cores = interval_rates(series, ["package-0"], 0.3)
    arr_power, arr_cores = interval_power(series, ["package-0"], 0.3)
    assert isinstance(arr_power, np.ndarray)
    assert arr_power.tolist() == power and arr_cores.tolist() == cores
    fit = regression(series, ["package-0"])
    assert fit is not None and fit.method == "regression"
    assert fit.watts == pytest.approx(20.0, abs=0.05)
    assert fit.r2 is not None and fit.r2 > 0.999


def test_small_batches_take_the_python_path_and_large_ones_numpy(tmp_path: Path) -> None:
    samples = node_samples(tmp_path, [40.0] * 6, 1.0, 0.5, [1.0] * 6, [0.5] * 6)
    series = build_series(samples)
    small = [SpanWindow(T0 + 0.25, T0 + 2.0, 4242)] * (NUMPY_MIN_SPANS - 1)
    large = small + small
    # Same answers either way; which path ran is seen by what it builds: numpy arrays are
    # made once per series, on first use.
    attribute(small, series, 30.0)
    assert series.energy["package-0"]._arrays is None
    attribute(large, series, 30.0)
    assert series.energy["package-0"]._arrays is not None
    for a, b in zip(attribute(large, series, 30.0), attribute(small, series, 30.0), strict=False):
        _same(a, b)


NO_NUMPY = r"""
import sys, time
from wattspan.agent.ingest import TelemetryIngest
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.records import SpanRecord
from wattspan.agent.store import Store
from wattspan.collectors.base import Sample
from wattspan.collectors.node_processes import NodeProcessCollector

store = Store(sys.argv[1])
history = NodeProcessCollector(window=60.0)
ingest = TelemetryIngest(
    store=store, pipeline=Pipeline(), run_id="run", interval=0.05, node_processes=history
)
def tick():
    now = time.time()
    history.sample(now)
    busy = time.process_time()
    ingest.write([
        Sample("rapl", now, {"domain": "package-0", "estimated": "false"},
               {"energy_joules_total": 20.0 * now - 2e10 + 3.0 * busy}),
        Sample("cpu", now, {"cpu": "total"}, {"user_seconds_total": busy}),
    ])
for _ in range(12):
    tick()
    sum(range(100000))
    time.sleep(0.05)
t0 = time.time_ns() - 400_000_000
# This process, never watched: its CPU comes from the node-wide history.
span = SpanRecord("%032x" % 1, "%016x" % 1, None, "s", "internal", t0, t0 + 200_000_000,
                  pid=__import__("os").getpid())
ingest.on_spans([span])
tick()
assert ingest.attribute_due(force=True) == 1
(row,) = store.spans()
r = row.resources
assert "cpu_points" in r and "process_energy_joules" in r, r
assert ingest.idle_of("run") is not None
print("numpy" in sys.modules)
"""


def test_a_daemon_attributing_small_batches_does_not_import_numpy(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_NUMPY, str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_history_points_reproduce_the_cpu_figure_by_hand() -> None:
    series = NodeSeries()
    # The process's own history, then a watched tree whose samples start at 10.0 at 100.
    add_history(series, 9, [1.0, 4.0, 8.0, 12.0], [0.0, 3.0, 4.0, 8.0])
    assert series.proc_cpu[9].ts == [1.0, 4.0, 8.0, 12.0]
    watched = build_series(
        [
            Sample(
                "process_tree",
                t,
                {"root": "9"},
                {"cpu_user_seconds_total": v, "cpu_system_seconds_total": 0.0},
            )
            for t, v in ((10.0, 100.0), (11.0, 101.0))
        ]
    )
    assert add_history(watched, 9, [1.0, 4.0, 8.0, 12.0], [0.0, 3.0, 4.0, 8.0])
    # Before the tree's first sample its figure moves as the process's own: shifted by
    # 100 - 6 (the history at 10.0).
    assert watched.proc_cpu[9].ts == [1.0, 4.0, 8.0, 10.0, 11.0]
    assert watched.proc_cpu[9].values == [94.0, 97.0, 98.0, 100.0, 101.0]
    (r,) = attribute_python([SpanWindow(3.0, 10.5, 9)], watched, None)
    assert r["cpu_points"] == [[1.0, 94.0], [4.0, 97.0], [10.0, 100.0], [11.0, 101.0]]
    assert r["cpu_seconds"] == pytest.approx(100.5 - (94.0 + 3.0 * 2 / 3))
    # A span after the tree's first sample reads only its (stored) samples: no points.
    (r,) = attribute_python([SpanWindow(10.2, 10.8, 9)], watched, None)
    assert "cpu_points" not in r and r["cpu_seconds"] == pytest.approx(0.6)
    # A history that starts no earlier than the tree's samples adds nothing.
    assert not add_history(watched, 9, [10.5, 11.0], [0.0, 1.0])
    assert math.isclose(watched.proc_cpu[9].values[0], 94.0)
