"""Spark's application, jobs, stage attempts and tasks as spans (names in ``docs/spark.md``).

:class:`SpanBuilder` is an event-log :class:`~wattspan.engines.spark.eventlog.Listener`: each
thing that ends becomes a :class:`SpanOut` handed to ``emit`` at once. The tree is
application > job > stage attempt > task (and a stage's tail span beside its tasks); its ids
are derived from the application's id, so the spans of one application get the same ids
however they are produced (tailed while it runs, or imported from its log later) and a
parent may be sent after its children.

A task span carries its CPU time (``Executor CPU Time``) as ``wattspan.cpu.process_seconds``:
the agent then gives it that CPU share of the node's active energy over the task's interval,
on the node it ran on. Stage, job and application spans carry the CPU of their tasks that ran
on the driver's host (all of them in local mode), the same way, for the driver's agent.

:func:`encode` packs spans into an OTLP ``ExportTraceServiceRequest``; :func:`to_rows` makes
store rows of them (the event-log import).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattspan import semconv as sc
from wattspan.engines.spark.eventlog import (
    COLUMNS,
    TASK_METRICS,
    Application,
    Job,
    StageAttempt,
    Task,
)
from wattspan.engines.spark.skew import SkewResult, SkewRules, analyse

__all__ = [
    "APPLICATION",
    "JOB",
    "STAGE",
    "STAGE_TAIL",
    "TASK",
    "SpanBuilder",
    "SpanOut",
    "encode",
    "run_id_of",
    "to_rows",
]

APPLICATION = "spark.application"
JOB = "spark.job"
STAGE = "spark.stage"
STAGE_TAIL = "spark.stage.tail"
TASK = "spark.task"

#: OTLP status codes
UNSET, OK, ERROR = 0, 1, 2

_RUN_NAMESPACE = uuid.UUID("0b6c1f3e-6f7a-4d7e-9a51-2d8c0c1f5a11")

# Stage distributions (p50/p95/max over the succeeded tasks) for these task figures.
_DISTRIBUTED = (
    "duration_seconds",
    "run_time_seconds",
    "cpu_time_seconds",
    "gc_time_seconds",
    "scheduler_delay_seconds",
    "shuffle_fetch_wait_seconds",
    "input_bytes",
    "input_records",
    "shuffle_read_bytes",
    "shuffle_read_records",
    "shuffle_write_bytes",
    "peak_execution_memory_bytes",
    "memory_bytes_spilled",
    "disk_bytes_spilled",
)
assert set(_DISTRIBUTED) <= set(COLUMNS)
_TASK_KEYS = tuple("spark.task." + k for k in TASK_METRICS)


@dataclass(slots=True)
class SpanOut:
    """A finished span, ready for OTLP or the store. ``host`` is where it should be sent:
    the executor's host for a task, ``None`` for the driver's agent."""

    name: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: int = UNSET
    message: str = ""
    host: str | None = None
    executor_id: str = ""


def _id(seed: bytes, size: int) -> bytes:
    out = hashlib.blake2b(seed, digest_size=size).digest()
    # All-zero ids are invalid in OTLP; a 2^-64 chance, but a cheap guard.
    return out if any(out) else b"\x01" + out[1:]


def run_id_of(app: Application) -> str:
    """The run id an application gets when no ``wattspan run`` names one: stable per
    application attempt, so every node's agent and a later import agree on it."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{app.app_id}/{app.attempt_id}"))


def _ms(ms: float | int | None) -> int:
    return int(ms or 0) * 1_000_000


