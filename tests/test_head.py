"""The counters read at ``wattspan run``'s spawn (``collectors/head.py``): node energy and busy
CPU count from the spawn, not from the collectors' first sample tens of ms later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.test_rapl import FakePowercap, intel_two_socket
from wattspan.collectors import cpu, head, power_model, rapl
from wattspan.collectors.base import number

RANGE = 262_143_328_850


def test_cpu_times_read_as_psutil_reads_them() -> None:
    # Read between two psutil reads: each mode lies between them (jiffies only grow).
    before = psutil.cpu_times()
    ours = head.cpu_times()
    after = psutil.cpu_times()
    assert ours is not None and set(ours) == set(head.STAT_MODES)
    for mode, v in ours.items():
        # proc(5): idle and iowait, computed by tickless kernels at each read, may step back
        # a little between reads; the other modes only grow.
        slack = 0.1 if mode in ("idle", "iowait") else 0.0
        assert getattr(before, mode) - slack <= v <= getattr(after, mode) + slack, mode


def test_a_short_stat_line_gives_zeros_for_the_missing_modes(tmp_path: Path) -> None:
    old_kernel = tmp_path / "stat"
    old_kernel.write_text("cpu  100 0 50 1000 5 0 1\ncpu0 100 0 50 1000 5 0 1\n")
    times = head.cpu_times(str(old_kernel))
    assert times is not None and set(times) == set(head.STAT_MODES)
    assert times["steal"] == 0.0 and times["softirq"] == 1 / os.sysconf("SC_CLK_TCK")


def test_an_unreadable_stat_gives_no_cpu_times(tmp_path: Path) -> None:
    assert head.cpu_times(str(tmp_path / "absent")) is None
    garbled = tmp_path / "stat"
    garbled.write_text("cpu  12 x 3\n")
    assert head.cpu_times(str(garbled)) is None


def test_rapl_zones_read_under_the_keys_the_collector_uses(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    intel_two_socket(fake)
    fake.add_zone("intel-rapl:0:2", "uncore", top_level_link=False)  # nested only
    collector = rapl.RaplCollector(fake.root)
    for i, z in enumerate(collector._zones):
        fake.set(z.zone, 1000 * (i + 1))
    raw = head.rapl_uj(str(fake.root))
    # Every zone the collector reads, and under the same real path, with its raw value.
    assert {z.key: 1000 * (i + 1) for i, z in enumerate(collector._zones)} == raw
    assert head.rapl_uj(None) == {} and head.rapl_uj(str(tmp_path / "none")) == {}


def test_a_seeded_rapl_collector_counts_from_the_head_across_a_wrap(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=RANGE - 2_000_000, max_range_uj=RANGE)
    collector = rapl.RaplCollector(fake.root)
    h = head.read(str(fake.root), 100.0)
    fake.advance("intel-rapl:0", 5_000_000)  # the command's first instants; wraps the counter
    seeded = collector.seed(h)
    assert [(s.ts, s.fields["energy_joules_total"]) for s in seeded] == [(100.0, 0.0)]
    first = collector.sample(100.05)
    assert first[0].fields["energy_joules_total"] == pytest.approx(5.0)
    assert first[0].fields["power_watts"] == pytest.approx(5.0 / 0.05)
    assert collector.seed(h) == [], "a zone already read is not seeded again"


def test_unseeded_collectors_start_at_their_first_sample(tmp_path: Path) -> None:
    # What the seed changes: without it the same energy is not counted at all.
    fake = FakePowercap(tmp_path)
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000, max_range_uj=RANGE)
    collector = rapl.RaplCollector(fake.root)
    fake.advance("intel-rapl:0", 5_000_000)
    assert collector.sample(100.05)[0].fields["energy_joules_total"] == 0.0


def test_power_model_and_cpu_collector_integrate_from_the_head() -> None:
    modes = dict.fromkeys(head.STAT_MODES, 0.0)
    at_spawn = head.Head(10.0, dict(modes, idle=100.0), {})
    model = power_model.PowerModelCollector(tdp_watts=100.0, idle_fraction=0.3)
    [s0] = model.seed(at_spawn)
    assert (s0.ts, s0.fields["energy_joules_total"]) == (10.0, 0.0)
    c = cpu.CpuCollector(percpu=False)
    [t0] = c.seed(at_spawn)
    assert cpu.busy_seconds(t0) == 0.0
    # One core of two busy for the 0.5 s up to the first sample, read through the real
    # /proc/stat path: give both collectors that reading for their first tick.
    later = dict(modes, idle=100.5, user=0.5)
    cpu._last = (10.5, cpu.Stat(later, [], None, None))
    [s1] = model.sample(10.5)
    assert s1.fields["utilization_ratio"] == pytest.approx(0.5)
    assert s1.fields["energy_joules_total"] == pytest.approx((30.0 + 70.0 * 0.5) * 0.5)
    t1 = c.sample(10.5)[0]
    assert number(t1, "utilization_ratio") == pytest.approx(0.5)
    assert cpu.busy_seconds(t1) == pytest.approx(0.5)
    assert model.seed(at_spawn) == [] and c.seed(at_spawn) == []
    assert model.seed(head.Head(10.0, None, {})) == []


def _run(
    tmp_path: Path,
    root: Path,
    *cmd: str,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> dict:
    """``wattspan run --json`` of ``cmd`` with RAPL read under ``root``: its summary."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[collectors.rapl]\nroot = "{root}"\n')
    p = subprocess.run(
        [
            *(sys.executable, "-m", "wattspan", "run", "--json", "--config", str(cfg), *options),
            *("--store", str(tmp_path / "w.db"), "--", *cmd),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_energy_a_command_uses_before_the_first_sample_is_counted(tmp_path: Path) -> None:
    # The command moves the package counter by 5 J and ends: milliseconds, long before the
    # agent's collectors exist (40-70 ms after the spawn). Counted from their first sample
    # those 5 J were lost; counted from the spawn they are the run's node energy.
    fake = FakePowercap(tmp_path / "sys")
    zone = fake.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000, max_range_uj=RANGE)
    summary = _run(tmp_path, fake.root, "sh", "-c", f"echo 6000000 > {zone / 'energy_uj'}")
    assert summary["node_energy_joules"] == pytest.approx(5.0)
    [row] = summary["energy"]
    assert row["source"] == "rapl" and row["seconds"] >= summary["wall_seconds"]


def test_the_energy_window_covers_the_whole_command(tmp_path: Path) -> None:
    # No RAPL here: the power model integrates /proc/stat from the spawn, so its window
    # (joules over average watts) holds the command's wall time and the final sample's tail.
    summary = _run(tmp_path, tmp_path / "no-powercap", "sleep", "0.3")
    [row] = summary["energy"]
    assert row["source"] == "power_model"
    assert row["seconds"] == pytest.approx(row["joules"] / row["watts_avg"])
    assert row["seconds"] >= summary["wall_seconds"]
    assert summary["node_busy_cpu_seconds"] >= summary["cpu_seconds"]


def test_own_peak_rss_read_from_proc_status(tmp_path: Path) -> None:
    hwm = head.hwm_bytes()
    assert hwm is not None and hwm >= psutil.Process().memory_info().rss // 2
    fake = tmp_path / "status"
    fake.write_text("Name:\tx\nVmPeak:\t  900 kB\nVmHWM:\t    1936 kB\nVmRSS:\t 1000 kB\n")
    assert head.hwm_bytes(str(fake)) == 1936 * 1024
    fake.write_text("Name:\tx\n")
    assert head.hwm_bytes(str(fake)) is None


def test_a_peak_between_samples_is_the_runs_peak_rss(tmp_path: Path) -> None:
    # One sample right after the spawn, the next 30 s later: the grandchild that holds
    # 200 MB starts after the first and has ended before the final one, so no sample sees
    # it. wait4's ru_maxrss does; above wattspan's own peak at the spawn, it is the command's.
    big = tmp_path / "big.py"
    big.write_text("b = b'x' * 200_000_000\n")
    cmd = ("sh", "-c", f'sleep 0.3; "{sys.executable}" {big}')
    summary = _run(tmp_path, tmp_path / "no-powercap", *cmd, options=("--interval", "30"))
    assert summary["peak_rss_bytes"] >= 200_000_000


def test_a_large_environment_is_not_taken_for_the_commands_peak(tmp_path: Path) -> None:
    # posix_spawn builds the child's environment in wattspan's memory, after the counters
    # are read: 1.2 MB of it raised wattspan's own mark, which `true` inherits as its
    # ru_maxrss. The mark is read once the spawn has returned, so `true` has no peak.
    env = dict(os.environ, **{f"WATTSPAN_TEST_BIG_{i}": "x" * 100_000 for i in range(12)})
    assert "peak_rss_bytes" not in _run(tmp_path, tmp_path / "no-powercap", "true", env=env)


def test_a_command_no_sample_saw_has_no_peaks_rather_than_zeros(tmp_path: Path) -> None:
    # `true` has ended before the first sample: nothing measured its memory or a busiest
    # interval, and its ru_maxrss is wattspan's own memory at the spawn. "-", not 0.
    summary = _run(tmp_path, tmp_path / "no-powercap", "true")
    assert summary["exit_code"] == 0 and summary["cpu_seconds"] >= 0
    assert "peak_rss_bytes" not in summary
    assert "cpu_percent_peak" not in summary
