"""The agent with ``[exporters.influxdb]``: node samples and attributed spans reach a real
influxd; acknowledged spans survive a SIGKILL of the agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import free_port, http_get, wait_for
from tests.servers import InfluxD
from tests.test_pipeline_e2e import PLAIN_OTEL
from wattspan.agent.store import Store

pytest_plugins = ["tests.fixtures_influx"]
pytestmark = pytest.mark.server


def _config(tmp: Path, influx: InfluxD, db: str) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(
        "[agent]\n"
        "interval = 0.2\n"
        'host = "node-a"\n'
        f'state_dir = "{tmp / "state"}"\n'
        "[exporters.influxdb]\n"
        f'url = "{influx.url}"\n'
        'api = "v1"\n'
        f'database = "{db}"\n'
        "flush_interval = 0.1\n"
    )
    return cfg


def _start(cfg: Path, tmp: Path, otlp: int) -> tuple[subprocess.Popen[bytes], int]:
    mport = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wattspan",
            "agent",
            "--config",
            str(cfg),
            "--otlp-port",
            str(otlp),
            "--metrics-port",
            str(mport),
            "--store",
            str(tmp / "agent.db"),
        ],
        stdout=(tmp / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: http_get(f"http://127.0.0.1:{mport}/metrics")[0] == 200, 60, "agent up")
    return proc, mport


def test_node_samples_and_spans_reach_influxdb(
    tmp_path: Path, influxd_server: InfluxD, influx_database: str
) -> None:
    db = influx_database
    otlp = free_port()
    agent, _ = _start(_config(tmp_path, influxd_server, db), tmp_path, otlp)
    try:
        p = subprocess.run(
            [sys.executable, "-c", PLAIN_OTEL, f"http://127.0.0.1:{otlp}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        wait_for(
            lambda: influxd_server.count(db, "spans", "duration_seconds") == 4,
            60,
            "spans in influxd",
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    store = Store(tmp_path / "agent.db")
    run = store.runs(kind="agent")[0]
    # Every memory sample the agent stored reached influxd, with exact values and tags.
    stored = {round(s.ts * 1e9): s.fields["used_bytes"] for s in store.samples(run.id, "memory")}
    rows = influxd_server.rows(db, "memory")
    assert {r["time"]: r["used_bytes"] for r in rows} == pytest.approx(stored, abs=1e3)
    assert len(rows) == len(stored) >= 3
    assert {r["host"] for r in rows} == {"node-a"}
    # The spans carry their attribution, as stored.
    spans = {s.span_id: s for s in store.spans(run.id)}
    got = influxd_server.rows(db, "spans")
    assert {r["span_id"] for r in got} == set(spans)
    for r in got:
        s = spans[r["span_id"]]
        assert r["span_name"] == s.name and r["service"] == "plain-otel"
        assert r["trace_id"] == s.trace_id  # an id is a field, not a tag
        assert r["node_energy_total_joules"] == pytest.approx(
            s.resources["node_energy_total_joules"]
        )
    ml = influxd_server.rows(db, "ml")
    assert sorted((r["name"], r["step"], r["value"]) for r in ml if r["name"] == "ml.accuracy") == [
        ("ml.accuracy", 0, 0.5),
        ("ml.accuracy", 1, 0.6),
        ("ml.accuracy", 2, 0.7),
    ]


def test_acknowledged_spans_survive_sigkill(
    tmp_path: Path, influxd_server: InfluxD, influx_database: str
) -> None:
    db = influx_database
    otlp = free_port()
    cfg = _config(tmp_path, influxd_server, db)
    agent, _ = _start(cfg, tmp_path, otlp)
    # The client exports each span as it ends (SimpleSpanProcessor): when it exits, every
    # span was acknowledged by the agent. Kill the agent at once, before it can attribute.
    p = subprocess.run(
        [sys.executable, "-c", PLAIN_OTEL, f"http://127.0.0.1:{otlp}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(30)
    assert p.returncode == 0, p.stderr
    agent, _ = _start(cfg, tmp_path, otlp)
    try:
        wait_for(
            lambda: influxd_server.count(db, "spans", "duration_seconds") == 4,
            60,
            "acknowledged spans delivered after restart",
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    store = Store(tmp_path / "agent.db")
    spans = store.spans()
    assert len(spans) == 4 and all(s.resources for s in spans)
    assert store.unattributed_batches() == []
