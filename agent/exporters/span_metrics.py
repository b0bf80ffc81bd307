"""Span-derived counters for ``/metrics``: what a Prometheus-only install knows of spans.

A sink of the attributed ``spans`` samples (``agent/ingest.py``'s ``span_sample``) that keeps
only lifetime totals per (service, span name): spans, duration (a histogram, whose ``_sum``
is the seconds), CPU seconds, process and node joules, items. ``prometheus.py`` renders
them; nothing here imports prometheus_client.

Each attribution pass is summed in one loop into a per-pass dict, then merged into the
totals under the lock once per (service, span name) of the pass: the ingest path pays one
dict update per span, and a scrape only ever waits for a merge, never for a pass.

Series never go away and only grow, so every counter is monotonic over the agent's life.
Their number is bounded: the first ``max_series`` (service, span name) pairs get their own;
later ones are counted under ``span_name="other"`` of their service (at most
:data:`MAX_OVERFLOW_SERVICES` services get one; past them ``service="other"`` too), and the
spans counted there are counted again in :attr:`SpanMetricsSink.overflow_spans`.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wattspan.agent.sinks import StatValue
from wattspan.collectors.base import Sample

if TYPE_CHECKING:
    from wattspan.agent.store import SpanRow

#: Upper bounds (``le``) of the duration histogram, in seconds. Few, since every bucket is a
#: series per (service, span name); wide, since a span is a stage of anything from a request
#: to a training epoch. ``histogram_quantile`` interpolates within a bucket.
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 60.0, 300.0)

OTHER = "other"
DEFAULT_MAX_SERIES = 500

#: Services that may get a ``span_name="other"`` series of their own once ``max_series`` is
#: reached: span names are not the only thing a client controls.
MAX_OVERFLOW_SERVICES = 100

# Offsets in a series' value list; the bucket counts (not cumulative) follow.
_N, _DUR, _CPU, _PROC, _NODE, _ITEMS, _B = range(7)
_WIDTH = _B + len(BUCKETS) + 1

#: span_sample field -> offset. ``node_energy_total_joules`` is the node's energy over the
#: span (every domain), ``process_energy_joules`` the process's share of its active part.

Key = tuple[str, str]


class _Only:
    """``SKIP_SOURCES`` that skips every source but ``spans``: ``Pipeline.wants`` stays false
    for the node's samples because of this sink."""

    def __contains__(self, source: object) -> bool:
        return source != "spans"


@dataclass(frozen=True)
class SpanSeries:
    """One (service, span name) series' totals, as rendered."""

    service: str
    span_name: str
    spans: float
    duration_seconds: float
    cpu_seconds: float
    process_energy_joules: float
    node_energy_joules: float
    items: float
    #: cumulative count per :data:`BUCKETS` bound, then ``+Inf`` (== ``spans``).
    buckets: tuple[float, ...]


@dataclass(slots=True)
class _Row:
    """What :meth:`SpanMetricsSink.observe` reads of a span, for exported samples."""

    service: str
    name: str
    duration: float
    resources: Mapping[str, Any]
    span_id: str


