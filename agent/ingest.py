"""From OTLP records to stored, attributed spans and valued metrics.

``TelemetryIngest`` is the receiver's handler and also a sink of node samples. A request is
acknowledged once its spans are committed to the store (one batch per request and run), its
metrics and logs too, and its valued metrics are in every exporter's queue. A batch is
attributed a moment later, once a node sample at or after its last span's end exists, on a
worker thread: its resources are written to the store beside it and its spans exported as
``spans`` records. An agent that stops before that finishes the job when it starts again.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wattspan import semconv as sc
from wattspan.agent.calibration import Calibration
from wattspan.agent.domains import primary_domains
from wattspan.agent.errors import Backpressure
from wattspan.agent.executors import ATTR_EXECUTOR_ID, ExecutorPids
from wattspan.agent.logthrottle import LogThrottle
from wattspan.agent.ml_export import confusion_samples, param_samples
from wattspan.agent.pids import refusal
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.records import (
    TELEMETRY_SOURCES,
    LogRecord,
    MetricPoint,
    Rejection,
    SpanRecord,
)
from wattspan.agent.span_fields import KEYS as _EXPORTED_ATTRS
from wattspan.agent.span_fields import MARKER as _EXPORT_MARKER
from wattspan.agent.span_fields import exported as _exported_attrs
from wattspan.agent.store import ConfusionRow, MetricRow, Run, SpanRow, Store
from wattspan.agent.store.sqlite import Writes
from wattspan.collectors.base import Sample, number
from wattspan.collectors.cpu import BUSY_FIELDS
from wattspan.collectors.node_processes import NodeProcessCollector
from wattspan.collectors.process import ProcessCollector

if TYPE_CHECKING:
    from wattspan.agent.attribution import NodeSeries
    from wattspan.agent.idle import IdleEstimate

log = logging.getLogger("wattspan.ingest")

# What attribution reads of each source: the ring keeps only these tags and fields, so it
# costs about one small record per series and tick, whatever else collectors report.
_CPU_FIELDS = ("cpu_user_seconds_total", "cpu_system_seconds_total", "rss_bytes")
_KEEP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cpu": (("cpu",), BUSY_FIELDS),
    "process_tree": (("root",), _CPU_FIELDS),
    "process": (("pid",), (*_CPU_FIELDS, "peak_rss_bytes")),
    "rapl": (("domain", "estimated"), ("energy_joules_total",)),
    "power_model": (("domain", "estimated"), ("energy_joules_total",)),
    "gpu": (("gpu",), ("energy_joules_total",)),
}


def _slim(s: Sample) -> Sample | None:
    """The part of a sample attribution needs, or None if it needs none of it."""
    keep = _KEEP.get(s.source)
    if keep is None or (s.source == "cpu" and s.tags.get("cpu") != "total"):
        return None
    tags, fields = keep
    return Sample(
        s.source,
        s.ts,
        {k: s.tags[k] for k in tags if k in s.tags},
        {k: s.fields[k] for k in fields if k in s.fields},
    )


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """The ingest's bounds (config section ``otlp``; defaults fit ``MemoryMax=256M``)."""

    #: how far past the agent's clock a span may end (client clock skew), s
    max_clock_skew_seconds: float = 60.0
    #: spans received but not yet attributed; a request past it is refused with backpressure
    max_pending_spans: int = 200_000
    #: process trees clients may have the agent watch at once
    max_watched_processes: int = 64

    @classmethod
    def from_config(cls, otlp: dict[str, Any]) -> IngestLimits:
        return cls(
            float(otlp["max_clock_skew_seconds"]),
            int(otlp["max_pending_spans"]),
            int(otlp["max_watched_processes"]),
        )


# Covered spans wake the attribution thread at most this often (see _commit_spans).
_WAKE_EVERY_S = 0.05

# How much history a run waits for before its idle figure falls back to the lowest interval.
IDLE_HISTORY_SECONDS = 30.0


class _WaitForIdle(Exception):
    """Raised inside an attribution pass that should wait for more samples."""


_PROGRAM_RUNS = uuid.UUID("6a1f4f1e-4b8e-4d7c-9d2a-3f7a1c2b5e90")

# How long a pid's verdict (agent/pids.py) is remembered.
PID_CHECK_SECONDS = 10.0

# Runs whose idle figure is remembered (a daemon sees a run per program).
MAX_IDLE_RUNS = 4096

# Decoded JSON values nested deeper than this are not kept: the store's encoder (orjson)
# stops at 255 levels, and no hyperparameter set or confusion matrix needs more than a few.
MAX_JSON_DEPTH = 32


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _cpu(v: Any) -> float | None:
    """A self-reported CPU figure, if it is one a process could have measured."""
    f = _num(v)
    return f if f is not None and 0.0 <= f < 1e9 else None


