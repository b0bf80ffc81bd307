"""A stream query run as wattspan telemetry: spans, items, a latency histogram.

    result = run_instrumented(query, batches, workers=2, rate=None, task_sample=0.01)
    result.figures  # events/s, latency p50/p99, tasks per processor kind, ...

What goes to the agent (names in docs/otlp-names.md, "Stream engine"):

* one span ``stream.query`` per run, through :func:`wattspan.span`, so it carries the
  process's own CPU seconds and ``wattspan.items`` (the events), from which the agent derives
  events/s and joules per event; its ``wattspan.stream.*`` attributes hold the run's figures;
* a span ``stream.task`` for a sample of tasks (``task_sample``, default 1 %: every
  ``1/rate``-th task, the first included), child of the query span, with the task's real start
  and end times (the engine's worker clock), processor kind, worker, rows (as
  ``wattspan.items``), bytes and window fragments. Its ``wattspan.cpu.process_seconds`` is the
  CPU the task itself cost (its worker thread's clock), not the whole process's over the
  task's interval: with two workers the latter would charge every task with its neighbour's
  work, and attribution would count that energy twice;
* the histogram ``wattspan.stream.window.latency`` (seconds, one value per window emitted)
  and the gauges ``wattspan.stream.window.latency.p50`` / ``.p99``: one OTLP metrics request
  at the end of the run, through the SDK's OTLP exporter, to the spans' endpoint and with
  their resource (the agent keeps a histogram's count and sum).

Latency of a window is its emit time minus the moment its end was reached in the input: the
wall time at which the first row at or past the window's end arrived (row windows: the
window's last row). With ``rate`` (events/s) the input is replayed at that rate, so each row
has a due time and this is the event-time latency of the replay; without it, rows "arrive"
when the source hands their batch to the engine, and the figure is processing latency.
Windows made final only by the end of the stream count from when the input ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wattspan.semconv import ATTR_CPU_PROCESS, ATTR_CPU_THREAD, ATTR_ITEMS, TRACER_NAME

from .assembly import WindowBatch
from .engine import EmitEvent, Engine, TaskEvent
from .query import Plan, Query

SPAN_QUERY = "stream.query"
SPAN_TASK = "stream.task"
METRIC_LATENCY = "wattspan.stream.window.latency"
PREFIX = "wattspan.stream."
DEFAULT_TASK_SAMPLE = 0.01
#: Latencies kept for the quantiles (a uniform reservoir past this many windows).
RESERVOIR = 200_000
#: Batches of windows (or windows) whose latencies wait to be looked up together.
PENDING_BATCHES = 64
PENDING_WINDOWS = 8192
#: Replay ticks: a batch is released every this many seconds of the target rate, so that the
#: engine's calling thread, which also emits, is never held in the source much longer.
REPLAY_TICK_S = 0.005
#: Histogram buckets, seconds (OpenTelemetry backends that keep buckets use them).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip

Batch = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# when the input reached each window's end


@dataclass
class _Arrived:
    row0: int
    rows: int
    last: int  # window time of the batch's last row
    times: np.ndarray | None  # window time of each row (None for row windows: the index)
    at: float  # processing mode: when the batch was handed to the engine


class ArrivalClock:
    """Feeds the engine and remembers when each row arrived, to time windows against.

    ``feed(batches)`` wraps the source: with ``rate`` it releases rows at that many per
    second (in ticks of :data:`REPLAY_TICK_S`), row ``i`` being due ``(i + 1) / rate`` s after
    the first; without, a batch arrives when the source yields it. ``arrivals(ends)`` gives,
    for window ends in ascending order (as the engine emits them), when the row that closed
    each window arrived. Batches are forgotten once every later window ends past them, so
    memory stays at the few batches between the input and the result stage.
    """

    def __init__(self, plan: Plan, rate: float | None = None) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of events/s, got {rate!r}")
        self.rate = rate
        self.rows = plan.window.rows
        self.time_col = None if self.rows else plan.time_col
        self.t0: float | None = None  # replay start
        self.t_end: float | None = None  # when the input ended (replay: its last due time)
        self.t_fed: float | None = None  # when the source was exhausted
        self.events = 0
        self._q: deque[_Arrived] = deque()

    @property
    def kind(self) -> str:
        return "event_time" if self.rate is not None else "processing"

    def due(self, row: int) -> float:
        """When row ``row`` (0-based) is due in the replay."""
        assert self.rate is not None and self.t0 is not None
        return self.t0 + (row + 1) / self.rate

    def feed(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        rate = self.rate
        tick_rows = max(1, int(rate * REPLAY_TICK_S)) if rate is not None else 0
        for batch in batches:
            n = len(next(iter(batch.values()))) if batch else 0
            if not n:
                continue
            if rate is None:
                self._note(batch, n, time.time())
                yield batch
                continue
            if self.t0 is None:
                self.t0 = time.time()
            for a in range(0, n, tick_rows):
                z = min(a + tick_rows, n)
                part = batch if (a == 0 and z == n) else {c: v[a:z] for c, v in batch.items()}
                wait = self.due(self.events + (z - a) - 1) - time.time()
                if wait > 0:
                    time.sleep(wait)
                self._note(part, z - a, 0.0)
                yield part
        self.t_fed = time.time()
        self.t_end = self.t_fed if rate is None or self.t0 is None else self.due(self.events - 1)

    def _note(self, batch: Batch, n: int, at: float) -> None:
        if self.rows:
            times, last = None, self.events + n - 1
        else:
            times = batch[self.time_col]  # type: ignore[index]
            last = int(times[-1])
        self._q.append(_Arrived(self.events, n, last, times, at))
        self.events += n

    def _at(self, a: _Arrived, pos: np.ndarray) -> np.ndarray:
        if self.rate is None:
            return np.full(len(pos), a.at)
        assert self.t0 is not None
        return self.t0 + (a.row0 + pos + 1) / self.rate

    def arrivals(self, ends: np.ndarray, now: float) -> np.ndarray:
        """When the input reached each of ``ends`` (ascending window ends)."""
        out = np.empty(len(ends))
        ends = np.asarray(ends, dtype=np.int64)
        # Row windows close with their last row (index end - 1); range windows with the first
        # row at or past their end.
        key = ends - 1 if self.rows else ends
        q = self._q
        i = 0
        while i < len(key):
            while q and q[0].last < key[i]:
                q.popleft()
            if not q:
                out[i:] = self.t_end if self.t_end is not None else now
                break
            a = q[0]
            j = int(np.searchsorted(key, a.last, side="right"))
            if a.times is None:
                pos = np.maximum(key[i:j] - a.row0, 0)
            else:
                pos = np.searchsorted(a.times, key[i:j], side="left")
            out[i:j] = self._at(a, pos)
            i = j
        return out


# --------------------------------------------------------------------------------------------
# the observer


class _Latencies:
    """Every latency up to :data:`RESERVOIR` values, then a uniform sample of them."""

    def __init__(self, cap: int = RESERVOIR, seed: int = 0) -> None:
        self.cap = cap
        self.n = 0
        self.total = 0.0
        self.max = 0.0
        self._buf = np.empty(min(cap, 1024))
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        if not len(v):
            return
        self.total += float(v.sum())
        self.max = max(self.max, float(v.max()))
        room = max(self.cap - self.n, 0)
        head, rest = v[:room], v[room:]
        if len(head):
            need = self.n + len(head)
            if need > len(self._buf):
                self._buf = np.resize(self._buf, min(self.cap, max(need, 2 * len(self._buf))))
            self._buf[self.n : need] = head
            self.n = need
        if len(rest):
            # Reservoir sampling (Algorithm R): value i (0-based, i >= cap) replaces a random
            # slot with probability cap / (i + 1).
            idx = np.arange(self.n, self.n + len(rest))
            j = (self._rng.random(len(rest)) * (idx + 1)).astype(np.int64)
            keep = j < self.cap
            self._buf[j[keep]] = rest[keep]
            self.n += len(rest)

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        return float(np.quantile(self._buf[: min(self.n, self.cap)], q))


class _Metrics:
    """The latency histogram and quantile gauges of one run, sent as one OTLP request at its
    end through the OpenTelemetry SDK's OTLP exporter.

    Bucketed here with numpy rather than through the metrics API: its ``Histogram.record``
    costs about 5 µs of Python, GIL held, per value, which on a query with a window per
    second of event time (SG1) took 40 % of the engine's throughput; ``record`` here costs
    one ``searchsorted`` per batch of windows. The point is cumulative from the run's start.
    """

    def __init__(self, exporter: Any, resource: Any = None) -> None:
        self.exporter = exporter
        self.resource = resource
        self.bounds = np.asarray(LATENCY_BUCKETS, dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.n = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.start_ns = time.time_ns()
        self.failed = ""

    def record(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        if not len(v):
            return
        # OTLP explicit buckets are (bounds[i-1], bounds[i]]: side="left" puts v == bound in i.
        idx = np.searchsorted(self.bounds, v, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.n += len(v)
        self.sum += float(v.sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    def data(self, attributes: Mapping[str, Any], quantiles: Mapping[str, float | None]) -> Any:
        """The request: the histogram, and a gauge per quantile known."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Gauge,
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from wattspan import __version__

        now = time.time_ns()
        attrs = dict(attributes)
        point = HistogramDataPoint(
            attributes=attrs,
            start_time_unix_nano=self.start_ns,
            time_unix_nano=now,
            count=self.n,
            sum=self.sum,
            bucket_counts=self.counts.tolist(),
            explicit_bounds=self.bounds.tolist(),
            min=self.min if self.n else 0.0,
            max=self.max if self.n else 0.0,
        )
        metrics = [
            Metric(
                METRIC_LATENCY,
                "per window: emit time minus when the input reached the window's end",
                "s",
                Histogram([point], AggregationTemporality.CUMULATIVE),
            )
        ]
        for key, value in quantiles.items():
            if value is not None:
                gauge = Gauge([NumberDataPoint(attrs, self.start_ns, now, float(value))])
                metrics.append(Metric(f"{METRIC_LATENCY}.{key}", None, "s", gauge))
        resource = self.resource if isinstance(self.resource, Resource) else Resource.create({})
        scope = InstrumentationScope(TRACER_NAME, __version__)
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])

    @classmethod
    def create(cls) -> _Metrics | None:
        """With the OTLP metric exporter (the usual ``OTEL_EXPORTER_OTLP_*`` variables) and
        the span resource, so that the agent files the points under the same run; None when
        OpenTelemetry is disabled or the SDK's metrics are missing."""
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        from opentelemetry import trace

        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        except ImportError:
            return None
        resource = getattr(trace.get_tracer_provider(), "resource", None)
        return cls(OTLPMetricExporter(timeout=2), resource)

    def send(self, attributes: Mapping[str, Any], quantiles: Mapping[str, float | None]) -> bool:
        """Exports the run's points once; a failure is one warning, never an exception."""
        logger = logging.getLogger(_EXPORTER_LOGGER)
        logger.addFilter(_quiet_metrics)
        try:
            result = self.exporter.export(self.data(attributes, quantiles), timeout_millis=3000)
            ok = getattr(result, "name", "") == "SUCCESS"
            if not ok:
                self.failed = "export failed"
        except Exception as exc:  # a telemetry failure must not fail the run
            ok, self.failed = False, f"{type(exc).__name__}: {exc}"
        finally:
            logger.removeFilter(_quiet_metrics)
            with contextlib.suppress(Exception):
                self.exporter.shutdown()
        if not ok:
            endpoint = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or os.environ.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"
            )
            _log.warning(
                "wattspan: window latency metrics not sent to %s (%s)", endpoint, self.failed
            )
        return ok


