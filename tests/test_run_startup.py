"""``wattspan run`` starts the command first and brings the agent up beside it (issue 15,
item 5): the command does not wait for wattspan's imports, its spans wait for the agent, and
a short command's end is not the agent's start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from wattspan.agent.store import Store

# The shell stops wattspan (its parent) at its first instant and reports what wattspan had
# loaded by then; the C extension of grpc is what the receiver needs.
PEEK = 'kill -STOP $PPID; grep -c cygrpc /proc/$PPID/maps; kill -CONT $PPID; echo "peeked"'

# Stopped by the shell before exec, wattspan cannot have its receiver up while this program
# ends spans and flushes them; it checks so, then lets wattspan go on.
EARLY_SPANS = r"""
import os, signal, socket, sys, threading, time
from urllib.parse import urlsplit
import wattspan

for i in range(50):
    with wattspan.span("early", i=i):
        pass
url = urlsplit(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
try:
    socket.create_connection((url.hostname, url.port), timeout=1).close()
    print("LISTENING", flush=True)
except OSError:
    print("NOT-LISTENING", flush=True)
flusher = threading.Thread(target=wattspan.flush)
flusher.start()
time.sleep(0.3)  # the export is under way and waits for the port
os.kill(os.getppid(), signal.SIGCONT)
flusher.join()
print("DROPPED", wattspan.dropped_spans(), flush=True)
"""


def wattspan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args], capture_output=True, text=True, timeout=timeout
    )


def test_the_command_starts_before_the_agent_loads(store_path: Path) -> None:
    p = wattspan("run", "--store", str(store_path), "--", "sh", "-c", PEEK)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split()
    assert lines[-1] == "peeked", p.stdout
    # 0 mappings of grpc's extension when the command started: the receiver came later.
    assert lines[0] == "0", f"grpc was loaded before the command started: {p.stdout}"
    # ...and the run is complete all the same: stored, with CPU from wait4.
    run = Store(store_path).resolve_run("latest")
    assert run.exit_code == 0 and run.summary is not None
    assert run.summary["cpu_source"].startswith("wait4")


def test_spans_sent_before_the_agent_listens_arrive_none_dropped(store_path: Path) -> None:
    cmd = ["sh", "-c", 'kill -STOP $PPID; exec "$0" -c "$1"', sys.executable, EARLY_SPANS]
    p = wattspan("run", "--store", str(store_path), "--", *cmd)
    assert p.returncode == 0, p.stderr
    assert "NOT-LISTENING" in p.stdout, "the agent was up already: the test proves nothing"
    assert "DROPPED 0" in p.stdout, p.stdout + p.stderr
    assert "unreachable" not in p.stderr, p.stderr
    store = Store(store_path)
    run = store.resolve_run("latest")
    early = [s for s in store.spans() if s.name == "early" and s.run_id == run.id]
    assert len(early) == 50


def test_a_short_commands_wall_time_is_not_the_agents_start_up(store_path: Path) -> None:
    # `true` ends long before the agent is built; its wall time is its own (the spawn to
    # its exit), not the agent's start-up, which takes tens of ms at the least.
    t0 = time.perf_counter()
    p = wattspan("run", "--json", "--store", str(store_path), "--", "true")
    whole = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["wall_seconds"] < 0.05, summary["wall_seconds"]
    assert whole > 3 * summary["wall_seconds"]


def test_a_store_that_opens_badly_after_the_spawn_costs_the_record_not_the_run(
    tmp_path: Path,
) -> None:
    # Not a database: found when the store opens, after the command started. The command
    # runs to its end and its exit code is wattspan's; the table is printed; one warning.
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a sqlite database, it is text" * 100)
    p = wattspan("run", "--store", str(bad), "--", "sh", "-c", "echo ran; exit 3")
    assert p.returncode == 3, p.stderr
    assert p.stdout.strip() == "ran"
    assert "measured but not stored" in p.stderr
    assert "wall time" in p.stderr and "Traceback" not in p.stderr
