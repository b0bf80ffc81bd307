"""The agent with ``[exporters.influxdb]``: node samples and attributed spans reach a real
influxd; acknowledged spans survive a SIGKILL of the agent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def _running_agent(cfg: Path, tmp: Path, otlp: int) -> Iterator[subprocess.Popen[bytes]]:
    """The agent, up for the block; then SIGTERM, which it must exit from cleanly."""
    proc, _ = _start(cfg, tmp, otlp)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def _send_plain_otel(otlp: int) -> subprocess.CompletedProcess[str]:
    """Run the plain OpenTelemetry client (``PLAIN_OTEL``) against the agent's OTLP port."""
    return subprocess.run(
        [sys.executable, "-c", PLAIN_OTEL, f"http://127.0.0.1:{otlp}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait_for_spans(influx: InfluxD, db: str, what: str) -> None:
    """Until influxd holds the client's 4 spans."""
    wait_for(lambda: influx.count(db, "spans", "duration_seconds") == 4, 60, what)


def test_node_samples_and_spans_reach_influxdb(
    tmp_path: Path, influxd_server: InfluxD, influx_database: str
) -> None:
    db = influx_database
    otlp = free_port()
    with _running_agent(_config(tmp_path, influxd_server, db), tmp_path, otlp):
        p = _send_plain_otel(otlp)
        assert p.returncode == 0, p.stderr
        _wait_for_spans(influxd_server, db, "spans in influxd")
    store = Store(tmp_path / "agent.db")
    run = store.runs(kind="agent")[0]
    # Every memory sample the agent stored reached influxd, with exact values and tags.
    stored = {round(s.ts * 1e9): s.fields["used_bytes"] for s in store.samples(run.id, "memory")}
    rows = influxd_server.rows(db, "memory")
    assert {r["time"]: r["used_bytes"] for r in rows} == pytest.approx(stored, abs=1e3)
    assert len(rows) == len(stored) >= 3
    assert {r["host"] for r in rows} == {"node-a"}
    # The spans carry their attribution, as stored, under the client program's own run.
    (program,) = store.runs(kind="program")
    spans = {s.span_id: s for s in store.spans(program.id)}
    got = influxd_server.rows(db, "spans")
    assert {r["span_id"] for r in got} == set(spans)
    for r in got:
        s = spans[r["span_id"]]
        assert r["span_name"] == s.name and r["service"] == "plain-otel"
        assert r["run"] == program.id
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
    p = _send_plain_otel(otlp)
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(30)
    assert p.returncode == 0, p.stderr
    with _running_agent(cfg, tmp_path, otlp):
        _wait_for_spans(influxd_server, db, "acknowledged spans delivered after restart")
    store = Store(tmp_path / "agent.db")
    spans = store.spans()
    assert len(spans) == 4 and all(s.resources for s in spans)
    assert store.unattributed_batches() == []


def _export_spans(otlp: int, n: int, per_request: int = 500) -> int:
    """Send ``n`` spans ending now over raw OTLP/gRPC; returns how many were acknowledged."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    acked = 0
    with grpc.insecure_channel(f"127.0.0.1:{otlp}") as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        for first in range(0, n, per_request):
            req = trace_service_pb2.ExportTraceServiceRequest()
            rs = req.resource_spans.add()
            rs.resource.attributes.append(
                KeyValue(key="service.name", value=AnyValue(string_value="spooled"))
            )
            ss = rs.scope_spans.add()
            now = time.time_ns()
            for i in range(first, min(first + per_request, n)):
                s = ss.spans.add()
                s.trace_id = (i + 1).to_bytes(16, "big")
                s.span_id = (i + 1).to_bytes(8, "big")
                s.name = f"step-{i % 10}"
                s.start_time_unix_nano = now - 1_000_000
                s.end_time_unix_nano = now
            resp = stub.Export(req, timeout=30)
            assert not resp.partial_success.rejected_spans
            acked += min(per_request, n - first)
    return acked


def test_acknowledged_spans_survive_sigkill_without_the_store(
    tmp_path: Path, influxd_server: InfluxD, influx_database: str
) -> None:
    """``store.enabled = false``: an OK still means durable (the spans wait in a spool)."""
    db = influx_database
    otlp = free_port()
    cfg = _config(tmp_path, influxd_server, db)
    # Sampling every 5 s: the spans wait for a sample after their end, so the kill below
    # lands while all of them are acknowledged but not yet handed to the exporter.
    text = cfg.read_text().replace("interval = 0.2", "interval = 5")
    cfg.write_text(text + "[store]\nenabled = false\n")
    agent, _ = _start(cfg, tmp_path, otlp)
    try:
        acked = _export_spans(otlp, 10_000)
    finally:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(30)
    assert acked == 10_000
    assert not (tmp_path / "agent.db").exists()
    cfg.write_text(text.replace("interval = 5", "interval = 0.2") + "[store]\nenabled = false\n")
    with _running_agent(cfg, tmp_path, otlp):
        wait_for(
            lambda: influxd_server.count(db, "spans", "duration_seconds") >= acked,
            90,
            "every acknowledged span in influxd",
        )
    assert influxd_server.count(db, "spans", "duration_seconds") == acked
    spool = Store(tmp_path / "state" / "spool.db")
    assert spool.unattributed_batches() == []  # delivered spans left the spool
