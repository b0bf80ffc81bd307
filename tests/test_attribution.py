"""Attribution on synthetic node samples with known answers.

RAPL samples come from the real RAPL collector reading a powercap-shaped tree that the test
advances at known watts; CPU samples are synthetic with known rates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_rapl import FakePowercap
from wattspan.agent.attribution import (
    SpanWindow,
    attribute,
    build_series,
    min_interval_power,
    primary_domains,
)
from wattspan.collectors.base import Sample
from wattspan.collectors.rapl import RaplCollector

MAX_RANGE = 50_000_000  # 50 J: wraps several times in the runs below


def node_samples(
    tmp: Path,
    watts: list[float],
    dram_watts: float,
    dt: float,
    busy_cores: list[float],
    proc_cores: list[float],
    pid: int = 4242,
    max_range: int = MAX_RANGE,
) -> list[Sample]:
    """Samples at t = 1000 + k*dt, with package power ``watts[k]`` during interval k.

    Each interval must add less than ``max_range`` to a counter: RAPL cannot tell two wraps
    between reads apart from one (the agent samples often enough that it never happens).
    """
    MAX_RANGE = max_range
    pc = FakePowercap(tmp)
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=MAX_RANGE - 1_000, max_range_uj=MAX_RANGE)
    pc.add_zone("intel-rapl:0:0", "dram", energy_uj=0, max_range_uj=MAX_RANGE)
    pc.add_zone("intel-rapl:1", "psys", energy_uj=0, max_range_uj=MAX_RANGE * 100)
    col = RaplCollector(pc.root)
    raw = {"intel-rapl:0": MAX_RANGE - 1_000, "intel-rapl:0:0": 0, "intel-rapl:1": 0}
    ranges = {
        "intel-rapl:0": MAX_RANGE,
        "intel-rapl:0:0": MAX_RANGE,
        "intel-rapl:1": MAX_RANGE * 100,
    }
    out: list[Sample] = []
    busy = proc = 0.0
    t = 1000.0
    for k in range(len(watts) + 1):
        out.extend(col.sample(t))
        out.append(
            Sample(
                "cpu", t, {"cpu": "total"}, {"user_seconds_total": busy, "idle_seconds_total": 0.0}
            )
        )
        out.append(
            Sample(
                "process_tree",
                t,
                {"root": str(pid)},
                {
                    "cpu_user_seconds_total": proc,
                    "cpu_system_seconds_total": 0.0,
                    "rss_bytes": 1_000_000 + k,
                },
            )
        )
        if k == len(watts):
            break
        for zone, w in (
            ("intel-rapl:0", watts[k]),
            ("intel-rapl:0:0", dram_watts),
            ("intel-rapl:1", watts[k] + dram_watts + 5),
        ):
            raw[zone] = (raw[zone] + round(w * dt * 1e6)) % (ranges[zone] + 1)
            pc.set(zone, raw[zone])
        busy += busy_cores[k] * dt
        proc += proc_cores[k] * dt
        t += dt
    return out


def test_per_span_joules_are_exact_to_the_model(tmp_path: Path) -> None:
    # 10 intervals of 0.5 s: 40 W for the first five, 100 W for the rest.
    watts = [40.0] * 5 + [100.0] * 5
    samples = node_samples(tmp_path, watts, 3.0, 0.5, [1.5] * 10, [1.0] * 10)
    series = build_series(samples)
    assert primary_domains(series.energy) == ["package-0"]
    idle = min_interval_power(series, ["package-0"])
    assert idle == pytest.approx(40.0)
    span = SpanWindow(1001.25, 1003.75, pid=4242, items=50)
    (r,) = attribute([span], series, idle)
    node = 40 * (1002.5 - 1001.25) + 100 * (1003.75 - 1002.5)  # 175 J
    assert r["node_energy_total_joules"] == pytest.approx(node, abs=1e-5)
    assert r["node_energy_joules"]["package-0"] == pytest.approx(node, abs=1e-5)
    assert r["node_energy_joules"]["package-0/dram"] == pytest.approx(3.0 * 2.5, abs=1e-5)
    assert r["node_energy_joules"]["psys"] == pytest.approx(node + 8.0 * 2.5, abs=1e-5)
    assert r["idle_energy_joules"] == pytest.approx(40 * 2.5)
    assert r["active_energy_joules"] == pytest.approx(node - 100, abs=1e-5)
    assert r["cpu_seconds"] == pytest.approx(2.5)
    assert r["process_cpu_share"] == pytest.approx(1.0 / 1.5)
    assert r["process_energy_joules"] == pytest.approx(75 / 1.5, abs=1e-5)
    assert r["other_energy_joules"] == pytest.approx(75 * 0.5 / 1.5, abs=1e-5)
    assert r["throughput_items_per_second"] == pytest.approx(20.0)
    assert r["latency_seconds_per_item"] == pytest.approx(0.05)
    # The largest sample inside the span, or its interpolated end (k = 7.5).
    assert r["peak_rss_bytes"] == 1_000_007
    assert r["coverage"] == 1.0
    assert r["energy_estimated"] is False


def test_self_reported_cpu_replaces_the_sampled_figure(tmp_path: Path) -> None:
    """A span carrying its process's own CPU seconds (even with no pid the agent watches)
    gets that figure and the share it implies; conservation holds as before."""
    samples = node_samples(tmp_path, [40.0] * 5 + [100.0] * 5, 3.0, 0.5, [1.5] * 10, [1.0] * 10)
    series = build_series(samples)
    spans = [
        SpanWindow(1001.25, 1003.75, pid=4242, cpu_seconds=0.75),
        SpanWindow(1001.25, 1003.75, pid=None, cpu_seconds=0.75),
        SpanWindow(1001.25, 1003.75, pid=4242),
    ]
    reported, no_pid, sampled = attribute(spans, series, 40.0)
    for r in (reported, no_pid):
        assert r["cpu_seconds"] == pytest.approx(0.75)
        assert r["cpu_source"] == "self-reported"
        assert r["process_cpu_share"] == pytest.approx(0.75 / (1.5 * 2.5))
        parts = r["process_energy_joules"] + r["other_energy_joules"] + r["idle_energy_joules"]
        assert parts == pytest.approx(r["node_energy_total_joules"])
    assert sampled["cpu_seconds"] == pytest.approx(2.5)
    assert sampled["cpu_source"] == "sampled"


@pytest.mark.parametrize("u", [0.1, 0.5, 0.9])
def test_a_span_that_starts_busy_after_idle_loses_at_most_a_quarter_interval(
    tmp_path: Path, u: float
) -> None:
    """The model's one inexactness (README, "How attribution works"): a span that starts a
    burst inside a sample interval gets that interval's busy time and energy spread
    linearly over it. With the node idle before ``1000.5 + u * dt`` and one core busy
    after, the span's interpolated busy there is ``(1 - u)**2 * dt`` of the true
    ``(1 - u) * dt``: it loses ``u * (1 - u) * dt``, a quarter interval at most, and its
    self-reported CPU seconds are then capped at the node's share."""
    dt, k, idle = 0.1, 15.0, 20.0
    # Interval 5 is idle for its first u and busy after; 6..9 are busy.
    busy = [0.0] * 5 + [1.0 - u] + [1.0] * 4
    watts = [idle + k * b for b in busy]
    samples = node_samples(tmp_path, watts, 0.0, dt, busy, busy)
    start = 1000.0 + (5 + u) * dt
    end = 1000.0 + 9.5 * dt
    cpu = end - start  # what the process measured of itself
    (r,) = attribute(
        [SpanWindow(start, end, pid=4242, cpu_seconds=cpu)], build_series(samples), idle
    )
    lost = u * (1 - u) * dt
    assert r["process_cpu_share"] == 1.0
    assert r["process_energy_joules"] == pytest.approx(k * (cpu - lost), abs=1e-5)
    assert k * cpu - r["process_energy_joules"] <= k * dt / 4 + 1e-5


