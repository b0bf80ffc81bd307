"""The Spark attributes a ``spans`` point carries (agent/span_fields.py), through the ingest."""

from __future__ import annotations

import math
import time

from wattspan.agent.ingest import TelemetryIngest, span_sample
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.records import SpanRecord
from wattspan.agent.span_fields import FIELDS, TAGS, exported
from wattspan.collectors.base import Sample


class Sink:
    name = "sink"
    SKIP_SOURCES: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.got: list[Sample] = []

    def write(self, samples: list[Sample]) -> None:
        self.got.extend(samples)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


TASK = {
    "spark.app.id": "app-1",
    "spark.stage.id": 3,
    "spark.executor.id": "1",
    "spark.executor.host": "127.0.0.3",
    "spark.task.id": 42,
    "spark.task.gc_time_seconds": 0.25,
    "spark.task.status": "SUCCESS",
    "spark.task.error": "not exported",
    "spark.task.input_bytes": math.nan,
    "spark.stage.parent_ids": [1, 2],
}


def test_exported_tags_and_fields() -> None:
    tags, fields = exported(TASK)
    assert tags == {
        "spark_app": "app-1",
        "spark_stage": "3",
        "spark_executor": "1",
        "spark_host": "127.0.0.3",
    }
    assert fields == {
        "spark_task_id": 42,
        "spark_task_gc_time_seconds": 0.25,
        "spark_task_status": "SUCCESS",
    }
    # Without an application nothing is exported, whatever the names.
    assert exported({k: v for k, v in TASK.items() if k != "spark.app.id"}) == ({}, {})
    assert set(TAGS.values()).isdisjoint(FIELDS.values())


def test_the_ingest_keeps_them_until_the_span_is_exported() -> None:
    sink = Sink()
    pipeline = Pipeline([sink])
    ingest = TelemetryIngest(store=None, pipeline=pipeline, run_id="r", interval=0.1)
    now = time.time_ns()
    spans = [
        SpanRecord(
            trace_id=f"{1:032x}",
            span_id=f"{i + 1:016x}",
            parent_span_id=None,
            name=name,
            kind="internal",
            start_ns=now - 10**8,
            end_ns=now,
            attributes=dict(attrs),
            service_name="svc",
        )
        for i, (name, attrs) in enumerate([("spark.task", TASK), ("plain", {"a.b": 1})])
    ]
    assert ingest.on_spans(spans) is None
    ingest.write([Sample("cpu", now / 1e9 + 1, {"cpu": "total"}, {"user_seconds_total": 1.0})])
    ingest.attribute_due(force=True)
    points = {s.tags["span_name"]: s for s in sink.got if s.source == "spans"}
    task, plain = points["spark.task"], points["plain"]
    assert task.tags["spark_stage"] == "3" and task.tags["spark_host"] == "127.0.0.3"
    assert task.fields["spark_task_gc_time_seconds"] == 0.25
    assert "spark_task_error" not in task.fields
    assert not any(k.startswith("spark") for k in (*plain.tags, *plain.fields))


def test_span_sample_of_a_stored_row_with_every_attribute() -> None:
    from wattspan.agent.store import SpanRow

    row = SpanRow("r", "t" * 32, "s" * 16, None, "spark.task", 1.0, 2.0, "ok", "svc", None, TASK)
    point = span_sample(row)
    assert point.tags["spark_executor"] == "1"
    assert point.fields["spark_task_id"] == 42
    assert point.fields["duration_seconds"] == 1.0