_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
_log = logging.getLogger("wattspan")


def _quiet_metrics(record: logging.LogRecord) -> bool:
    """Drops the OTLP exporter's per-attempt lines about metrics (one warning at close)."""
    return "metrics" not in record.getMessage()


def _sampled(task_id: int, rate: float) -> bool:
    """Every ``1/rate``-th task, task 0 included (so a short run has one)."""
    return math.floor(task_id * rate) != math.floor((task_id - 1) * rate)


@dataclass
class StreamObserver:
    """The engine's observer: sampled task spans, CPU per processor kind, window latencies.

    ``parent`` is the query span (task spans are its children); ``clock`` says when the
    input reached each window's end; ``metrics`` buckets the latencies for the histogram.
    """

    clock: ArrivalClock
    task_sample: float = DEFAULT_TASK_SAMPLE
    parent: Any = None
    metrics: _Metrics | None = None
    tracer: Any = None  # default: the global provider's (the one wattspan.span uses)
    task_spans: int = 0
    cpu: Counter[str] = field(default_factory=Counter)  # task CPU seconds per kind
    _latencies: _Latencies = field(default_factory=_Latencies)

    def __post_init__(self) -> None:
        self._pending: list[tuple[np.ndarray, float]] = []
        self._pending_windows = 0
        if not 0.0 <= self.task_sample <= 1.0:
            raise ValueError(f"task sample rate must be in [0, 1], got {self.task_sample!r}")
        self._tracer: Any = None
        self._ctx: Any = None
        if self.parent is not None and self.task_sample > 0:
            from opentelemetry import trace

            from wattspan import __version__

            self._tracer = self.tracer or trace.get_tracer(TRACER_NAME, __version__)
            self._ctx = trace.set_span_in_context(self.parent)

    def task_done(self, ev: TaskEvent) -> None:
        if ev.cpu_seconds is not None:
            self.cpu[ev.kind] += ev.cpu_seconds
        if self._tracer is not None and _sampled(ev.task_id, self.task_sample):
            self._task_span(ev)

    def _task_span(self, ev: TaskEvent) -> None:
        f = ev.fragments
        attrs: dict[str, Any] = {
            PREFIX + "query": ev.query,
            PREFIX + "task.id": ev.task_id,
            PREFIX + "task.kind": ev.kind,
            PREFIX + "task.worker": ev.worker,
            PREFIX + "task.bytes": ev.nbytes,
            PREFIX + "task.first": ev.first,
            PREFIX + "task.last": ev.last,
            PREFIX + "task.fragments.closing": f.closing,
            PREFIX + "task.fragments.pending": f.pending,
            PREFIX + "task.fragments.complete": f.complete,
            PREFIX + "task.fragments.opening": f.opening,
            ATTR_ITEMS: ev.rows,
        }
        if ev.cpu_seconds is not None:
            attrs[ATTR_CPU_PROCESS] = ev.cpu_seconds
            attrs[ATTR_CPU_THREAD] = ev.cpu_seconds
        span = self._tracer.start_span(
            SPAN_TASK, context=self._ctx, start_time=int(ev.t_start * 1e9), attributes=attrs
        )
        span.end(end_time=max(int(ev.t_end * 1e9), int(ev.t_start * 1e9)))
        self.task_spans += 1

    def windows_emitted(self, ev: EmitEvent) -> None:
        if not len(ev.window_ends):
            return
        # Kept and looked up in bulk: per batch of windows the lookup, the reservoir and the
        # buckets cost ~50 us of Python with the GIL held, 20 % of SG1 (a window per second)
        # on one core. The bound keeps the arrival notes (which hold their batches' time
        # columns) from piling up meanwhile.
        self._pending.append((ev.window_ends, ev.t_emit))
        self._pending_windows += len(ev.window_ends)
        if len(self._pending) >= PENDING_BATCHES or self._pending_windows >= PENDING_WINDOWS:
            self.flush()

    def flush(self) -> None:
        """Fold the windows emitted so far into ``latencies`` and ``metrics``."""
        if not self._pending:
            return
        pending, self._pending, self._pending_windows = self._pending, [], 0
        ends = np.concatenate([e for e, _ in pending])
        t_emit = np.concatenate([np.full(len(e), t) for e, t in pending])
        lat = np.maximum(t_emit - self.clock.arrivals(ends, float(t_emit[-1])), 0.0)
        self._latencies.add(lat)
        if self.metrics is not None:
            self.metrics.record(lat)

    @property
    def latencies(self) -> _Latencies:
        """Every window's latency so far (flushes what is pending)."""
        self.flush()
        return self._latencies


