"""Spans and valued metrics end to end: instrumented code -> OTLP -> agent -> store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import wait_for
from wattspan.agent.config import load_config
from wattspan.agent.daemon import Agent
from wattspan.agent.store import Store

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline.py"


def test_example_pipeline_under_wattspan_run(store_path: Path) -> None:
    epochs = 4
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "wattspan",
            "run",
            "--json",
            "--store",
            str(store_path),
            "--name",
            "example",
            "--",
            sys.executable,
            str(EXAMPLE),
            "--epochs",
            str(epochs),
            "--samples",
            "20000",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    store = Store(store_path)
    run = store.resolve_run(summary["run_id"])
    spans = store.spans(run.id)
    names = [s.name for s in spans]
    assert names.count("epoch") == epochs
    assert {"load", "preprocess", "train", "evaluate"} <= set(names)
    by_id = {s.span_id: s for s in spans}
    train = next(s for s in spans if s.name == "train")
    for s in spans:
        if s.name == "epoch":
            assert by_id[s.parent_span_id].name == "train"  # the tree is kept
            assert train.start_ts <= s.start_ts <= s.end_ts <= train.end_ts
        r = s.resources
        assert r, f"span {s.name} was not attributed"
        assert r["node_energy_total_joules"] >= 0
        assert r["energy_estimated"] is True  # no RAPL here: says so
        assert r["cpu_seconds"] >= 0
        assert r["process_energy_joules"] + r["other_energy_joules"] + r[
            "idle_energy_joules"
        ] == pytest.approx(r["node_energy_total_joules"], abs=1e-6)
        assert s.pid is not None and s.pid != os.getpid()
    load = next(s for s in spans if s.name == "load")
    assert load.resources["items"] == 20000
    assert load.resources["throughput_items_per_second"] == pytest.approx(
        20000 / (load.end_ts - load.start_ts)
    )
    for name in ("ml.loss", "ml.accuracy"):
        pts = store.metrics(run.id, name)
        assert [m.step for m in pts] == list(range(epochs))
        assert all(m.span_id == train.span_id for m in pts)
    assert store.params(run.id) == {"lr": 0.05, "batch": 256, "epochs": epochs}
    (cm,) = store.confusion_matrices(run.id)
    assert cm.labels == ["neg", "pos"]
    assert sum(map(sum, cm.matrix)) == 4000  # the 20% test split
    (test_acc,) = store.metrics(run.id, "ml.test_accuracy")
    correct = cm.matrix[0][0] + cm.matrix[1][1]
    assert test_acc.value == pytest.approx(correct / 4000)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    cfg = load_config(environ={})
    a = Agent(
        cfg,
        interval=0.1,
        store_path=tmp_path / "a.db",
        serve_metrics=False,
        otlp_port=0,
        process_roots=[],
    )
    a.start()
    try:
        yield a
    finally:
        a.stop()
        a.close_store()


PLAIN_OTEL = r"""
import os, sys, time
from opentelemetry import trace, metrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
endpoint = sys.argv[1]
# process.pid is what OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process would add.
res = Resource.create({"service.name": "plain-otel", "process.pid": os.getpid()})
tp = TracerProvider(resource=res)
tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=True),
                                       export_interval_millis=200)
mp = MeterProvider(resource=res, metric_readers=[reader])
tracer = tp.get_tracer("plain")
gauge = mp.get_meter("plain").create_gauge("ml.loss")
with tracer.start_as_current_span("outer") as outer:
    for i in range(3):
        with tracer.start_as_current_span("inner", attributes={"i": i}) as sp:
            t = time.process_time()
            while time.process_time() - t < 0.1:
                pass
            sp.add_event("ml.metric", {"ml.metric.name": "ml.accuracy",
                                       "ml.metric.value": 0.5 + i / 10, "ml.step": i})
        gauge.set(1.0 / (i + 1), {"ml.step": i})
        time.sleep(0.25)
    print(format(outer.get_span_context().trace_id, "032x"), flush=True)
mp.force_flush()
tp.force_flush()
mp.shutdown()
tp.shutdown()
"""


def test_plain_opentelemetry_sdk_client(agent: Agent) -> None:
    assert agent.otlp_endpoint is not None
    p = subprocess.run(
        [sys.executable, "-c", PLAIN_OTEL, agent.otlp_endpoint],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    trace_id = p.stdout.strip()
    store = agent.store
    assert store is not None and agent.run is not None
    # A client that names no run gets one of its own (per service and process), beside the
    # agent's session, so programs sending to one agent never mix.
    wait_for(lambda: store.runs(kind="program"), 30, "the program's run")
    (run,) = store.runs(kind="program")
    assert run.name == "plain-otel" and run.host == agent.host
    assert store.spans(agent.run.id) == []
    wait_for(lambda: len(store.spans(run.id)) == 4, 30, "spans stored")
    wait_for(lambda: all(s.resources for s in store.spans(run.id)), 30, "attribution")
    spans = store.spans(run.id)
    assert {s.trace_id for s in spans} == {trace_id}
    outer = next(s for s in spans if s.name == "outer")
    inner = [s for s in spans if s.name == "inner"]
    assert [s.attributes["i"] for s in inner] == [0, 1, 2]
    assert all(s.parent_span_id == outer.span_id for s in inner)
    assert all(s.service == "plain-otel" for s in spans)
    # The agent learnt of the client's process from its spans and watched it: later spans
    # get the process's CPU seconds (each inner span burns 0.1 s of CPU).
    assert inner[-1].resources["cpu_seconds"] == pytest.approx(0.1, abs=0.06)
    acc = store.metrics(run.id, "ml.accuracy")
    assert [(m.step, m.value) for m in acc] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    loss = store.metrics(run.id, "ml.loss")
    assert {m.step for m in loss} >= {0, 1, 2}
    by_step = {m.step: m.value for m in loss}
    assert by_step[2] == pytest.approx(1 / 3)
    assert agent.ingest.stats()["spans_attributed_total"] == 4


def test_attributed_spans_reach_the_exporters(agent: Agent) -> None:
    got: list = []

    class Capture:
        name = "capture"

        def write(self, samples):  # type: ignore[no-untyped-def]
            got.extend(s for s in samples if s.source in ("spans", "ml"))

        def flush(self, timeout=None):  # type: ignore[no-untyped-def]
            pass

        def close(self, timeout=None):  # type: ignore[no-untyped-def]
            pass

        def stats(self):  # type: ignore[no-untyped-def]
            return {}

    agent.pipeline.add_sink(Capture())
    assert agent.otlp_endpoint is not None
    subprocess.run(
        [sys.executable, "-c", PLAIN_OTEL, agent.otlp_endpoint],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_for(lambda: sum(1 for s in got if s.source == "spans") == 4, 30, "exported spans")
    spans = [s for s in got if s.source == "spans"]
    assert {s.tags["span_name"] for s in spans} == {"outer", "inner"}
    for s in spans:
        assert len(s.fields["trace_id"]) == 32  # ids are fields, not tags
        assert "node_energy_total_joules" in s.fields
    assert sum(1 for s in got if s.source == "ml") >= 3
