"""Translate parsed OTLP export requests into :mod:`wattspan.agent.records`, validating as we go.

Kept apart from the gRPC server so the rules (what is rejected and why) can be tested on
protobuf messages directly, and reused by an OTLP/HTTP receiver later.

Every ``*_from_request`` function returns ``(records, rejected, reasons)`` where ``rejected``
counts OTLP items (spans, data points, log records) dropped by validation and ``reasons`` maps
a short reason to its count; the server turns those into an OTLP ``partial_success``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from wattspan.agent.records import (
    JsonValue,
    LogRecord,
    MetricKind,
    MetricPoint,
    SpanEvent,
    SpanKind,
    SpanRecord,
    StatusCode,
    Temporality,
)

__all__ = [
    "any_value",
    "attributes",
    "format_reasons",
    "logs_from_request",
    "metric_point_count",
    "metrics_from_request",
    "spans_from_request",
]

_SPAN_KINDS: dict[int, SpanKind] = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "unspecified",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}
_STATUS_CODES: dict[int, StatusCode] = {
    trace_pb2.Status.STATUS_CODE_UNSET: "unset",
    trace_pb2.Status.STATUS_CODE_OK: "ok",
    trace_pb2.Status.STATUS_CODE_ERROR: "error",
}
_TEMPORALITY: dict[int, Temporality] = {
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}
# "SEVERITY_NUMBER_INFO2" -> "INFO2"; unknown numbers fall back to the number itself.
_SEVERITY_NAMES: dict[int, str] = {
    number: name.removeprefix("SEVERITY_NUMBER_")
    for name, number in logs_pb2.SeverityNumber.items()
}
_NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


def _nonfinite(value: float) -> str:
    # The exact tokens Python's json module writes and float() reads back.
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def any_value(value: AnyValue) -> JsonValue:
    """Convert an OTLP ``AnyValue`` to a JSON-safe Python value (see records module docstring).

    Recursion is bounded because protobuf's parser already limits message nesting depth.
    """
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        d = value.double_value
        return d if math.isfinite(d) else _nonfinite(d)
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return None


def attributes(kvs: Iterable[KeyValue]) -> dict[str, JsonValue]:
    """Convert repeated ``KeyValue`` to a dict; a repeated key keeps its last value."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def _identity(resource_attrs: dict[str, JsonValue]) -> tuple[int | None, str]:
    pid = resource_attrs.get("process.pid")
    # bool is an int subclass; a boolean pid is junk, not 0/1.
    if not isinstance(pid, int) or isinstance(pid, bool):
        pid = None
    service = resource_attrs.get("service.name")
    return pid, service if isinstance(service, str) and service else "unknown_service"


def format_reasons(reasons: Counter[str]) -> str:
    """``Counter({"a": 2, "b": 1})`` -> ``"a: 2; b: 1"`` (stable order: most common first)."""
    return "; ".join(f"{reason}: {count}" for reason, count in reasons.most_common())


# --------------------------------------------------------------------------------------------
# traces


def _span_problem(span: trace_pb2.Span) -> str | None:
    """Why ``span`` must be rejected, or ``None`` if it is acceptable."""
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE_ID:
        return "invalid trace_id (need 16 bytes, not all zero)"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN_ID:
        return "invalid span_id (need 8 bytes, not all zero)"
    if len(span.parent_span_id) not in (0, 8):
        return "invalid parent_span_id (need 0 or 8 bytes)"
    if span.start_time_unix_nano == 0 or span.end_time_unix_nano == 0:
        return "missing start or end time"
    if span.end_time_unix_nano < span.start_time_unix_nano:
        return "end time before start time"
    return None


