"""Daemon mode: every program that sends to one ``wattspan agent`` is a run of its own."""

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
from wattspan.analysis import metric_summaries, time_to_target

PROGRAM = r"""
import time
t0 = time.time()  # as near the process's start as Python code gets
import json, sys, wattspan
delay, acc = float(sys.argv[1]), float(sys.argv[2])
with wattspan.span("train"):
    wattspan.log_metric("ml.accuracy", 0.1, step=0)
    time.sleep(delay)
    wattspan.log_metric("ml.accuracy", acc, step=1)
    print(json.dumps({"seconds_to_target": time.time() - t0}))
"""


def test_two_programs_are_two_runs_with_their_own_metrics(tmp_path: Path) -> None:
    otlp = free_port()
    agent = AgentProc(tmp_path, "--otlp-port", str(otlp))
    try:
        agent.wait_ready()
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp}"}
        env.pop("WATTSPAN_RUN_ID", None)
        procs = {
            delay: subprocess.Popen(
                [sys.executable, "-c", PROGRAM, str(delay), str(acc)],
                env={**env, "OTEL_SERVICE_NAME": f"trainer-{delay}"},
                stdout=subprocess.PIPE,
                text=True,
            )
            for delay, acc in ((0.5, 0.91), (1.5, 0.95))
        }
        measured = {
            d: json.loads(p.communicate(timeout=60)[0])["seconds_to_target"]
            for d, p in procs.items()
        }
        assert all(p.returncode == 0 for p in procs.values())
        store = Store(agent.store)

        def two_runs_ended() -> bool:
            runs = store.runs(kind="program")
            return len(runs) == 2 and all(r.end_ts and len(store.metrics(r.id)) == 2 for r in runs)

        wait_for(two_runs_ended, 30, "two program runs, ended")
        session = store.runs(kind="agent")[0].id
        show = subprocess.run(
            [sys.executable, "-m", "wattspan", "show", "--store", str(agent.store), session],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        assert agent.stop() == 0
    runs = {r.name: r for r in store.runs(kind="program")}
    assert set(runs) == {"trainer-0.5", "trainer-1.5"}
    for delay, acc in ((0.5, 0.91), (1.5, 0.95)):
        run = runs[f"trainer-{delay}"]
        assert run.host and (run.summary or {}).get("pid") == procs[delay].pid
        assert metric_summaries(store, run)["ml.accuracy"].last == pytest.approx(acc)
        # Counted from the program's start, not the agent's, and named by the program.
        tta = time_to_target(store, run, "ml.accuracy", 0.9)
        assert tta["reached"] and tta["seconds"] == pytest.approx(measured[delay], abs=0.15)
        assert run.command[-2:] == [str(delay), str(acc)]
        assert run.end_ts is not None and run.end_ts > run.start_ts + delay
    assert store.metrics(store.runs(kind="agent")[0].id) == []
    # The agent session's own table reports what the agent measured.
    assert show.returncode == 0, show.stderr
    assert "energy node cpu" in show.stdout and "None" not in show.stdout


def test_a_program_that_dies_of_an_exception_ends_its_run_with_status_1(tmp_path: Path) -> None:
    otlp = free_port()
    agent = AgentProc(tmp_path, "--otlp-port", str(otlp))
    try:
        agent.wait_ready()
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp}"}
        env.pop("WATTSPAN_RUN_ID", None)
        code = "import wattspan\nwith wattspan.span('step'):\n    pass\nraise SystemError('boom')"
        p = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "WATTSPAN_RUN_NAME": "crashy"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1 and "boom" in p.stderr
        store = Store(agent.store)
        wait_for(lambda: any(r.end_ts for r in store.runs(kind="program")), 30, "the run ended")
    finally:
        assert agent.stop() == 0
    (run,) = store.runs(kind="program")
    assert run.name == "crashy" and run.exit_code == 1
