"""OtlpReceiver against the real OpenTelemetry SDK exporters and against hostile bytes.

Every test starts a real gRPC server on a free port. Clients are the SDK's OTLP/gRPC exporters
(the path production data takes) or a raw grpc channel for bytes no SDK would produce.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from wattspan.agent.errors import Backpressure, InvalidRequest
from wattspan.agent.receiver import STAT_KEYS, OtlpReceiver
from wattspan.agent.records import LogRecord, MetricPoint, Rejection, SpanRecord

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


class Collector:
    """A handler that stores everything, and can be told to fail, to refuse part of what
    it gets (``reply``), or to wait (``gate``) before it takes a request."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self.metrics: list[MetricPoint] = []
        self.logs: list[LogRecord] = []
        self.fail_with: Exception | None = None
        self.reply: Rejection | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def _take(self, into: list[Any], items: list[Any]) -> Rejection | None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        with self._lock:
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            assert items, "the receiver must not deliver empty lists"
            kept = len(items) - (self.reply.count if self.reply else 0)
            into.extend(items[:kept])
            return self.reply

    def on_spans(self, spans: list[SpanRecord]) -> Rejection | None:
        return self._take(self.spans, spans)

    def on_metrics(self, points: list[MetricPoint]) -> Rejection | None:
        return self._take(self.metrics, points)

    def on_logs(self, logs: list[LogRecord]) -> Rejection | None:
        return self._take(self.logs, logs)


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def channel(receiver: OtlpReceiver) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
    yield ch
    ch.close()