class SpanBuilder:
    """Listener turning what the event log says ended into spans, handed to ``emit``.

    ``local_hosts`` are the hosts whose task CPU counts towards the aggregate spans'
    self-reported CPU (the driver's host is added once known).
    """

    def __init__(
        self,
        emit: Callable[[SpanOut], None],
        *,
        rules: SkewRules | None = None,
        local_hosts: Iterable[str] = (),
    ) -> None:
        self.emit = emit
        self.rules = rules or SkewRules()
        self.local_hosts = set(local_hosts)
        self._trace: bytes = b""
        self._app_key = ""
        #: the application span's parent (a run root span, when one is sent)
        self.root_parent = b""
        #: the application of the span being built (``emit`` may want it)
        self.app: Application | None = None
        self.counts = {"task": 0, "stage": 0, "job": 0, "application": 0}

    # -- ids ----------------------------------------------------------------------------
    def _ids(self, app: Application) -> bytes:
        key = f"{app.app_id}/{app.attempt_id}"
        if key != self._app_key:
            self._app_key = key
            self._trace = _id(b"spark-trace/" + key.encode(), 16)
        return self._trace

    def span_id(self, app: Application, kind: str, *parts: int) -> bytes:
        self._ids(app)
        return _id(f"{self._app_key}/{kind}/{'.'.join(map(str, parts))}".encode(), 8)

    def _stage_parent(self, app: Application, stage: StageAttempt) -> bytes:
        if stage.job_id is None:
            return self.span_id(app, "app")
        return self.span_id(app, "job", stage.job_id)

    def _local_cpu(self, app: Application, by_host: dict[str, float]) -> float:
        hosts = self.local_hosts | ({app.driver_host} if app.driver_host else set())
        return sum(c for h, c in by_host.items() if h in hosts)

    # -- listener -----------------------------------------------------------------------
    def task_ended(self, app: Application, stage: StageAttempt | None, task: Task) -> None:
        self.app = app
        trace = self._ids(app)
        m = task.metrics
        a: dict[str, Any] = dict(zip(_TASK_KEYS, m.values(), strict=True))
        a["spark.task.id"] = task.task_id
        a["spark.task.index"] = task.index
        a["spark.task.attempt"] = task.attempt
        a["spark.task.partition"] = task.partition
        a["spark.task.type"] = task.task_type
        a["spark.task.status"] = task.status
        a["spark.task.end_reason"] = task.reason
        a["spark.task.locality"] = task.locality
        a["spark.task.speculative"] = task.speculative
        a["spark.task.duration_seconds"] = task.duration_s
        a["spark.stage.id"] = task.stage_id
        a["spark.stage.attempt"] = task.stage_attempt
        if stage is not None and stage.job_id is not None:
            # Per-job sums over every node's store need it on the task itself.
            a["spark.job.id"] = stage.job_id
        a["spark.executor.id"] = task.executor_id
        a["spark.executor.host"] = task.host
        a["spark.app.id"] = app.app_id
        a[sc.ATTR_CPU_PROCESS] = m["cpu_time_seconds"]
        items = m["input_records"] + m["shuffle_read_records"]
        if items > 0:
            a[sc.ATTR_ITEMS] = items
        status = OK
        if task.status in ("failed", "unfinished"):
            status = ERROR
            a["spark.task.error"] = task.error or task.reason
        elif task.status == "killed":
            status = UNSET
            a["spark.task.error"] = task.error or task.reason
        # Keys differ per application attempt only: hash the task id with the app key.
        sid = _id(f"{self._app_key}/task/{task.task_id}".encode(), 8)
        parent = _id(f"{self._app_key}/stage/{task.stage_id}.{task.stage_attempt}".encode(), 8)
        self.counts["task"] += 1
        self.emit(
            SpanOut(
                TASK,
                trace,
                sid,
                parent,
                _ms(task.launch_ms),
                _ms(max(task.finish_ms, task.launch_ms)),
                a,
                status,
                a.get("spark.task.error", ""),
                None if task.executor_id == "driver" else task.host,
                task.executor_id,
            )
        )

    def stage_ended(self, app: Application, stage: StageAttempt) -> None:
        self.app = app
        trace = self._ids(app)
        sid = self.span_id(app, "stage", stage.stage_id, stage.attempt)
        skew = analyse(stage, self.rules)
        a: dict[str, Any] = {
            "spark.app.id": app.app_id,
            "spark.stage.id": stage.stage_id,
            "spark.stage.attempt": stage.attempt,
            "spark.stage.name": stage.name,
            "spark.stage.details": stage.details,
            "spark.stage.status": stage.status,
            "spark.stage.num_tasks": stage.num_tasks,
            "spark.stage.parent_ids": list(stage.parent_ids),
            "spark.stage.tasks.succeeded": stage.succeeded,
            "spark.stage.tasks.failed": stage.failed,
            "spark.stage.tasks.killed": stage.killed,
            "spark.stage.tasks.speculative": stage.speculative,
            "spark.stage.tasks.count": stage.succeeded + stage.failed + stage.killed,
        }
        if stage.job_id is not None:
            a["spark.job.id"] = stage.job_id
        if stage.failure_reason:
            a["spark.stage.failure_reason"] = stage.failure_reason
        for k, v in stage.sums.items():
            a[f"spark.stage.tasks.{k}.sum"] = v
        self._distributions(stage, a)
        a.update(skew.attributes())
        a[sc.ATTR_CPU_PROCESS] = self._local_cpu(app, stage.cpu_by_host)
        start = stage.submission_ms
        end = max(stage.completion_ms or start, stage.last_finish_ms or start)
        status = ERROR if stage.status != "succeeded" else OK
        self.counts["stage"] += 1
        self.emit(
            SpanOut(
                STAGE,
                trace,
                sid,
                self._stage_parent(app, stage),
                _ms(start),
                _ms(end),
                a,
                status,
                stage.failure_reason,
            )
        )
        if skew.tail_seconds > 0:
            self.emit(self._tail(app, stage, skew, sid))

    def _tail(
        self, app: Application, stage: StageAttempt, skew: SkewResult, parent: bytes
    ) -> SpanOut:
        a: dict[str, Any] = {
            "spark.app.id": app.app_id,
            "spark.stage.id": stage.stage_id,
            "spark.stage.attempt": stage.attempt,
            "spark.stage.skew.class": skew.kind,
            "spark.stage.skew.slots": skew.slots,
            # Local mode only: on a cluster the tail's tasks ran on other nodes.
            sc.ATTR_CPU_PROCESS: skew.tail_cpu_seconds
            if self._local_cpu(app, stage.cpu_by_host) >= sum(stage.cpu_by_host.values()) > 0
            else 0.0,
        }
        return SpanOut(
            STAGE_TAIL,
            self._trace,
            self.span_id(app, "tail", stage.stage_id, stage.attempt),
            parent,
            # Whole milliseconds (epoch ms are exact in a double), then ns: no float rounding
            # past the stage's own end.
            round(skew.tail_start_ms or 0) * 1_000_000,
            round(skew.tail_end_ms or 0) * 1_000_000,
            a,
            UNSET,
        )

    @staticmethod
    def _distributions(stage: StageAttempt, a: dict[str, Any]) -> None:
        cols = stage.columns
        if not cols["duration_seconds"]:
            return
        for k in _DISTRIBUTED:
            v = np.frombuffer(cols[k], dtype=float)
            p50, p95 = np.percentile(v, (50, 95)).tolist()
            a[f"spark.stage.tasks.{k}.p50"] = p50
            a[f"spark.stage.tasks.{k}.p95"] = p95
            a[f"spark.stage.tasks.{k}.max"] = stage.maxima.get(k, float(v.max()))

    def job_ended(self, app: Application, job: Job) -> None:
        self.app = app
        trace = self._ids(app)
        a: dict[str, Any] = {
            "spark.app.id": app.app_id,
            "spark.job.id": job.job_id,
            "spark.job.result": job.result,
            "spark.job.description": job.description,
            "spark.job.call_site": job.call_site,
            "spark.job.stage_ids": list(job.stage_ids),
            "spark.job.stage_attempts": job.stage_attempts,
            "spark.job.tasks.count": job.tasks,
            "spark.job.tasks.failed": job.failed_tasks,
            "spark.job.tasks.killed": job.killed_tasks,
        }
        if job.group:
            a["spark.job.group"] = job.group
        if job.sql_execution_id is not None:
            a["spark.sql.execution.id"] = job.sql_execution_id
        if job.error:
            a["spark.job.error"] = job.error
        for k, v in job.sums.items():
            a[f"spark.job.tasks.{k}.sum"] = v
        a[sc.ATTR_CPU_PROCESS] = self._local_cpu(app, job.cpu_by_host)
        self._app_sums(job)
        status = OK if job.result == "JobSucceeded" else ERROR
        self.counts["job"] += 1
        end = job.completion_ms or job.submission_ms
        self.emit(
            SpanOut(
                JOB,
                trace,
                self.span_id(app, "job", job.job_id),
                self.span_id(app, "app"),
                _ms(job.submission_ms),
                _ms(max(end, job.submission_ms)),
                a,
                status,
                job.error,
            )
        )

    _app_totals: dict[str, float] | None = None
    _app_cpu: dict[str, float] | None = None
    _app_jobs = 0
    _app_tasks = 0

    def _app_sums(self, job: Job) -> None:
        if self._app_totals is None:
            self._app_totals = dict.fromkeys(TASK_METRICS, 0.0)
            self._app_cpu = {}
        for k, v in job.sums.items():
            self._app_totals[k] += v
        assert self._app_cpu is not None
        for h, c in job.cpu_by_host.items():
            self._app_cpu[h] = self._app_cpu.get(h, 0.0) + c
        self._app_jobs += 1
        self._app_tasks += job.tasks

    def app_ended(self, app: Application) -> None:
        self.app = app
        trace = self._ids(app)
        a: dict[str, Any] = {
            "spark.app.id": app.app_id,
            "spark.app.name": app.name,
            "spark.app.user": app.user,
            "spark.app.jobs": self._app_jobs,
            "spark.app.tasks.count": self._app_tasks,
            "spark.app.executors": len(app.executors),
            "spark.version": app.spark_version,
        }
        if app.attempt_id:
            a["spark.app.attempt_id"] = app.attempt_id
        if app.exit_code is not None:
            a["spark.app.exit_code"] = app.exit_code
        if app.driver_host:
            a["spark.driver.host"] = app.driver_host
        for k, v in (self._app_totals or {}).items():
            a[f"spark.app.tasks.{k}.sum"] = v
        a[sc.ATTR_CPU_PROCESS] = self._local_cpu(app, self._app_cpu or {})
        self.counts["application"] += 1
        start = app.start_ms
        self.emit(
            SpanOut(
                APPLICATION,
                trace,
                self.span_id(app, "app"),
                self.root_parent,
                _ms(start),
                _ms(max(app.end_ms or start, start)),
                a,
                OK if not app.exit_code else ERROR,
            )
        )


