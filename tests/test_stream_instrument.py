"""The stream engine's instrumentation (engines/stream/instrument.py) in-process: when the
input reached each window's end, the task sample, task spans with real times and CPU, the
latency histogram, and the figures of a run. Spans and metrics go through the OpenTelemetry
SDK with its in-memory exporter and reader; the end-to-end path through the agent is in
tests/test_stream_cli.py."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench._stream_baselines import pandas_ysb
from wattspan.engines.stream import Agg, Engine, Query, collect, datasets
from wattspan.engines.stream import queries as Q
from wattspan.engines.stream.engine import TaskEvent
from wattspan.engines.stream.instrument import (
    ATTR_CPU_PROCESS,
    ATTR_ITEMS,
    LATENCY_BUCKETS,
    METRIC_LATENCY,
    SPAN_TASK,
    ArrivalClock,
    StreamObserver,
    _Latencies,
    _Metrics,
    _sampled,
    run_instrumented,
)
from wattspan.engines.stream.schema import Schema

TS = Schema({"t": np.int64, "v": np.float64})


def _range_plan(size: int = 10, slide: int | None = None) -> Any:
    return (
        Query(TS, name="t").window(size=size, slide=slide, range_="t").agg(n=Agg.count()).compile()
    )


def _batch(times: list[int]) -> dict[str, np.ndarray]:
    t = np.asarray(times, dtype=np.int64)
    return {"t": t, "v": np.ones(len(t))}


@pytest.fixture(scope="module")
def ysb() -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    gen = datasets.generator("ysb", seed=3, rate=500)  # 200k events: 40 windows of 10 s
    events = gen.take(200_000)
    return Q.ysb(gen.ads["ad_id"], gen.ads["campaign_id"]), events, gen.ads


def _chunks(b: dict[str, np.ndarray], rows: int) -> list[dict[str, np.ndarray]]:
    n = len(b["event_time"])
    return [{k: v[i : i + rows] for k, v in b.items()} for i in range(0, n, rows)]


def _tracing() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("wattspan"), exporter


# --- when the input reached a window's end -------------------------------------------------


def test_replay_paces_rows_and_times_windows_by_due_time() -> None:
    rate = 2_000.0
    clock = ArrivalClock(_range_plan(), rate)
    batches = [_batch([0, 3, 9, 10, 12]), _batch([19, 20, 25]), _batch([31])]
    t0 = time.time()
    fed = list(clock.feed(batches))
    took = time.time() - t0
    assert sum(len(b["t"]) for b in fed) == 9
    assert took >= 9 / rate * 0.95  # really paced: row 8 is due 9/rate s after the start
    assert clock.t0 is not None
    # End 10 is reached by row 3 (t=10), end 20 by row 6 (t=20), end 30 by row 8 (t=31).
    got = clock.arrivals(np.array([10, 20, 30]), now=time.time())
    want = clock.t0 + (np.array([3, 6, 8]) + 1) / rate
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # A window past the last row counts from the end of the input (its last due time).
    assert clock.arrivals(np.array([40]), now=time.time())[0] == pytest.approx(clock.t0 + 9 / rate)


def test_processing_mode_times_windows_by_when_their_batch_was_handed_over() -> None:
    clock = ArrivalClock(_range_plan(), None)
    handed: list[float] = []
    for _b in clock.feed([_batch([0, 5]), _batch([10, 15]), _batch([22])]):
        handed.append(time.time())
        time.sleep(0.01)
    got = clock.arrivals(np.array([10, 20]), now=time.time())
    # End 10 is reached in batch 1 (t=10), end 20 in batch 2 (t=22).
    assert got[0] == pytest.approx(handed[1], abs=0.005)
    assert got[1] == pytest.approx(handed[2], abs=0.005)
    assert clock.kind == "processing"


def test_row_windows_close_with_their_last_row() -> None:
    plan = Query(TS, name="r").window(size=4, rows=True).agg(n=Agg.count()).compile()
    clock = ArrivalClock(plan, 1_000.0)
    list(clock.feed([_batch([0] * 3), _batch([0] * 6)]))
    assert clock.t0 is not None
    # Window [0, 4) ends with row 3, [4, 8) with row 7.
    got = clock.arrivals(np.array([4, 8]), now=time.time())
    np.testing.assert_allclose(got, clock.t0 + np.array([4, 8]) / 1_000.0, atol=1e-9)


def test_batches_behind_every_pending_window_are_forgotten() -> None:
    clock = ArrivalClock(_range_plan(), None)
    feed = clock.feed(_batch([10 * i, 10 * i + 5]) for i in range(1000))
    for i, _b in enumerate(feed):
        if i % 10 == 9:  # the engine emits as it goes: window ends up to the data so far
            clock.arrivals(np.array([10 * i]), now=time.time())
            assert len(clock._q) <= 11
    assert len(clock._q) <= 11


def test_bad_rate_is_refused() -> None:
    for bad in (0.0, -5.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            ArrivalClock(_range_plan(), bad)


# --- the sample of tasks, and what a task span carries ---------------------------------------


def test_task_sample_takes_every_nth_task_first_included() -> None:
    picked = [i for i in range(1000) if _sampled(i, 0.01)]
    assert picked[0] == 0 and len(picked) == 10
    assert np.diff(picked).tolist() == [100] * 9
    assert sum(_sampled(i, 0.25) for i in range(100)) == 25
    assert all(_sampled(i, 1.0) for i in range(50))
    assert not any(_sampled(i, 0.0) for i in range(50))


def test_task_spans_have_the_tasks_times_rows_and_cpu(ysb: Any) -> None:
    q, events, _ = ysb
    tracer, exporter = _tracing()
    seen: list[TaskEvent] = []
    with tracer.start_as_current_span("stream.query") as parent:
        obs = StreamObserver(ArrivalClock(q.compile()), 1.0, parent, tracer=tracer)

        class Recorder:
            def task_done(self, ev: TaskEvent) -> None:
                seen.append(ev)
                obs.task_done(ev)

            def windows_emitted(self, ev: Any) -> None:
                obs.windows_emitted(ev)

        eng = Engine(2, task_size=256 << 10, observer=Recorder())
        collect(eng.run(q, obs.clock.feed(_chunks(events, 50_000))), q)
    spans = {s.attributes["wattspan.stream.task.id"]: s for s in exporter.get_finished_spans()
             if s.name == SPAN_TASK}  # fmt: skip
    assert len(spans) == len(seen) == sum(eng.stats.tasks.values()) > 1
    query_span = next(s for s in exporter.get_finished_spans() if s.name == "stream.query")
    for ev in seen:
        s = spans[ev.task_id]
        assert s.parent is not None and s.parent.span_id == query_span.context.span_id
        assert s.start_time == int(ev.t_start * 1e9) and s.end_time == int(ev.t_end * 1e9)
        assert s.attributes[ATTR_ITEMS] == ev.rows
        assert s.attributes["wattspan.stream.task.kind"] == "cpu"
        assert ev.cpu_seconds is not None and s.attributes[ATTR_CPU_PROCESS] == ev.cpu_seconds
    assert sum(s.attributes[ATTR_ITEMS] for s in spans.values()) == len(events["event_time"])
    # Each task's CPU is its own: together no more than the process spent, and not nothing.
    total_cpu = sum(ev.cpu_seconds or 0.0 for ev in seen)
    assert total_cpu > 0 and obs.cpu["cpu"] == pytest.approx(total_cpu)


def test_inline_tasks_report_cpu_too(ysb: Any) -> None:
    q, events, _ = ysb
    got: list[float | None] = []

    class Obs:
        def task_done(self, ev: TaskEvent) -> None:
            got.append(ev.cpu_seconds)

        def windows_emitted(self, ev: Any) -> None:
            pass

    c0 = time.process_time()
    collect(Engine(0, task_size=1 << 20, observer=Obs()).run(q, [events]), q)
    used = time.process_time() - c0
    assert got and all(c is not None and c >= 0 for c in got)
    assert 0 < sum(c or 0.0 for c in got) <= used + 0.01


def test_sampled_spans_at_one_percent(ysb: Any) -> None:
    q, events, _ = ysb
    tracer, exporter = _tracing()
    with tracer.start_as_current_span("q") as parent:
        obs = StreamObserver(ArrivalClock(q.compile()), 0.01, parent, tracer=tracer)
        eng = Engine(1, task_size=4 << 10, observer=obs)  # ~120 rows a task: many tasks
        collect(eng.run(q, [events]), q)
    n_tasks = sum(eng.stats.tasks.values())
    tasks = [s for s in exporter.get_finished_spans() if s.name == SPAN_TASK]
    assert n_tasks > 1000
    assert len(tasks) == obs.task_spans == sum(_sampled(i, 0.01) for i in range(n_tasks))


# --- latency: the histogram and the figures ------------------------------------------------


class Recording(MetricExporter):
    """The SDK's exporter interface, keeping what it is handed (instead of sending it)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
        self.sent.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        pass