# --------------------------------------------------------------------------------------------
# a run


@dataclass
class RunResult:
    figures: dict[str, Any]
    engine: Engine


def _query_attrs(prefix: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in figures.items():
        if isinstance(v, Mapping):
            out.update(_query_attrs(f"{prefix}{k}.", v))
        elif v is not None:
            out[prefix + k] = v
    return out


def run_instrumented(
    query: Query | Plan,
    batches: Iterable[Batch],
    *,
    workers: int = 1,
    task_size: int = 1 << 20,
    scheduler: str = "fcfs",
    gpu: bool = False,
    rate: float | None = None,
    task_sample: float = DEFAULT_TASK_SAMPLE,
    on_result: Any = None,
    telemetry: bool = True,
) -> RunResult:
    """Run ``query`` over ``batches`` under a ``stream.query`` span (see the module doc);
    ``on_result(window_batch)`` sees every result batch. ``telemetry=False`` runs the same
    path with no span or metric (to measure what the instrumentation costs)."""
    import wattspan

    plan = query if isinstance(query, Plan) else query.compile()
    clock = ArrivalClock(plan, rate)
    engine = Engine(workers, task_size=task_size, scheduler=scheduler, gpu=gpu)
    config = {
        "query": plan.name,
        "workers": workers,
        "task_size_bytes": task_size,
        "scheduler": scheduler,
        "gpu": bool(gpu),
        "task_sample": task_sample,
    }
    if rate is not None:
        config["rate"] = rate
    scope = (
        wattspan.span(SPAN_QUERY, **{PREFIX + k: v for k, v in config.items()})
        if telemetry
        else contextlib.nullcontext(None)
    )
    metrics: _Metrics | None = None
    if telemetry:
        with contextlib.suppress(ImportError):  # its imports are not the query's work
            import opentelemetry.exporter.otlp.proto.grpc.metric_exporter  # noqa: F401
    with scope as span:
        c0, t0 = time.process_time(), time.time()
        # After the span: its provider's resource (the run id) is what the points carry.
        metrics = _Metrics.create() if telemetry else None
        obs = StreamObserver(clock, task_sample, span, metrics)
        engine.observer = obs
        wb: WindowBatch
        for wb in engine.run(plan, clock.feed(batches)):
            if on_result is not None:
                on_result(wb)
        obs.flush()
        figures = _figures(plan, engine, obs, clock, config)
        figures["cpu_seconds"] = time.process_time() - c0
        figures["wall_seconds_total"] = time.time() - t0
        if span is not None:
            wattspan.count_items(figures["events"])
            span.set_attributes(_query_attrs(PREFIX, _span_figures(figures)))
    if metrics is not None:
        lat = figures["latency_seconds"]
        attrs = {PREFIX + "query": plan.name, PREFIX + "latency.kind": clock.kind}
        figures["latency_metric_sent"] = metrics.send(attrs, {"p50": lat["p50"], "p99": lat["p99"]})
    return RunResult(figures, engine)


def _span_figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    keep = dict(figures)
    for k in ("query", "workers", "task_size_bytes", "scheduler", "gpu", "task_sample", "rate"):
        keep.pop(k, None)  # set when the span started
    return keep


def _figures(
    plan: Plan, engine: Engine, obs: StreamObserver, clock: ArrivalClock, config: dict[str, Any]
) -> dict[str, Any]:
    st = engine.stats
    wall = st.wall
    cores = sum(p.workers for p in engine.processors if p.kind == "cpu") or 1
    eps = st.rows / wall if wall > 0 else 0.0
    n_tasks = sum(st.tasks.values())
    lat = obs.latencies
    out: dict[str, Any] = dict(config)
    out.update(
        {
            "events": st.rows,
            "bytes": st.nbytes,
            "windows": st.windows,
            "result_rows": st.result_rows,
            "wall_seconds": wall,
            "events_per_second": eps,
            "cpu_cores": cores,
            "events_per_second_per_core": eps / cores,
            "tasks": dict(st.tasks),
            "task_share": {k: v / n_tasks for k, v in st.tasks.items()} if n_tasks else {},
            "task_seconds": dict(st.busy),
            "task_cpu_seconds": dict(obs.cpu),
            "task_spans": obs.task_spans,
            "latency_kind": clock.kind,
            "latency_seconds": {
                "windows": lat.n,
                "p50": lat.quantile(0.5),
                "p99": lat.quantile(0.99),
                "max": lat.max if lat.n else None,
                "mean": lat.total / lat.n if lat.n else None,
            },
        }
    )
    if clock.rate is not None and clock.t0 is not None and clock.t_fed is not None:
        out["input_rate_achieved"] = clock.events / max(clock.t_fed - clock.t0, 1e-9)
    return out