def raw_call(channel: grpc.Channel, method: str, payload: bytes, **kwargs: Any) -> bytes:
    """Send ``payload`` unmodified (no serializer): how garbage reaches the server."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(payload, timeout=10, **kwargs)


def status_of(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def good_trace_request(name: str = "ok", span_id: bytes = b"\x02" * 8) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = b"\x01" * 16
    span.span_id = span_id
    span.name = name
    span.start_time_unix_nano = 1_700_000_000_000_000_000
    span.end_time_unix_nano = 1_700_000_000_000_000_500
    return req.SerializeToString()


def assert_good_request_accepted(
    channel: grpc.Channel, collector: Collector, name: str = "ok"
) -> None:
    before = len(collector.spans)
    raw_call(channel, TRACE_METHOD, good_trace_request(name))
    assert len(collector.spans) == before + 1
    assert collector.spans[-1].name == name


class TeeMetricExporter(MetricExporter):
    """Forwards to the OTLP exporter and keeps what it was given, for exact comparison."""

    def __init__(self, inner: OTLPMetricExporter) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.batches: list[Any] = []
        self.results: list[MetricExportResult] = []

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
        self.batches.append(metrics_data)
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown()


class TeeLogExporter:
    def __init__(self, inner: OTLPLogExporter) -> None:
        self.inner = inner
        self.batches: list[Sequence[Any]] = []
        self.results: list[Any] = []

    def export(self, batch: Sequence[Any]) -> Any:
        self.batches.append(list(batch))
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# real SDK clients: exact round trip


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_sdk_spans_arrive_exactly(
    receiver: OtlpReceiver, collector: Collector, compression: grpc.Compression | None
) -> None:
    resource = Resource.create({"service.name": "svc-under-test", "process.pid": 4242})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    memory = InMemorySpanExporter()
    otlp = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True, compression=compression
    )
    # Synchronous processors: the span is on the wire when end() returns.
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(otlp))
    tracer = provider.get_tracer("test.scope", "1.2.3")

    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        root.set_attributes(
            {
                "s": "text é ✓",
                "i": -(2**62),
                "f": 1.5,
                "b": True,
                "nan": math.nan,
                "inf": -math.inf,
                "ls": ["a", "b"],
                "li": [1, 2, 3],
                "lf": [0.5, 0.25],
                "lb": [True, False],
            }
        )
        root.add_event("ml.metric", {"ml.metric.name": "ml.loss", "ml.metric.value": 0.25})
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    sent = {format(s.context.span_id, "016x"): s for s in memory.get_finished_spans()}
    got = {r.span_id: r for r in collector.spans}
    assert set(got) == set(sent) and len(got) == 2
    for span_id, s in sent.items():
        r = got[span_id]
        assert r.trace_id == format(s.context.trace_id, "032x")
        assert r.parent_span_id == (format(s.parent.span_id, "016x") if s.parent else None)
        assert r.name == s.name
        assert r.start_ns == s.start_time and r.end_ns == s.end_time
        assert r.scope_name == "test.scope"
        assert r.service_name == "svc-under-test"
        assert r.pid == 4242
        assert r.resource_attributes["service.name"] == "svc-under-test"
        assert [(e.name, e.time_ns) for e in r.events] == [(e.name, e.timestamp) for e in s.events]
    root_r = next(r for r in collector.spans if r.name == "root")
    child_r = next(r for r in collector.spans if r.name == "child")
    assert root_r.kind == "server" and child_r.kind == "client"
    assert child_r.parent_span_id == root_r.span_id
    assert child_r.status_code == "error" and child_r.status_message == "boom"
    assert root_r.status_code == "unset"
    assert root_r.attributes == {
        "s": "text é ✓",
        "i": -(2**62),
        "f": 1.5,
        "b": True,
        "nan": "NaN",  # JSON-safe spelling of non-finite doubles
        "inf": "-Infinity",
        "ls": ["a", "b"],
        "li": [1, 2, 3],
        "lf": [0.5, 0.25],
        "lb": [True, False],
    }
    json.dumps(root_r.attributes, allow_nan=False)  # really JSON-safe
    assert root_r.events[0].attributes == {"ml.metric.name": "ml.loss", "ml.metric.value": 0.25}
    assert receiver.stats()["spans_accepted_total"] == 2


def test_sdk_metrics_arrive_exactly(receiver: OtlpReceiver, collector: Collector) -> None:
    tee = TeeMetricExporter(
        OTLPMetricExporter(endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True)
    )
    # A huge interval: only the explicit force_flush exports, so we know what was sent.
    reader = PeriodicExportingMetricReader(tee, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "metrics-svc"}),
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("meter.scope")
    counter = meter.create_counter("ml.samples", unit="1")
    updown = meter.create_up_down_counter("queue.depth")
    hist = meter.create_histogram("step.seconds", unit="s")
    gauge = meter.create_gauge("ml.accuracy")
    counter.add(5, {"split": "train"})
    counter.add(2, {"split": "train"})
    counter.add(1, {"split": "val"})
    updown.add(-3)
    for v in (0.5, 1.5, 2.0):
        hist.record(v, {"phase": "fwd"})
    gauge.set(0.875, {"epoch": 3})
    assert provider.force_flush()
    provider.shutdown()
    assert tee.results and all(r == MetricExportResult.SUCCESS for r in tee.results)

    # Expected points, from exactly what the SDK handed its exporter.
    expected: list[tuple[str, dict[str, Any], int, int, float]] = []
    for batch in tee.batches:
        for rm in batch.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        attrs = dict(p.attributes)
                        if hasattr(p, "bucket_counts"):
                            t, start = p.time_unix_nano, p.start_time_unix_nano
                            expected.append((m.name + ".count", attrs, t, start, p.count))
                            expected.append((m.name + ".sum", attrs, t, start, p.sum))
                        else:
                            start = getattr(p, "start_time_unix_nano", 0) or 0
                            expected.append((m.name, attrs, p.time_unix_nano, start, p.value))
    got = [(p.name, p.attributes, p.ts_ns, p.start_ts_ns, p.value) for p in collector.metrics]
    key = lambda t: (t[0], json.dumps(t[1], sort_keys=True))  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)

    by_name = {(p.name, json.dumps(p.attributes, sort_keys=True)): p for p in collector.metrics}
    train = by_name[("ml.samples", '{"split": "train"}')]
    assert train.value == 7.0 and train.kind == "sum" and train.monotonic
    assert train.temporality == "cumulative" and train.unit == "1"
    assert by_name[("ml.samples", '{"split": "val"}')].value == 1.0
    depth = by_name[("queue.depth", "{}")]
    assert depth.value == -3.0 and depth.kind == "sum" and not depth.monotonic
    assert by_name[("step.seconds.count", '{"phase": "fwd"}')].value == 3.0
    assert by_name[("step.seconds.sum", '{"phase": "fwd"}')].value == 4.0
    assert by_name[("step.seconds.sum", '{"phase": "fwd"}')].kind == "histogram"
    acc = by_name[("ml.accuracy", '{"epoch": 3}')]
    assert acc.value == 0.875 and acc.kind == "gauge"
    assert all(p.scope_name == "meter.scope" for p in collector.metrics)
    assert all(p.service_name == "metrics-svc" for p in collector.metrics)
    stats = receiver.stats()
    # OTLP points (before flattening); force_flush and shutdown each exported all 5 series.
    sent_points = sum(
        len(m.data.data_points)
        for batch in tee.batches
        for rm in batch.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )
    assert sent_points == 10
    assert stats["metric_points_received_total"] == sent_points
    assert stats["metric_points_accepted_total"] == sent_points
    assert stats["metric_points_rejected_total"] == 0


# The SDK's LoggingHandler is deprecated in newer SDKs in favour of a separate package, but it is
# still what most Python programs use to ship logs, and it exists in every SDK version we allow.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sdk_logs_arrive_exactly(receiver: OtlpReceiver, collector: Collector) -> None:
    tee = TeeLogExporter(
        OTLPLogExporter(endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True)
    )
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "logs-svc", "process.pid": 77}),
        shutdown_on_exit=False,
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(tee))  # type: ignore[arg-type]
    py_logger = logging.getLogger("wattspan-test-otlp-logs")
    py_logger.propagate = False
    py_logger.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    py_logger.addHandler(handler)
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer = tracer_provider.get_tracer("t")
    try:
        py_logger.warning("disk %s almost full", "sda", extra={"free_bytes": 1024})
        with tracer.start_as_current_span("in-span") as sp:
            py_logger.error("inside a span")
            ctx = sp.get_span_context()
    finally:
        py_logger.removeHandler(handler)
        provider.shutdown()
    assert len(tee.results) == 2

    sent = [rec.log_record for batch in tee.batches for rec in batch]
    assert len(collector.logs) == 2
    for s, r in zip(sent, collector.logs, strict=True):
        assert r.ts_ns == s.timestamp
        assert r.body == s.body
        assert r.severity == s.severity_text
        assert r.severity_number == s.severity_number.value
        assert r.attributes == dict(s.attributes)
        assert r.service_name == "logs-svc" and r.pid == 77
    first, second = collector.logs
    assert first.body == "disk sda almost full" and first.severity == "WARN"
    assert first.attributes["free_bytes"] == 1024
    assert first.trace_id is None and first.span_id is None
    assert second.trace_id == format(ctx.trace_id, "032x")
    assert second.span_id == format(ctx.span_id, "016x")
    assert receiver.stats()["logs_accepted_total"] == 2


def test_many_concurrent_clients(receiver: OtlpReceiver, collector: Collector) -> None:
    """8 exporters at once: every span arrives exactly once."""

    def client(k: int) -> None:
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(
            SimpleSpanProcessor(
                OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True)
            )
        )
        tracer = provider.get_tracer("c")
        for j in range(25):
            with tracer.start_as_current_span(f"c{k}-{j}"):
                pass
        provider.shutdown()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(r.name for r in collector.spans)
    assert names == sorted(f"c{k}-{j}" for k in range(8) for j in range(25))
    assert len({r.span_id for r in collector.spans}) == 200


# ---------------------------------------------------------------------------------------------
# hostile input


@pytest.mark.parametrize("method", [TRACE_METHOD, METRICS_METHOD, LOGS_METHOD])
def test_malformed_protobuf_is_invalid_argument(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver, method: str
) -> None:
    assert_good_request_accepted(channel, collector, "before")
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x80\x80\x80\x80\x10", b"\x0a\x05abc"):
        code, details = status_of(lambda g=garbage: raw_call(channel, method, g))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "cannot parse" in details
    assert_good_request_accepted(channel, collector, "after")
    assert receiver.stats()["requests_invalid_total"] == 3
    assert [s.name for s in collector.spans] == ["before", "after"]


def test_invalid_utf8_string_is_invalid_argument(
    channel: grpc.Channel, collector: Collector
) -> None:
    payload = good_trace_request("PLACEHOLDER")
    assert payload.count(b"PLACEHOLDER") == 1
    bad = payload.replace(b"PLACEHOLDER", b"\xc3\x28LACEHOLDE")  # same length, invalid UTF-8
    code, details = status_of(lambda: raw_call(channel, TRACE_METHOD, bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in details or "utf-8" in details.lower()
    assert collector.spans == []
    assert_good_request_accepted(channel, collector)


def test_empty_request_is_ok_and_calls_nothing(channel: grpc.Channel, collector: Collector) -> None:
    for method in (TRACE_METHOD, METRICS_METHOD, LOGS_METHOD):
        assert raw_call(channel, method, b"") == b""
    assert collector.calls == 0


def test_oversize_message_is_resource_exhausted(collector: Collector) -> None:
    limit = 64 * 1024
    with OtlpReceiver(collector, port=0, max_message_bytes=limit) as r:
        ch = grpc.insecure_channel(f"127.0.0.1:{r.port}")
        req = trace_service_pb2.ExportTraceServiceRequest.FromString(good_trace_request("big"))
        span = req.resource_spans[0].scope_spans[0].spans[0]
        span.attributes.add(key="blob").value.string_value = "x" * (limit + 1)
        big = req.SerializeToString()
        assert status_of(lambda: raw_call(ch, TRACE_METHOD, big))[0] == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        # Compressed it is tiny, but the limit applies after decompression (no zip bombs).
        code, _ = status_of(
            lambda: raw_call(ch, TRACE_METHOD, big, compression=grpc.Compression.Gzip)
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_good_request_accepted(ch, collector)
        ch.close()
    assert [s.name for s in collector.spans] == ["ok"]


def test_nan_and_infinite_metric_points_partial_success(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver
) -> None:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "m"
    sm = rm.scope_metrics.add()
    g = sm.metrics.add(name="ml.loss")
    for i, v in enumerate([1.0, math.nan, math.inf, -math.inf, 2.0]):
        p = g.gauge.data_points.add(time_unix_nano=1_000 + i, as_double=v)
        p.attributes.add(key="i").value.int_value = i
    g.gauge.data_points.add(time_unix_nano=2_000, as_int=7)
    h = sm.metrics.add(name="lat")
    h.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    h.histogram.data_points.add(time_unix_nano=3_000, count=2, sum=math.nan)
    h.histogram.data_points.add(time_unix_nano=3_001, count=4, sum=10.0)
    # "No recorded value" is a valid staleness marker: skipped, not rejected.
    g.gauge.data_points.add(
        time_unix_nano=4_000, flags=metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    )

    stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
    resp = stub.Export(req, timeout=10)
    assert resp.partial_success.rejected_data_points == 4
    assert "non-finite" in resp.partial_success.error_message
    got = [(p.name, p.ts_ns, p.value) for p in collector.metrics]
    assert got == [
        ("ml.loss", 1_000, 1.0),
        ("ml.loss", 1_004, 2.0),
        ("ml.loss", 2_000, 7.0),
        ("lat.count", 3_001, 4.0),
        ("lat.sum", 3_001, 10.0),
    ]
    assert collector.metrics[0].attributes == {"i": 0}
    assert collector.metrics[3].temporality == "delta"
    stats = receiver.stats()
    assert stats["metric_points_received_total"] == 9
    assert stats["metric_points_rejected_total"] == 4
    assert stats["metric_points_skipped_total"] == 1
    assert stats["metric_points_accepted_total"] == 4
    # A clean request right after is fully accepted.
    clean = metrics_service_pb2.ExportMetricsServiceRequest()
    m = clean.resource_metrics.add().scope_metrics.add().metrics.add(name="ok")
    m.gauge.data_points.add(time_unix_nano=5, as_double=1.0)
    assert not stub.Export(clean, timeout=10).HasField("partial_success")


def test_invalid_spans_partial_success(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver
) -> None:
    req = trace_service_pb2.ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    t0 = 1_700_000_000_000_000_000

    def add(
        name: str, trace_id: bytes, span_id: bytes, start: int, end: int, parent: bytes = b""
    ) -> None:
        spans.add(
            name=name,
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            start_time_unix_nano=start,
            end_time_unix_nano=end,
        )

    good_t, good_s = b"\x0a" * 16, b"\x0b" * 8
    add("good", good_t, good_s, t0, t0 + 10)
    add("zero-root-parent", good_t, b"\x0c" * 8, t0, t0, parent=bytes(8))
    add("zero-trace", bytes(16), good_s, t0, t0 + 1)
    add("zero-span", good_t, bytes(8), t0, t0 + 1)
    add("short-trace", b"\x01" * 8, good_s, t0, t0 + 1)
    add("long-span", good_t, b"\x01" * 9, t0, t0 + 1)
    add("bad-parent", good_t, good_s, t0, t0 + 1, parent=b"\x01" * 4)
    add("backwards", good_t, good_s, t0 + 5, t0)
    add("no-start", good_t, good_s, 0, t0)

    resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=10)
    assert resp.partial_success.rejected_spans == 7
    msg = resp.partial_success.error_message
    assert "invalid trace_id" in msg and "end time before start time" in msg
    assert [s.name for s in collector.spans] == ["good", "zero-root-parent"]
    assert collector.spans[1].parent_span_id is None
    stats = receiver.stats()
    assert (stats["spans_received_total"], stats["spans_rejected_total"]) == (9, 7)
    assert_good_request_accepted(channel, collector)


def test_all_spans_invalid_does_not_call_handler(
    channel: grpc.Channel, collector: Collector
) -> None:
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(
        name="x",
        trace_id=bytes(16),
        span_id=b"\x01" * 8,
        start_time_unix_nano=1,
        end_time_unix_nano=2,
    )
    resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=10)
    assert resp.partial_success.rejected_spans == 1
    assert collector.calls == 0


def test_invalid_log_ids_partial_success(channel: grpc.Channel, collector: Collector) -> None:
    req = logs_service_pb2.ExportLogsServiceRequest()
    records = req.resource_logs.add().scope_logs.add().log_records
    records.add(time_unix_nano=10, severity_number=9).body.string_value = "fine"
    records.add(time_unix_nano=11, trace_id=b"\x01" * 5).body.string_value = "bad trace id"
    records.add(observed_time_unix_nano=12, severity_number=17).body.int_value = 42
    resp = logs_service_pb2_grpc.LogsServiceStub(channel).Export(req, timeout=10)
    assert resp.partial_success.rejected_log_records == 1
    assert [(r.ts_ns, r.body, r.severity) for r in collector.logs] == [
        (10, "fine", "INFO"),
        (12, "42", "ERROR"),  # non-string bodies are JSON; time falls back to observed time
    ]


@given(payload=st.binary(max_size=512))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_bytes_never_crash(channel: grpc.Channel, payload: bytes) -> None:
    """Whatever the bytes, the answer is OK or INVALID_ARGUMENT, never INTERNAL/UNKNOWN."""
    for method in (TRACE_METHOD, METRICS_METHOD, LOGS_METHOD):
        code, details = status_of(lambda m=method: raw_call(channel, m, payload))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), details


# ---------------------------------------------------------------------------------------------
# handler failure, lifecycle


def test_handler_raising_is_unavailable(
    channel: grpc.Channel,
    collector: Collector,
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.fail_with = OSError("disk queue full")
    with caplog.at_level(logging.WARNING, logger="wattspan.agent.receiver"):
        code, details = status_of(lambda: raw_call(channel, TRACE_METHOD, good_trace_request()))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "OSError: disk queue full" in details and "retry" in details
    lines = [r for r in caplog.records if r.name.startswith("wattspan.agent.receiver")]
    assert len(lines) == 1 and "disk queue full" in lines[0].getMessage()
    assert lines[0].exc_info is None  # one line, no traceback
    stats = receiver.stats()
    assert stats["requests_failed_total"] == 1
    assert stats["spans_received_total"] == 1 and stats["spans_accepted_total"] == 0
    collector.fail_with = None
    assert_good_request_accepted(channel, collector)


def test_sdk_exporter_retries_after_unavailable(
    receiver: OtlpReceiver, collector: Collector
) -> None:
    """UNAVAILABLE is retryable: the SDK exporter tries again and the span gets through."""
    collector.fail_with = RuntimeError("transient")

    def heal() -> None:
        time.sleep(0.3)
        collector.fail_with = None

    threading.Thread(target=heal).start()
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True, timeout=10
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("retried"):
        pass
    provider.shutdown()
    assert [s.name for s in collector.spans] == ["retried"]
    assert receiver.stats()["requests_failed_total"] >= 1


def test_stats_keys_and_port(receiver: OtlpReceiver) -> None:
    assert set(receiver.stats()) == set(STAT_KEYS)
    assert all(v == 0 for v in receiver.stats().values())
    assert receiver.port > 0
    assert receiver.address == f"127.0.0.1:{receiver.port}"


def test_port_in_use_raises_oserror(receiver: OtlpReceiver, collector: Collector) -> None:
    other = OtlpReceiver(collector, port=receiver.port)
    with pytest.raises(OSError, match="cannot bind"):
        other.start()
    other.stop()  # harmless when never started


def test_stop_then_clients_fail_fast(collector: Collector) -> None:
    r = OtlpReceiver(collector, port=0)
    r.start()
    port = r.port
    r.stop(grace=0.5)
    r.stop()  # idempotent
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    code, _ = status_of(lambda: raw_call(ch, TRACE_METHOD, good_trace_request()))
    assert code == grpc.StatusCode.UNAVAILABLE
    ch.close()


def test_constructor_validation(collector: Collector) -> None:
    with pytest.raises(ValueError):
        OtlpReceiver(collector, tls_cert_file="c.pem")
    with pytest.raises(ValueError):
        OtlpReceiver(collector, tls_client_ca_file="ca.pem")
    with pytest.raises(ValueError):
        OtlpReceiver(collector, max_message_bytes=0)


# ---------------------------------------------------------------------------------------------
# TLS


def _make_cert(
    tmp: Path, name: str, issuer: tuple[Any, Any] | None = None, *, ca: bool = False
) -> tuple[Path, Path, Any, Any]:
    """A certificate for localhost/127.0.0.1 (self-signed unless ``issuer`` = (cert, key))."""
    x509 = pytest.importorskip("cryptography.x509", reason="TLS tests need `cryptography`")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert, key


def _export_one(exporter: OTLPSpanExporter, name: str) -> Any:
    from opentelemetry.sdk.trace.export import SpanExportResult

    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tls").start_as_current_span(name):
        pass
    result = exporter.export(memory.get_finished_spans())
    exporter.shutdown()
    return result == SpanExportResult.SUCCESS


def test_tls_self_signed(tmp_path: Path, collector: Collector) -> None:
    cert_path, key_path, _, _ = _make_cert(tmp_path, "server", ca=True)
    with OtlpReceiver(collector, port=0, tls_cert_file=cert_path, tls_key_file=key_path) as r:
        good = OTLPSpanExporter(
            endpoint=f"https://localhost:{r.port}",
            credentials=grpc.ssl_channel_credentials(root_certificates=cert_path.read_bytes()),
            timeout=5,
        )
        assert _export_one(good, "over-tls")
        # A plaintext client cannot talk to the TLS port.
        plain = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{r.port}", insecure=True, timeout=1)
        assert not _export_one(plain, "plaintext")
    assert [s.name for s in collector.spans] == ["over-tls"]


def test_mutual_tls(tmp_path: Path, collector: Collector) -> None:
    ca_path, _, ca_cert, ca_key = _make_cert(tmp_path, "ca", ca=True)
    srv_cert, srv_key, _, _ = _make_cert(tmp_path, "server", issuer=(ca_cert, ca_key))
    cli_cert, cli_key, _, _ = _make_cert(tmp_path, "client", issuer=(ca_cert, ca_key))
    with OtlpReceiver(
        collector,
        port=0,
        tls_cert_file=srv_cert,
        tls_key_file=srv_key,
        tls_client_ca_file=ca_path,
    ) as r:
        with_cert = OTLPSpanExporter(
            endpoint=f"https://localhost:{r.port}",
            credentials=grpc.ssl_channel_credentials(
                root_certificates=ca_path.read_bytes(),
                private_key=cli_key.read_bytes(),
                certificate_chain=cli_cert.read_bytes(),
            ),
            timeout=5,
        )
        assert _export_one(with_cert, "mtls")
        without_cert = OTLPSpanExporter(
            endpoint=f"https://localhost:{r.port}",
            credentials=grpc.ssl_channel_credentials(root_certificates=ca_path.read_bytes()),
            timeout=1,
        )
        assert not _export_one(without_cert, "anonymous")
    assert [s.name for s in collector.spans] == ["mtls"]


# ---------------------------------------------------------------------------------------------
# the handler's answers: partial rejection, back-pressure, invalid requests


def _two_span_request() -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest.FromString(good_trace_request("a"))
    spans = req.resource_spans[0].scope_spans[0].spans
    spans.add().CopyFrom(spans[0])
    spans[1].name, spans[1].span_id = "b", b"\x03" * 8
    # ...and one the receiver's own validation rejects, so both reasons must be merged.
    spans.add().CopyFrom(spans[0])
    spans[2].trace_id = bytes(16)
    return req


def test_handler_rejection_is_partial_success(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver
) -> None:
    collector.reply = Rejection(1, Counter({"pid 1 is not watched": 1}))
    resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(_two_span_request(), timeout=10)
    assert resp.partial_success.rejected_spans == 2  # one by validation, one by the handler
    msg = resp.partial_success.error_message
    assert "pid 1 is not watched: 1" in msg and "invalid trace_id" in msg
    stats = receiver.stats()
    assert stats["spans_received_total"] == 3
    assert stats["spans_rejected_total"] == 2
    assert stats["spans_accepted_total"] == 1
    assert [s.name for s in collector.spans] == ["a"]


def test_handler_warning_without_rejection(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver
) -> None:
    """A Rejection with count 0 is a warning: the spec's partial success with nothing
    rejected and a message."""
    collector.reply = Rejection(0, Counter({"ml.hyperparameters is not a JSON object": 1}))
    raw = raw_call(channel, TRACE_METHOD, good_trace_request())
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(raw)
    assert resp.HasField("partial_success")
    assert resp.partial_success.rejected_spans == 0
    assert "not a JSON object" in resp.partial_success.error_message
    assert receiver.stats()["spans_accepted_total"] == 1


def test_handler_rejection_of_metrics_and_logs(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver
) -> None:
    collector.reply = Rejection(1, Counter({"refused": 1}))
    mreq = metrics_service_pb2.ExportMetricsServiceRequest()
    g = mreq.resource_metrics.add().scope_metrics.add().metrics.add(name="g")
    g.gauge.data_points.add(time_unix_nano=1, as_double=1.0)
    g.gauge.data_points.add(time_unix_nano=2, as_double=2.0)
    mresp = metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(mreq, timeout=10)
    assert mresp.partial_success.rejected_data_points == 1
    assert mresp.partial_success.error_message == "refused: 1"
    lreq = logs_service_pb2.ExportLogsServiceRequest()
    records = lreq.resource_logs.add().scope_logs.add().log_records
    for i in range(3):
        records.add(time_unix_nano=10 + i).body.string_value = f"l{i}"
    lresp = logs_service_pb2_grpc.LogsServiceStub(channel).Export(lreq, timeout=10)
    assert lresp.partial_success.rejected_log_records == 1
    stats = receiver.stats()
    assert (stats["metric_points_accepted_total"], stats["metric_points_rejected_total"]) == (1, 1)
    assert (stats["logs_accepted_total"], stats["logs_rejected_total"]) == (2, 1)


def _retry_delay_s(err: grpc.RpcError) -> float:
    """The RetryInfo delay, checked to be the same in both places the server puts it."""
    from google.rpc.error_details_pb2 import RetryInfo
    from google.rpc.status_pb2 import Status

    trailers = dict(err.trailing_metadata())  # type: ignore[attr-defined]
    info = RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    status = Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert status.message == err.details()  # type: ignore[attr-defined]
    packed = RetryInfo()
    assert status.details[0].Unpack(packed) and packed == info
    return info.retry_delay.ToNanoseconds() / 1e9


def test_handler_backpressure_is_unavailable_with_retry_info(
    channel: grpc.Channel, collector: Collector, receiver: OtlpReceiver
) -> None:
    collector.fail_with = Backpressure("200000 spans are waiting for attribution; retry later")
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, TRACE_METHOD, good_trace_request())
    err = info.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert err.details() == "200000 spans are waiting for attribution; retry later"  # type: ignore[attr-defined]
    assert 0.5 <= _retry_delay_s(err) <= 1.5
    stats = receiver.stats()
    assert stats["requests_refused_total"] == 1 and stats["requests_failed_total"] == 0
    assert stats["spans_accepted_total"] == 0


def test_handler_invalid_request_is_invalid_argument_and_not_retried(
    receiver: OtlpReceiver, collector: Collector
) -> None:
    collector.fail_with = InvalidRequest("ml.hyperparameters is not JSON")
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True, timeout=10
    )
    assert not _export_one(exporter, "bad-json")
    assert collector.calls == 1  # INVALID_ARGUMENT: the SDK gave up at once
    ch = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
    code, details = status_of(lambda: raw_call(ch, TRACE_METHOD, good_trace_request()))
    ch.close()
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "ml.hyperparameters is not JSON")
    stats = receiver.stats()
    assert stats["requests_invalid_total"] == 2
    assert stats["spans_rejected_total"] == 2 and stats["spans_accepted_total"] == 0


def test_failing_handler_logs_once_per_state_change(
    channel: grpc.Channel,
    collector: Collector,
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def lines() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.name.startswith("wattspan.agent.receiver")
        ]

    caplog.set_level(logging.INFO, logger="wattspan.agent.receiver")
    # One exception instance raised again and again, as a handler that keeps its last error
    # would: its traceback chain then holds every failed call's frames. Unless the receiver
    # drops it, each call's HTTP/2 stream stays open and past max_concurrent_streams (16)
    # failures the connection refuses every call (RST_STREAM REFUSED_STREAM).
    collector.fail_with = OSError("database is locked")
    for _ in range(20):
        code, _ = status_of(lambda: raw_call(channel, TRACE_METHOD, good_trace_request()))
        assert code == grpc.StatusCode.UNAVAILABLE
    assert len(lines()) == 1 and "database is locked" in lines()[0]
    collector.fail_with = Backpressure("pending spans at the bound")
    for _ in range(5):
        status_of(lambda: raw_call(channel, TRACE_METHOD, good_trace_request()))
    assert len(lines()) == 2 and "pending spans at the bound" in lines()[1]  # a new kind
    collector.fail_with = None
    for _ in range(3):
        assert_good_request_accepted(channel, collector)
    assert len(lines()) == 3
    assert "accepting again" in lines()[2] and "25 request(s) with 25 spans" in lines()[2]
    assert all(r.exc_info is None for r in caplog.records)  # one line each, no traceback
    assert receiver.stats()["requests_failed_total"] == 20


def test_sdk_exporter_retries_after_backpressure(
    receiver: OtlpReceiver, collector: Collector
) -> None:
    collector.fail_with = Backpressure("busy")

    def heal() -> None:
        time.sleep(0.2)
        collector.fail_with = None

    threading.Thread(target=heal).start()
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True, timeout=10
    )
    t0 = time.monotonic()
    assert _export_one(exporter, "after-backpressure")
    # One wait of the server's RetryInfo delay (0.5 to 1.5 s), well within the SDK's budget.
    assert 0.4 <= time.monotonic() - t0 < 5
    assert [s.name for s in collector.spans] == ["after-backpressure"]


# ---------------------------------------------------------------------------------------------
# the in-flight bound


def _span_request_of(size: int, name: str) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest.FromString(good_trace_request(name))
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="pad").value.string_value = "x" * size
    return req.SerializeToString()


def test_inflight_bound_refuses_without_parsing(collector: Collector) -> None:
    """While one request is being handled, another that would pass the bound is told to
    retry, before it is parsed; once the first is done the retry gets through."""
    collector.gate = threading.Event()
    with OtlpReceiver(collector, port=0, max_inflight_bytes=150_000) as r:
        ch = grpc.insecure_channel(f"127.0.0.1:{r.port}")
        first: list[tuple[grpc.StatusCode, str]] = []
        t = threading.Thread(
            target=lambda: first.append(
                status_of(lambda: raw_call(ch, TRACE_METHOD, _span_request_of(100_000, "first")))
            )
        )
        t.start()
        assert collector.entered.wait(10)
        assert r.stats()["inflight_bytes"] > 100_000
        second = _span_request_of(100_000, "second")
        with pytest.raises(grpc.RpcError) as info:
            raw_call(ch, TRACE_METHOD, second)
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "otlp.max_inflight_bytes = 150000" in err.details()  # type: ignore[attr-defined]
        assert 0.5 <= _retry_delay_s(err) <= 1.5
        # Refused before parsing: its span was never counted as received.
        assert r.stats()["spans_received_total"] == 1
        # A small request still fits beside the big one.
        small = good_trace_request("small", span_id=b"\x05" * 8)
        small_done = threading.Thread(target=lambda: raw_call(ch, TRACE_METHOD, small))
        small_done.start()
        collector.gate.set()
        t.join(10)
        small_done.join(10)
        assert first == [(grpc.StatusCode.OK, "")]
        raw_call(ch, TRACE_METHOD, second)  # the retry
        ch.close()
        stats = r.stats()
    assert sorted(s.name for s in collector.spans) == ["first", "second", "small"]
    assert stats["requests_refused_total"] == 1
    assert stats["inflight_bytes"] == 0


def test_request_larger_than_the_bound_is_served_alone(collector: Collector) -> None:
    with OtlpReceiver(collector, port=0, max_inflight_bytes=1024) as r:
        ch = grpc.insecure_channel(f"127.0.0.1:{r.port}")
        raw_call(ch, TRACE_METHOD, _span_request_of(1_000_000, "big"))
        # Failures release what they held: afterwards the bound admits again.
        collector.fail_with = OSError("boom")
        assert status_of(lambda: raw_call(ch, TRACE_METHOD, good_trace_request()))[0] == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert status_of(lambda: raw_call(ch, TRACE_METHOD, b"\xff\xff"))[0] == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        collector.fail_with = None
        assert r.stats()["inflight_bytes"] == 0
        assert_good_request_accepted(ch, collector)
        ch.close()
    assert [s.name for s in collector.spans] == ["big", "ok"]


def test_sdk_exporter_retries_after_the_inflight_bound(collector: Collector) -> None:
    collector.gate = threading.Event()
    # 1 byte: while one request is in flight, any other is refused.
    with OtlpReceiver(collector, port=0, max_inflight_bytes=1) as r:
        ch = grpc.insecure_channel(f"127.0.0.1:{r.port}")
        t = threading.Thread(target=lambda: raw_call(ch, TRACE_METHOD, good_trace_request("hold")))
        t.start()
        assert collector.entered.wait(10)
        threading.Timer(0.3, collector.gate.set).start()
        exporter = OTLPSpanExporter(
            endpoint=f"http://127.0.0.1:{r.port}", insecure=True, timeout=10
        )
        assert _export_one(exporter, "sdk")
        t.join(10)
        ch.close()
        assert r.stats()["requests_refused_total"] >= 1
    assert sorted(s.name for s in collector.spans) == ["hold", "sdk"]


# ---------------------------------------------------------------------------------------------
# connections and the address logged


def test_listening_line_shows_the_bound_port(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wattspan.agent.receiver")
    with OtlpReceiver(collector, host="127.0.0.1", port=0) as r:
        assert r.port > 0
    assert f"listening on 127.0.0.1:{r.port} " in caplog.text


def test_listening_line_brackets_ipv6(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    caplog.set_level(logging.INFO, logger="wattspan.agent.receiver")
    with OtlpReceiver(collector, host="::1", port=0) as r:
        ch = grpc.insecure_channel(r.address)
        assert_good_request_accepted(ch, collector)
        ch.close()
    assert r.address == f"[::1]:{r.port}"
    assert f"listening on [::1]:{r.port} " in caplog.text


def _closed_within(sock: Any, seconds: float) -> bool:
    """Whether the server closed ``sock`` within ``seconds`` (reading what it sends)."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def test_idle_connections_are_closed(collector: Collector) -> None:
    import socket

    with OtlpReceiver(collector, port=0, max_connection_idle_seconds=0.5) as r:
        idle = socket.create_connection(("127.0.0.1", r.port))
        idle.sendall(_H2_PREFACE)  # a complete HTTP/2 handshake, then nothing
        ch = grpc.insecure_channel(f"127.0.0.1:{r.port}")
        assert_good_request_accepted(ch, collector)
        states: list[grpc.ChannelConnectivity] = []
        ch.subscribe(states.append)
        assert _closed_within(idle, 5)
        # The real client's connection is closed with GOAWAY too; it just reconnects.
        wait_until(lambda: grpc.ChannelConnectivity.IDLE in states, 5)
        assert_good_request_accepted(ch, collector, "after-idle")
        ch.close()
        idle.close()