def test_latency_histogram_has_one_value_per_window(ysb: Any) -> None:
    q, events, _ = ysb
    exporter = Recording()
    metrics = _Metrics(exporter)
    obs = StreamObserver(ArrivalClock(q.compile()), 0.0, None, metrics)
    eng = Engine(2, observer=obs)
    collect(eng.run(q, obs.clock.feed(_chunks(events, 20_000))), q)
    p50 = obs.latencies.quantile(0.5)
    assert metrics.send({"q": "ysb"}, {"p50": p50, "p99": None})
    (data,) = exporter.sent
    (rm,) = data.resource_metrics
    (sm,) = rm.scope_metrics
    by_name = {m.name: m for m in sm.metrics}
    assert set(by_name) == {METRIC_LATENCY, METRIC_LATENCY + ".p50"}  # no p99 given
    (point,) = by_name[METRIC_LATENCY].data.data_points
    assert point.attributes == {"q": "ysb"}
    assert point.count == eng.stats.windows == obs.latencies.n == 40
    assert sum(point.bucket_counts) == 40 and len(point.bucket_counts) == len(LATENCY_BUCKETS) + 1
    assert point.sum == pytest.approx(obs.latencies.total)
    assert 0 <= point.min <= p50 <= point.max == obs.latencies.max  # type: ignore[operator]
    assert by_name[METRIC_LATENCY + ".p50"].data.data_points[0].value == p50


