"""Distinct records stay distinct points in a real influxd (docs/influxdb.md, Schema).

influxd identifies a point by (measurement, tag set, timestamp): two records that differ
only in a field are merged into one, silently, while the exporter counts both as sent.
These tests write records that would collide and count and read them back.
"""

from __future__ import annotations

import pytest

from wattspan.agent.exporters.influxdb.lineprotocol import UNIT_NS
from wattspan.agent.ingest import TelemetryIngest, span_sample
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.records import MetricPoint
from wattspan.agent.store import SpanRow

pytest_plugins = ["tests.fixtures_influx"]
pytestmark = pytest.mark.server

T0_NS = 1_700_000_000_000_000_000
PRECISIONS = ["ns", "us", "ms", "s"]


def _spans(n: int, *, spacing_ns: int = 0, offset: int = 0) -> list[SpanRow]:
    """``n`` spans of one name and service; span i ends ``i * spacing_ns`` after T0, or,
    with no spacing, all within the same microsecond (``i % 1000`` ns)."""
    rows = []
    for i in range(offset, offset + n):
        end_ns = T0_NS + (i * spacing_ns if spacing_ns else i % 1000)
        rows.append(
            SpanRow(
                "r1",
                f"{i:032x}",
                f"{i:016x}",
                None,
                "step",
                (end_ns - 1_000_000 - i) / 1e9,
                end_ns / 1e9,
                "ok",
                "train",
                4242,
                resources={"cpu_seconds": i * 0.5},
            )
        )
    return rows


