"""Spark's event log (JSON lines, one ``SparkListener`` event a line) read incrementally.

:class:`EventLogParser` takes lines as they are appended and keeps only what is still open:
the application, running jobs, submitted stage attempts (with per-task columns for their
statistics, see :class:`StageAttempt`), running tasks and live executors. What ends is handed
to a :class:`Listener` at once (a task at its ``TaskEnd``, a stage attempt once it completed
and its last task ended, a job at its ``JobEnd``, the application at its end) and forgotten,
so memory follows what runs at a time, not the length of the log.

Lines of events nothing here reads (SQL plan updates, accumulator updates, block manager
events, which can be megabytes) are recognised by their first bytes and skipped unparsed.

Units in the model: times in Unix milliseconds as Spark writes them (``*_ms``), task metrics
in base units (seconds, bytes, records; see :data:`TASK_METRICS`).
"""

from __future__ import annotations

import os
import random
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = [
    "TASK_METRICS",
    "Application",
    "EventLogError",
    "EventLogParser",
    "Executor",
    "Job",
    "Listener",
    "StageAttempt",
    "Task",
    "log_files",
    "read_event_log",
    "task_metrics",
]


class EventLogError(ValueError):
    """A file that is not a Spark event log (or not one wattspan can read)."""


#: The task metrics kept, by the name they have in wattspan (base units in the name):
#: (``spark.task.<name>`` on task spans, ``spark.stage.tasks.<name>.sum`` on stage spans).
TASK_METRICS: tuple[str, ...] = (
    "run_time_seconds",
    "cpu_time_seconds",
    "deserialize_time_seconds",
    "deserialize_cpu_time_seconds",
    "gc_time_seconds",
    "result_size_bytes",
    "result_serialization_time_seconds",
    "getting_result_time_seconds",
    "scheduler_delay_seconds",
    "peak_execution_memory_bytes",
    "memory_bytes_spilled",
    "disk_bytes_spilled",
    "input_bytes",
    "input_records",
    "output_bytes",
    "output_records",
    "shuffle_read_bytes",
    "shuffle_read_remote_bytes",
    "shuffle_read_local_bytes",
    "shuffle_read_remote_to_disk_bytes",
    "shuffle_read_records",
    "shuffle_remote_blocks_fetched",
    "shuffle_local_blocks_fetched",
    "shuffle_fetch_wait_seconds",
    "shuffle_write_bytes",
    "shuffle_write_records",
    "shuffle_write_time_seconds",
)

_EMPTY: dict[str, Any] = {}


def task_metrics(
    tm: dict[str, Any] | None, duration_s: float, getting_result_s: float
) -> dict[str, float]:
    """Spark's ``Task Metrics`` object in base units, under the names of
    :data:`TASK_METRICS`. A failed task may have none: then every figure is 0 except the
    scheduler delay, which is the whole duration."""
    tm = tm or _EMPTY
    g = tm.get
    im = g("Input Metrics") or _EMPTY
    om = g("Output Metrics") or _EMPTY
    sr = g("Shuffle Read Metrics") or _EMPTY
    sw = g("Shuffle Write Metrics") or _EMPTY
    run = (g("Executor Run Time") or 0) / 1e3
    des = (g("Executor Deserialize Time") or 0) / 1e3
    ser = (g("Result Serialization Time") or 0) / 1e3
    remote = sr.get("Remote Bytes Read") or 0
    local = sr.get("Local Bytes Read") or 0
    # The Spark UI's scheduler delay: what the task's wall time does not account for.
    delay = duration_s - run - des - ser - getting_result_s
    return {
        "run_time_seconds": run,
        "cpu_time_seconds": (g("Executor CPU Time") or 0) / 1e9,
        "deserialize_time_seconds": des,
        "deserialize_cpu_time_seconds": (g("Executor Deserialize CPU Time") or 0) / 1e9,
        "gc_time_seconds": (g("JVM GC Time") or 0) / 1e3,
        "result_size_bytes": float(g("Result Size") or 0),
        "result_serialization_time_seconds": ser,
        "getting_result_time_seconds": getting_result_s,
        "scheduler_delay_seconds": delay if delay > 0.0 else 0.0,
        "peak_execution_memory_bytes": float(g("Peak Execution Memory") or 0),
        "memory_bytes_spilled": float(g("Memory Bytes Spilled") or 0),
        "disk_bytes_spilled": float(g("Disk Bytes Spilled") or 0),
        "input_bytes": float(im.get("Bytes Read") or 0),
        "input_records": float(im.get("Records Read") or 0),
        "output_bytes": float(om.get("Bytes Written") or 0),
        "output_records": float(om.get("Records Written") or 0),
        "shuffle_read_bytes": float(remote + local),
        "shuffle_read_remote_bytes": float(remote),
        "shuffle_read_local_bytes": float(local),
        "shuffle_read_remote_to_disk_bytes": float(sr.get("Remote Bytes Read To Disk") or 0),
        "shuffle_read_records": float(sr.get("Total Records Read") or 0),
        "shuffle_remote_blocks_fetched": float(sr.get("Remote Blocks Fetched") or 0),
        "shuffle_local_blocks_fetched": float(sr.get("Local Blocks Fetched") or 0),
        "shuffle_fetch_wait_seconds": (sr.get("Fetch Wait Time") or 0) / 1e3,
        "shuffle_write_bytes": float(sw.get("Shuffle Bytes Written") or 0),
        "shuffle_write_records": float(sw.get("Shuffle Records Written") or 0),
        "shuffle_write_time_seconds": (sw.get("Shuffle Write Time") or 0) / 1e9,
    }


