"""The telemetry ingest: acknowledged spans are durable before attribution."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattspan.agent.ingest import TelemetryIngest
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.records import SpanEvent, SpanRecord
from wattspan.agent.store import Store
from wattspan.collectors.base import Sample


def _span(i: int, start: float, end: float) -> SpanRecord:
    return SpanRecord(
        trace_id=f"{1:032x}",
        span_id=f"{i + 1:016x}",
        parent_span_id=None,
        name=f"s{i}",
        kind="internal",
        start_ns=int(start * 1e9),
        end_ns=int(end * 1e9),
        pid=77,
        events=[
            SpanEvent(
                "ml.metric",
                int(end * 1e9),
                {"ml.metric.name": "ml.loss", "ml.metric.value": 1.0 / (i + 1), "ml.step": i},
            )
        ],
    )


def _node(t: float, joules: float) -> list[Sample]:
    return [
        Sample(
            "power_model",
            t,
            {"domain": "cpu", "estimated": "true"},
            {"energy_joules_total": joules, "power_watts": 10.0, "idle_power_watts": 2.0},
        ),
        Sample("cpu", t, {"cpu": "total"}, {"user_seconds_total": t - 1000}),
        Sample(
            "process_tree",
            t,
            {"root": "77"},
            {
                "cpu_user_seconds_total": (t - 1000) / 2,
                "cpu_system_seconds_total": 0.0,
                "rss_bytes": 5,
            },
        ),
    ]


def test_spans_acknowledged_before_a_crash_are_attributed_after_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    first = TelemetryIngest(store=store, pipeline=Pipeline(), run_id="run-1", interval=1.0)
    first.write(_node(1000.0, 0.0))
    first.on_spans([_span(0, 1000.5, 1001.5), _span(1, 1001.0, 1002.0)])
    # Acknowledged: metrics and spans stored, nothing attributed yet (no sample after their
    # end). Now the agent "crashes": the object is dropped, never flushed.
    assert [len(rows) for _, rows in store.unattributed_batches()] == [2]
    assert all(not s.resources for s in store.spans())
    assert [m.step for m in store.metrics("run-1", "ml.loss")] == [0, 1]
    store.write_samples("run-1", _node(1000.0, 0.0) + _node(1003.0, 30.0))
    del first

    second = TelemetryIngest(store=store, pipeline=Pipeline(), run_id="run-2", interval=1.0)
    assert second.stats()["spans_pending"] == 2
    second.write(_node(1004.0, 40.0))
    assert second.attribute_due() == 2
    spans = store.spans()
    assert [s.name for s in spans] == ["s0", "s1"]
    assert all(s.run_id == "run-1" for s in spans)  # the run they were received in
    for s in spans:
        r = s.resources
        assert r["node_energy_total_joules"] == pytest.approx(10.0)  # 10 W for 1 s, stored
        assert r["idle_energy_joules"] == pytest.approx(2.0)
        assert r["cpu_seconds"] == pytest.approx(0.5)
        assert r["process_cpu_share"] == pytest.approx(0.5)
    assert store.unattributed_batches() == []


def test_attribution_waits_for_a_sample_after_the_span(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    ing = TelemetryIngest(store=store, pipeline=Pipeline(), run_id="r", interval=1.0)
    ing.write(_node(1000.0, 0.0))
    ing.on_spans([_span(0, 1000.2, 1000.8)])
    assert ing.attribute_due() == 0  # no sample at or after 1000.8 yet
    ing.write(_node(1001.0, 10.0))
    assert ing.attribute_due() == 1
    (s,) = store.spans("r")
    assert s.resources["node_energy_total_joules"] == pytest.approx(6.0)


def test_spans_older_than_the_ring_are_attributed_from_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    ing = TelemetryIngest(
        store=store, pipeline=Pipeline(), run_id="r", interval=1.0, ring_seconds=5.0
    )
    for t in range(20):  # 20 s of node samples at 10 W; the ring keeps only the last 5 s
        node = _node(1000.0 + t, 10.0 * t)
        store.write_samples("r", node)
        ing.write(node)
    assert ing.ring.between(1002.0, 1004.0) is None
    ing.on_spans([_span(0, 1002.0, 1004.0)])
    assert ing.attribute_due() == 1
    (s,) = store.spans("r")
    assert s.resources["node_energy_total_joules"] == pytest.approx(20.0)
    assert s.resources["coverage"] == 1.0


class _FlakyExporter:
    """A sink that refuses writes while ``down`` (like a queue on a full disk)."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = True
        self.spans: list[Sample] = []

    def write(self, samples) -> None:
        if self.down:
            raise OSError(28, "No space left on device")
        self.spans.extend(s for s in samples if s.source == "spans")


def test_spans_an_exporter_refuses_are_counted_and_still_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    exporter = _FlakyExporter()
    pipeline = Pipeline([exporter])
    ingest = TelemetryIngest(store=store, pipeline=pipeline, run_id="run-1", interval=1.0)
    exporter.down = False  # the span's metric event is exported at receipt
    ingest.write(_node(1000.0, 0.0))
    ingest.on_spans([_span(0, 1000.5, 1001.5)])
    exporter.down = True
    ingest.write(_node(1002.0, 20.0))
    # The store's attribution does not wait for the exporter: marked, counted as not exported.
    assert ingest.attribute_due() == 1
    assert store.unattributed_batches() == []
    assert store.spans()[0].resources["node_energy_total_joules"] == pytest.approx(10.0)
    assert ingest.stats()["spans_export_failed_total"] == 1
    assert pipeline.sink_errors["flaky"] == 1
    assert exporter.spans == []

    exporter.down = False  # later spans flow again; nothing is re-sent
    ingest.on_spans([_span(1, 1002.5, 1003.0)])
    ingest.write(_node(1004.0, 40.0))
    assert ingest.attribute_due() == 1
    assert [s.tags["span_name"] for s in exporter.spans] == ["s1"]
    assert ingest.stats()["spans_export_failed_total"] == 1


def test_spans_reach_the_exporter_before_the_store_marks_them(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "s.db")
    exporter = _FlakyExporter()
    exporter.down = False
    ingest = TelemetryIngest(
        store=store, pipeline=Pipeline([exporter]), run_id="run-1", interval=1.0
    )
    ingest.write(_node(1000.0, 0.0))
    ingest.on_spans([_span(0, 1000.5, 1001.5)])
    ingest.write(_node(1002.0, 20.0))

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt  # stands for SIGKILL landing right here

    monkeypatch.setattr(store, "set_batch_resources", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest.attribute_due()
    # Already queued for export, and still unmarked: a restart exports it again (an
    # identical point) rather than never.
    assert [s.tags["span_name"] for s in exporter.spans] == ["s0"]
    assert [len(rows) for _, rows in store.unattributed_batches()] == [1]
