"""The idle model against a node whose power is known: ``P = P_idle + k * busy_cores``.

A powercap-shaped tree is advanced by a writer thread that reads the node's real busy CPU
from ``/proc/stat``, so whatever else runs on the machine, the node's energy follows the
model exactly. A CPU-burning child under ``wattspan run`` must then get
``process_energy = k * its CPU seconds`` (within 3 %), once the idle figure comes from a
calibration or from the regression, with one idle figure for every span of the run and
``process + other + idle == node`` for each span.

The tree is answered by a thread of this process, a little after the agent's tick reads
/proc/stat, so each stored energy reading is off the model (at the busy seconds stored
beside it) by a little; that offset is computed exactly from the stored samples and taken
out (:func:`_harness_offsets`), so a busy CI runner is not mistaken for a model error.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.test_rapl import FakePowercap
from wattspan.agent.calibration import Calibration
from wattspan.agent.store import Store

P_IDLE = 20.0  # W
K = 15.0  # W per busy core
RANGE = 10**12  # no wraps: they are tested elsewhere

CHILD = r"""
import time, wattspan

def spin(seconds):
    t0 = time.process_time()
    x = 0
    while time.process_time() < t0 + seconds:
        x += 1

burn = wattspan.track(spin, name="burn")

time.sleep(2.0)  # a quiet stretch first: the regression needs utilisation to vary
# Untracked burns around the spans: an edge where utilisation jumps falls inside a
# sample interval, whose busy time and energy are spread linearly over it, so a span
# bordered by idle loses up to a quarter of an interval of its busy energy there (the
# README's "How attribution works", tested in test_attribution.py).
spin(0.3)
for _ in range(3):
    burn(1.0)