def spans_from_request(
    request: ExportTraceServiceRequest,
) -> tuple[list[SpanRecord], int, Counter[str]]:
    """Validate and convert every span of ``request``."""
    records: list[SpanRecord] = []
    reasons: Counter[str] = Counter()
    append, record, event, value_of = records.append, SpanRecord, SpanEvent, any_value
    kinds, codes, zero_trace, zero_span = _SPAN_KINDS, _STATUS_CODES, _ZERO_TRACE_ID, _ZERO_SPAN_ID
    for resource_spans in request.resource_spans:
        res_attrs = attributes(resource_spans.resource.attributes)
        res_pid, service = _identity(res_attrs)
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            # The hot loop of the receiver: each field is read once (every access to a
            # protobuf field costs a call), the checks of _span_problem inlined for the
            # common valid case, and the record built positionally.
            for span in scope_spans.spans:
                tid = span.trace_id
                sid = span.span_id
                parent = span.parent_span_id
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                if (
                    len(tid) != 16
                    or tid == zero_trace
                    or len(sid) != 8
                    or sid == zero_span
                    or len(parent) not in (0, 8)
                    or not start
                    or end < start
                ):
                    reasons[_span_problem(span) or "invalid span"] += 1
                    continue
                kvs = span.attributes
                attrs = {kv.key: value_of(kv.value) for kv in kvs} if kvs else {}
                pid = attrs.get("process.pid", res_pid)
                if pid is not res_pid and (not isinstance(pid, int) or isinstance(pid, bool)):
                    pid = res_pid
                status = span.status
                evs = span.events
                append(
                    record(
                        tid.hex(),
                        sid.hex(),
                        # An all-zero parent is how some clients spell "root".
                        parent.hex() if parent and parent != zero_span else None,
                        span.name,
                        kinds.get(span.kind, "unspecified"),
                        start,
                        end,
                        codes.get(status.code, "unset"),
                        status.message,
                        attrs,
                        [event(ev.name, ev.time_unix_nano, attributes(ev.attributes)) for ev in evs]
                        if evs
                        else [],
                        res_attrs,
                        scope_name,
                        pid,
                        service,
                    )
                )
    return records, sum(reasons.values()), reasons


# --------------------------------------------------------------------------------------------
# metrics


def _number_value(point: metrics_pb2.NumberDataPoint) -> float | None:
    which = point.WhichOneof("value")
    if which == "as_double":
        return point.as_double
    if which == "as_int":
        return float(point.as_int)
    return None


class _MetricBuilder:
    """Accumulates points of one request; holds the per-resource/scope context while iterating."""

    def __init__(self) -> None:
        self.points: list[MetricPoint] = []
        self.reasons: Counter[str] = Counter()
        self.res_attrs: dict[str, JsonValue] = {}
        self.pid: int | None = None
        self.service = "unknown_service"
        self.scope_name = ""

    def emit(
        self,
        metric: metrics_pb2.Metric,
        name: str,
        kind: MetricKind,
        point: object,
        value: float,
        *,
        monotonic: bool = False,
        temporality: Temporality = "",
    ) -> None:
        self.points.append(
            MetricPoint(
                name=name,
                ts_ns=point.time_unix_nano,  # type: ignore[attr-defined]
                value=value,
                kind=kind,
                attributes=attributes(point.attributes),  # type: ignore[attr-defined]
                resource_attributes=self.res_attrs,
                scope_name=self.scope_name,
                unit=metric.unit,
                start_ts_ns=point.start_time_unix_nano,  # type: ignore[attr-defined]
                monotonic=monotonic,
                temporality=temporality,
                pid=self.pid,
                service_name=self.service,
            )
        )

    def check(self, point: object) -> bool:
        """Common per-point checks; counts the rejection and returns False when rejected."""
        if point.time_unix_nano == 0:  # type: ignore[attr-defined]
            self.reasons["missing time_unix_nano"] += 1
            return False
        return True

    def numbers(
        self,
        metric: metrics_pb2.Metric,
        points: Iterable[metrics_pb2.NumberDataPoint],
        kind: MetricKind,
        monotonic: bool = False,
        temporality: Temporality = "",
    ) -> int:
        skipped = 0
        for point in points:
            if point.flags & _NO_RECORDED_VALUE:
                # A staleness marker, not a value: valid OTLP, nothing to store.
                skipped += 1
                continue
            if not self.check(point):
                continue
            value = _number_value(point)
            if value is None:
                self.reasons["data point without a value"] += 1
                continue
            if not math.isfinite(value):
                self.reasons["non-finite value (NaN or infinity)"] += 1
                continue
            self.emit(
                metric,
                metric.name,
                kind,
                point,
                value,
                monotonic=monotonic,
                temporality=temporality,
            )
        return skipped

    def count_sum(
        self,
        metric: metrics_pb2.Metric,
        points: Iterable[object],
        kind: MetricKind,
        temporality: Temporality = "",
        has_sum: bool = True,
    ) -> int:
        skipped = 0
        for point in points:
            if point.flags & _NO_RECORDED_VALUE:  # type: ignore[attr-defined]
                skipped += 1
                continue
            if not self.check(point):
                continue
            # Histogram sum is proto3 `optional`; summary sum is always present.
            with_sum = point.HasField("sum") if has_sum else True  # type: ignore[attr-defined]
            total = point.sum  # type: ignore[attr-defined]
            if with_sum and not math.isfinite(total):
                self.reasons["non-finite value (NaN or infinity)"] += 1
                continue
            count = float(point.count)  # type: ignore[attr-defined]
            # Counts only grow within a cumulative stream, so they are monotonic.
            self.emit(
                metric,
                metric.name + ".count",
                kind,
                point,
                count,
                monotonic=True,
                temporality=temporality,
            )
            if with_sum:
                self.emit(metric, metric.name + ".sum", kind, point, total, temporality=temporality)
        return skipped


