"""A command shorter than its agent's start-up (``wattspan run -- true``: 8 ms, the agent
about 0.2 s) is charged the node's energy over its own run, not up to the agent's first
sample after it: its counters are read at its exit (agent/runner.py, ``_ExitClock``).

Against a powercap tree whose counter follows a known model (tests/test_idle_model.py's
FIFO), and against the power model that runs where there is no RAPL (CI, this VM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_idle_model import P_IDLE, K, ModelledNode, modelled_node  # noqa: F401
from wattspan.agent.store import Store

CORES = os.cpu_count() or 1


def _run(tmp_path: Path, cmd: list[str], rapl_root: Path | None = None) -> dict:
    cfg = tmp_path / "agent.toml"
    text = f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
    if rapl_root is not None:
        text += f'[collectors.rapl]\nroot = "{rapl_root}"\n'
    else:
        text += "[collectors.rapl]\nenabled = false\n"
    cfg.write_text(text)
    p = subprocess.run(
        [
            *(sys.executable, "-m", "wattspan", "run", "--json", "--config", str(cfg)),
            *("--store", str(tmp_path / "w.db"), "--", *cmd),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def _window(summary: dict, after: float = 0.02) -> float:
    (energy,) = [e for e in summary["energy"] if e["domain"] in ("package-0", "cpu")]
    # The counters' window starts at the spawn, just before the run's clock starts, and ends
    # once the exit's counters are read, just after it (a thread's wake-up and a few reads:
    # 0.3-2 ms, more while the main thread is in a long C call that keeps the interpreter
    # lock: importing an extension module), or ``after``.
    wall = summary["wall_seconds"]
    assert wall - 0.005 <= energy["seconds"] <= wall + after, (wall, energy["seconds"])
    return energy["seconds"]


@pytest.mark.parametrize("cmd", [["true"], [sys.executable, "-S", "-c", "pass"]])
def test_a_short_commands_energy_is_its_own_under_rapl(
    tmp_path: Path,
    modelled_node: ModelledNode,  # noqa: F811 (the fixture, imported above)
    cmd: list[str],
) -> None:
    s = _run(tmp_path, cmd, modelled_node.root)
    secs = _window(s, after=0.03)  # each FIFO read waits for this process's writer thread
    # The spawn's counters are stamped before they are read and the exit's once read, and
    # the FIFO answers each read with the model's energy at that moment (or, answering
    # ahead of a reader, before it): whatever the answers' timing, the energy counted lies
    # inside the window, so it is at most the model's top power over it, and what /proc/stat
    # counts in whole ticks (one a core at each end) can add. Charged to the agent's
    # start-up, it was up to 20x the window's.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert 0 < s["node_energy_joules"] <= (P_IDLE + K * CORES) * secs + K * CORES * 2 * tick
    assert s["node_busy_cpu_seconds"] <= CORES * secs + 0.02
    parts = s["process_energy_joules"] + s["other_energy_joules"] + s["idle_energy_joules"]
    assert parts == pytest.approx(s["node_energy_joules"], rel=1e-9)


@pytest.mark.parametrize("seconds", [0.0, 0.1, 0.15, 0.25])
def test_a_short_commands_window_is_its_own_under_the_power_model(
    tmp_path: Path, seconds: float
) -> None:
    """The exit comes before the first sample (``true``), between it and the scheduler's
    start (its counters are fed in between: ``sleep 0.15`` here read a 0.245 s window when
    they were not), or after (the final sample, a few ms past it)."""
    cmd = ["sleep", str(seconds)] if seconds else ["true"]
    s = _run(tmp_path, cmd)
    secs = _window(s)
    (energy,) = s["energy"]
    assert energy["estimated"] is True
    # The model's power lies between its idle power and its TDP: the energy, between
    # those over the window (over the agent's start-up it was 20x the command's own).
    (model,) = {
        (x.fields["idle_power_watts"], x.fields["tdp_watts"])
        for x in Store(tmp_path / "w.db").samples(s["run_id"], source="power_model")
    }
    idle_w, tdp_w = model
    assert idle_w * secs * 0.999 <= s["node_energy_joules"] <= tdp_w * secs * 1.001
    assert s["node_busy_cpu_seconds"] <= CORES * secs + 0.02


def test_a_gpu_first_read_after_the_end_says_the_run_has_no_gpu_window() -> None:
    """NVML is first read at the first sample: for a command that ended before it, the
    GPU's counter has no reading inside the run. Its energy is then absent, and the table
    says why, rather than the agent's start-up energy (before) or a bare dash."""
    from rich.console import Console

    from wattspan.agent.store import Run
    from wattspan.agent.summary import RunSummary
    from wattspan.cli.tables import summary_table
    from wattspan.collectors.base import Sample

    def gpu(ts: float, joules: float) -> Sample:
        return Sample("gpu", ts, {"gpu": "0", "name": "Fake", "energy_method": "counter"},
                      {"energy_joules_total": joules})  # fmt: skip

    short, long = RunSummary(), RunSummary()
    short.add([gpu(100.05, 10.0), gpu(100.15, 40.0)])  # both after the end at 100.01
    long.add([gpu(100.05, 10.0), gpu(100.15, 40.0), gpu(100.25, 70.0)])  # ends at 100.2
    (g,) = short.result(100.0, 100.01)["gpus"]
    assert "joules" not in g
    (g2,) = long.result(100.0, 100.2)["gpus"]
    assert g2["joules"] == pytest.approx(60.0)  # to the first reading at or after the end
    console = Console(record=True, width=200)
    run = Run(id="r", name="short", host="h", start_ts=100.0, kind="run")
    console.print(summary_table(run, short.result(100.0, 100.01)))
    assert "no NVML reading inside the run" in console.export_text()
