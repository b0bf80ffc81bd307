"""cpu, memory, process and power-model collectors against the real /proc."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wattspan.collectors import cpu, memory, power_model, process
from wattspan.collectors.base import Collector


def _proc_stat_total_user() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[1]) / os.sysconf("SC_CLK_TCK")


def _core_names() -> list[str]:
    """The cores /proc/stat lists, by number (an offline one is absent)."""
    with open("/proc/stat") as f:
        return [ln.split()[0][3:] for ln in f if ln.startswith("cpu") and not ln.startswith("cpu ")]


def test_collectors_implement_the_interface() -> None:
    for c in (cpu.create(), memory.create(), process.create([os.getpid()]), power_model.create()):
        assert isinstance(c, Collector)


def test_cpu_total_and_per_core_against_proc_stat() -> None:
    c = cpu.create(percpu=True)
    first = c.sample(time.time())
    assert [s.tags["cpu"] for s in first] == ["total", *_core_names()]
    total = first[0]
    # Same counter as /proc/stat's first line, read a moment apart.
    assert total.fields["user_seconds_total"] == pytest.approx(_proc_stat_total_user(), abs=0.5)
    assert "utilization_ratio" not in total.fields  # no interval yet: no made-up ratio
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass
    second = c.sample(time.time())
    t = second[0].fields
    assert 0.0 <= t["utilization_ratio"] <= 1.0
    modes = [k for k in t if k.endswith("_ratio") and k != "utilization_ratio"]
    assert sum(t[k] for k in modes) == pytest.approx(1.0, abs=1e-6)
    assert t["utilization_ratio"] > 0  # we just burned CPU
    assert t["context_switches_total"] >= first[0].fields["context_switches_total"]
    assert t["load1"] == pytest.approx(os.getloadavg()[0], abs=1.0)
    for s in second[1:]:
        assert 0.0 <= s.fields["utilization_ratio"] <= 1.0


def test_memory_matches_proc_meminfo() -> None:
    s = memory.create().sample(time.time())[0]
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            meminfo[k] = int(v.split()[0]) * 1024
    assert s.fields["total_bytes"] == meminfo["MemTotal"]
    assert s.fields["available_bytes"] == pytest.approx(meminfo["MemAvailable"], rel=0.05)
    assert s.fields["swap_total_bytes"] == meminfo["SwapTotal"]
    assert 0 < s.fields["used_ratio"] < 1


BURN_TREE = r"""
import os, subprocess, sys, time
burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.4: pass\n"
kids = [subprocess.Popen([sys.executable, "-c", burn + "time.sleep(30)"]) for _ in range(2)]
print("ready", flush=True)
time.sleep(30)
"""


def test_process_tree_follows_descendants_and_survives_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BURN_TREE], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        col = process.create([proc.pid])
        deadline = time.monotonic() + 20
        tree = None
        while time.monotonic() < deadline:
            samples = col.sample(time.time())
            tree = next(s for s in samples if s.source == "process_tree")
            cpu_s = tree.fields["cpu_user_seconds_total"] + tree.fields["cpu_system_seconds_total"]
            if tree.fields["processes"] == 3 and cpu_s > 0.7:
                break
            time.sleep(0.1)
        assert tree is not None and tree.fields["processes"] == 3
        per = [s for s in samples if s.source == "process"]
        assert {int(s.tags["pid"]) for s in per} >= {proc.pid}
        assert all(s.tags["root"] == str(proc.pid) for s in per)
        assert sum(s.fields["rss_bytes"] for s in per) == tree.fields["rss_bytes"]
        assert all(s.fields["peak_rss_bytes"] >= s.fields["rss_bytes"] for s in per)
        before = tree.fields["cpu_user_seconds_total"] + tree.fields["cpu_system_seconds_total"]
        # Kill the grandchildren: they vanish between samples, which is normal, and the
        # tree's CPU counter must not go backwards.
        kids = [int(s.tags["pid"]) for s in per if int(s.tags["pid"]) != proc.pid]
        for pid in kids:
            os.kill(pid, 9)
        time.sleep(0.3)
        after_samples = col.sample(time.time())
        after = next(s for s in after_samples if s.source == "process_tree")
        assert after.fields["processes"] == 1
        total_after = (
            after.fields["cpu_user_seconds_total"] + after.fields["cpu_system_seconds_total"]
        )
        assert total_after >= before - 1e-9  # sums of the same floats, another order
    finally:
        proc.kill()
        proc.wait()
    gone = col.sample(time.time())
    tree = next(s for s in gone if s.source == "process_tree")
    assert tree.fields["processes"] == 0
    assert tree.fields["cpu_user_seconds_total"] + tree.fields["cpu_system_seconds_total"] >= (
        total_after - 1e-9
    )


def test_process_collector_tolerates_unknown_root() -> None:
    # A PID that does not exist (pid_max is far below this) is simply an empty tree.
    col = process.ProcessCollector([2**22 + 12345])
    tree = next(s for s in col.sample(time.time()) if s.source == "process_tree")
    assert tree.fields["processes"] == 0


def test_power_model_is_linear_and_integrates() -> None:
    pm = power_model.PowerModelCollector(tdp_watts=100.0, idle_fraction=0.2)
    assert pm.power(0.0) == pytest.approx(20.0)
    assert pm.power(1.0) == pytest.approx(100.0)
    assert pm.power(0.5) == pytest.approx(60.0)
    assert pm.power(7.0) == pytest.approx(100.0)  # clamped
    t = time.time()
    samples = [pm.sample(t)[0]]
    for i in range(1, 6):
        time.sleep(0.05)
        samples.append(pm.sample(t + i * 0.5)[0])
    assert samples[0].fields["energy_joules_total"] == 0.0
    for a, b in itertools.pairwise(samples):
        assert b.tags == {"domain": "cpu", "estimated": "true"}
        watts = b.fields["power_watts"]
        assert 20.0 <= watts <= 100.0
        assert watts == pytest.approx(pm.power(b.fields["utilization_ratio"]))
        # Energy is exactly the integral of the reported power over the sample spacing.
        delta = b.fields["energy_joules_total"] - a.fields["energy_joules_total"]
        assert delta == pytest.approx(watts * 0.5)


def test_descendants_from_the_kernel_match_psutils_scan() -> None:
    import psutil

    from wattspan.collectors.process import _descendants

    tree = subprocess.Popen(
        ["bash", "-c", "sleep 30 & (sleep 30; true) & bash -c 'sleep 30 & wait' & wait"]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            expected = {c.pid for c in psutil.Process(tree.pid).children(recursive=True)}
            if len(expected) >= 5:
                break
            time.sleep(0.05)
        got = _descendants(tree.pid)
        assert got is not None  # this kernel has CONFIG_PROC_CHILDREN
        assert set(got) == expected
    finally:
        for c in psutil.Process(tree.pid).children(recursive=True):
            c.kill()
        tree.kill()
        tree.wait()
    assert _descendants(2**22 + 7) == []  # gone: an empty tree, not an error


def test_one_read_of_proc_stat_gives_what_psutils_three_reads_give() -> None:
    import psutil

    before = (psutil.cpu_times(), psutil.cpu_times(percpu=True), psutil.cpu_stats())
    st = cpu.read_stat()
    after = (psutil.cpu_times(), psutil.cpu_times(percpu=True), psutil.cpu_stats())

    def between(ours: dict[str, float], lo: object, hi: object) -> None:
        for mode, v in ours.items():
            # proc(5): idle and iowait may step back a little between reads on tickless
            # kernels; the other modes only grow.
            slack = 0.1 if mode in ("idle", "iowait") else 0.0
            assert getattr(lo, mode) - slack <= v <= getattr(hi, mode) + slack, mode

    between(st.total, before[0], after[0])
    assert [name for name, _ in st.cores] == _core_names()
    for (_, ours), lo, hi in zip(st.cores, before[1], after[1], strict=True):
        between(ours, lo, hi)
    assert st.ctxt is not None and before[2].ctx_switches <= st.ctxt <= after[2].ctx_switches
    assert st.intr is not None and before[2].interrupts <= st.intr <= after[2].interrupts


def test_proc_stat_of_an_old_kernel_with_an_offline_core(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    # No steal column (before 2.6.11), cpu1 offline, no ctxt line; intr's per-source counts
    # after the total are not the total.
    stat.write_text(
        "cpu  200 0 100 2000 10 0 2\ncpu0 100 0 50 1000 5 0 1\ncpu2 100 0 50 1000 5 0 1\n"
        "intr 12345 1 2 3\nbtime 1700000000\n"
    )
    st = cpu.read_stat(str(stat))
    assert st.total["user"] == 200 / ticks and st.total["steal"] == 0.0
    assert [name for name, _ in st.cores] == ["0", "2"]
    assert st.intr == 12345 and st.ctxt is None
    for bad in ("intr 1\n", "cpu  1 x 3\n"):
        stat.write_text(bad)
        with pytest.raises(ValueError):
            cpu.read_stat(str(stat))
    # A garbled core line fails the per-core figures only: the node's (all the power model
    # reads) are still there, and no core line is parsed for them.
    stat.write_text("cpu  200 0 100 2000\ncpu0 1 x 3\n")
    st = cpu.read_stat(str(stat))
    assert st.total["idle"] == 2000 / ticks
    with pytest.raises(ValueError):
        st.cores  # noqa: B018


def test_a_tick_reads_proc_stat_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real = cpu.read_stat

    def counted(path: str = "/proc/stat") -> cpu.Stat:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(cpu, "read_stat", counted)
    now = time.time()
    c = cpu.create(percpu=True)
    out = c.sample(now)
    power_model.create().sample(now)
    assert reads == ["/proc/stat"]
    assert {"context_switches_total", "interrupts_total"} <= set(out[0].fields)
    assert len(out) == 1 + len(cpu.read_stat().cores)
