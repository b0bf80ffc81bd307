"""``wattspan.measure()``: in-process windows over the real collectors, nested and
overlapping, on a fabricated powercap tree with known energies and on the power model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import wattspan
from tests.test_rapl import AMD_RANGE, FakePowercap
from wattspan import measurement as measure_mod


@pytest.fixture
def rapl_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePowercap:
    fake = FakePowercap(tmp_path)
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000, max_range_uj=AMD_RANGE)
    fake.add_zone("intel-rapl:1", "package-1", energy_uj=5_000_000, max_range_uj=AMD_RANGE)
    fake.add_zone("intel-rapl:0:0", "dram", energy_uj=0, max_range_uj=AMD_RANGE)
    monkeypatch.setenv("WATTSPAN_COLLECTORS__RAPL__ROOT", str(fake.root))
    monkeypatch.setenv("WATTSPAN_COLLECTORS__NVML__ENABLED", "false")
    monkeypatch.setattr(measure_mod, "_meter", None)  # a fresh meter on this tree
    return fake


def test_nested_and_overlapping_windows_get_exact_energy(rapl_tree: FakePowercap) -> None:
    outer = wattspan.measure("outer").start()
    rapl_tree.advance("intel-rapl:0", 2_000_000)  # 2 J before a opens
    a = wattspan.measure("a").start()
    rapl_tree.advance("intel-rapl:0", 3_000_000)
    rapl_tree.advance("intel-rapl:1", 1_500_000)
    rapl_tree.advance("intel-rapl:0:0", 9_000_000)  # dram: inside package-0, never summed
    b = wattspan.measure("b").start()  # overlaps a
    rapl_tree.advance("intel-rapl:0", 4_000_000)
    a.stop()
    rapl_tree.advance("intel-rapl:1", 500_000)
    with wattspan.measure("inner") as inner:  # nested in b
        rapl_tree.advance("intel-rapl:0", 250_000)
    b.stop()
    outer.stop()

    assert a.energy_joules == pytest.approx(3.0 + 1.5 + 4.0)
    assert b.energy_joules == pytest.approx(4.0 + 0.5 + 0.25)
    assert inner.energy_joules == pytest.approx(0.25)
    assert outer.energy_joules == pytest.approx(2 + 3 + 1.5 + 4 + 0.5 + 0.25)
    assert set(outer.energy_by_domain) == {"package-0", "package-1"}
    assert outer.energy_by_domain["package-1"] == pytest.approx(2.0)
    assert not outer.energy_estimated
    assert outer.gpu_energy_joules is None
    # Stopped windows keep their figures while the counters move on.
    rapl_tree.advance("intel-rapl:0", 10_000_000)
    assert a.energy_joules == pytest.approx(8.5)


def test_a_window_across_a_counter_wrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePowercap(tmp_path)
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=990_000, max_range_uj=999_999)
    monkeypatch.setenv("WATTSPAN_COLLECTORS__RAPL__ROOT", str(fake.root))
    monkeypatch.setenv("WATTSPAN_COLLECTORS__NVML__ENABLED", "false")
    monkeypatch.setattr(measure_mod, "_meter", None)
    with wattspan.measure() as m:
        fake.advance("intel-rapl:0", 30_000)  # wraps past 999_999
    assert m.energy_joules == pytest.approx(0.03)


def test_cpu_and_wall_seconds_are_this_process(rapl_tree: FakePowercap) -> None:
    with wattspan.measure() as m:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.2:
            pass
        time.sleep(0.1)
    assert m.cpu_seconds == pytest.approx(0.2, abs=0.05)
    assert m.wall_seconds >= 0.3
    assert m.as_dict()["cpu_seconds"] == m.cpu_seconds


def test_power_model_is_labelled_estimated(tmp_path: Path) -> None:
    # A fresh interpreter: no RAPL tree at all, so the power model reads /proc/stat.
    code = textwrap.dedent(
        """
        import json, time, wattspan
        with wattspan.measure() as m:
            t0 = time.process_time()
            while time.process_time() - t0 < 0.3:
                pass
        print(json.dumps(m.as_dict()))
        """
    )
    env = {
        "WATTSPAN_COLLECTORS__RAPL__ROOT": str(tmp_path / "none"),
        "WATTSPAN_COLLECTORS__NVML__ENABLED": "false",
        "PATH": "/usr/bin:/bin",
    }
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert p.returncode == 0, p.stderr
    import json

    d = json.loads(p.stdout)
    assert d["energy_estimated"] is True
    assert set(d["energy_by_domain"]) == {"cpu"}
    # At least the model's idle power over the window, and a busy core on top of it.
    from wattspan.collectors.power_model import PowerModelCollector

    model = PowerModelCollector()
    assert d["energy_joules"] >= model.power(0.0) * d["wall_seconds"] * 0.9
    assert d["energy_joules"] <= model.power(1.0) * d["wall_seconds"] * 1.1


def test_a_window_must_start_before_it_stops(rapl_tree: FakePowercap) -> None:
    m = wattspan.measure()
    with pytest.raises(RuntimeError, match="before it was started"):
        m.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = m.energy_joules


def test_measure_needs_no_opentelemetry() -> None:
    code = (
        "import sys, wattspan\n"
        "with wattspan.measure(): pass\n"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