@dataclass(slots=True)
class Executor:
    executor_id: str
    host: str
    cores: int
    added_ms: int
    removed_ms: int | None = None
    removed_reason: str = ""


@dataclass(slots=True)
class Application:
    app_id: str = ""
    name: str = ""
    user: str = ""
    attempt_id: str = ""
    start_ms: int = 0
    end_ms: int | None = None
    spark_version: str = ""
    exit_code: int | None = None
    executors: dict[str, Executor] = field(default_factory=dict)
    #: the driver's host (its ``driver`` executor), where job and stage spans are sent
    driver_host: str = ""
    #: ``spark.task.cpus``: slots of an executor are its cores over this
    task_cpus: int = 1

    def slots(self) -> int:
        """Task slots of the executors alive now (at least 1)."""
        live = [e for e in self.executors.values() if e.removed_ms is None]
        # In local mode the driver is the only executor; on a cluster it runs no tasks.
        runners = [e for e in live if e.executor_id != "driver"] or live
        return max(1, sum(e.cores for e in runners) // max(1, self.task_cpus))


@dataclass(slots=True)
class Task:
    task_id: int
    index: int
    attempt: int
    partition: int
    stage_id: int
    stage_attempt: int
    launch_ms: int
    finish_ms: int
    executor_id: str
    host: str
    locality: str
    speculative: bool
    task_type: str = ""
    #: ``succeeded``, ``failed``, ``killed`` or ``unfinished`` (the log ended first)
    status: str = "succeeded"
    #: Spark's end reason (``Success``, ``ExceptionFailure``, ``FetchFailed``, ``TaskKilled``...)
    reason: str = "Success"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(self.finish_ms - self.launch_ms, 0) / 1e3


# Per-task columns a stage attempt keeps for its distributions and skew: beyond this many
# tasks a uniform reservoir sample stands for them (sums, counts and maxima stay exact).
MAX_TASK_COLUMNS = 100_000

#: task figures kept per task (in a stage attempt's columns) for distributions and skew
COLUMNS: tuple[str, ...] = (
    "duration_seconds",
    "run_time_seconds",
    "cpu_time_seconds",
    "gc_time_seconds",
    "deserialize_time_seconds",
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
    "launch_ms",
    "finish_ms",
)


@dataclass(slots=True)
class StageAttempt:
    """A submitted stage attempt and what its ended tasks add up to.

    ``sums`` are exact over every ended task (failed ones too: they used the CPU),
    ``maxima`` over the succeeded ones; ``columns`` hold the figures of the succeeded tasks
    (a reservoir sample of :data:`MAX_TASK_COLUMNS` past that many) for distributions and
    skew, with ``executors`` (the executor id of each) beside them.
    """

    stage_id: int
    attempt: int
    name: str
    num_tasks: int
    submission_ms: int
    job_id: int | None = None
    completion_ms: int | None = None
    failure_reason: str = ""
    details: str = ""
    parent_ids: list[int] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    killed: int = 0
    speculative: int = 0
    running: set[int] = field(default_factory=set)
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASK_METRICS, 0.0))
    maxima: dict[str, float] = field(default_factory=dict)
    columns: dict[str, array[float]] = field(
        default_factory=lambda: {c: array("d") for c in COLUMNS}
    )
    executors: list[str] = field(default_factory=list)
    seen: int = 0  # succeeded tasks offered to the columns
    #: CPU seconds of its tasks that ran on the driver's host, by host
    cpu_by_host: dict[str, float] = field(default_factory=dict)
    #: task slots when the stage was submitted
    slots: int = 1
    first_launch_ms: int | None = None
    last_finish_ms: int | None = None
    #: the log ended before the stage did (its end is the log's last time)
    unfinished: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.stage_id, self.attempt)

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` (with a failure reason) or ``unfinished``."""
        if self.completion_ms is None or self.unfinished:
            return "unfinished"
        return "failed" if self.failure_reason else "succeeded"

    def add(self, task: Task, rng: random.Random) -> None:
        m = task.metrics
        sums = self.sums
        for k, v in m.items():
            sums[k] += v
        st = task.status
        if st == "succeeded":
            self.succeeded += 1
        elif st == "killed":
            self.killed += 1
        else:
            self.failed += 1
        if task.speculative:
            self.speculative += 1
        h = task.host
        self.cpu_by_host[h] = self.cpu_by_host.get(h, 0.0) + m.get("cpu_time_seconds", 0.0)
        if self.first_launch_ms is None or task.launch_ms < self.first_launch_ms:
            self.first_launch_ms = task.launch_ms
        if self.last_finish_ms is None or task.finish_ms > self.last_finish_ms:
            self.last_finish_ms = task.finish_ms
        if st != "succeeded":
            return
        mx = self.maxima
        for k in COLUMNS[:15]:
            v = task.duration_s if k == "duration_seconds" else m.get(k, 0.0)
            if v > mx.get(k, -1.0):
                mx[k] = v
        self.seen += 1
        cols = self.columns
        if len(self.executors) < MAX_TASK_COLUMNS:
            at = -1
        else:
            # Reservoir sampling (Algorithm R): every succeeded task equally likely kept.
            at = rng.randrange(self.seen)
            if at >= MAX_TASK_COLUMNS:
                return
        row = (
            task.duration_s,
            *(m.get(k, 0.0) for k in COLUMNS[1:15]),
            float(task.launch_ms),
            float(task.finish_ms),
        )
        if at < 0:
            for c, v in zip(COLUMNS, row, strict=True):
                cols[c].append(v)
            self.executors.append(task.executor_id)
        else:
            for c, v in zip(COLUMNS, row, strict=True):
                cols[c][at] = v
            self.executors[at] = task.executor_id


@dataclass(slots=True)
class Job:
    job_id: int
    submission_ms: int
    stage_ids: list[int]
    description: str = ""
    call_site: str = ""
    group: str = ""
    sql_execution_id: int | None = None
    completion_ms: int | None = None
    #: ``JobSucceeded``, ``JobFailed`` or ``unfinished``
    result: str = "unfinished"
    error: str = ""
    stage_attempts: int = 0
    tasks: int = 0
    failed_tasks: int = 0
    killed_tasks: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASK_METRICS, 0.0))
    cpu_by_host: dict[str, float] = field(default_factory=dict)


class Listener(Protocol):
    """What an :class:`EventLogParser` tells as things end."""

    def task_ended(self, app: Application, stage: StageAttempt | None, task: Task) -> None: ...

    def stage_ended(self, app: Application, stage: StageAttempt) -> None: ...

    def job_ended(self, app: Application, job: Job) -> None: ...

    def app_ended(self, app: Application) -> None: ...


def _prefix(name: str) -> bytes:
    return b'{"Event":"' + name.encode() + b'"'


_TASK_END = _prefix("SparkListenerTaskEnd")
_TASK_START = _prefix("SparkListenerTaskStart")
# Events read; every other line is skipped without parsing it.
_WANTED = (
    _TASK_END,
    _TASK_START,
    _prefix("SparkListenerStageSubmitted"),
    _prefix("SparkListenerStageCompleted"),
    _prefix("SparkListenerJobStart"),
    _prefix("SparkListenerJobEnd"),
    _prefix("SparkListenerApplicationStart"),
    _prefix("SparkListenerApplicationEnd"),
    _prefix("SparkListenerExecutorAdded"),
    _prefix("SparkListenerExecutorRemoved"),
    _prefix("SparkListenerLogStart"),
    _prefix("SparkListenerEnvironmentUpdate"),
    _prefix("org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionStart"),
    _prefix("org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionEnd"),
)
_MAX_ERROR_CHARS = 1000
# Jobs remembered per stage id (a stage id listed by a later job is that job's when it runs).
_MAX_STAGE_JOBS = 100_000
_MAX_SQL = 10_000


def _reason(r: dict[str, Any] | None) -> tuple[str, str, str]:
    """(status, reason, error text) of a ``Task End Reason``, counted as Spark's status
    store does (killed: ``TaskKilled`` and ``TaskCommitDenied``)."""
    if not r:
        return "succeeded", "Success", ""
    reason = str(r.get("Reason", "Success"))
    if reason == "Success":
        return "succeeded", reason, ""
    status = "killed" if reason in ("TaskKilled", "TaskCommitDenied") else "failed"
    parts = [
        _gist(str(r[k]))
        for k in ("Class Name", "Description", "Kill Reason", "Loss Reason", "Message")
        if r.get(k)
    ]
    text = ": ".join(parts) if parts else reason
    return status, reason, text[:_MAX_ERROR_CHARS]


def _gist(text: str) -> str:
    """A multi-line error's first line and its last (a Python traceback ends with the
    exception, a Java one begins with it)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # Spark 4.1+ appends the error class's SQLSTATE on a line of its own, after the
    # exception line the gist is for.
    while len(lines) > 1 and lines[-1].startswith("SQLSTATE"):
        lines.pop()
    if len(lines) <= 1:
        return text.strip()
    if lines[0].startswith(lines[-1]) or lines[-1].startswith("at "):
        return lines[0]
    return f"{lines[0]} ... {lines[-1]}"


class EventLogParser:
    """Feeds event-log lines into the model and tells ``listener`` what ended.

    ``feed`` takes one line (bytes, without or with its newline). Malformed lines are counted
    in ``bad_lines`` and skipped: a log being written may end in half a line, which the
    tailer holds back until its newline arrives, but a damaged file must not stop the rest.
    """

    def __init__(self, listener: Listener, *, seed: int = 0) -> None:
        self.listener = listener
        self.app = Application()
        self.jobs: dict[int, Job] = {}
        self.stages: dict[tuple[int, int], StageAttempt] = {}
        self.stage_job: dict[int, int] = {}
        # Task id -> its start event's Task Info and stage key, while it runs.
        self.running: dict[int, tuple[dict[str, Any], tuple[int, int]]] = {}
        self.sql: dict[int, str] = {}
        self.last_ms = 0
        self.lines = 0
        self.bad_lines = 0
        self.task_ends = 0
        self.spark_version = ""
        self.ended = False
        self._rng = random.Random(seed)
        self._dispatch: dict[str, Callable[[dict[str, Any]], None]] = {
            "SparkListenerTaskEnd": self._task_end,
            "SparkListenerTaskStart": self._task_start,
            "SparkListenerStageSubmitted": self._stage_submitted,
            "SparkListenerStageCompleted": self._stage_completed,
            "SparkListenerJobStart": self._job_start,
            "SparkListenerJobEnd": self._job_end,
            "SparkListenerApplicationStart": self._app_start,
            "SparkListenerApplicationEnd": self._app_end,
            "SparkListenerExecutorAdded": self._executor_added,
            "SparkListenerExecutorRemoved": self._executor_removed,
            "SparkListenerLogStart": self._log_start,
            "SparkListenerEnvironmentUpdate": self._environment,
            "org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionStart": self._sql_start,
            "org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionEnd": self._sql_end,
        }

    # -- input --------------------------------------------------------------------------
    def feed(self, line: bytes) -> None:
        self.lines += 1
        if not line.startswith(_WANTED):
            return
        try:
            ev = orjson.loads(line)
            handler = self._dispatch[ev["Event"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.bad_lines += 1
            return
        try:
            handler(ev)
        except (KeyError, TypeError, ValueError, AttributeError):
            # A field missing or of another type than Spark writes: the event is unusable.
            self.bad_lines += 1

    def close(self) -> None:
        """The log ends here: what is still open is told as unfinished, ending at the last
        time the log mentions (an application killed without its end event)."""
        end = self.last_ms
        for tid, (info, key) in list(self.running.items()):
            stage = self.stages.get(key)
            task = self._task(info, key, end)
            task.status, task.reason = "unfinished", "unfinished"
            del self.running[tid]
            self._ended_task(stage, task)
        for stage in list(self.stages.values()):
            stage.running.clear()
            self._stage_done(stage)
        for job in list(self.jobs.values()):
            job.completion_ms = end
            self._job_done(job)
        if not self.ended:
            self.app.end_ms = end
            self.ended = True
            self.listener.app_ended(self.app)

    # -- handlers -----------------------------------------------------------------------
    def _seen(self, ms: Any) -> int:
        t = int(ms or 0)
        if t > self.last_ms:
            self.last_ms = t
        return t

    def _log_start(self, ev: dict[str, Any]) -> None:
        self.spark_version = str(ev.get("Spark Version", ""))
        self.app.spark_version = self.spark_version

    def _environment(self, ev: dict[str, Any]) -> None:
        props = ev.get("Spark Properties") or []
        # A list of [key, value] pairs in the JSON log.
        pairs = props.items() if isinstance(props, dict) else props
        for k, v in pairs:
            if k == "spark.task.cpus":
                self.app.task_cpus = max(1, int(v))
            elif k == "spark.driver.host" and not self.app.driver_host:
                self.app.driver_host = str(v)

    def _app_start(self, ev: dict[str, Any]) -> None:
        a = self.app
        a.app_id = str(ev.get("App ID") or "")
        a.name = str(ev.get("App Name") or "")
        a.user = str(ev.get("User") or "")
        a.attempt_id = str(ev.get("App Attempt ID") or "")
        a.start_ms = self._seen(ev.get("Timestamp"))

    def _app_end(self, ev: dict[str, Any]) -> None:
        self.app.end_ms = self._seen(ev.get("Timestamp"))
        code = ev.get("ExitCode")
        self.app.exit_code = code if isinstance(code, int) else None
        # Whatever is still open ended with the application.
        self.close()

    def _executor_added(self, ev: dict[str, Any]) -> None:
        info = ev.get("Executor Info") or {}
        eid = str(ev["Executor ID"])
        host = str(info.get("Host") or "")
        self.app.executors[eid] = Executor(
            eid, host, int(info.get("Total Cores") or 1), self._seen(ev.get("Timestamp"))
        )
        if eid == "driver":
            self.app.driver_host = host

    def _executor_removed(self, ev: dict[str, Any]) -> None:
        e = self.app.executors.get(str(ev["Executor ID"]))
        if e is not None:
            e.removed_ms = self._seen(ev.get("Timestamp"))
            e.removed_reason = str(ev.get("Removed Reason") or "")
        # Removed executors are forgotten once many have come and gone (dynamic allocation).
        if len(self.app.executors) > 4096:
            for k in [k for k, x in self.app.executors.items() if x.removed_ms is not None]:
                del self.app.executors[k]

    def _sql_start(self, ev: dict[str, Any]) -> None:
        if len(self.sql) >= _MAX_SQL:
            self.sql.pop(next(iter(self.sql)))
        self.sql[int(ev["executionId"])] = str(ev.get("description") or "")
        self._seen(ev.get("time"))

    def _sql_end(self, ev: dict[str, Any]) -> None:
        self.sql.pop(int(ev["executionId"]), None)
        self._seen(ev.get("time"))

    def _job_start(self, ev: dict[str, Any]) -> None:
        props = ev.get("Properties") or _EMPTY
        jid = int(ev["Job ID"])
        sql = props.get("spark.sql.execution.id")
        sql_id = int(sql) if sql not in (None, "") else None
        desc = props.get("spark.job.description") or ""
        if not desc and sql_id is not None:
            desc = self.sql.get(sql_id, "")
        stage_ids = [int(s) for s in ev.get("Stage IDs") or []]
        job = Job(
            jid,
            self._seen(ev.get("Submission Time")),
            stage_ids,
            description=str(desc),
            call_site=str(props.get("callSite.short") or ""),
            group=str(props.get("spark.jobGroup.id") or ""),
            sql_execution_id=sql_id,
        )
        if not job.call_site:
            for s in ev.get("Stage Infos") or []:
                if s.get("Stage ID") == (max(stage_ids) if stage_ids else None):
                    job.call_site = str(s.get("Stage Name") or "")
        self.jobs[jid] = job
        for sid in stage_ids:
            self.stage_job.pop(sid, None)
            self.stage_job[sid] = jid
        while len(self.stage_job) > _MAX_STAGE_JOBS:
            self.stage_job.pop(next(iter(self.stage_job)))

    def _job_end(self, ev: dict[str, Any]) -> None:
        job = self.jobs.get(int(ev["Job ID"]))
        if job is None:
            return
        job.completion_ms = self._seen(ev.get("Completion Time"))
        res = ev.get("Job Result") or {}
        job.result = str(res.get("Result") or "JobSucceeded")
        exc = res.get("Exception")
        if isinstance(exc, dict):
            job.error = str(exc.get("Message") or "")[:_MAX_ERROR_CHARS]
        # Stages of the job that still wait for their last task end with the job at the
        # latest (a killed task's end may never be logged).
        for stage in [s for s in self.stages.values() if s.job_id == job.job_id]:
            if stage.completion_ms is not None:
                stage.running.clear()
                self._stage_done(stage)
        self._job_done(job)

    def _stage_submitted(self, ev: dict[str, Any]) -> None:
        si = ev["Stage Info"]
        sid, att = int(si["Stage ID"]), int(si["Stage Attempt ID"])
        stage = StageAttempt(
            sid,
            att,
            str(si.get("Stage Name") or ""),
            int(si.get("Number of Tasks") or 0),
            self._seen(si.get("Submission Time")),
            job_id=self.stage_job.get(sid),
            details=str(si.get("Details") or "").split("\n", 1)[0],
            parent_ids=[int(p) for p in si.get("Parent IDs") or []],
            slots=self.app.slots(),
        )
        self.stages[stage.key] = stage

    def _stage_completed(self, ev: dict[str, Any]) -> None:
        si = ev["Stage Info"]
        key = (int(si["Stage ID"]), int(si["Stage Attempt ID"]))
        stage = self.stages.get(key)
        if stage is None:
            return
        stage.completion_ms = self._seen(si.get("Completion Time"))
        stage.failure_reason = str(si.get("Failure Reason") or "")[:_MAX_ERROR_CHARS]
        if not stage.running:
            self._stage_done(stage)

    def _task_start(self, ev: dict[str, Any]) -> None:
        info = ev["Task Info"]
        key = (int(ev["Stage ID"]), int(ev["Stage Attempt ID"]))
        tid = int(info["Task ID"])
        self._seen(info.get("Launch Time"))
        self.running[tid] = (info, key)
        stage = self.stages.get(key)
        if stage is not None:
            stage.running.add(tid)

    def _task(self, info: dict[str, Any], key: tuple[int, int], finish_ms: int) -> Task:
        return Task(
            int(info["Task ID"]),
            int(info.get("Index", 0)),
            int(info.get("Attempt", 0)),
            int(info.get("Partition ID", info.get("Index", 0))),
            key[0],
            key[1],
            int(info.get("Launch Time") or finish_ms),
            finish_ms,
            str(info.get("Executor ID") or ""),
            str(info.get("Host") or ""),
            str(info.get("Locality") or ""),
            bool(info.get("Speculative")),
        )

    def _task_end(self, ev: dict[str, Any]) -> None:
        info = ev["Task Info"]
        key = (int(ev["Stage ID"]), int(ev["Stage Attempt ID"]))
        tid = int(info["Task ID"])
        status, reason, error = _reason(ev.get("Task End Reason"))
        if reason == "Resubmitted":
            # A finished map task whose output was lost: its span was sent when it ended.
            return
        self.task_ends += 1
        finish = self._seen(info.get("Finish Time"))
        self.running.pop(tid, None)
        task = self._task(info, key, finish)
        task.task_type = str(ev.get("Task Type") or "")
        if info.get("Killed") and status == "succeeded":
            status = "killed"
        task.status, task.reason, task.error = status, reason, error
        got = int(info.get("Getting Result Time") or 0)
        fetch = (finish - got) / 1e3 if got > 0 else 0.0
        task.metrics = task_metrics(ev.get("Task Metrics"), task.duration_s, fetch)
        stage = self.stages.get(key)
        self._ended_task(stage, task)
        if stage is not None:
            stage.running.discard(tid)
            if stage.completion_ms is not None and not stage.running:
                self._stage_done(stage)

    # -- endings ------------------------------------------------------------------------
    def _ended_task(self, stage: StageAttempt | None, task: Task) -> None:
        if stage is not None:
            stage.add(task, self._rng)
        self.listener.task_ended(self.app, stage, task)

    def _stage_done(self, stage: StageAttempt) -> None:
        if self.stages.pop(stage.key, None) is None:
            return
        if stage.completion_ms is None:
            stage.completion_ms = max(self.last_ms, stage.last_finish_ms or 0)
            stage.unfinished = True
        job = self.jobs.get(stage.job_id) if stage.job_id is not None else None
        if job is not None:
            job.stage_attempts += 1
            job.tasks += stage.succeeded + stage.failed + stage.killed
            job.failed_tasks += stage.failed
            job.killed_tasks += stage.killed
            for k, v in stage.sums.items():
                job.sums[k] += v
            for h, c in stage.cpu_by_host.items():
                job.cpu_by_host[h] = job.cpu_by_host.get(h, 0.0) + c
        self.listener.stage_ended(self.app, stage)

    def _job_done(self, job: Job) -> None:
        if self.jobs.pop(job.job_id, None) is None:
            return
        self.listener.job_ended(self.app, job)


_CODECS = (".lz4", ".lzf", ".snappy", ".zstd", ".zst")
_V2 = "eventlog_v2_"
_EVENTS = re.compile(r"^events_(\d+)_(.+?)(\.inprogress)?$")


def _strip_uri(path: str) -> str:
    """A local path of a ``file:`` URI (as ``spark.eventLog.dir`` takes them)."""
    return "/" + path[len("file:") :].lstrip("/") if path.startswith("file:") else path


def _rolling_files(d: Path) -> list[tuple[int, Path]]:
    out = []
    for p in d.iterdir():
        m = _EVENTS.match(p.name)
        if m and not p.name.endswith(_CODECS):
            out.append((int(m.group(1)), p))
    return sorted(out)


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of one application's event log, in order: ``path`` itself, or the
    ``events_N`` files of a rolling log's directory. Raises :class:`EventLogError`."""
    p = Path(_strip_uri(os.fspath(path)))
    if not p.exists():
        raise EventLogError(f"{p}: no such file or directory")
    if p.is_file():
        if p.name.removesuffix(".inprogress").endswith(_CODECS):
            raise EventLogError(
                f"{p}: a compressed event log; wattspan reads uncompressed ones "
                "(spark.eventLog.compress=false)"
            )
        return [p]
    files = _rolling_files(p)
    if not files:
        if any(_EVENTS.match(q.name) for q in p.iterdir()):
            raise EventLogError(
                f"{p}: a compressed event log; wattspan reads uncompressed ones "
                "(spark.eventLog.compress=false)"
            )
        raise EventLogError(
            f"{p}: not an application's event log (a file, or an eventlog_v2_* directory)"
        )
    return [f for _, f in files]


def read_event_log(path: str, listener: Listener) -> EventLogParser:
    """Reads a finished (or abandoned) event log whole: a file, or a rolling log's
    directory (``eventlog_v2_*``); see :mod:`wattspan.engines.spark.tail` for the layout."""
    files = log_files(path)
    parser = EventLogParser(listener)
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(4)
            if head in (b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18"):  # zstd, lz4 frames
                raise EventLogError(
                    f"{f}: a compressed event log; wattspan reads uncompressed ones "
                    "(spark.eventLog.compress=false)"
                )
            if head[:1] not in (b"{", b""):
                raise EventLogError(f"{f}: no Spark listener events in it (not an event log)")
            fh.seek(0)
            for line in fh:
                parser.feed(line)
    if parser.lines and not parser.app.app_id and not parser.task_ends:
        raise EventLogError(f"{path}: no Spark listener events in it")
    parser.close()
    return parser