_ATTRIBUTION_ATTRS = (sc.ATTR_ITEMS, sc.ATTR_CPU_PROCESS)


def _keep_attribution_attrs(rows: Sequence[SpanRow]) -> None:
    """Once a batch is stored, its waiting spans keep only the attributes attribution reads:
    a request of 250k attributes would otherwise hold ~30 MiB until it is attributed."""
    for r in rows:
        a = r.attributes
        if a:
            r.attributes = {k: a[k] for k in _ATTRIBUTION_ATTRS if k in a}
            if _EXPORT_MARKER in a:  # and those the exported point carries (span_fields.py)
                r.attributes.update((k, a[k]) for k in _EXPORTED_ATTRS if k in a)


def _step(attrs: dict[str, Any]) -> int | None:
    """The step of a valued metric; None unless it is a whole number SQLite can hold."""
    v = attrs.get(sc.ATTR_STEP, attrs.get("step"))
    f = _num(v)
    return int(f) if f is not None and -(2.0**63) < f < 2.0**63 else None


def _depth_ok(v: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``v`` nests lists/dicts at most ``limit`` deep (iterative: no recursion)."""
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            x = list(x.values())
        if isinstance(x, list):
            if d >= limit:
                return False
            stack.extend((y, d + 1) for y in x)
    return True


_MALFORMED = object()


def _json_attr(v: Any) -> Any:
    """A JSON-encoded attribute decoded; ``_MALFORMED`` when it is a string that should have
    been JSON and is not (or nests absurdly deep); other values as they are."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            return _MALFORMED
    return v if _depth_ok(v) else _MALFORMED


class _Series:
    """One series' samples in time order, with their times beside them for bisection;
    evicted from the head by moving ``head`` (the lists are compacted now and then)."""

    __slots__ = ("head", "rows", "ts")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.rows: list[Sample] = []
        self.head = 0

    def add(self, s: Sample) -> None:
        if self.ts and s.ts < self.ts[-1]:  # the clock stepped back: keep time order
            i = bisect.bisect_right(self.ts, s.ts, self.head)
            self.ts.insert(i, s.ts)
            self.rows.insert(i, s)
        else:
            self.ts.append(s.ts)
            self.rows.append(s)

    def evict(self, cutoff: float) -> None:
        """Forgets samples older than ``cutoff``."""
        ts = self.ts
        if self.head < len(ts) and ts[self.head] < cutoff:
            self.head = bisect.bisect_left(ts, cutoff, self.head)
            if self.head >= 256 and 8 * self.head >= len(ts):
                del ts[: self.head], self.rows[: self.head]
                self.head = 0

    def window(self, t0: float, t1: float) -> list[Sample]:
        """The samples within [t0, t1] and the nearest on each side (all those sharing its
        time): everything interpolation, peaks and coverage over [t0, t1] read."""
        ts, head = self.ts, self.head
        i = bisect.bisect_right(ts, t0, head) - 1
        i = head if i < head else bisect.bisect_left(ts, ts[i], head, i)
        j = bisect.bisect_left(ts, t1, head)
        j = len(ts) if j == len(ts) else bisect.bisect_right(ts, ts[j], j)
        return self.rows[i:j]


class SampleRing:
    """The recent node samples attribution needs, kept for ``max_age`` seconds per series,
    so that the window of a batch of spans is cut out without reading the rest."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], _Series] = {}
        self._lock = threading.Lock()
        self.latest_ts = 0.0
        self._swept = 0.0

    def add(self, samples: Sequence[Sample]) -> None:
        with self._lock:
            for s in samples:
                slim = _slim(s)
                if slim is None:
                    continue
                if s.ts > self.latest_ts:
                    self.latest_ts = s.ts
                key = (slim.source, tuple(slim.tags.items()))
                ser = self._series.get(key)
                if ser is None:
                    ser = self._series[key] = _Series()
                ser.add(slim)
                ser.evict(self.latest_ts - self.max_age)
            # Series that stopped (a process that exited) are dropped now and then; reads
            # apply the cutoff to every series regardless.
            if self.latest_ts - self._swept >= min(self.max_age, 60.0):
                self._swept = self.latest_ts
                self._evict_all(self.latest_ts - self.max_age)

    def _evict_all(self, cutoff: float) -> None:
        for key in list(self._series):
            ser = self._series[key]
            ser.evict(cutoff)
            if ser.head >= len(ser.ts):
                del self._series[key]

    def coverage(self) -> float:
        """Seconds between the oldest and the newest sample kept."""
        with self._lock:
            firsts = [ser.ts[ser.head] for ser in self._series.values() if ser.head < len(ser.ts)]
        return self.latest_ts - min(firsts) if firsts else 0.0

    def between(self, t0: float, t1: float, whole: bool = False) -> list[Sample] | None:
        """Samples covering [t0, t1] with one on each side per series, or None if t0 is
        too old. ``whole``: every sample kept, not only those around [t0, t1]."""
        with self._lock:
            self._evict_all(self.latest_ts - self.max_age)
            if not self._series:
                return None
            if min(ser.ts[ser.head] for ser in self._series.values()) > t0:
                return None
            if whole:
                return [s for ser in self._series.values() for s in ser.rows[ser.head :]]
            return [s for ser in self._series.values() for s in ser.window(t0, t1)]

    def all(self) -> list[Sample]:
        with self._lock:
            self._evict_all(self.latest_ts - self.max_age)
            return [s for ser in self._series.values() for s in ser.rows[ser.head :]]


class TelemetryIngest:
    """Receiver handler (``on_spans``/``on_metrics``/``on_logs``) and sample sink."""

    name = "ingest"
    # Spans and metrics come from this sink: it never takes them back.
    SKIP_SOURCES = TELEMETRY_SOURCES

    def __init__(
        self,
        *,
        store: Store | None,
        pipeline: Pipeline,
        run_id: str | None,
        interval: float,
        process_collector: ProcessCollector | None = None,
        node_processes: NodeProcessCollector | None = None,
        ring_seconds: float = 300.0,
        flush_samples: Callable[[], None] | None = None,
        limits: IngestLimits | None = None,
        calibration: Calibration | None = None,
        spool: bool = False,
        host: str = "",
        program_runs: bool = False,
        span_observer: Callable[[Sequence[SpanRow]], None] | None = None,
    ) -> None:
        self.host = host
        # Told of every attribution pass's spans (the /metrics span counters).
        self.span_observer = span_observer
        # Daemon mode: a client that names no run gets one of its own, per (service, pid).
        self.program_runs = program_runs
        # Runs seen: None for runs the agent does not end, else a program run's metadata.
        self._runs: dict[str, dict[str, Any] | None] = {}
        self._program_ids: dict[tuple[Any, int], str] = {}
        self._refusals: dict[Any, tuple[str | None, float]] = {}
        # A spool is a store that only holds spans between their acknowledgement and their
        # hand-over to the exporters (store.enabled = false): nothing else is written to
        # it, and a batch is deleted once exported, so an OK still means durable.
        self.spool = spool
        self.limits = limits or IngestLimits()
        self.store = store
        self.pipeline = pipeline
        self.run_id = run_id
        self.interval = interval
        self.process_collector = process_collector
        # Spark task spans name the executor that ran them, not its process: found in /proc.
        self.executor_pids = ExecutorPids()
        # Every process's recent CPU history: spans of a process first heard of after they
        # ended get their CPU figure from it (agent watching starts with the first span).
        self.node_processes = node_processes
        # Five minutes of slim samples cover the spans that arrive soon after they end (the
        # usual case) for about a MiB; older spans are attributed from the store instead.
        self.ring = SampleRing(ring_seconds)
        self.flush_samples = flush_samples
        # (stored batch id or None, its spans), waiting for a sample after their end.
        self._pending: list[tuple[int | None, list[SpanRow]]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._model_idle: float | None = None
        self.calibration = calibration
        # One idle figure per run, the first one it was given: every span of a run is
        # charged the same idle power (agent/idle.py has the methods).
        self._idle_by_run: dict[str | None, IdleEstimate] = {}
        self.counts = {
            "spans_stored_total": 0,
            "spans_attributed_total": 0,
            "metric_points_stored_total": 0,
            "logs_stored_total": 0,
            "attribution_errors_total": 0,
            # Attributed spans a sink (an exporter) refused; they are in the store regardless.
            "spans_export_failed_total": 0,
            # Requests refused whole because max_pending_spans was reached (clients retry).
            "spans_refused_backpressure_total": 0,
            # Attribution passes that failed (a store error...) and were put back to retry.
            "attribution_retries_total": 0,
            # Client pids past otlp.max_watched_processes: their spans get no process share.
            "processes_not_watched_total": 0,
        }
        self._watch_log = LogThrottle(60.0)
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._pending_spans = 0
        if store is not None:
            # Spans acknowledged before a stop or crash, never attributed: finish the job.
            self._pending.extend(store.unattributed_batches())
            for _, rows in self._pending:
                _keep_attribution_attrs(rows)
            self._pending_spans = sum(len(rows) for _, rows in self._pending)

    # -- sink of node samples -------------------------------------------------------------
    def write(self, samples: Sequence[Sample]) -> None:
        self.ring.add(samples)
        self._update_idle(samples)
        if self._pending:
            self._wake.set()

    def idle_of(self, run_id: str | None) -> IdleEstimate | None:
        """The idle figure the run's spans were charged, once any were attributed."""
        return self._idle_by_run.get(run_id)

    def estimate_idle(self, series: NodeSeries | None = None) -> IdleEstimate | None:
        """The best idle figure for ``series`` (default: the whole ring) right now."""
        from wattspan.agent.attribution import build_series
        from wattspan.agent.idle import estimate

        if series is None:
            series = build_series(self.ring.all())
        return estimate(
            series,
            primary_domains(series.energy),
            model_watts=self._model_idle,
            calibration=self.calibration,
        )

    def _update_idle(self, samples: Sequence[Sample]) -> None:
        """The power model's own idle figure, when it is the node's energy source."""
        for s in samples:
            if s.source == "power_model":
                idle = number(s, "idle_power_watts")
                if idle is not None:
                    self._model_idle = idle
                    return

    def flush(self, timeout: float | None = None) -> None:
        self.attribute_due(force=True)

    def close(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.attribute_due(force=True)

    def stats(self) -> dict[str, float | int | str]:
        with self._lock:
            pending = self._pending_spans
        return {**self.counts, "spans_pending": pending}

    # -- receiver handler -----------------------------------------------------------------
    def _run_of(
        self, resource: dict[str, Any], pid: int | None = None, start: float | None = None
    ) -> str | None:
        """The run a resource's records belong to: the one it names (``wattspan.run_id``);
        in daemon mode, else a run per (service, process) of a client that names none; else
        the agent's own. A program's run is created the first time it is seen."""
        rid = resource.get(sc.ATTR_RUN_ID)
        if rid:
            rid = str(rid)
        elif self.program_runs and pid is not None:
            key = (resource.get("service.name"), pid)
            rid = self._program_ids.get(key)
            if rid is None:
                service = str(key[0] or "unknown_service")
                rid = str(uuid.uuid5(_PROGRAM_RUNS, f"{self.run_id}/{service}/{pid}"))
                if len(self._program_ids) >= MAX_IDLE_RUNS:
                    self._program_ids.clear()
                self._program_ids[key] = rid
        else:
            return self.run_id
        if rid not in self._runs:
            self._open_program_run(rid, resource, pid, start)
        return rid

    def _pid_refusal(self, pid: Any) -> str | None:
        """:func:`~wattspan.agent.pids.refusal`, remembered for a few seconds: a client sends
        many requests from one pid, and reading /proc for each was a tenth of a small
        request's cost (a pid reused meanwhile is checked again once the entry expires)."""
        now = time.monotonic()
        hit = self._refusals.get(pid)
        if hit is not None and hit[1] > now:
            return hit[0]
        why = refusal(pid)
        if len(self._refusals) >= 4096:
            self._refusals.clear()
        self._refusals[pid] = (why, now + PID_CHECK_SECONDS)
        return why

    def _open_program_run(
        self, rid: str, resource: dict[str, Any], pid: int | None, start: float | None
    ) -> None:
        store = self.store
        if store is None or self.spool:
            self._runs[rid] = None
            return
        kind = store.run_kind(rid)
        if kind is not None:  # a wattspan run's own, or known from before a restart
            self._runs[rid] = None if kind != "program" else {}
            return
        service = str(resource.get("service.name", "unknown_service"))
        began = resource.get(sc.ATTR_RUN_START)
        args = resource.get("process.command_args")
        line = resource.get("process.command_line")
        meta: dict[str, Any] = {"pid": pid, "service": service}
        command: list[str] = []
        if isinstance(args, list):
            command = [str(a) for a in args]
        elif isinstance(line, str):
            try:
                command = shlex.split(line)
            except ValueError:  # unbalanced quotes: keep it as sent
                command = [line]
        run = Run(
            id=rid,
            name=str(resource.get(sc.ATTR_RUN_NAME) or service),
            host=self.host,
            start_ts=began / 1e9 if isinstance(began, int) and began > 0 else start or time.time(),
            kind="program",
            command=command,
            summary=meta,
        )
        store.add_run(run)
        self._runs[rid] = meta
        while len(self._runs) > MAX_IDLE_RUNS:
            del self._runs[next(iter(self._runs))]

    def _program_run_ends(
        self, rows: list[SpanRow]
    ) -> list[tuple[str, float, int | None, dict[str, Any]]]:
        """Program runs these spans end: a run root span (``wattspan.run``) ends its run,
        with its exit status when the program knew it."""
        out = []
        for r in rows:
            if r.name != sc.RUN_ROOT_SPAN or r.run_id is None:
                continue
            meta = self._runs.get(r.run_id)
            if meta is None:
                continue
            code = r.attributes.get(sc.ATTR_EXIT_CODE)
            ok = isinstance(code, int) and not isinstance(code, bool)
            out.append((r.run_id, r.end_ts, code if ok else None, meta))
        return out

    def on_spans(self, spans: list[SpanRecord]) -> Rejection | None:
        """Validates, then commits a request's spans and what their events carry.

        Everything is checked before anything is written, so a request either fails whole
        (the client retries it: nothing was kept) or is stored once. Spans that end too far
        in the future are rejected; a refused ``process.pid`` or malformed JSON in
        ``ml.hyperparameters``/``ml.confusion_matrix`` costs only that part, reported back
        as a partial-success warning.
        """
        rows: list[SpanRow] = []
        metrics: list[MetricRow] = []
        matrices: list[ConfusionRow] = []
        params: list[tuple[str | None, str, dict[str, Any]]] = []
        rejected = Rejection()
        verdicts: dict[int, str | None] = {}
        horizon_ns = time.time_ns() + int(self.limits.max_clock_skew_seconds * 1e9)
        last_resource: object = None
        run_id = self.run_id
        prefix = sc.ATTR_PARAM_PREFIX
        for s in spans:
            if s.end_ns > horizon_ns:
                rejected.add(
                    f"span ends more than {self.limits.max_clock_skew_seconds:g} s after the "
                    "agent's clock"
                )
                continue
            # Records of one OTLP resource block share one resource dict: resolve it once.
            if s.resource_attributes is not last_resource:
                last_resource = s.resource_attributes
                run_id = self._run_of(s.resource_attributes, s.pid, s.start_ns / 1e9)
            pid = s.pid
            if ATTR_EXECUTOR_ID in s.attributes or ATTR_EXECUTOR_ID in s.resource_attributes:
                # A task's CPU is its executor's (agent/executors.py), whoever reported it.
                pid = self.executor_pids.pid_for_span(s.attributes, s.resource_attributes, pid)
            if pid is not None:
                # A request's spans nearly all share one pid: one verdict lookup per pid.
                why = (
                    verdicts[pid]
                    if pid in verdicts
                    else verdicts.setdefault(pid, self._pid_refusal(pid))
                )
                if why is not None:
                    rejected.warn(why)
                    pid = None
            attrs = s.attributes
            rows.append(
                SpanRow(
                    run_id,
                    s.trace_id,
                    s.span_id,
                    s.parent_span_id,
                    s.name,
                    s.start_ns / 1e9,
                    s.end_ns / 1e9,
                    s.status_code,
                    s.service_name,
                    pid,
                    attrs,
                )
            )
            hp = attrs.get(sc.ATTR_HYPERPARAMETERS)
            # One C-level join instead of a Python loop over every span's keys.
            if hp is not None or (attrs and prefix in "\0".join(attrs)):
                p: dict[str, Any] = {}
                if hp is not None:
                    decoded = _json_attr(hp)
                    if isinstance(decoded, dict):
                        p.update(decoded)
                    else:
                        rejected.warn(f"{sc.ATTR_HYPERPARAMETERS} is not a JSON object")
                for k, v in attrs.items():
                    if k.startswith(prefix):
                        p.setdefault(k[len(prefix) :], v)
                if p:
                    params.append((run_id, s.span_id, p))
            for ev in s.events:
                ea = ev.attributes
                if ev.name == sc.EVENT_METRIC:
                    value = _num(ea.get(sc.ATTR_METRIC_VALUE))
                    name = ea.get(sc.ATTR_METRIC_NAME)
                    if value is None or not math.isfinite(value) or not isinstance(name, str):
                        continue
                    metrics.append(
                        MetricRow(
                            run_id, ev.time_ns / 1e9, name, value, _step(ea), s.trace_id, s.span_id
                        )
                    )
                elif ev.name == sc.EVENT_CONFUSION_MATRIX:
                    matrix = _json_attr(ea.get(sc.ATTR_CM_MATRIX))
                    labels = _json_attr(ea.get(sc.ATTR_CM_LABELS))
                    if not isinstance(matrix, list):
                        rejected.warn(f"{sc.ATTR_CM_MATRIX} is not a JSON array")
                        continue
                    if not isinstance(labels, list):
                        labels = [str(i) for i in range(len(matrix))]
                    matrices.append(
                        ConfusionRow(
                            run_id,
                            ev.time_ns / 1e9,
                            [str(x) for x in labels],
                            matrix,
                            step=_step(ea),
                            trace_id=s.trace_id,
                            span_id=s.span_id,
                        )
                    )
        if rows:
            ends = self._program_run_ends(rows)  # before committing slims the attributes
            self._commit_spans(rows, metrics, matrices, params)
            for run_id, end_ts, code, meta in ends:
                if self.store is not None:
                    self.store.finish_run(run_id, end_ts, code, meta or None)
        self._watch_pids({r.pid for r in rows if r.pid is not None})
        return rejected if rejected.reasons else None

    def _commit_spans(
        self,
        rows: list[SpanRow],
        metrics: list[MetricRow],
        matrices: list[ConfusionRow],
        params: list[tuple[str | None, str, dict[str, Any]]],
    ) -> None:
        with self._lock:
            pending = self._pending_spans
        if pending + len(rows) > self.limits.max_pending_spans:
            self.counts["spans_refused_backpressure_total"] += len(rows)
            raise Backpressure(
                f"{pending} spans are waiting for attribution (otlp.max_pending_spans = "
                f"{self.limits.max_pending_spans}); retry later"
            )
        by_run: dict[str | None, list[SpanRow]] = {}
        for r in rows:
            by_run.setdefault(r.run_id, []).append(r)
        groups = list(by_run.values())
        ids: list[int | None] = [None] * len(groups)
        if self.store is not None:
            # One all-or-nothing write for the whole request (a failure leaves nothing for
            # the client's retry to duplicate), committed together with the requests of the
            # other handler threads: the store's group commit, one transaction for all.
            w = Writes()
            for group in groups:
                w.span_batch(group[0].run_id, group)
            if not self.spool:
                w.metrics(metrics)
                w.confusion(matrices)
                now = time.time()
                for run_id, span_id, p in params:
                    w.params(run_id, span_id, p, now)
            ids = list(self.store.write(w))
        batches = list(zip(ids, groups, strict=True))
        self.counts["spans_stored_total"] += len(rows)
        self.counts["metric_points_stored_total"] += len(metrics)
        ml = [self._metric_sample(m) for m in metrics]
        if params or matrices:
            # Hyperparameters and confusion matrices for the dashboards (agent/ml_export.py).
            now = time.time()
            for run_id, span_id, p in params:
                ml += param_samples(run_id, span_id, p, now)
            for c in matrices:
                ml += confusion_samples(c.run_id, c.ts, c.labels, c.matrix, c.step)
        if ml:
            self.pipeline.submit(ml)
        _keep_attribution_attrs(rows)
        with self._lock:
            self._pending.extend(batches)
            self._pending_spans += len(rows)
        # A pass costs about a millisecond whatever it attributes, and a wake per request
        # made it one pass per request or two (a fifth of the agent's CPU at one span per
        # request). Spans no sample covers yet wait for the next sample, whose write() wakes
        # the thread; covered ones wake it at most every _WAKE_EVERY_S, or are taken by the
        # next pass anyway (the thread's own timeout, or the next sample): within an interval.
        if max(r.end_ts for r in rows) <= self.ring.latest_ts:
            now = time.monotonic()
            if now - self._commit_woke_at >= _WAKE_EVERY_S:
                self._commit_woke_at = now
                self._wake.set()

    # When _commit_spans last woke the attribution thread (monotonic s).
    _commit_woke_at = -math.inf

    def on_metrics(self, points: list[MetricPoint]) -> Rejection | None:
        rows = []
        rejected = Rejection()
        pids = set()
        for p in points:
            if p.pid is not None and p.pid not in pids:
                why = self._pid_refusal(p.pid)
                if why is None:
                    pids.add(p.pid)
                else:
                    rejected.warn(why)
            if not math.isfinite(p.value):
                continue
            attrs = dict(p.attributes)
            rows.append(
                MetricRow(
                    self._run_of(p.resource_attributes, p.pid, p.ts_ns / 1e9),
                    p.ts_ns / 1e9,
                    p.name,
                    p.value,
                    _step(attrs),
                    attributes=attrs,
                )
            )
        if self.store is not None and not self.spool:
            self.store.write_metrics(rows)
        self.counts["metric_points_stored_total"] += len(rows)
        if rows:
            self.pipeline.submit([self._metric_sample(m) for m in rows])
        self._watch_pids(pids)
        return rejected if rejected.reasons else None

    def on_logs(self, logs: list[LogRecord]) -> None:
        rows = [
            (
                self._run_of(r.resource_attributes, r.pid, r.ts_ns / 1e9),
                r.ts_ns / 1e9,
                r.severity,
                r.body,
                r.trace_id,
                r.span_id,
                r.service_name,
                r.attributes,
            )
            for r in logs
        ]
        if self.store is not None and not self.spool:
            self.store.write_logs(rows)
            self.counts["logs_stored_total"] += len(rows)

    def _metric_sample(self, m: MetricRow) -> Sample:
        # Attributes are tags: they tell the streams of one metric apart (http.status=200
        # and =500 at the same collection time are two points, not one). Exporters bound
        # them (influxdb: metric_tags_allow/deny, max_metric_tags). Keys this record
        # already uses for its own tags or fields, and the step, are not repeated.
        own = {"name", "run", "value", "step", "span_id", "trace_id", sc.ATTR_STEP}
        tags: dict[str, str] = {}
        for k, v in m.attributes.items():
            if k in own or v is None or isinstance(v, list | dict):
                continue
            tags[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        tags["name"] = m.name
        if m.run_id:
            tags["run"] = m.run_id
        fields: dict[str, float | int | str | bool] = {"value": m.value}
        if m.step is not None:
            fields["step"] = m.step
        if m.span_id:
            fields["span_id"] = m.span_id
            fields["trace_id"] = m.trace_id or ""
        source = "ml" if m.name.startswith(sc.ML_PREFIX) else "metrics"
        return Sample(source, m.ts, tags, fields)

    def _watch_pids(self, pids: Any) -> None:
        pc = self.process_collector
        if pc is None:
            return
        for pid in pids:
            if pc.watches(pid):
                continue
            bound = self.limits.max_watched_processes
            if pc.dynamic_roots >= bound:
                self.counts["processes_not_watched_total"] += 1
                if self._watch_log.hit():
                    log.warning(
                        "not watching process %d: %d client processes watched already "
                        "(otlp.max_watched_processes)",
                        pid,
                        bound,
                    )
                continue
            pc.add_root(pid, dynamic=True)

    # -- attribution ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="wattspan-attribution", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.wait(max(self.interval, 0.1))
            self._wake.clear()
            try:
                n = self.attribute_due()
            except Exception as exc:
                self.counts["attribution_errors_total"] += 1
                if not failing:
                    log.error(
                        "attribution failed, retrying with backoff: %s: %s",
                        type(exc).__name__,
                        exc,
                    )
                failing = True
                continue
            if failing and n:
                log.info("attribution works again: %d spans attributed", n)
                failing = False

    def attribute_due(self, force: bool = False) -> int:
        """Attributes pending spans that a sample already covers (all of them with ``force``).

        A pass that fails (the store could not be read or written) puts its batches back and
        is retried with backoff by the running agent, up to 30 s apart: acknowledged spans
        are never left waiting for a restart. Raises what the failed pass raised.
        """
        latest = self.ring.latest_ts
        with self._lock:
            if not force and time.monotonic() < self._retry_at:
                return 0
            if force:
                batches, self._pending = self._pending, []
            else:
                batches = [b for b in self._pending if max(r.end_ts for r in b[1]) <= latest]
                if batches:
                    ready = {id(b) for b in batches}
                    self._pending = [b for b in self._pending if id(b) not in ready]
        if not batches:
            return 0
        try:
            n = self._attribute(batches, force)
        except _WaitForIdle:
            with self._lock:
                self._pending[:0] = batches
            return 0
        except BaseException:
            with self._lock:
                self._pending[:0] = batches
                self._retry_delay = min(max(2 * self._retry_delay, self.interval), 30.0)
                self._retry_at = time.monotonic() + self._retry_delay
            self.counts["attribution_retries_total"] += 1
            raise
        with self._lock:
            self._pending_spans -= n
            self._retry_delay = 0.0
        return n

    def _attribute(self, batches: list[tuple[int | None, list[SpanRow]]], force: bool) -> int:
        # Attribution loads with the first span, and numpy only with the first batch of
        # NUMPY_MIN_SPANS or more: a daemon sent a span now and then never carries it.
        from wattspan.agent.attribution import SpanWindow, attribute, build_series

        due = [r for _, rows in batches for r in rows]
        t0 = min(r.start_ts for r in due)
        t1 = max(r.end_ts for r in due)
        runs = {r.run_id for r in due}
        # A run without its idle figure yet gets one estimated from every interval the ring
        # holds (a regression wants them all); otherwise only the samples around these spans
        # are read.
        fresh = not runs <= self._idle_by_run.keys()
        samples = self.ring.between(
            min(t0, min(r.end_ts for r in due)),
            max(t1, max(r.start_ts for r in due)),
            whole=fresh,
        )
        if samples is None and self.store is not None and not self.spool:
            if self.flush_samples is not None:
                self.flush_samples()
            margin = 2 * self.interval
            stored = self.store.samples(start=t0 - margin - 60, end=t1 + margin)
            samples = [x for s in stored if (x := _slim(s)) is not None] + self.ring.all()
        series = build_series(samples or self.ring.all())
        if self.node_processes is not None:
            _add_node_history(series, due, self.node_processes)
        if fresh:
            estimate = self.estimate_idle(series)
            # The lowest interval seen is a poor idle figure until there is history: a young
            # agent (wattspan run's always is) waits a little for the regression to apply,
            # since the figure chosen now holds for the whole run.
            if (
                not force
                and estimate is not None
                and estimate.method == "min-interval"
                and self.ring.coverage() < IDLE_HISTORY_SECONDS
            ):
                raise _WaitForIdle
            for run in runs - self._idle_by_run.keys():
                if estimate is not None:
                    self._idle_by_run[run] = estimate
            while len(self._idle_by_run) > MAX_IDLE_RUNS:
                del self._idle_by_run[next(iter(self._idle_by_run))]
        key, cpu_key = sc.ATTR_ITEMS, sc.ATTR_CPU_PROCESS
        by_run: dict[str | None, list[SpanRow]] = {}
        for r in due:
            by_run.setdefault(r.run_id, []).append(r)
        for run, rows in by_run.items():
            windows = [
                SpanWindow(
                    r.start_ts,
                    r.end_ts,
                    r.pid,
                    None if key not in r.attributes else _num(r.attributes[key]),
                    None if cpu_key not in r.attributes else _cpu(r.attributes[cpu_key]),
                )
                for r in rows
            ]
            idle = self._idle_by_run.get(run)
            results = attribute(
                windows,
                series,
                None if idle is None else idle.watts,
                None if idle is None else idle.method,
            )
            for r, res in zip(rows, results, strict=True):
                r.resources = res
        if self.span_observer is not None:
            self.span_observer(due)
        # Exporters first, the store's "attributed" mark second: a crash in between then
        # re-exports these spans after the restart (an exporter's receiver overwrites an
        # identical point) instead of leaving them marked done but never exported.
        if self.pipeline.wants("spans") and self.pipeline.emit([span_sample(r) for r in due]):
            # A sink could not take them (an exporter's queue on a full disk...): the pipeline
            # logged it once and counts it per sink. The spans stay in the store, attributed;
            # retrying here would hold every later span hostage to that one sink. A spool is
            # the spans' only copy: it keeps them and the pass is retried.
            self.counts["spans_export_failed_total"] += len(due)
            if self.spool:
                raise RuntimeError("an exporter refused the spans; they stay in the spool")
        if self.store is not None and self.spool:
            self.store.delete_span_batches(bid for bid, _ in batches if bid is not None)
        elif self.store is not None:
            self.store.set_batch_resources(
                (bid, [r.resources for r in rows]) for bid, rows in batches if bid is not None
            )
        self.counts["spans_attributed_total"] += len(due)
        return len(due)


def _add_node_history(
    series: NodeSeries, due: Sequence[SpanRow], history: NodeProcessCollector
) -> None:
    """Gives spans whose process's sampled CPU series is missing, or begins after them, the
    process's history from the node-wide collector: a series of its own where it had none,
    else that history spliced before the first sample of the watched tree (shifted to meet
    it: before it the tree's figure moves as the process's own). Their results carry the
    points read (``cpu_points``), since the history is not stored."""
    from wattspan.agent.attribution import add_history

    spans: dict[int, tuple[float, float]] = {}
    for r in due:
        # A span that measured its own CPU time keeps that figure: no series needed.
        if r.pid is None or _cpu(r.attributes.get(sc.ATTR_CPU_PROCESS)) is not None:
            continue
        t0, t1 = spans.get(r.pid, (r.start_ts, r.end_ts))
        spans[r.pid] = (min(t0, r.start_ts), max(t1, r.end_ts))
    for pid, (t0, t1) in spans.items():
        have = series.proc_cpu.get(pid)
        if have is not None and have.ts[0] <= t0:
            continue
        got = history.series(pid, t1)
        if got is not None:
            add_history(series, pid, *got)


def span_sample(r: SpanRow) -> Sample:
    """The exported form of an attributed span (measurement ``spans``)."""
    tags = {"span_name": r.name, "service": r.service, "status": r.status}
    if r.run_id:
        tags["run"] = r.run_id
    fields: dict[str, float | int | str | bool] = {
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "duration_seconds": r.end_ts - r.start_ts,
        "start_time": r.start_ts,
    }
    if r.parent_span_id:
        fields["parent_span_id"] = r.parent_span_id
    if r.pid is not None:
        fields["pid"] = r.pid
    for k, v in r.resources.items():
        if isinstance(v, dict):
            for sub, x in v.items():
                if isinstance(x, int | float) and not isinstance(x, bool):
                    fields[f"{k.removesuffix('_joules')}_{sub}_joules".replace("/", "_")] = x
        elif isinstance(v, int | float | bool):
            fields[k] = v
    if r.attributes:
        extra_tags, extra_fields = _exported_attrs(r.attributes)
        tags.update(extra_tags)
        fields.update(extra_fields)
    return Sample("spans", r.end_ts, tags, fields)
