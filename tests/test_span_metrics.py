"""Span counters on ``/metrics`` (``agent/exporters/span_metrics.py``).

A real agent (no exporter: a Prometheus-only install) receives spans from OpenTelemetry
clients; its ``/metrics`` must then hold, per service and span name, exactly the sums of the
stored spans' attribution, keep to ``metrics.max_span_series`` with the rest under
``span_name="other"``, and be an exposition ``promtool`` and the OpenMetrics parser accept.
The sink's own rules (retried passes, bounds, odd values) are checked on the sink directly.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import free_port, http_get, require_binary, wait_for
from tests.test_agent_influx import _start
from tests.test_pipeline_e2e import PLAIN_OTEL
from wattspan.agent.exporters.span_metrics import (
    BUCKETS,
    MAX_OVERFLOW_SERVICES,
    OTHER,
    SpanMetricsSink,
)
from wattspan.agent.store import Store
from wattspan.collectors.base import Sample

MAX_SERIES = 4

#: PLAIN_OTEL (service ``plain-otel``: ``outer`` and 3 ``inner``) whose inner spans count items.
WITH_ITEMS = PLAIN_OTEL.replace(
    'attributes={"i": i}', 'attributes={"i": i, "wattspan.items": 100 * (i + 1)}'
)
assert WITH_ITEMS != PLAIN_OTEL

#: One span per name given after the endpoint and service, each burning a little CPU.
NAMED_SPANS = r"""
import os, sys, time
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
res = Resource.create({"service.name": sys.argv[2], "process.pid": os.getpid()})
tp = TracerProvider(resource=res)
tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
tracer = tp.get_tracer("named")
for name in sys.argv[3:]:
    with tracer.start_as_current_span(name, attributes={"wattspan.items": 7}):
        t = time.process_time()
        while time.process_time() - t < 0.05:
            pass