@pytest.mark.parametrize("precision", PRECISIONS)
def test_ten_thousand_spans_ending_within_a_microsecond_all_arrive(
    precision, influxd_server, influx_database, influx_exporter_factory
):
    rows = _spans(10_000)
    exp = influx_exporter_factory(
        url=influxd_server.url, database=influx_database, precision=precision, batch_size=5000
    )
    exp.write([span_sample(r) for r in rows])
    assert exp.drain(60), exp.stats()
    st = exp.stats()
    # The spans and their one-minute rollup (spans_1m), counted as records too.
    assert st["rollup_spans_total"] == 10_000
    assert st["sent_records_total"] == 10_000 + st["rollup_points_total"]

    assert influxd_server.count(influx_database, "spans", "span_id") == 10_000
    got = influxd_server.rows(influx_database, "spans")
    by_id = {r["span_id"]: r for r in got}
    assert len(by_id) == 10_000
    unit = UNIT_NS[precision]
    for i, r in enumerate(rows):
        point = by_id[r.span_id]
        # Each point is its own span's, not a merge of several.
        assert point["trace_id"] == r.trace_id
        assert point["cpu_seconds"] == i * 0.5
        assert point["duration_seconds"] == r.end_ts - r.start_ts
        assert (point["span_name"], point["run"], point["service"]) == ("step", "r1", "train")
    # Timestamps move forward only, by at most one unit per colliding span, and never
    # below the span's end truncated to the precision.
    times = sorted(r["time"] for r in got)
    floor = (T0_NS // unit) * unit if unit > 1 else T0_NS - T0_NS % 1000
    assert times[0] >= floor
    assert times[-1] < T0_NS + 1000 + 10_000 * unit
    # Only the span id and trace id identify the span: neither became a tag.
    keys = influxd_server.query('SHOW TAG KEYS FROM "spans"', db=influx_database)
    tag_keys = {v[0] for v in keys["results"][0]["series"][0]["values"]}
    assert tag_keys == {"host", "run", "service", "span_name", "status"}


def test_spans_re_exported_after_a_restart_overwrite_themselves_at_ns(
    influxd_server, influx_database, influx_exporter_factory
):
    """The crash between export and the store's mark (agent/ingest.py) re-exports the last
    batch from a fresh process: at ns precision each span lands on its own point again."""
    # 5 us apart: ends stored as float seconds (256 ns steps) then fall in distinct
    # microseconds, so no two spans compete for one, the case the docs promise.
    rows = _spans(2000, spacing_ns=5000)
    first = influx_exporter_factory(url=influxd_server.url, database=influx_database)
    first.write([span_sample(r) for r in rows])
    assert first.drain(60)
    # A new exporter is a new process's encoder: it remembers nothing of the first.
    again = influx_exporter_factory(url=influxd_server.url, database=influx_database)
    again.write([span_sample(r) for r in rows[1500:]])
    assert again.drain(60)

    assert influxd_server.count(influx_database, "spans", "span_id") == 2000
    got = {r["span_id"]: r for r in influxd_server.rows(influx_database, "spans")}
    assert all(got[r.span_id]["trace_id"] == r.trace_id for r in rows)


def _metric(name: str, value: float, ts_ns: int, **attributes: object) -> MetricPoint:
    return MetricPoint(name, ts_ns, value, "gauge", attributes=dict(attributes))


def _ingest(exporter) -> TelemetryIngest:
    return TelemetryIngest(store=None, pipeline=Pipeline([exporter]), run_id="r1", interval=1.0)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_metric_points_that_differ_only_by_attribute_stay_distinct(
    precision, influxd_server, influx_database, influx_exporter_factory
):
    exp = influx_exporter_factory(
        url=influxd_server.url, database=influx_database, precision=precision
    )
    ingest = _ingest(exp)
    # What an OTel SDK sends per collection: every stream stamped with the same time.
    points = [
        _metric("http.server.requests", 17.0, T0_NS, **{"http.status": 200, "route": "/a"}),
        _metric("http.server.requests", 3.0, T0_NS, **{"http.status": 500, "route": "/a"}),
        _metric("http.server.requests", 5.0, T0_NS, **{"http.status": 200, "route": "/b"}),
        _metric("http.server.requests", 1.0, T0_NS, **{"http.status": 500, "ok": False}),
    ]
    ingest.on_metrics(points)
    # The same request again (an OTLP client's retry): the same points, no new ones.
    ingest.on_metrics(points)
    # Two valued metrics of one stream within one unit of any precision, differing only in
    # their step (a field): both stay.
    ingest.on_metrics([_metric("ml.loss", 0.5, T0_NS + 10, step=1)])
    ingest.on_metrics([_metric("ml.loss", 0.25, T0_NS + 20, step=2)])
    assert exp.drain(30), exp.stats()

    rows = influxd_server.rows(influx_database, "metrics")
    got = sorted((r["http.status"], r["route"] or "-", r["ok"] or "-", r["value"]) for r in rows)
    assert got == [
        ("200", "/a", "-", 17.0),
        ("200", "/b", "-", 5.0),
        ("500", "-", "false", 1.0),
        ("500", "/a", "-", 3.0),
    ]
    unit = UNIT_NS[precision]
    assert {r["time"] for r in rows} == {T0_NS // unit * unit}  # attributes told them apart
    keys = influxd_server.query('SHOW TAG KEYS FROM "metrics"', db=influx_database)
    tag_keys = {v[0] for v in keys["results"][0]["series"][0]["values"]}
    assert tag_keys == {"host", "http.status", "name", "ok", "route", "run"}

    ml = sorted((r["step"], r["value"]) for r in influxd_server.rows(influx_database, "ml"))
    assert ml == [(1, 0.5), (2, 0.25)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_attributes_kept_out_of_the_tags_still_do_not_merge_points(
    precision, influxd_server, influx_database, influx_exporter_factory
):
    exp = influx_exporter_factory(
        url=influxd_server.url,
        database=influx_database,
        precision=precision,
        metric_tags_deny=["user.*"],
        max_metric_tags=1,
    )
    ingest = _ingest(exp)
    points = [
        _metric("q.latency", float(i), T0_NS, **{"user.id": f"u{i}", "a": "x", "b": str(i % 2)})
        for i in range(50)
    ]
    ingest.on_metrics(points)
    ingest.on_metrics(points)  # a retry changes nothing
    assert exp.drain(30), exp.stats()

    rows = influxd_server.rows(influx_database, "metrics")
    assert sorted(r["value"] for r in rows) == [float(i) for i in range(50)]
    assert all(r["user.id"] == f"u{int(r['value'])}" for r in rows)
    assert all(r["b"] == str(int(r["value"]) % 2) for r in rows)
    keys = influxd_server.query('SHOW TAG KEYS FROM "metrics"', db=influx_database)
    tag_keys = {v[0] for v in keys["results"][0]["series"][0]["values"]}
    # user.* denied, and only one attribute tag allowed ("a", first in sorted order).
    assert tag_keys == {"a", "host", "name", "run"}
    fields = influxd_server.query('SHOW FIELD KEYS FROM "metrics"', db=influx_database)
    types = dict(map(tuple, fields["results"][0]["series"][0]["values"]))
    assert types == {"b": "string", "user.id": "string", "value": "float"}
