"""Plain records produced by the OTLP receiver and consumed by the rest of the agent.

These are deliberately dumb containers (no protobuf types leak past the receiver), so that
attribution, the pipeline and exporters can be written and tested without gRPC or protobuf.

Conventions shared by every record:

* Timestamps are integers in nanoseconds since the Unix epoch (OTLP's ``fixed64`` fields,
  unchanged).
* Ids are lowercase hex strings: 32 characters for a trace id, 16 for a span id.
* ``attributes`` and ``resource_attributes`` hold JSON-safe values only: ``str``, ``int``,
  ``float`` (finite), ``bool``, ``None``, lists and dicts of those. OTLP bytes values become
  lowercase hex strings; non-finite doubles become the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"`` (the tokens ``float()`` parses back), because strict JSON has no such numbers.
* ``resource_attributes`` is one dict shared by every record that came from the same OTLP
  resource block of a request: treat it as read-only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

JsonValue = Any
"""A JSON-safe value (see the module docstring); ``Any`` because recursive aliases buy nothing."""

#: Sources of the records the telemetry ingest produces itself (attributed spans, valued
#: metrics): the store keeps them in tables of their own, so neither the store's sample sink
#: nor the ingest's takes them as node samples.
#: ``ml_param``/``ml_confusion``: hyperparameters and confusion matrices (agent/ml_export.py),
#: already in the store beside the spans.
TELEMETRY_SOURCES = frozenset({"spans", "ml", "metrics", "ml_param", "ml_confusion"})

SpanKind = Literal["unspecified", "internal", "server", "client", "producer", "consumer"]
StatusCode = Literal["unset", "ok", "error"]
MetricKind = Literal["gauge", "sum", "histogram", "summary"]
Temporality = Literal["", "delta", "cumulative"]


@dataclass(slots=True)
class SpanEvent:
    """A timestamped event inside a span (e.g. ``ml.metric``, ``exception``)."""

    name: str
    time_ns: int
    attributes: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(slots=True)
class SpanRecord:
    """One finished span as received over OTLP.

    ``pid`` is the span attribute ``process.pid`` when the span carries one (wattspan sets it on
    spans from forked children, whose resource still names the parent), otherwise the resource
    attribute ``process.pid``; ``None`` when neither is an integer. ``service_name`` is the
    resource's ``service.name`` (``"unknown_service"`` when absent, as the OTel spec says).
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    status_code: StatusCode = "unset"
    status_message: str = ""
    attributes: dict[str, JsonValue] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    resource_attributes: dict[str, JsonValue] = field(default_factory=dict)
    scope_name: str = ""
    pid: int | None = None
    service_name: str = "unknown_service"

    @property
    def duration_ns(self) -> int:
        """``end_ns - start_ns``; never negative (the receiver rejects such spans)."""
        return self.end_ns - self.start_ns


@dataclass(slots=True)
class MetricPoint:
    """One numeric data point.

    Gauges and sums map one OTLP data point to one ``MetricPoint``. Histograms (explicit and
    exponential) and summaries are flattened: one OTLP point becomes ``<name>.count`` and, when
    the point has a sum, ``<name>.sum``, both with the histogram's/summary's ``kind``. Buckets
    and quantiles are not kept.

    ``start_ts_ns`` is the start of the accumulation window for sums and histograms (0 if the
    sender left it out); ``temporality`` is ``""`` for gauges and summaries.
    """

    name: str
    ts_ns: int
    value: float
    kind: MetricKind
    attributes: dict[str, JsonValue] = field(default_factory=dict)
    resource_attributes: dict[str, JsonValue] = field(default_factory=dict)
    scope_name: str = ""
    unit: str = ""
    start_ts_ns: int = 0
    monotonic: bool = False
    temporality: Temporality = ""
    pid: int | None = None
    service_name: str = "unknown_service"


@dataclass(slots=True)
class LogRecord:
    """One log record.

    ``ts_ns`` is the record's time, or its observed time when the sender left the time out,
    or the receive time when both are missing. ``severity`` is the sender's severity text, or
    the name derived from ``severity_number`` (``"INFO"``, ``"ERROR"``...) when the text is
    empty. ``body`` is the string body as is; any other body type is JSON-encoded.
    """

    ts_ns: int
    severity: str
    body: str
    severity_number: int = 0
    attributes: dict[str, JsonValue] = field(default_factory=dict)
    resource_attributes: dict[str, JsonValue] = field(default_factory=dict)
    scope_name: str = ""
    trace_id: str | None = None
    span_id: str | None = None
    pid: int | None = None
    service_name: str = "unknown_service"


@dataclass(slots=True)
class Rejection:
    """What a receiver handler refused of an otherwise accepted request: ``count`` items,
    with a count per reason. The receiver adds them to the response's ``partial_success``
    (OTLP clients do not retry those) and to its ``*_rejected_total`` counters. Reasons with
    no rejected item (:meth:`warn`: the item was kept, less what the reason names) make a
    partial success with ``rejected = 0`` and a message, which OTLP defines as a warning."""

    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.count += n
        self.reasons[reason] += n

    def warn(self, reason: str) -> None:
        self.reasons[reason] += 1
