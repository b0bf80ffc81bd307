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
from collections.abc import Iterable, Mapping, Sequence
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
FIELDS: tuple[tuple[str, int], ...] = (
    ("cpu_seconds", _CPU),
    ("process_energy_joules", _PROC),
    ("node_energy_total_joules", _NODE),
)

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
        self._count(
            (
                s.tags["service"],
                s.tags["span_name"],
                float(s.fields["duration_seconds"]),
                s.fields,
                s.fields.get("items"),
                str(s.fields.get("span_id")),
            )
            for s in samples
        )

    def observe(self, rows: Sequence[SpanRow]) -> None:
        """An attribution pass's spans, straight from the ingest: no exported sample is
        built for them (a few microseconds a span) when nothing else wants one."""
        if not rows:
            return
        self._count(
            (
                r.service,
                r.name,
                r.end_ts - r.start_ts,
                r.resources,
                r.resources.get("items"),
                r.span_id,
            )
            for r in rows
        )

    def _count(self, spans: Iterable[tuple[str, str, float, Mapping[str, Any], Any, str]]) -> None:
        items_list = list(spans)
        if not items_list:
            return
        items_list = items_list[self._already_counted(items_list) :]
        acc: dict[Key, list[float]] = {}
        get = acc.get
        buckets, b = BUCKETS, _B
        for service, name, d, f, items, _ in items_list:
            key = (service, name)
            a = get(key)
            if a is None:
                a = acc[key] = [0.0] * _WIDTH
            a[_N] += 1
            a[_DUR] += d
            a[b + bisect_left(buckets, d)] += 1
            for field, off in FIELDS:
                v = f.get(field)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    a[off] += v
            if isinstance(items, int | float) and not isinstance(items, bool):
                a[_ITEMS] += items
        with self._lock:
            for key, a in acc.items():
                self._merge(key, a)

    def _already_counted(self, spans: list[tuple[Any, ...]]) -> int:
        """How many leading spans the previous pass counted (a retried pass: an exporter
        refused the spans, or the store failed after the export), else 0."""
        last, self._last = self._last, (spans[0][5], spans[-1][5], len(spans))
        if last is None or len(spans) < last[2]:
            return 0
        first, end, n = last
        if spans[0][5] != first or spans[n - 1][5] != end:
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
