"""The sampling loop: failing collectors are isolated, counted and logged once."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from wattspan.agent.scheduler import Scheduler
from wattspan.collectors.base import Sample


class Good:
    name = "good"

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, now: float) -> list[Sample]:
        self.calls += 1
        return [Sample("good", now, {}, {"n": self.calls})]

    def close(self) -> None:
        pass


class Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.fail = True

    def sample(self, now: float) -> list[Sample]:
        if self.fail:
            raise OSError("device gone")
        return [Sample("flaky", now, {}, {"ok": 1})]

    def close(self) -> None:
        raise RuntimeError("close fails too")


def test_failing_collector_is_isolated_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[list[Sample]] = []
    good, flaky = Good(), Flaky()
    sch = Scheduler([flaky, good], 0.01, got.append)
    with caplog.at_level(logging.INFO, logger="wattspan.scheduler"):
        for _ in range(5):
            sch.tick(force=True)
        flaky.fail = False
        sch.tick(force=True)
    assert [len(b) for b in got] == [1, 1, 1, 1, 1, 2]
    assert good.calls == 6
    assert sch.stats()["flaky"]["errors_total"] == 5
    assert sch.stats()["good"]["errors_total"] == 0
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(failed) == 1 and "device gone" in failed[0].getMessage()
    assert len(recovered) == 1
    sch.close()  # a collector whose close raises does not break shutdown


def test_collector_intervals_are_respected() -> None:
    got: list[list[Sample]] = []
    fast, slow = Good(), Good()
    slow.name = "slow"
    sch = Scheduler([fast, slow], 0.02, got.append, intervals={"slow": 0.2})
    sch.start()
    time.sleep(0.5)
    sch.stop()
    assert fast.calls >= 3 * slow.calls
    assert slow.calls >= 1


def test_ticks_fall_on_a_fixed_grid_and_overruns_are_counted() -> None:
    stamps: list[float] = []

    class Slow(Good):
        name = "slow"

        def sample(self, now: float) -> list[Sample]:
            stamps.append(time.monotonic())
            if len(stamps) == 3:
                time.sleep(0.25)  # longer than two intervals
            return []

    sch = Scheduler([Slow()], 0.1, lambda s: None)
    sch.start()
    deadline = time.monotonic() + 10
    while len(stamps) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    sch.stop()
    assert sch.missed_ticks >= 2
    # Every tick starts on the grid start + k * interval (k integer), whatever happened before.
    base = stamps[0]
    for t in stamps[1:]:
        k = round((t - base) / 0.1)
        assert abs((t - base) - k * 0.1) < 0.05


def test_emit_failure_does_not_stop_sampling() -> None:
    def boom(samples: list[Sample]) -> None:
        raise RuntimeError("sink down")

    g = Good()
    sch = Scheduler([g], 0.01, boom)
    done = threading.Event()
    sch.start()
    done.wait(0.2)
    sch.stop()
    assert g.calls > 1
    assert sch.emit_errors == sch.ticks


def test_agent_applies_a_collectors_own_interval(tmp_path, monkeypatch) -> None:
    from wattspan.agent import daemon
    from wattspan.agent.config import load_config

    gpu, cpu = Good(), Good()
    gpu.name, cpu.name = "nvml", "cpu"
    monkeypatch.setattr(daemon, "build_collectors", lambda *_a, **_k: [cpu, gpu])
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[collectors.nvml]\ninterval = 0.2\n")
    agent = daemon.Agent(
        load_config(cfg, environ={}), interval=0.02, serve_metrics=False, otlp=False
    )
    try:
        agent.scheduler.start()
        time.sleep(0.5)
        agent.scheduler.stop()
    finally:
        agent.stop()
    assert cpu.calls >= 3 * gpu.calls
    assert gpu.calls >= 1
