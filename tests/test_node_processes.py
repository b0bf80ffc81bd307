"""The node-wide process history (collectors/node_processes.py) and what uses it: CPU figures
for processes the agent never watched, and per-process energy for the whole node.

The bounds and pid reuse are tested against a fake ``/proc`` (stat files written by the
test), where start times and CPU figures are chosen; the rest against real processes and a
real ``wattspan agent``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.procs import free_port, wait_for
from tests.test_agent_daemon import AgentProc
from tests.test_peer_pid import PLAIN, _plain_env
from wattspan.agent.attribution import Series, SpanWindow, attribute, build_series
from wattspan.agent.ingest import TelemetryIngest
from wattspan.agent.pids import PID_MAX
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.process_energy import ProcessEnergySink
from wattspan.agent.records import SpanRecord
from wattspan.agent.store import Store
from wattspan.collectors.base import Sample
from wattspan.collectors.node_processes import CLK_TCK, NodeProcessCollector

BOOT = 1_000_000.0  # the fake node's boot time, Unix s


class FakeProc:
    """A ``/proc`` of stat files; CPU in clock ticks, start in clock ticks since boot."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def set(
        self, pid: int, cpu: int, start: int, comm: str = "w (x) y", kthread: bool = False
    ) -> None:
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        flags = 0x00200000 if kthread else 0x400100
        # Fields 3..22 of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt
        # majflt cmajflt utime stime cutime cstime priority nice threads itrealvalue start.
        rest = f"S 1 1 1 0 -1 {flags} 0 0 0 0 {cpu - cpu // 3} {cpu // 3} 0 0 20 0 1 0 {start}"
        (d / "stat").write_text(f"{pid} ({comm}) {rest} 100 200 300\n")

    def remove(self, pid: int) -> None:
        (self.root / str(pid) / "stat").unlink()
        (self.root / str(pid)).rmdir()


@pytest.fixture
def fake(tmp_path: Path) -> FakeProc:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "self").mkdir()  # not a pid: skipped
    return FakeProc(tmp_path / "proc")


def collector(fake: FakeProc, **kw: float) -> NodeProcessCollector:
    c = NodeProcessCollector(proc=str(fake.root), **kw)  # type: ignore[arg-type]
    c._boot = BOOT
    return c


def t(seconds: float) -> float:
    return BOOT + 1000.0 + seconds


def ticks(seconds: float) -> int:
    return round(seconds * CLK_TCK)


def test_cpu_seconds_interpolates_between_samples_and_knows_a_late_process(
    fake: FakeProc,
) -> None:
    c = collector(fake)
    fake.set(10, cpu=ticks(5.0), start=ticks(1.0))  # running long before the agent
    fake.set(11, cpu=0, start=ticks(1.0), kthread=True)
    c.sample(t(0))
    # Born 0.5 s into the interval before its first sample, already 0.4 s of CPU in.
    fake.set(20, cpu=ticks(0.4), start=ticks(1000.5))
    fake.set(10, cpu=ticks(6.0), start=ticks(1.0))
    c.sample(t(1))
    fake.set(20, cpu=ticks(1.4), start=ticks(1000.5))
    c.sample(t(2))
    fake.remove(20)  # exited: its history outlives it
    c.sample(t(3))
    assert c.cpu_seconds(10, t(0), t(1)) == pytest.approx(1.0)
    assert c.cpu_seconds(10, t(0.5), t(1)) == pytest.approx(0.5)
    # Before the agent's first sample nothing is known of an old process...
    assert c.cpu_seconds(10, t(-1), t(1)) is None
    # ...but a process born between two samples had used nothing at its start.
    assert c.cpu_seconds(20, t(0.5), t(2)) == pytest.approx(1.4)
    assert c.cpu_seconds(20, t(0), t(2)) == pytest.approx(1.4)
    assert c.cpu_seconds(20, t(0.5), t(1)) == pytest.approx(0.4)
    # Past its exit the figure holds.
    assert c.cpu_seconds(20, t(1.5), t(3)) == pytest.approx(0.5)
    assert c.cpu_seconds(11, t(0), t(1)) is None, "kernel threads are not tracked"
    ts, cpu = c.series(20)  # type: ignore[misc]
    assert ts[0] == pytest.approx(t(0.5)) and cpu[0] == 0.0
    assert cpu[-1] == pytest.approx(1.4)