def test_connection_cap_closes_the_excess(collector: Collector) -> None:
    import socket

    with OtlpReceiver(collector, port=0, max_connections=5) as r:
        socks = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(20)]
        for s in socks:
            s.sendall(_H2_PREFACE)
        closed = sum(_closed_within(s, 0.3) for s in socks)
        assert 15 <= closed < 20
        for s in socks:
            s.close()
        ch = grpc.insecure_channel(f"127.0.0.1:{r.port}")
        wait_until(
            lambda: status_of(lambda: raw_call(ch, TRACE_METHOD, b""))[0] == grpc.StatusCode.OK
        )
        assert_good_request_accepted(ch, collector)
        ch.close()


def test_grpc_options_are_the_configured_bounds(collector: Collector) -> None:
    r = OtlpReceiver(
        collector,
        port=0,
        max_connections=100,
        max_concurrent_streams=7,
        max_connection_idle_seconds=30,
        keepalive_time_seconds=15,
    )
    opts = dict(r._options())
    assert opts["grpc.max_allowed_incoming_connections"] == 100
    assert opts["grpc.max_concurrent_streams"] == 7
    assert opts["grpc.max_connection_idle_ms"] == 30_000
    assert opts["grpc.keepalive_time_ms"] == 15_000
    assert opts["grpc.keepalive_timeout_ms"] == 15_000
    assert opts["grpc.http2.max_pings_without_data"] == 0
    assert opts["grpc.server_handshake_timeout_ms"] == 10_000