def metrics_from_request(
    request: ExportMetricsServiceRequest,
) -> tuple[list[MetricPoint], int, Counter[str], int]:
    """Validate and convert every data point of ``request``.

    Returns ``(points, rejected, reasons, skipped)``; ``skipped`` counts points flagged
    "no recorded value", which are valid but carry nothing to store. ``rejected`` and
    ``skipped`` count OTLP data points; ``points`` is longer than the number of accepted OTLP
    points when histograms were flattened.
    """
    b = _MetricBuilder()
    skipped = 0
    for resource_metrics in request.resource_metrics:
        b.res_attrs = attributes(resource_metrics.resource.attributes)
        b.pid, b.service = _identity(b.res_attrs)
        for scope_metrics in resource_metrics.scope_metrics:
            b.scope_name = scope_metrics.scope.name
            for metric in scope_metrics.metrics:
                data = metric.WhichOneof("data")
                if not metric.name:
                    n = _point_count(metric, data)
                    if n:
                        b.reasons["metric without a name"] += n
                    continue
                if data == "gauge":
                    skipped += b.numbers(metric, metric.gauge.data_points, "gauge")
                elif data == "sum":
                    skipped += b.numbers(
                        metric,
                        metric.sum.data_points,
                        "sum",
                        monotonic=metric.sum.is_monotonic,
                        temporality=_TEMPORALITY.get(metric.sum.aggregation_temporality, ""),
                    )
                elif data == "histogram":
                    skipped += b.count_sum(
                        metric,
                        metric.histogram.data_points,
                        "histogram",
                        _TEMPORALITY.get(metric.histogram.aggregation_temporality, ""),
                    )
                elif data == "exponential_histogram":
                    skipped += b.count_sum(
                        metric,
                        metric.exponential_histogram.data_points,
                        "histogram",
                        _TEMPORALITY.get(metric.exponential_histogram.aggregation_temporality, ""),
                    )
                elif data == "summary":
                    skipped += b.count_sum(
                        metric, metric.summary.data_points, "summary", has_sum=False
                    )
    return b.points, sum(b.reasons.values()), b.reasons, skipped


def _point_count(metric: metrics_pb2.Metric, data: str | None) -> int:
    if data is None:
        return 0
    return len(getattr(metric, data).data_points)


def metric_point_count(request: ExportMetricsServiceRequest) -> int:
    """Number of OTLP data points in ``request`` (before flattening)."""
    return sum(
        _point_count(metric, metric.WhichOneof("data"))
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )


# --------------------------------------------------------------------------------------------
# logs


def _optional_id(raw: bytes, size: int) -> str | bool | None:
    """Hex id, ``None`` when absent/all-zero, ``False`` when the length is wrong."""
    if not raw:
        return None
    if len(raw) != size:
        return False
    return None if raw == bytes(size) else raw.hex()


def logs_from_request(
    request: ExportLogsServiceRequest,
) -> tuple[list[LogRecord], int, Counter[str]]:
    """Validate and convert every log record of ``request``."""
    records: list[LogRecord] = []
    reasons: Counter[str] = Counter()
    now_ns = time.time_ns()
    for resource_logs in request.resource_logs:
        res_attrs = attributes(resource_logs.resource.attributes)
        pid, service = _identity(res_attrs)
        for scope_logs in resource_logs.scope_logs:
            scope_name = scope_logs.scope.name
            for log in scope_logs.log_records:
                trace_id = _optional_id(log.trace_id, 16)
                span_id = _optional_id(log.span_id, 8)
                if trace_id is False or span_id is False:
                    reasons["invalid trace_id or span_id length"] += 1
                    continue
                if log.body.WhichOneof("value") == "string_value":
                    body = log.body.string_value
                elif log.HasField("body"):
                    body = json.dumps(any_value(log.body), separators=(",", ":"))
                else:
                    body = ""
                records.append(
                    LogRecord(
                        ts_ns=log.time_unix_nano or log.observed_time_unix_nano or now_ns,
                        severity=log.severity_text
                        or _SEVERITY_NAMES.get(log.severity_number, str(log.severity_number)),
                        body=body,
                        severity_number=log.severity_number,
                        attributes=attributes(log.attributes),
                        resource_attributes=res_attrs,
                        scope_name=scope_name,
                        trace_id=trace_id,  # type: ignore[arg-type]
                        span_id=span_id,  # type: ignore[arg-type]
                        pid=pid,
                        service_name=service,
                    )
                )
    return records, sum(reasons.values()), reasons
