"""A program shorter than one sampling interval, sending its spans as it exits, against a
running ``wattspan agent``: its spans still get exact CPU seconds and a process share,
from the CPU time the program measured of itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import free_port, wait_for
from tests.test_agent_daemon import AgentProc
from wattspan.agent.store import Store

PROGRAM = r"""
import json, time
import wattspan

@wattspan.track
def burn(seconds):
    t0 = time.process_time()
    x = 0
    while time.process_time() < t0 + seconds:
        x += 1
    return time.process_time() - t0

print(json.dumps({"burn_cpu": burn(0.3)}))
"""


def test_short_program_spans_carry_what_it_measured(tmp_path: Path) -> None:
    otlp = free_port()
    # Sampling once a second: the program lives less than one interval.
    agent = AgentProc(tmp_path, "--otlp-port", str(otlp), "--interval", "1")
    try:
        agent.wait_ready()
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp}",
            "OTEL_SERVICE_NAME": "short",
        }
        p = subprocess.run(
            [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, p.stderr
        burn_cpu = json.loads(p.stdout)["burn_cpu"]

        def attributed() -> bool:
            return any(s.name == "burn" and s.resources for s in Store(agent.store).spans())

        wait_for(attributed, 30, "the span attributed")
    finally:
        assert agent.stop() == 0
    (span,) = [s for s in Store(agent.store).spans() if s.name == "burn"]
    r = span.resources
    assert r["cpu_source"] == "self-reported"
    assert r["cpu_seconds"] == pytest.approx(burn_cpu, rel=0.05)
    assert 0.0 < r["process_cpu_share"] <= 1.0
    assert r["process_energy_joules"] > 0.0
