"""The idle model against a node whose power is known: ``P = P_idle + k * busy_cores``.

A powercap-shaped tree is advanced by a writer thread that reads the node's real busy CPU
from ``/proc/stat``, so whatever else runs on the machine, the node's energy follows the
model exactly. A CPU-burning child under ``wattspan run`` must then get
``process_energy = k * its CPU seconds`` (within 3 %), once the idle figure comes from a
calibration or from the regression, with one idle figure for every span of the run and
``process + other + idle == node`` for each span.

The tree is answered by a thread of this process, a little after the agent's tick reads
it; the fixture records when, and each span is allowed what that lateness can explain
(:func:`_lateness_joules`), so a busy CI runner is not mistaken for a model error.
"""

from __future__ import annotations

import array
import bisect
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


def _run(tmp_path: Path, node: ModelledNode) -> tuple[dict, list, list[float]]:
    """The run's summary, its ``burn`` spans, and the times of its RAPL samples."""
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
    ticks = [x.ts for x in Store(store).samples(summary["run_id"], source="rapl")]
    return summary, spans, ticks


def _lateness_joules(node: ModelledNode, ticks: list[float], t0: float, t1: float) -> float:
    """The most the answers' lateness can move a span's active energy.

    A tick stamped ``ts`` reads /proc/stat at some ``ts_a >= ts`` and then the FIFO, whose
    answer carries the model's energy at ``ts_w >= ts_a``: ``P_idle * (ts_w - ts)`` plus
    ``K`` times what the node's CPUs did in ``[ts_a, ts_w]``, so that sample's energy is
    high by between 0 and ``(P_idle + K * cores) * (ts_w - ts)``. An interpolated end is
    a mix of its two samples, and a span's energy is the difference of two such ends, so
    it is off by at most the largest of the four samples' allowance. Each tick's lateness
    is taken as its last answer before the next tick (a pessimistic reading).
    """
    answers = node.answers
    cores = os.cpu_count() or 1

    def late(k: int) -> float:
        if not 0 <= k < len(ticks):
            return 0.0
        lo = bisect.bisect_left(answers, ticks[k])
        hi = bisect.bisect_left(answers, ticks[k + 1]) if k + 1 < len(ticks) else len(answers)
        return answers[hi - 1] - ticks[k] if hi > lo else 0.0

    worst = 0.0
    for t in (t0, t1):
        k = bisect.bisect_right(ticks, t) - 1  # the samples at k and k + 1 bracket t
        worst = max(worst, late(k), late(k + 1))
    return (P_IDLE + K * cores) * worst


def _check(summary: dict, spans: list, method: str, node: ModelledNode, ticks: list[float]) -> None:
    idles = {(s.resources["idle_power_watts"], s.resources["idle_method"]) for s in spans}
    assert len(idles) == 1, f"one idle figure per run, got {idles}"
    ((watts, got_method),) = idles
    assert got_method == method
    assert watts == pytest.approx(P_IDLE, rel=0.03)
    assert summary["idle_method"] == method
    for s in spans:
        r = s.resources
        assert r["cpu_source"] == "self-reported"
        # 3 %, plus what the idle estimate's own error (allowed 3 % above) moves into the
        # process's share over the span, plus what the answers' lateness can explain.
        slack = (
            0.03 * K * r["cpu_seconds"]
            + abs(watts - P_IDLE) * r["wall_seconds"]
            + _lateness_joules(node, ticks, s.start_ts, s.end_ts)
        )
        assert r["process_energy_joules"] == pytest.approx(K * r["cpu_seconds"], abs=slack)
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
    summary, spans, ticks = _run(tmp_path, modelled_node)
    _check(summary, spans, "calibration", modelled_node, ticks)


def test_regression_idle_without_calibration(tmp_path: Path, modelled_node: ModelledNode) -> None:
    summary, spans, ticks = _run(tmp_path, modelled_node)
    _check(summary, spans, "regression", modelled_node, ticks)


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