class SpanMetricsSink:
    """Keeps the span counters (module doc); ``snapshot`` is what ``/metrics`` renders."""

    name = "span_metrics"
    SKIP_SOURCES = _Only()

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._totals: dict[Key, list[float]] = {}
        self._named = 0
        self._overflow_services = 0
        self._lock = threading.Lock()
        self.overflow_spans = 0
        # (first span, last span, spans) of the last pass counted: ingest puts a failed
        # pass back at the head of its queue, so a retry starts with the same spans, in order.
        self._last: tuple[str, str, int] | None = None
        self.retried_spans = 0

    def write(self, samples: Sequence[Sample]) -> None:
        """The exported form of attributed spans (``spans`` samples), for callers that have
        only those; the agent itself calls :meth:`observe` with the rows."""
        if not samples or samples[0].source != "spans":
            return
        self.observe(
            [
                _Row(
                    s.tags["service"],
                    s.tags["span_name"],
                    float(s.fields["duration_seconds"]),
                    s.fields,
                    str(s.fields.get("span_id")),
                )
                for s in samples
            ]
        )

    def observe(self, rows: Sequence[SpanRow] | Sequence[_Row]) -> None:
        """An attribution pass's spans, straight from the ingest: no exported sample is
        built for them. One plain loop: this runs for every span the agent attributes."""
        if not rows:
            return
        acc: dict[Key, list[float]] = {}
        get = acc.get
        buckets, b = BUCKETS, _B
        for r in rows[self._already_counted(rows) :]:
            key = (r.service, r.name)
            a = get(key)
            if a is None:
                a = acc[key] = [0.0] * _WIDTH
            d = r.duration
            a[_N] += 1
            a[_DUR] += d
            a[b + bisect_left(buckets, d)] += 1
            # Attribution writes floats; _merge drops what is negative or not finite.
            res = r.resources
            a[_CPU] += res.get("cpu_seconds", 0.0)
            a[_PROC] += res.get("process_energy_joules", 0.0)
            a[_NODE] += res.get("node_energy_total_joules", 0.0)
            a[_ITEMS] += res.get("items", 0.0)
        with self._lock:
            for key, a in acc.items():
                self._merge(key, a)

    def _already_counted(self, rows: Sequence[SpanRow] | Sequence[_Row]) -> int:
        """How many leading spans the previous pass counted (a retried pass: an exporter
        refused the spans, or the store failed after the export), else 0."""
        last, self._last = self._last, (rows[0].span_id, rows[-1].span_id, len(rows))
        if last is None or len(rows) < last[2]:
            return 0
        first, end, n = last
        if rows[0].span_id != first or rows[n - 1].span_id != end:
            return 0
        self.retried_spans += n
        return n

    def _merge(self, key: Key, a: list[float]) -> None:
        totals = self._totals.get(key) or self._series_for(key, int(a[_N]))
        for i, v in enumerate(a):
            # A NaN or negative figure (a clock step, a client's odd item count) would make a
            # counter go back, or stay NaN for the agent's life: it is left out.
            if v > 0 and not math.isinf(v):
                totals[i] += v

    def _series_for(self, key: Key, spans: int) -> list[float]:
        """The series a pair without one of its own is counted in, created if need be."""
        service, name = key
        if name != OTHER and self._named < self.max_series:
            self._named += 1
            totals = self._totals[key] = [0.0] * _WIDTH
            return totals
        if name != OTHER:
            self.overflow_spans += spans
        totals = self._totals.get((service, OTHER))
        if totals is None:
            if self._overflow_services >= MAX_OVERFLOW_SERVICES:
                service = OTHER
                totals = self._totals.get((OTHER, OTHER))
            if totals is None:
                self._overflow_services += 1
                totals = self._totals[(service, OTHER)] = [0.0] * _WIDTH
        return totals

    def snapshot(self) -> list[SpanSeries]:
        with self._lock:
            rows = [(k, list(v)) for k, v in self._totals.items()]
        out = []
        for (service, name), v in rows:
            cumulative, n = [], 0.0
            for c in v[_B:]:
                n += c
                cumulative.append(n)
            out.append(
                SpanSeries(
                    service,
                    name,
                    v[_N],
                    v[_DUR],
                    v[_CPU],
                    v[_PROC],
                    v[_NODE],
                    v[_ITEMS],
                    tuple(cumulative),
                )
            )
        return out

    @property
    def series(self) -> int:
        with self._lock:
            return len(self._totals)

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to deliver: a scrape reads the totals."""

    def close(self, timeout: float | None = None) -> None:
        """Nothing held outside memory."""

    def stats(self) -> dict[str, StatValue]:
        # Rendered by prometheus.py under their own names, not as wattspan_exporter_*.
        return {}