def test_histogram_buckets_are_upper_inclusive() -> None:
    m = _Metrics(Recording())
    m.record(np.array([0.0005, 0.0006, 0.001, 100.0, 0.0]))
    # (-inf, 0.5 ms] holds 0 and 0.5 ms; (0.5 ms, 1 ms] holds 0.6 ms and 1 ms; 100 s overflows.
    assert m.counts[0] == 2 and m.counts[1] == 2 and m.counts[-1] == 1 and m.n == 5
    assert m.min == 0.0 and m.max == 100.0


def test_a_failed_metric_export_is_one_warning_not_an_error(caplog: Any) -> None:
    class Down(Recording):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
            return MetricExportResult.FAILURE

    m = _Metrics(Down())
    m.record(np.array([0.01]))
    with caplog.at_level("WARNING", logger="wattspan"):
        assert m.send({}, {"p50": 0.01}) is False
    assert [r.getMessage() for r in caplog.records if "latency metrics" in r.getMessage()]


def test_latency_reservoir_keeps_exact_values_then_a_sample() -> None:
    lat = _Latencies(cap=100)
    lat.add(np.arange(100, dtype=float))
    assert lat.quantile(0.5) == pytest.approx(49.5)
    lat.add(np.full(10_000, 1000.0))
    assert lat.n == 10_100 and lat.max == 1000.0
    assert lat.quantile(0.5) == 1000.0  # the sample follows the stream's distribution
    assert len(lat._buf) == 100


