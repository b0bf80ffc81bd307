"""The exporter's derived measurements: ``spans_1m`` (one-minute span rollups) and
``ml_progress`` (time and energy since a run's start at each ML point).

Unit level: the histogram's quantiles stay within the documented error of the exact ones;
points of one minute merge exactly however its spans arrive (several writes, a restarted
agent, spans later than the hold); the ``spans_top`` seats stored for a minute hold its
exact top-K by duration and by energy however its spans arrive, and a write re-emits only
the seats it changed; a span seen twice counts once; a failed append changes nothing.
Against a real influxd: the dashboards' InfluxQL quantile equals the Python one, sums equal
the raw spans', the top spans equal ``top()`` over the raw spans, and rollups queued while
the server was down arrive with them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.servers import InfluxD
from wattspan.agent.exporters.influxdb import InfluxDBExporter
from wattspan.agent.exporters.influxdb.progress import MlProgress
from wattspan.agent.exporters.influxdb.rollup import (
    BOUNDS,
    BUCKET_FIELDS,
    HOLD_SECONDS,
    MAX_RELATIVE_ERROR,
    MEASUREMENT,
    RANKINGS,
    RUNS_MEASUREMENT,
    TOP_K,
    TOP_MEASUREMENT,
    SpanRollup,
    bucket_index,
    influxql_quantile,
    next_generation,
    quantile,
)
from wattspan.collectors.base import Sample

pytest_plugins = ["tests.fixtures_influx"]

T0 = 1_790_000_040.0  # a minute boundary + 0 s


def _span(i: int, end: float, dur: float, **kw: Any) -> Sample:
    fields: dict[str, Any] = {
        "trace_id": f"{i:032x}",
        "span_id": f"{i:016x}",
        "duration_seconds": dur,
        "start_time": end - dur,
        "cpu_seconds": dur / 2,
        "process_energy_joules": dur * 10,
        "node_energy_total_joules": dur * 40,
    }
    fields.update(kw.pop("fields", {}))
    tags = {"run": "r1", "service": "svc", "span_name": kw.pop("name", "step"), "status": "OK"}
    tags.update(kw)
    return Sample("spans", end, tags, fields)


def _cumulative(durations: list[float]) -> list[int]:
    hist = [0] * (len(BOUNDS) + 1)
    for d in durations:
        hist[bucket_index(d)] += 1
    return list(np.cumsum(hist[:-1]))


def test_bucket_index_puts_each_duration_under_its_bound() -> None:
    rng = random.Random(3)
    for d in [BOUNDS[0], BOUNDS[5], BOUNDS[-1]] + [10 ** rng.uniform(-5, 5) for _ in range(5000)]:
        i = bucket_index(d)
        assert i == len(BOUNDS) or d <= BOUNDS[i]
        assert i == 0 or d > BOUNDS[i - 1]


@pytest.mark.parametrize("sigma", [0.05, 0.4, 1.5])
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_quantile_within_the_documented_error(sigma: float, q: float) -> None:
    rng = np.random.default_rng(int(sigma * 100 + q * 1000))
    for median in (0.002, 0.3, 40.0):
        durations = list(rng.lognormal(math.log(median), sigma, 2000))
        exact = float(np.percentile(durations, q * 100, method="inverted_cdf"))
        est = quantile(_cumulative(durations), len(durations), q)
        assert est is not None
        assert abs(est / exact - 1) <= MAX_RELATIVE_ERROR + 1e-12, (median, est, exact)
    assert round(MAX_RELATIVE_ERROR, 4) == 0.0905


def _collect(rollup: SpanRollup, batches: list[list[Sample]], store: dict) -> None:
    """Writes each batch; ``store`` does what influxd does: same series and time, one point,
    the later fields winning."""

    def append(points: list[Sample]) -> None:
        for p in points:
            assert p.source in (MEASUREMENT, TOP_MEASUREMENT, RUNS_MEASUREMENT)
            key = (p.source, tuple(sorted(p.tags.items())), p.ts_ns)
            store[key] = {**store.get(key, {}), **p.fields}

    for b in batches:
        rollup.write(b, append)


def _points(store: dict, source: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(tags, ts_ns): f for (src, tags, ts_ns), f in store.items() if src == source}


def _minute_totals(store: dict, source: str = MEASUREMENT) -> dict[tuple[Any, ...], dict]:
    out: dict[tuple[Any, ...], dict[str, float]] = {}
    for (tags, ts_ns), f in _points(store, source).items():
        k = (tags, ts_ns // 60_000_000_000)
        t = out.setdefault(k, {"count": 0, "cpu_seconds": 0.0, "le_48": 0, "points": 0})
        t["count"] += f["count"]
        t["cpu_seconds"] += f["cpu_seconds"]
        t["le_48"] += f.get("le_48", 0)
        t["points"] += 1
    return out


def test_a_minute_merges_exactly_across_writes_restarts_and_late_spans() -> None:
    rng = random.Random(7)
    spans = [_span(i, T0 + rng.uniform(0, 59.9), rng.uniform(0.01, 3)) for i in range(300)]
    whole: dict = {}
    _collect(SpanRollup(generation=1), [spans], whole)
    (only,) = _minute_totals(whole).values()
    assert only["count"] == 300 and only["points"] == 1

    store: dict = {}
    first = SpanRollup(generation=1)
    _collect(first, [spans[i : min(i + 37, 150)] for i in range(0, 150, 37)], store)
    # One point for the minute so far: each write re-emitted it, cumulative, at one time.
    assert len(_points(store, MEASUREMENT)) == 1
    # The agent restarts: a new generation writes the rest of the minute at another slot.
    second = SpanRollup(generation=2)
    _collect(second, [spans[150:250]], store)
    # Much later spans move the watermark past the hold; then late spans of the minute come.
    later = [_span(1000 + i, T0 + HOLD_SECONDS + 200 + i, 0.5) for i in range(3)]
    _collect(second, [later, spans[250:]], store)
    assert second.stats()["rollup_reopened_minutes_total"] == 2  # its spans_1m and runs_1m
    totals = _minute_totals(store)
    merged = totals[next(k for k in totals if k[1] == int(T0) // 60)]
    assert merged["points"] == 3  # generation 1, generation 2, the reopened minute
    assert merged["count"] == only["count"]
    assert merged["cpu_seconds"] == pytest.approx(only["cpu_seconds"], rel=1e-12)
    assert merged["le_48"] == only["le_48"]
    # The run's counts and sums merge the same way (its own points, keyed by run alone).
    (run_tags, _), _ = next(iter(_points(store, RUNS_MEASUREMENT).items()))
    assert run_tags == (("run", "r1"),)
    runs = _minute_totals(store, RUNS_MEASUREMENT)
    run = runs[next(k for k in runs if k[1] == int(T0) // 60)]
    assert run["points"] == 3 and run["count"] == only["count"]
    assert run["cpu_seconds"] == pytest.approx(only["cpu_seconds"], rel=1e-12)


def _stored_top(store: dict, by: str, minute: int) -> list[tuple[float, str]]:
    """(value, trace id) of the seats stored for ``minute``, largest first, as ``top()``
    over them returns them."""
    field = dict(RANKINGS)[by]
    seats = [
        (f[field], f["trace_id"])
        for (tags, ts_ns), f in _points(store, TOP_MEASUREMENT).items()
        if dict(tags)["by"] == by and ts_ns // 60_000_000_000 == minute // 60
    ]
    return sorted(seats, reverse=True)


def _exact_top(spans: list[Sample], field: str) -> list[tuple[float, str]]:
    return sorted(((s.fields[field], s.fields["trace_id"]) for s in spans), reverse=True)[:TOP_K]


def test_top_spans_are_exact_across_writes_restarts_and_late_spans() -> None:
    rng = random.Random(5)
    spans = [
        _span(i, T0 + rng.uniform(0, 59.9), rng.lognormvariate(-2, 1),
              fields={"process_energy_joules": rng.uniform(0, 50)})
        for i in range(600)
    ]  # fmt: skip
    store: dict = {}
    first = SpanRollup(generation=1)
    _collect(first, [spans[i : min(i + 23, 300)] for i in range(0, 300, 23)], store)
    second = SpanRollup(generation=2)  # a restart: its own slot
    _collect(second, [spans[300 + i : min(341 + i, 500)] for i in range(0, 200, 41)], store)
    later = [_span(5000 + i, T0 + HOLD_SECONDS + 200 + i, 0.001) for i in range(3)]
    _collect(second, [later, spans[500:]], store)  # the minute reopened: a third slot
    assert second.stats()["rollup_reopened_minutes_total"] == 2  # its spans_1m and runs_1m
    for by, field in RANKINGS:
        stored = _stored_top(store, by, int(T0))
        # At most K seats per slot, three slots; their top-K is the minute's.
        assert TOP_K < len(stored) <= 3 * TOP_K
        assert stored[:TOP_K] == _exact_top(spans, field)
    # A seat holds the span's ids and numbers, tagged with its stage.
    tops = _points(store, TOP_MEASUREMENT)
    (tags, _), f = next((k, v) for k, v in tops.items() if dict(k[0])["by"] == "energy")
    assert dict(tags).keys() == {"service", "span_name", "by", "seat"}
    assert dict(tags)["service"] == "svc" and dict(tags)["span_name"] == "step"
    assert f.keys() == {"trace_id", "span_id", "run", "duration_seconds",
                        "process_energy_joules", "cpu_seconds"}  # fmt: skip
    assert f["run"] == "r1"
    assert f["cpu_seconds"] == pytest.approx(f["duration_seconds"] / 2)


def test_a_write_re_emits_only_the_seats_it_changed() -> None:
    r = SpanRollup(generation=1)
    written: list[Sample] = []
    big = [_span(i, T0 + 1, 1.0 + i, fields={"process_energy_joules": 100.0 + i})
           for i in range(TOP_K)]  # fmt: skip
    r.write(big, written.extend)
    tops = [p for p in written if p.source == TOP_MEASUREMENT]
    assert len(tops) == 2 * TOP_K and len({p.tags["seat"] for p in tops}) == TOP_K
    written.clear()
    # Smaller than every seated span: only the minute's spans_1m and runs_1m points.
    r.write([_span(100 + i, T0 + 2, 0.5, fields={"process_energy_joules": 1.0})
             for i in range(50)], written.extend)  # fmt: skip
    assert [p.source for p in written] == [MEASUREMENT, RUNS_MEASUREMENT]
    written.clear()
    # One span longer than all but costing little: one duration seat, the shortest's.
    r.write([_span(200, T0 + 3, 99.0, fields={"process_energy_joules": 2.0})], written.extend)
    (seat,) = [p for p in written if p.source == TOP_MEASUREMENT]
    shortest = next(
        p for p in tops if p.tags["by"] == "duration" and p.fields["duration_seconds"] == 1.0
    )
    assert seat.tags == shortest.tags and seat.ts_ns == shortest.ts_ns
    assert seat.fields["trace_id"] == f"{200:032x}"
    assert r.stats()["rollup_top_points_total"] == 2 * TOP_K + 1


def test_a_span_written_twice_counts_once() -> None:
    store: dict = {}
    r = SpanRollup(generation=1)
    spans = [_span(i, T0 + i, 0.1) for i in range(10)]
    _collect(r, [spans, spans[3:7]], store)
    (p,) = _points(store, MEASUREMENT).values()
    assert p["count"] == 10 and r.stats()["rollup_duplicate_spans_total"] == 4
    (run,) = _points(store, RUNS_MEASUREMENT).values()
    assert run["count"] == 10
    # ... and takes one seat per ranking.
    assert len(_points(store, TOP_MEASUREMENT)) == 2 * 10


def test_a_failed_append_leaves_the_rollup_as_it_was() -> None:
    store: dict = {}
    r = SpanRollup(generation=1)
    _collect(r, [[_span(1, T0 + 1, 0.1)]], store)

    def boom(points: list[Sample]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        r.write([_span(2, T0 + 2, 0.1)], boom)
    _collect(r, [[_span(3, T0 + 3, 0.1)]], store)
    (p,) = _points(store, MEASUREMENT).values()
    assert p["count"] == 2  # spans 1 and 3; span 2 was never acknowledged
    seated = {f["trace_id"] for f in _points(store, TOP_MEASUREMENT).values()}
    assert seated == {f"{1:032x}", f"{3:032x}"}


def test_errors_sums_and_missing_fields() -> None:
    store: dict = {}
    spans = [
        _span(1, T0 + 1, 0.2, status="ERROR", fields={"items": 10}),
        _span(2, T0 + 2, 0.4, fields={"items": 30}),
        _span(3, T0 + 3, 0.6, name="other"),
    ]
    _collect(SpanRollup(generation=1), [spans], store)
    by_name = {dict(k[0])["span_name"]: f for k, f in _points(store, MEASUREMENT).items()}
    assert by_name["step"]["errors"] == 1 and by_name["step"]["items"] == 40.0
    assert by_name["step"]["duration_max_seconds"] == 0.4
    assert by_name["step"]["duration_seconds"] == pytest.approx(0.6)
    # A stage that counted no items has no items field (no J/item), not a zero.
    assert "items" not in by_name["other"]
    assert by_name["other"][BUCKET_FIELDS[-1]] == 1


def test_generations_persist_in_the_queue_directory(tmp_path: Path) -> None:
    assert [next_generation(tmp_path) for _ in range(3)] == [1, 2, 3]


def test_ml_progress_time_and_energy_since_the_run_start() -> None:
    p = MlProgress()
    ticks = [
        Sample("power_model", T0 + t, {"domain": "cpu", "estimated": "true"},
               {"energy_joules_total": 100.0 + 10 * t})
        for t in range(0, 11)
    ]  # fmt: skip
    assert p.derive(ticks[:3]) == []
    ml = [
        Sample("ml", T0 + 1.5, {"name": "ml.accuracy", "run": "r"}, {"value": 0.5, "step": 0}),
    ]
    (first,) = p.derive(ml)
    assert first.fields["elapsed_seconds"] == 0.0 and first.fields["energy_joules"] == 0.0
    p.derive(ticks[3:])
    (later,) = p.derive(
        [Sample("ml", T0 + 7.5, {"name": "ml.accuracy", "run": "r"}, {"value": 0.9, "step": 4})]
    )
    assert later.source == "ml_progress" and later.tags == {"name": "ml.accuracy", "run": "r"}
    assert later.fields["elapsed_seconds"] == 6.0
    assert later.fields["energy_joules"] == pytest.approx(60.0)
    assert later.fields["step"] == 4 and "gpu_energy_joules" not in later.fields


# -- against influxd --------------------------------------------------------------------


def _spans_in(rng: random.Random, n: int, first: int) -> list[Sample]:
    return [
        _span(
            first + i,
            T0 + rng.uniform(0, 119.9),
            rng.lognormvariate(math.log(0.05), 0.8),
            fields={"process_energy_joules": rng.uniform(0.0, 5.0)},
        )
        for i in range(n)
    ]


def _series_values(data: dict[str, Any]) -> list[list[list[Any]]]:
    return [s["values"] for r in data["results"] for s in r.get("series", [])]


def test_rollup_through_influxd_matches_raw_spans_and_python(
    influxd_server: InfluxD,
    influx_database: str,
    influx_exporter_factory: Callable[..., InfluxDBExporter],
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    spans = _spans_in(rng, 400, 0)
    db = influx_database
    queue = str(tmp_path / "q")
    # Written while influxd is unreachable, the agent stops with everything queued...
    down = influx_exporter_factory(url="http://127.0.0.1:9", database=db, queue_dir=queue)
    for i in range(0, 200, 50):
        down.write(spans[i : i + 50])
    st = down.stats()
    assert st["queued_records"] == 200 + st["rollup_points_total"] and st["sent_records_total"] == 0
    down.close(0)
    # ... and its successor (same queue) delivers that and writes the rest.
    up = influx_exporter_factory(url=influxd_server.url, database=db, queue_dir=queue)
    for i in range(200, 400, 70):
        up.write(spans[i : i + 70])
    assert up.drain(60), up.stats()

    raw = influxd_server.query(
        'SELECT count("duration_seconds"), sum("cpu_seconds") FROM "spans" '
        "GROUP BY time(1m) fill(none)",
        db=db,
    )
    rolled = influxd_server.query(
        'SELECT sum("count"), sum("cpu_seconds") FROM "spans_1m" GROUP BY time(1m) fill(none)',
        db=db,
    )
    want = raw["results"][0]["series"][0]["values"]
    got = rolled["results"][0]["series"][0]["values"]
    assert [r[:2] for r in got] == [r[:2] for r in want] and sum(r[1] for r in got) == 400
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=1e-9)
    # Two generations wrote points: more than one point per minute, summed by the query.
    n_points = influxd_server.count(db, "spans_1m", "count")
    assert 2 < n_points <= 4
    runs = influxd_server.query(
        'SELECT sum("count"), sum("cpu_seconds") FROM "runs_1m" GROUP BY "run"', db=db
    )
    (run,) = runs["results"][0]["series"]
    assert run["tags"] == {"run": "r1"} and run["values"][0][1] == 400
    assert run["values"][0][2] == pytest.approx(sum(r[2] for r in want), rel=1e-9)

    # The top spans: what top() over the raw spans returns, from the stored seats (two
    # generations, several writes each, queued while the server was down).
    for by, field in RANKINGS:
        want_top = influxd_server.query(
            f'SELECT top("{field}", {TOP_K}), "trace_id", "span_id" FROM "spans"', db=db
        )
        got_top = influxd_server.query(
            f'SELECT top("{field}", {TOP_K}), "trace_id", "span_id" FROM "{TOP_MEASUREMENT}" '
            f"WHERE \"by\" = '{by}'",
            db=db,
        )
        (w,) = _series_values(want_top)
        (g,) = _series_values(got_top)
        assert sorted(r[1:] for r in g) == sorted(r[1:] for r in w) and len(g) == TOP_K

    durations = [float(s.fields["duration_seconds"]) for s in spans]
    for q in (0.5, 0.95):
        data = influxd_server.query(f'SELECT {influxql_quantile(q, "sum(")} FROM "spans_1m"', db=db)
        (value,) = data["results"][0]["series"][0]["values"][0][1:]
        assert value == pytest.approx(quantile(_cumulative(durations), 400, q), rel=1e-9)
        exact = float(np.percentile(durations, q * 100, method="inverted_cdf"))
        assert abs(value / exact - 1) <= MAX_RELATIVE_ERROR