def test_pid_reuse_keeps_two_processes_apart(fake: FakeProc) -> None:
    c = collector(fake)
    fake.set(30, cpu=ticks(2.0), start=ticks(10.0))
    c.sample(t(0))
    fake.set(30, cpu=ticks(3.0), start=ticks(10.0))
    c.sample(t(1))
    # Between two samples the first process exits and a new one gets its pid.
    fake.set(30, cpu=ticks(0.2), start=ticks(1001.5))
    c.sample(t(2))
    fake.set(30, cpu=ticks(0.7), start=ticks(1001.5))
    c.sample(t(3))
    assert c.cpu_seconds(30, t(0), t(1)) == pytest.approx(1.0), "the old process"
    assert c.cpu_seconds(30, t(2), t(3)) == pytest.approx(0.5), "the new process"
    # The new process's figure never goes through the old one's: from its start it used
    # 0.7 s, not 0.7 - 3.0.
    assert c.cpu_seconds(30, t(1.5), t(3)) == pytest.approx(0.7)
    old, new = c.series(30, t(0.5)), c.series(30, t(2.5))
    assert old is not None and new is not None
    assert max(old[1]) == pytest.approx(3.0) and max(new[1]) == pytest.approx(0.7)


def test_history_is_bounded_in_count(fake: FakeProc) -> None:
    c = collector(fake, max_processes=5)
    for pid in range(100, 108):
        fake.set(pid, cpu=pid, start=ticks(5.0))
    c.sample(t(0))
    assert c.tracked == 5
    assert c.untracked_total == 3
    # Exited processes make room for new ones, the one that exited first first.
    fake.remove(100)
    fake.remove(101)
    c.sample(t(1))
    fake.set(200, cpu=1, start=ticks(1001.5))
    fake.set(201, cpu=1, start=ticks(1001.5))
    c.sample(t(2))
    assert c.tracked == 5
    assert c.series(200) is not None and c.series(201) is not None
    assert c.series(100) is None and c.series(101) is None
    out = c.sample(t(3))
    assert out[0].fields == {"processes": 5, "untracked_total": 3}


def test_history_is_bounded_in_time(fake: FakeProc) -> None:
    window = 20.0
    c = collector(fake, window=window)
    fake.set(40, cpu=0, start=ticks(5.0))
    fake.set(41, cpu=0, start=ticks(5.0))
    for i in range(400):
        fake.set(40, cpu=ticks(0.5 * i), start=ticks(5.0))  # busy: a vertex per tick
        if i == 50:
            fake.remove(41)
        c.sample(t(i))
    ts, cpu = c.series(40)  # type: ignore[misc]
    # Trimmed every 16 ticks to the vertex in force at the cutoff.
    assert t(399) - ts[0] <= window + 17
    assert len(ts) <= window + 18
    assert cpu[-1] == pytest.approx(0.5 * 399)
    assert c.cpu_seconds(40, t(390), t(399)) == pytest.approx(4.5)
    assert c.cpu_seconds(40, t(300), t(399)) is None, "older than the window"
    assert c.series(41) is None, "an exited process leaves once its last read is too old"
    for p in c._live.values():
        assert len(p.times) <= window + 18


def test_an_idle_process_is_read_less_often_and_its_figure_stays_exact(fake: FakeProc) -> None:
    c = collector(fake)
    reads: list[int] = []
    real = c._read

    def counting(pid: int) -> bytes | None:
        reads.append(pid)
        return real(pid)

    c._read = counting  # type: ignore[method-assign]
    fake.set(50, cpu=100, start=ticks(5.0))
    for i in range(40):
        c.sample(t(i))
    assert reads.count(50) < 12, "an idle process is not read every tick"
    fake.set(50, cpu=100 + ticks(2.0), start=ticks(5.0))
    for i in range(40, 60):
        c.sample(t(i))
    # It woke at some point after its last read and is known to have used 2 s between
    # that read and the next: no more, no less over the whole span.
    assert c.cpu_seconds(50, t(0), t(59)) == pytest.approx(2.0)
    assert c.cpu_seconds(50, t(0), t(30)) == pytest.approx(0.0)


def _unused_pids(n: int) -> list[int]:
    """Pids no process on this node has (the ingest checks a client's pid in the real
    /proc; the fake one holds their stat files)."""
    out = []
    pid = min(PID_MAX, 4_000_000)
    while len(out) < n:
        if not Path(f"/proc/{pid}").exists():
            out.append(pid)
        pid -= 1
    return out


def _recomputed_cpu(r: dict[str, object], start: float, end: float) -> float:
    """A span's CPU seconds from its stored ``cpu_points`` alone, by numpy's interpolation."""
    pts = np.array(r["cpu_points"], dtype=float)
    v = np.interp([start, end], pts[:, 0], pts[:, 1])
    return max(float(v[1] - v[0]), 0.0)