spin(0.3)
"""


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # The fields the agent counts as busy (collectors/cpu.py BUSY_FIELDS): all but idle, iowait.
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _unread(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


@dataclass
class ModelledNode:
    root: Path
    #: wall-clock time of every answer, each written just after the energy it carries
    answers: list[float] = field(default_factory=list)


@pytest.fixture
def modelled_node(tmp_path: Path) -> Iterator[ModelledNode]:
    """The tree's ``energy_uj`` is a FIFO: each read by the agent opens it, and the writer
    answers with the energy the model gives for the busy CPU at that very moment, so the
    counter the agent reads never lags the CPU counter it read just before it (the cpu
    collector runs before rapl in a tick)."""
    pc = FakePowercap(tmp_path / "sys")
    zone = pc.add_zone("intel-rapl:0", "package-0", energy_uj=None, max_range_uj=RANGE)
    fifo = zone / "energy_uj"
    os.mkfifo(fifo, 0o644)
    stop = threading.Event()
    node = ModelledNode(pc.root)
    t0, b0 = time.monotonic(), _busy_seconds()

    def answer() -> None:
        while not stop.is_set():
            fd = os.open(fifo, os.O_WRONLY)  # blocks until a reader opens it
            try:
                p = select.poll()
                p.register(fd, 0)
                while not stop.is_set():
                    energy = P_IDLE * (time.monotonic() - t0) + K * (_busy_seconds() - b0)
                    os.write(fd, f"{int(energy * 1e6)}\n".encode())
                    node.answers.append(time.time())
                    # One answer per read: hold the pipe until its reader closes it (the
                    # write end then reports POLLERR), so the next read gets a fresh value.
                    # A reader still there long after taking its answer is a new one that
                    # opened meanwhile: answer it too.
                    while not p.poll(20) and _unread(fd):
                        pass
                    if p.poll(0):
                        break
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        stop.set()
        # Unblock the writer's open with a reader of our own, then let it finish.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        thread.join(2)
        os.close(fd)


def _run(tmp_path: Path, node: ModelledNode) -> tuple[dict, list, tuple[list, list]]:
    """The run's summary, its ``burn`` spans, and the harness's offsets per tick."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\nhost = "modelled"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[collectors.rapl]\nroot = "{node.root}"\n'
    )
    store = tmp_path / "w.db"
    p = subprocess.run(
        [
            *(sys.executable, "-m", "wattspan", "run", "--json", "--config", str(cfg)),
            *("--store", str(store), "--", sys.executable, "-c", CHILD),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    spans = [s for s in Store(store).spans(summary["run_id"]) if s.name == "burn"]
    assert len(spans) == 3
    return summary, spans, _harness_offsets(store, summary["run_id"])


def _harness_offsets(store: Path, run_id: str) -> tuple[list[float], list[float]]:
    """Per tick (ts), how far the stored energy is from the model at the stored busy
    seconds: ``E - P_idle * ts - K * busy``, up to a constant.

    The attribution interpolates energy and busy seconds linearly between ticks, and the
    model is linear in both, so a span's active energy is ``K * C + (D(t1) - D(t0))`` with
    ``C`` its interpolated busy seconds and ``D`` these offsets interpolated alike; its
    process energy ``s * active`` is then ``K * c`` plus ``s`` times that difference."""
    from wattspan.collectors.cpu import busy_seconds

    db = Store(store)
    energy = {x.ts: x.fields["energy_joules_total"] for x in db.samples(run_id, source="rapl")}
    busy = {
        x.ts: busy_seconds(x)
        for x in db.samples(run_id, source="cpu")
        if x.tags.get("cpu") == "total"
    }
    ts = sorted(set(energy) & set(busy))
    assert len(ts) > 10, "ticks with both an energy and a busy reading"
    t0 = ts[0]
    return ts, [energy[t] - P_IDLE * (t - t0) - K * busy[t] for t in ts]


def _check(summary: dict, spans: list, method: str, offsets: tuple[list, list]) -> None:
    idles = {(s.resources["idle_power_watts"], s.resources["idle_method"]) for s in spans}
    assert len(idles) == 1, f"one idle figure per run, got {idles}"
    ((watts, got_method),) = idles
    assert got_method == method
    assert watts == pytest.approx(P_IDLE, rel=0.03)
    assert summary["idle_method"] == method
    ts, d = offsets
    for s in spans:
        r = s.resources
        assert r["cpu_source"] == "self-reported"
        harness = r["process_cpu_share"] * float(
            np.interp(s.end_ts, ts, d) - np.interp(s.start_ts, ts, d)
        )
        # 3 %, plus what the idle estimate's own error (allowed 3 % above) moves into the
        # process's share over the span.
        slack = 0.03 * K * r["cpu_seconds"] + abs(watts - P_IDLE) * r["wall_seconds"]
        got = r["process_energy_joules"] - harness
        assert got == pytest.approx(K * r["cpu_seconds"], abs=slack), (harness, slack)
        parts = r["process_energy_joules"] + r["other_energy_joules"] + r["idle_energy_joules"]
        assert parts == pytest.approx(r["node_energy_total_joules"], rel=1e-9)


def test_calibrated_idle(tmp_path: Path, modelled_node: ModelledNode) -> None:
    Calibration(
        host="modelled",
        idle_watts=P_IDLE,
        domains=["package-0"],
        seconds=60.0,
        busy_ratio=0.0,
        measured_at=time.time(),
        quiet=True,
    ).save(tmp_path / "state")
    summary, spans, offsets = _run(tmp_path, modelled_node)
    _check(summary, spans, "calibration", offsets)


def test_regression_idle_without_calibration(tmp_path: Path, modelled_node: ModelledNode) -> None:
    summary, spans, offsets = _run(tmp_path, modelled_node)
    _check(summary, spans, "regression", offsets)


def test_calibrate_command_measures_the_quiet_node(
    tmp_path: Path, modelled_node: ModelledNode
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\nhost = "modelled"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[collectors.rapl]\nroot = "{modelled_node.root}"\n'
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "wattspan",
            "calibrate",
            "--seconds",
            "3",
            "--interval",
            "0.2",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    cal = Calibration.load(tmp_path / "state", "modelled")
    assert cal is not None and cal.domains == ["package-0"]
    # The node is this test machine: not idle, but its power follows the model, so the
    # quieter half of the intervals sits between P_idle and P_idle plus what was busy.
    # (3 % under: each read is answered by a thread of this process, a few ms late or early
    # on a busy VM, which moves a 0.2 s interval's energy by a per cent or two either way)
    assert 0.97 * P_IDLE <= cal.idle_watts <= P_IDLE + K * 2 * (os.cpu_count() or 1)
    assert (tmp_path / "state" / "calibration.json").stat().st_mode & 0o777 == 0o600
    assert ("not quiet" in p.stderr) is (not cal.quiet)