def test_span_beyond_the_samples_reports_partial_coverage(tmp_path: Path) -> None:
    samples = node_samples(tmp_path, [50.0] * 4, 0.0, 1.0, [1.0] * 4, [1.0] * 4)
    (r,) = attribute([SpanWindow(1003.0, 1006.0, pid=4242)], build_series(samples), 50.0)
    assert r["coverage"] == pytest.approx(1 / 3)
    assert r["node_energy_total_joules"] == pytest.approx(50.0, abs=1e-5)


def test_span_of_an_unwatched_process_gets_node_energy_only(tmp_path: Path) -> None:
    samples = node_samples(tmp_path, [50.0] * 4, 0.0, 1.0, [1.0] * 4, [1.0] * 4)
    (r,) = attribute([SpanWindow(1000.0, 1002.0, pid=1)], build_series(samples), 10.0)
    assert r["node_energy_total_joules"] == pytest.approx(100.0, abs=1e-5)
    assert "process_energy_joules" not in r and "cpu_seconds" not in r


def test_gpu_energy_is_the_counter_difference() -> None:
    samples = [
        Sample("gpu", 10.0 + i, {"gpu": "0"}, {"energy_joules_total": 300.0 * i}) for i in range(5)
    ]
    (r,) = attribute([SpanWindow(10.5, 12.25)], build_series(samples), None)
    assert r["gpu_energy_joules"] == {"0": pytest.approx(300.0 * 1.75)}
    assert r["gpu_energy_total_joules"] == pytest.approx(525.0)


@settings(max_examples=60, deadline=None)
@given(
    watts=st.lists(st.floats(1.0, 400.0), min_size=3, max_size=12),
    busy=st.lists(st.floats(0.0, 2.0), min_size=12, max_size=12),
    share=st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12),
    spans=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=8),
)
def test_conservation_process_plus_other_plus_idle_is_node(
    tmp_path_factory: pytest.TempPathFactory,
    watts: list[float],
    busy: list[float],
    share: list[float],
    spans: list[tuple[float, float]],
) -> None:
    n = len(watts)
    proc = [b * s for b, s in zip(busy, share, strict=False)]
    samples = node_samples(
        tmp_path_factory.mktemp("pc"), watts, 2.0, 0.5, busy, proc, max_range=250_000_000
    )
    series = build_series(samples)
    idle = min_interval_power(series, primary_domains(series.energy))
    assert idle is not None
    windows = []
    for a, b in spans:
        lo, hi = sorted((a, b))
        windows.append(SpanWindow(1000 + lo * n * 0.5, 1000 + hi * n * 0.5, pid=4242))
    for r in attribute(windows, series, idle):
        node = r["node_energy_total_joules"]
        assert r["idle_energy_joules"] + r["active_energy_joules"] == pytest.approx(node, abs=1e-6)
        if "process_energy_joules" in r:
            total = r["process_energy_joules"] + r["other_energy_joules"] + r["idle_energy_joules"]
            assert total == pytest.approx(node, abs=1e-6)
            assert 0.0 <= r["process_cpu_share"] <= 1.0
    # And the node figure is the energy put into the fake counters over each span.
    for w, r in zip(windows, attribute(windows, series, idle), strict=True):
        expected = sum(
            watts[k] * max(0.0, min(w.end, 1000 + (k + 1) * 0.5) - max(w.start, 1000 + k * 0.5))
            for k in range(n)
        )
        assert r["node_energy_total_joules"] == pytest.approx(expected, abs=1e-4)