def test_late_spans_cpu_from_the_history_is_recomputed_from_the_store(
    fake: FakeProc, tmp_path: Path
) -> None:
    """Spans of a process the agent never watched (``late``) and of one it began watching
    during the span (``spliced``) take their CPU from the node-wide history, which is not
    stored; their stored results hold the points read, and the figure and the whole
    attribution are recomputed from the store alone."""
    late, spliced = _unused_pids(2)
    c = collector(fake)
    store = Store(tmp_path / "s.db")
    ingest = TelemetryIngest(
        store=store, pipeline=Pipeline(), run_id="run", interval=1.0, node_processes=c
    )
    # CPU seconds at t(k): late uses 0.3 s per second, spliced 0.1 then 0.6.
    for k in range(8):
        fake.set(late, cpu=ticks(2.0 + 0.3 * k), start=ticks(10.0))
        own = 5.0 + (0.1 * k if k < 3 else 0.3 + 0.6 * (k - 3))
        fake.set(spliced, cpu=ticks(own), start=ticks(10.0))
        c.sample(t(k))
        node = [
            Sample(
                "power_model",
                t(k),
                {"domain": "cpu", "estimated": "true"},
                {"energy_joules_total": 40.0 * k, "idle_power_watts": 10.0},
            ),
            Sample("cpu", t(k), {"cpu": "total"}, {"user_seconds_total": 1.5 * k}),
        ]
        if k >= 3:  # the agent watches spliced's tree from t(3) on (its children: +4 s)
            node.append(
                Sample(
                    "process_tree",
                    t(k),
                    {"root": str(spliced)},
                    {"cpu_user_seconds_total": own + 4.0, "cpu_system_seconds_total": 0.0},
                )
            )
        store.write_samples("run", node)
        ingest.write(node)

    def span(i: int, pid: int, a: float, b: float) -> SpanRecord:
        return SpanRecord(
            f"{1:032x}", f"{i:016x}", None, f"s{i}", "internal", int(a * 1e9), int(b * 1e9), pid=pid
        )

    spans = [span(1, late, t(0.5), t(2.25)), span(2, spliced, t(1.5), t(4.5))]
    assert ingest.on_spans(spans) is None  # no pid refused
    ingest.write([])  # nothing new: the spans are covered already
    assert ingest.attribute_due(force=True) == 2
    by_name = {row.name: row for row in store.spans()}
    stored = store.samples("run")
    for name, pid, expected in (("s1", late, 0.3 * 1.75), ("s2", spliced, 0.15 + 0.9)):
        row = by_name[name]
        r = row.resources
        assert r["cpu_source"] == "sampled"
        assert r["cpu_seconds"] == pytest.approx(expected, abs=2.0 / CLK_TCK)
        # The figure from the stored points alone.
        assert _recomputed_cpu(r, row.start_ts, row.end_ts) == pytest.approx(
            r["cpu_seconds"], rel=1e-12
        )
        # And the whole attribution from the stored samples plus those points.
        series = build_series(stored)
        pts = r["cpu_points"]
        series.proc_cpu[pid] = Series([p[0] for p in pts], [p[1] for p in pts])
        (again,) = attribute(
            [SpanWindow(row.start_ts, row.end_ts, row.pid)],
            series,
            r["idle_power_watts"],
            r["idle_method"],
        )
        assert again == {k: v for k, v in r.items() if k != "cpu_points"}
        assert 0.0 < r["process_energy_joules"] < r["active_energy_joules"]
    # Before the watched tree's first sample the history moves as the process's own and is
    # shifted to meet the tree's figure (+4 s of children).
    pts = by_name["s2"].resources["cpu_points"]
    assert pts[0][0] == pytest.approx(t(1)) and pts[0][1] == pytest.approx(5.1 + 4.0)
    assert [p[0] for p in pts[-2:]] == [pytest.approx(t(4)), pytest.approx(t(5))]
    # The history alone agrees for the process never watched.
    assert by_name["s1"].resources["cpu_seconds"] == pytest.approx(
        c.cpu_seconds(late, t(0.5), t(2.25)), rel=1e-12
    )
    store.close()