# -- OTLP --------------------------------------------------------------------------------


def _set_value(v: Any, av: Any) -> None:
    t = type(v)
    if t is float:
        av.double_value = v
    elif t is str:
        av.string_value = v
    elif t is bool:
        av.bool_value = v
    elif t is int:
        av.int_value = v
    elif t is list:
        arr = av.array_value.values
        for x in v:
            _set_value(x, arr.add())
    else:
        av.string_value = str(v)


def encode(
    spans: Sequence[SpanOut], resource: dict[str, Any], scope: str = "wattspan.engines.spark"
) -> Any:
    """An OTLP ``ExportTraceServiceRequest`` of ``spans`` under one resource."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in resource.items():
        kv = rs.resource.attributes.add()
        kv.key = k
        _set_value(v, kv.value)
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    out = ss.spans
    for s in spans:
        p = out.add()
        p.trace_id = s.trace_id
        p.span_id = s.span_id
        if s.parent_id:
            p.parent_span_id = s.parent_id
        p.name = s.name
        p.kind = 1  # SPAN_KIND_INTERNAL
        p.start_time_unix_nano = s.start_ns
        p.end_time_unix_nano = s.end_ns
        attrs = p.attributes
        for k, v in s.attributes.items():
            kv = attrs.add()
            kv.key = k
            t = type(v)
            # The common cases inline: this loop is most of a task's conversion cost.
            if t is float:
                kv.value.double_value = v
            elif t is str:
                kv.value.string_value = v
            elif t is int:
                kv.value.int_value = v
            else:
                _set_value(v, kv.value)
        if s.status:
            p.status.code = s.status
            if s.message and s.status == ERROR:
                p.status.message = s.message[:1000]
    return req


# -- store rows --------------------------------------------------------------------------

_STATUS = {UNSET: "unset", OK: "ok", ERROR: "error"}


def to_rows(spans: Iterable[SpanOut], run_id: str, service: str) -> list[Any]:
    """Store rows (``SpanRow``) of ``spans``, without resources (no samples to attribute)."""
    from wattspan.agent.store import SpanRow

    return [
        SpanRow(
            run_id,
            s.trace_id.hex(),
            s.span_id.hex(),
            s.parent_id.hex() if s.parent_id else None,
            s.name,
            s.start_ns / 1e9,
            s.end_ns / 1e9,
            _STATUS.get(s.status, "unset"),
            service,
            None,
            dict(s.attributes),
        )
        for s in spans
    ]