def test_run_figures_and_results(ysb: Any) -> None:
    q, events, ads = ysb
    got: list[Any] = []
    res = run_instrumented(
        q, _chunks(events, 30_000), workers=2, task_size=128 << 10, telemetry=False,
        on_result=got.append,
    )  # fmt: skip
    f = res.figures
    n = len(events["event_time"])
    assert f["events"] == n and f["bytes"] == n * q.schema.row_bytes
    assert f["windows"] == 40 and f["latency_seconds"]["windows"] == 40
    assert f["latency_kind"] == "processing"
    assert sum(f["tasks"].values()) == sum(res.engine.stats.tasks.values())
    assert f["task_share"] == {"cpu": 1.0}
    assert f["events_per_second"] == pytest.approx(n / f["wall_seconds"])
    assert f["events_per_second_per_core"] == pytest.approx(f["events_per_second"] / 2)
    cols = {k: np.concatenate([b.columns[k] for b in got]) for k in got[0].columns}
    import pandas as pd

    engine = pd.DataFrame(cols)[["window_start", "window_end", "campaign_id", "count"]]
    pd.testing.assert_frame_equal(
        engine.reset_index(drop=True), pandas_ysb(_chunks(events, 1 << 20), ads)
    )


def test_replayed_run_reports_event_time_latency(ysb: Any) -> None:
    q, events, _ = ysb
    part = {k: v[:40_000] for k, v in events.items()}  # 8 windows
    rate = 100_000.0
    res = run_instrumented(q, [part], workers=1, task_size=32 << 10, rate=rate, telemetry=False)
    f = res.figures
    assert f["latency_kind"] == "event_time" and f["rate"] == rate
    assert f["wall_seconds"] >= 40_000 / rate * 0.95
    assert f["input_rate_achieved"] <= rate * 1.02
    # A window is emitted about one task (~960 rows, 10 ms of replay) after its end.
    lat = f["latency_seconds"]
    assert lat["windows"] == 8 and 0 <= lat["p50"] < 0.25


def test_latencies_looked_up_in_bulk_equal_one_lookup_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The observer keeps batches of windows and looks their arrivals up together; the
    # latencies (reservoir and histogram) must be those of a lookup per batch.
    import wattspan.engines.stream.instrument as inst
    from wattspan.engines.stream.schema import SG_SCHEMA

    q = Query(SG_SCHEMA).window(size=10, slide=1, range_="timestamp").agg(v=Agg.avg("value"))
    plan = q.compile()
    sg = datasets.generator("sg", seed=3).take(300_000)
    chunks = [{k: v[i : i + 7_000] for k, v in sg.items()} for i in range(0, 300_000, 7_000)]
    events: list[Any] = []

    class Capture:
        def task_done(self, ev: Any) -> None:
            pass

        def windows_emitted(self, ev: Any) -> None:
            events.append(ev)

    collect(Engine(0, task_size=64 << 10, observer=Capture()).run(q, chunks), q)
    assert len(events) > 20

    def observe(pending: int) -> StreamObserver:
        monkeypatch.setattr(inst, "PENDING_BATCHES", pending)
        clock = ArrivalClock(plan, rate=1e12)  # replay: arrival times follow from t0
        for _ in clock.feed(chunks):
            pass
        clock.t0 = events[0].t_emit - 1.0
        obs = StreamObserver(clock, 0.0, None, _Metrics(exporter=None))
        for ev in events:
            obs.windows_emitted(ev)
        return obs

    each, bulk = observe(1), observe(10_000)
    assert bulk._pending and not each._pending  # the bulk one has not looked anything up yet
    a, b = each.latencies, bulk.latencies
    assert a.n == b.n == sum(len(ev.window_ends) for ev in events)
    assert np.array_equal(a._buf[: a.n], b._buf[: b.n]) and a.total == pytest.approx(b.total)
    assert each.metrics is not None and bulk.metrics is not None
    assert np.array_equal(each.metrics.counts, bulk.metrics.counts)
    assert (a.quantile(0.99) or 0) > 0