def test_process_energy_sums_to_the_active_energy_of_each_interval(fake: FakeProc) -> None:
    c = collector(fake)
    got: list[Sample] = []

    class Capture:
        name = "capture"

        def write(self, samples: list[Sample]) -> None:
            got.extend(s for s in samples if s.source == "process_energy")

        def flush(self, timeout: float | None = None) -> None: ...

        def close(self, timeout: float | None = None) -> None: ...

        def stats(self) -> dict[str, float]:
            return {}

    pipeline = Pipeline([Capture()], keep_latest=False)
    sink = ProcessEnergySink(c, pipeline, top_n=3, idle=lambda: 20.0)
    pipeline.add_sink(sink)
    energy = busy = 0.0
    cpu = {pid: 0 for pid in range(60, 66)}
    for i in range(6):
        for pid, v in cpu.items():
            fake.set(pid, cpu=v, start=ticks(5.0), comm=f"p{pid}")
        tags = {"domain": "cpu", "estimated": "true"}
        pipeline.emit(
            [
                *c.sample(t(i)),
                Sample("cpu", t(i), {"cpu": "total"}, {"user_seconds_total": busy}),
                Sample("power_model", t(i), tags, {"energy_joules_total": energy}),
            ]
        )
        # Next interval: process p uses (p - 59) * 0.1 s, the node 3 s busy, 100 J.
        for pid in cpu:
            cpu[pid] += ticks((pid - 59) * 0.1)
        busy += 3.0
        energy += 100.0 + 10 * i
    assert sink.intervals == 5
    by_tick: dict[float, list[Sample]] = {}
    for s in got:
        by_tick.setdefault(s.ts, []).append(s)
    assert len(by_tick) == 5
    for i, (_ts, samples) in enumerate(sorted(by_tick.items()), start=1):
        names = {s.tags["name"] for s in samples}
        assert "other" in names and len(samples) == 4
        active = 100.0 + 10 * (i - 1) - 20.0
        assert sum(float(s.fields["power_watts"]) for s in samples) == pytest.approx(active)
        top = {s.tags["pid"]: float(s.fields["power_watts"]) for s in samples}
        # The busiest three by CPU time; a share is its CPU over the node's busy time.
        assert set(top) == {"65", "64", "63", "other"}
        assert top["65"] == pytest.approx(0.6 / 3.0 * active)
        assert top["other"] == pytest.approx((3.0 - 0.6 - 0.5 - 0.4) / 3.0 * active)
    last = {s.tags["pid"]: s for s in by_tick[max(by_tick)]}
    assert float(last["65"].fields["joules_total"]) == pytest.approx(
        0.2 * sum(100.0 + 10 * k - 20.0 for k in range(5))
    )


def _metric(text: str, name: str) -> dict[str, float]:
    out = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


@pytest.mark.server
def test_a_process_the_agent_never_watched_gets_its_cpu_and_the_node_its_top_n(
    tmp_path: Path,
) -> None:
    otlp = free_port()
    agent = AgentProc(
        tmp_path,
        "--otlp-port",
        str(otlp),
        "--interval",
        "0.1",
        env={"WATTSPAN_COLLECTORS__NODE_PROCESSES__TOP_N": "3"},
    )
    client = None
    try:
        agent.wait_ready()
        # The plain OTel SDK client sends its only span at exit, with no CPU figure of its
        # own: before it arrives the agent has never heard of the process.
        client = subprocess.Popen(
            [sys.executable, "-c", PLAIN, "go", "2.0"],
            env=_plain_env(f"http://127.0.0.1:{otlp}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # While it burns it is the node's top process: /metrics names it.
        assert client.stdout is not None
        pid = json.loads(client.stdout.readline())["pid"]
        wait_for(
            lambda: (
                f'pid="{pid}"' in agent.metrics()
                and "wattspan_process_energy_power_watts" in agent.metrics()
            ),
            30,
            "the burner in process_energy",
        )
        text = agent.metrics()
        assert f'root="{pid}"' not in text, "the agent must not be watching it yet"
        sums = []
        for _ in range(10):
            text = agent.metrics()
            power = _metric(text, "wattspan_process_energy_power_watts")
            model = _metric(text, "wattspan_power_model_power_watts")
            idle = _metric(text, "wattspan_power_model_idle_power_watts")
            assert 'name="other",pid="other"' in power
            assert 'name="other",pid="other"' in _metric(
                text, "wattspan_process_energy_joules_total"
            )
            (m,), (i,) = model.values(), idle.values()
            sums.append((sum(power.values()), m - i))
        # A scrape may fall between a tick's samples and the process_energy they give rise
        # to; most do not.
        matching = [a for a, b in sums if a == pytest.approx(b, rel=1e-6, abs=1e-9)]
        assert len(matching) >= 5, sums
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        burn_cpu = json.loads(out.strip().splitlines()[-1])["burn_cpu"]

        def attributed() -> bool:
            return any(s.name == "burn" and s.resources for s in Store(agent.store).spans())

        wait_for(attributed, 30, "the burn span attributed")
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        assert agent.stop() == 0
    (span,) = [s for s in Store(agent.store).spans() if s.name == "burn"]
    assert span.pid == pid
    r = span.resources
    assert r["cpu_source"] == "sampled"
    assert r["cpu_seconds"] == pytest.approx(burn_cpu, rel=0.10)
    # Read from the node-wide history, which the store does not hold: the points are.
    assert _recomputed_cpu(r, span.start_ts, span.end_ts) == pytest.approx(r["cpu_seconds"])
    assert 0.0 < r["process_cpu_share"] <= 1.0