# ---------------------------------------------------------------------------------------------
# records without process.pid: the sending process is found from the connection

# A plain OTel SDK program, no process.pid in its resource, sending one span and one gauge
# point to OTEL_EXPORTER_OTLP_ENDPOINT; a span named "own" carries a pid of its own.
_PLAIN_SENDER = r"""
import json, os
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

resource = Resource({"service.name": "plain"})
tp = TracerProvider(resource=resource)
tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(insecure=True)))
with tp.get_tracer("plain").start_as_current_span("plain"):
    pass
with tp.get_tracer("plain").start_as_current_span("own", attributes={"process.pid": 4242}):
    pass
reader = PeriodicExportingMetricReader(OTLPMetricExporter(insecure=True), 3_600_000)
mp = MeterProvider(resource=resource, metric_readers=[reader])
mp.get_meter("plain").create_gauge("queue.depth").set(3)
mp.shutdown()
tp.shutdown()
print(json.dumps({"pid": os.getpid()}))
"""


def test_records_without_pid_get_the_sending_process(
    receiver: OtlpReceiver, collector: Collector
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}"
    p = subprocess.run(
        [sys.executable, "-c", _PLAIN_SENDER], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    pid = json.loads(p.stdout)["pid"]
    assert pid != os.getpid()
    spans = {s.name: s for s in collector.spans}
    assert spans["plain"].pid == pid
    assert "process.pid" not in spans["plain"].resource_attributes
    assert spans["own"].pid == 4242, "a pid the client sent is never replaced"
    (point,) = collector.metrics
    assert point.name == "queue.depth" and point.pid == pid
    stats = receiver.stats()
    assert stats["peer_pids_resolved_total"] == 2  # one span, one point
    assert stats["peer_pids_unresolved_total"] == 0


def test_in_process_clients_records_stay_without_pid(
    receiver: OtlpReceiver, collector: Collector
) -> None:
    # The receiver's own process is never a sender: an agent watching itself would charge
    # its own CPU time to the spans.
    provider = TracerProvider(resource=Resource({"service.name": "here"}), shutdown_on_exit=False)
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True)
        )
    )
    for name in ("a", "b"):
        with provider.get_tracer("t").start_as_current_span(name):
            pass
    provider.shutdown()
    assert [s.pid for s in collector.spans] == [None, None]
    stats = receiver.stats()
    assert stats["peer_pids_unresolved_total"] == 2
    assert stats["peer_pids_resolved_total"] == 0
