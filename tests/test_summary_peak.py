"""The run table's CPU peak (``agent/summary.py``): the highest average over a second, as a
process's CPU seconds come in 10 ms clock ticks and a 0.1 s interval cannot resolve them."""

from __future__ import annotations

import itertools

import pytest

from wattspan.agent.summary import PEAK_WINDOW_S, summarize
from wattspan.collectors.base import Sample


def tree(ts: float, cpu: float, processes: int = 1) -> Sample:
    return Sample(
        "process_tree",
        ts,
        {"root": "1", "name": "python3"},
        {
            "cpu_user_seconds_total": cpu,
            "cpu_system_seconds_total": 0.0,
            "processes": processes,
            "threads": processes,
        },
    )


def peak(samples: list[Sample]) -> float | None:
    return summarize(samples, samples[0].ts, samples[-1].ts).get("cpu_percent_peak")


def ticks(per_interval: list[float], interval: float = 0.1, t0: float = 100.0) -> list[Sample]:
    cpu = itertools.accumulate(per_interval, initial=0.0)
    return [tree(t0 + i * interval, c) for i, c in enumerate(cpu)]


def test_one_thread_read_in_clock_ticks_peaks_near_100_percent() -> None:
    # One busy thread, 10 ticks a 0.1 s interval on average, read as 9 or 11 as the tick
    # boundaries fall (what /proc showed under `wattspan run`): 88 % and 112.5 % per interval.
    samples = ticks([0.09, 0.11, 0.10, 0.09, 0.11, 0.10] * 5)
    got = peak(samples)
    assert got is not None and 98.0 <= got <= 102.0


def test_a_burst_on_two_threads_shows_as_the_peak() -> None:
    samples = ticks([0.05] * 20 + [0.2] * 15 + [0.05] * 10)  # 50 %, then 200 % for 1.5 s
    got = peak(samples)
    assert got == pytest.approx(200.0, abs=0.5)
    # A burst shorter than the window is averaged with what surrounds it.
    short = ticks([0.0] * 20 + [0.2] * 3 + [0.0] * 20)
    assert peak(short) == pytest.approx(100 * 0.6 / PEAK_WINDOW_S, abs=1.0)


def test_a_run_shorter_than_the_window_gets_its_average() -> None:
    samples = ticks([0.05, 0.09, 0.11, 0.10])  # 0.4 s sampled
    assert peak(samples) == pytest.approx(100 * 0.35 / 0.4)


def test_no_live_process_at_any_sample_gives_no_peak() -> None:
    samples = [tree(100.0 + i * 0.1, 0.02, processes=0) for i in range(20)]
    assert peak(samples) is None


def test_the_peak_is_never_below_the_average() -> None:
    # A 0.6 s run whose samples (from 50 ms in) saw less than wait4's whole-run CPU: the
    # average is 130 % of a core, and no window of it can peak lower.
    samples = ticks([0.1] * 5, t0=100.05)
    run = Sample("run", 100.6, {}, {"cpu_user_seconds_total": 0.78})
    got = summarize([*samples, run], 100.0, 100.6)
    assert got["cpu_percent_avg"] == pytest.approx(130.0)
    assert got["cpu_percent_peak"] == pytest.approx(130.0)