tp.shutdown()
"""
CAPPED_NAMES = ["a", "b", "c", "d", "e"]


def _run_client(script: str, *args: str) -> None:
    p = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr


@dataclass
class Scraped:
    text: str
    openmetrics: str
    spans: list[Any]  # SpanRow, read from the store after the agent stopped


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def _per_series(text: str, name: str) -> dict[tuple[str, str], float]:
    return {
        (d["service"], d["span_name"]): v
        for labels, v in _samples(text)[name].items()
        if "le" not in (d := dict(labels))
    }


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    tmp = tmp_path_factory.mktemp("span_metrics")
    cfg = tmp / "agent.toml"
    cfg.write_text(
        "[agent]\n"
        "interval = 0.2\n"
        'host = "node-a"\n'
        f'state_dir = "{tmp / "state"}"\n'
        "[metrics]\n"
        f"max_span_series = {MAX_SERIES}\n"
    )
    otlp = free_port()
    agent, mport = _start(cfg, tmp, otlp)
    url = f"http://127.0.0.1:{mport}/metrics"
    total = 4 + len(CAPPED_NAMES)
    try:
        endpoint = f"http://127.0.0.1:{otlp}"
        _run_client(WITH_ITEMS, endpoint)
        _run_client(NAMED_SPANS, endpoint, "capped", *CAPPED_NAMES)

        def counted() -> float:
            return sum(_per_series(http_get(url)[1].decode(), "wattspan_spans_total").values())

        # A span reaches the counters in the pass that attributes it, before the store's mark.
        wait_for(lambda: counted() == total, 90, "every span counted")
        text = http_get(url)[1].decode()
        # What Prometheus asks for first (prometheus_client answers in the format asked for).
        req = urllib.request.Request(
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            om = r.read().decode()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            assert agent.wait(60) == 0
        except subprocess.TimeoutExpired:
            agent.kill()
    store = Store(tmp / "agent.db")
    try:
        spans = [s for run in store.runs(kind="program") for s in store.spans(run.id)]
    finally:
        store.close()
    assert len(spans) == total and all(s.resources for s in spans)
    yield Scraped(text, om, spans)


def _stored_sums(spans: list[Any], key: Any) -> dict[Any, dict[str, float]]:
    out: dict[Any, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in spans:
        sums = out[key(s)]
        sums["spans"] += 1
        sums["duration"] += s.end_ts - s.start_ts
        for field in ("cpu_seconds", "process_energy_joules", "node_energy_total_joules"):
            sums[field] += s.resources.get(field, 0.0)
        sums["items"] += s.resources.get("items", 0.0)
    return out


_METRICS = {
    "spans": "wattspan_spans_total",
    "duration": "wattspan_span_duration_seconds_sum",
    "cpu_seconds": "wattspan_span_cpu_seconds_total",
    "process_energy_joules": "wattspan_span_process_energy_joules_total",
    "node_energy_total_joules": "wattspan_span_node_energy_joules_total",
    "items": "wattspan_span_items_total",
}


@pytest.mark.server
def test_counters_are_the_sums_of_the_stored_spans(scraped: Scraped) -> None:
    plain = [s for s in scraped.spans if s.service == "plain-otel"]
    want = _stored_sums(plain, lambda s: ("plain-otel", s.name))
    assert set(want) == {("plain-otel", "outer"), ("plain-otel", "inner")}
    # The client burned CPU in its spans: the figures compared are not all zeros.
    assert want[("plain-otel", "inner")]["cpu_seconds"] > 0
    assert want[("plain-otel", "inner")]["items"] == 600
    assert want[("plain-otel", "inner")]["node_energy_total_joules"] > 0
    for what, metric in _METRICS.items():
        got = _per_series(scraped.text, metric)
        for key, sums in want.items():
            assert got[key] == pytest.approx(sums[what], rel=1e-9, abs=1e-12), (what, key)


@pytest.mark.server
def test_duration_histogram_is_consistent(scraped: Scraped) -> None:
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
    for labels, v in _samples(scraped.text)["wattspan_span_duration_seconds_bucket"].items():
        d = dict(labels)
        buckets[(d["service"], d["span_name"])][float(d["le"])] = v
    counts = _per_series(scraped.text, "wattspan_span_duration_seconds_count")
    spans = _per_series(scraped.text, "wattspan_spans_total")
    for span in scraped.spans:
        if span.service != "plain-otel":
            continue
        series = buckets[(span.service, span.name)]
        assert sorted(series) == [*BUCKETS, math.inf]
        # Each span lies in the buckets whose bound is at or above its duration.
        d = span.end_ts - span.start_ts
        assert all(series[le] >= 1 for le in series if le >= d)
    for key, series in buckets.items():
        values = [series[le] for le in sorted(series)]
        assert values == sorted(values) and values[-1] == counts[key] == spans[key]


@pytest.mark.server
def test_series_past_the_cap_are_counted_under_other(scraped: Scraped) -> None:
    spans = _per_series(scraped.text, "wattspan_spans_total")
    named = {k for k in spans if k[1] != OTHER}
    # plain-otel's two pairs came first; two of the capped service's five names fit.
    assert len(named) == MAX_SERIES
    assert {("plain-otel", "outer"), ("plain-otel", "inner")} <= named
    capped = {k: v for k, v in spans.items() if k[0] == "capped"}
    assert ("capped", OTHER) in capped and len(capped) == 3
    assert capped[("capped", OTHER)] == len(CAPPED_NAMES) - 2
    overflow = _samples(scraped.text)["wattspan_span_overflow_spans_total"][()]
    assert overflow == capped[("capped", OTHER)]
    assert _samples(scraped.text)["wattspan_span_series"][()] == len(spans) == MAX_SERIES + 1
    # Nothing is lost to the cap: the service's series add up to its stored spans.
    (want,) = _stored_sums(
        [s for s in scraped.spans if s.service == "capped"], lambda s: "capped"
    ).values()
    for what, metric in _METRICS.items():
        got = _per_series(scraped.text, metric)
        total = sum(v for k, v in got.items() if k[0] == "capped")
        assert total == pytest.approx(want[what], rel=1e-9, abs=1e-12), what


@pytest.mark.server
def test_promtool_and_the_openmetrics_parser_accept_the_exposition(scraped: Scraped) -> None:
    p = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=scraped.text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    # Prometheus asks for OpenMetrics first; a family name used twice fails the whole scrape.
    names = [f.name for f in parse_openmetrics(scraped.openmetrics)]
    assert len(names) == len(set(names))
    assert {"wattspan_spans", "wattspan_span_duration_seconds"} <= set(names)
    # The latest-span gauges are gone: the counters are what /metrics has of spans.
    assert not [n for n in names if n.startswith("wattspan_spans_")]


# -- the sink on its own -----------------------------------------------------------------


def _span(i: int, service: str = "svc", name: str = "stage", **fields: float) -> Sample:
    return Sample(
        "spans",
        1000.0 + i,
        {"service": service, "span_name": name, "status": "ok"},
        {"span_id": f"{i:016x}", "trace_id": "t" * 32, "duration_seconds": 0.5, **fields},
    )


def _totals(sink: SpanMetricsSink) -> dict[tuple[str, str], tuple[float, ...]]:
    return {
        (s.service, s.span_name): (s.spans, s.duration_seconds, s.cpu_seconds, s.items)
        for s in sink.snapshot()
    }


def test_a_retried_pass_is_not_counted_twice() -> None:
    sink = SpanMetricsSink()
    failed = [_span(i, cpu_seconds=0.25) for i in range(3)]
    sink.write(failed)
    # ingest puts a failed pass back first: its retry is the same spans, then newer ones.
    sink.write([*(_span(i, cpu_seconds=0.25) for i in range(3)), _span(3, cpu_seconds=0.25)])
    assert _totals(sink) == {("svc", "stage"): (4.0, 2.0, 1.0, 0.0)}
    assert sink.retried_spans == 3
    sink.write([_span(4)])
    assert _totals(sink)[("svc", "stage")][0] == 5.0


def test_node_samples_are_ignored() -> None:
    sink = SpanMetricsSink()
    sink.write([Sample("cpu", 1.0, {"cpu": "total"}, {"utilization_ratio": 0.5})])
    assert sink.snapshot() == [] and "cpu" in sink.SKIP_SOURCES
    assert "spans" not in sink.SKIP_SOURCES


def test_odd_values_never_make_a_counter_go_back_or_nan() -> None:
    sink = SpanMetricsSink()
    sink.write([_span(0, cpu_seconds=1.0, items=10)])
    sink.write([_span(1, cpu_seconds=math.nan, items=-5)])
    sink.write([_span(2, cpu_seconds=math.inf, items=1)])
    assert _totals(sink) == {("svc", "stage"): (3.0, 1.5, 1.0, 11.0)}


def test_overflow_services_are_bounded() -> None:
    sink = SpanMetricsSink(max_series=1)
    sink.write([_span(0, "first", "kept")])
    # Past the cap, every new service gets one "other" series, up to a bound...
    sink.write([_span(i, f"svc{i}", "x") for i in range(1, MAX_OVERFLOW_SERVICES + 10)])
    totals = _totals(sink)
    assert totals[("first", "kept")][0] == 1
    own = [k for k in totals if k[1] == OTHER and k[0] != OTHER]
    assert len(own) == MAX_OVERFLOW_SERVICES
    # ...then the rest share service="other": at most max_series + bound + 1 series.
    assert totals[(OTHER, OTHER)][0] == 9
    assert sink.series == 1 + MAX_OVERFLOW_SERVICES + 1
    assert sink.overflow_spans == MAX_OVERFLOW_SERVICES + 9
    # A series once given stays: the same pair lands where it did before.
    sink.write([_span(999, "svc1", "x")])
    assert _totals(sink)[("svc1", OTHER)][0] == 2


def test_counters_only_grow() -> None:
    sink = SpanMetricsSink(max_series=2)
    seen: dict[tuple[str, str], tuple[float, ...]] = {}
    for batch in range(20):
        sink.write([_span(batch * 10 + i, name=f"n{i % 4}", cpu_seconds=0.1) for i in range(10)])
        for key, values in _totals(sink).items():
            assert all(a >= b for a, b in zip(values, seen.get(key, (0.0,) * 4), strict=True))
            seen[key] = values
    assert sum(v[0] for v in seen.values()) == 200
