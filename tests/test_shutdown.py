"""The whole stop fits ``agent.shutdown_timeout_seconds`` whatever InfluxDB does, and what was
not delivered stays in the exporter's disk queue for the next start."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port, wait_for
from tests.test_agent_daemon import AgentProc

BUDGET = 4.0


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """Accepts connections and never answers: the worst InfluxDB (or proxy) there is."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def _stop_within_budget(tmp_path: Path, url: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        "[agent]\n"
        f"shutdown_timeout_seconds = {BUDGET}\n"
        f'state_dir = "{tmp_path / "state"}"\n'
        "[exporters.influxdb]\n"
        f'url = "{url}"\n'
        'database = "d"\n'
        "flush_interval = 0.1\n"
        "timeout = 30\n"
    )
    agent = AgentProc(tmp_path, "--config", str(cfg))
    try:
        agent.wait_ready()
        wait_for(
            lambda: (
                _gauge(agent.metrics(), 'wattspan_exporter_queued_records{exporter="influxdb"}') > 0
            ),
            30,
            "records queued behind the dead server",
        )
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        code = agent.proc.wait(BUDGET + 20)
        took = time.monotonic() - t0
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
    assert code == 0, agent.log.read_text()
    # The budget, plus the interpreter's exit and the exporter thread's join grace.
    assert took < BUDGET + 3.0, f"stop took {took:.1f} s against a {BUDGET} s budget"
    queue = tmp_path / "state"
    segments = [p for p in queue.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert segments, "undelivered records were not left in the queue"


def _gauge(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_stop_fits_the_budget_with_influxdb_stalling(tmp_path: Path, stalling_server: str) -> None:
    _stop_within_budget(tmp_path, stalling_server)


def test_stop_fits_the_budget_with_influxdb_unreachable(tmp_path: Path) -> None:
    _stop_within_budget(tmp_path, f"http://127.0.0.1:{free_port()}")
