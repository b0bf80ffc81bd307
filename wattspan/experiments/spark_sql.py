"""The ``spark-sql`` kind: SQL snippets in one SparkSession reused across repetitions.

The session is created at the first repetition of its ``[[run]]``, its tables registered as
temporary views (Parquet, CSV, JSON or JDBC), and then warmed up: every snippet runs
``session_warmups`` times (JIT, file listing and metadata caches), stored as repetitions of
phase ``session-warmup`` that count for nothing. Each repetition is one stored run measured
around the session's JVM (its process tree's CPU seconds and memory, node energy); each
snippet is a span of that run with the snippet's wall time, the JVM's CPU seconds over it
and its attributed energy. Below each snippet span go the Spark job, stage and task spans of
its jobs with Spark's task metrics (executor run and CPU time, GC, shuffle, spill), built by
the Spark integration (:mod:`wattspan.engines.spark`) from the session's event log, which
the session writes for it (``spark.eventLog.*``, uncompressed, in a temporary directory) and
which is read as it grows: each repetition's jobs carry its own job group, and the
repetition waits (up to :data:`EVENT_LOG_WAIT` s) until the log has their ends.

How a snippet's result is materialised (``action``): ``noop`` (default) runs the whole plan
and writes to Spark's no-op sink, ``count`` counts the rows, ``collect`` brings them to the
driver (beware of large results).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import psutil

from wattspan.experiments.config import Configuration, RunSpec, render
from wattspan.experiments.kinds import Context, description, run_name
from wattspan.experiments.measure import (
    InProcess,
    Outcome,
    figures,
    snippet_rows,
    span_figures,
    store_spans,
)

SESSION_WARMUP = "session-warmup"
#: seconds a repetition waits for its jobs' ends to reach the event log
EVENT_LOG_WAIT = 5.0


class _EventLog:
    """The session's event log, read incrementally into Spark spans."""

    def __init__(self, directory: Path) -> None:
        from wattspan.engines.spark.eventlog import EventLogParser
        from wattspan.engines.spark.spans import SpanBuilder

        self.directory = directory
        self.spans: list[Any] = []
        self.parser = EventLogParser(SpanBuilder(self.spans.append))
        self._fh: Any = None
        self._rest = b""

    def _open(self) -> bool:
        if self._fh is None:
            files = sorted(p for p in self.directory.iterdir() if p.is_file())
            if not files:
                return False
            self._fh = open(files[0], "rb")  # noqa: SIM115 - closed in close()
        return True

    def poll(self) -> None:
        if not self._open():
            return
        data = self._rest + self._fh.read()
        lines = data.split(b"\n")
        self._rest = lines.pop()  # a line still being written
        for line in lines:
            if line:
                self.parser.feed(line)

    def take(self, group: str, jobs: int, wait: float = EVENT_LOG_WAIT) -> list[Any]:
        """The spans of the jobs of ``group`` (``jobs`` of them), once all have ended."""
        deadline = time.monotonic() + wait
        while True:
            self.poll()
            mine = [s for s in self.spans if s.attributes.get("spark.job.group") == group]
            if len(mine) >= jobs or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        stages = {sid for s in mine for sid in s.attributes.get("spark.job.stage_ids", ())}
        keep = {id(s) for s in mine}
        keep |= {id(s) for s in self.spans if s.attributes.get("spark.stage.id") in stages}
        out = [s for s in self.spans if id(s) in keep]
        # Stages and tasks of this repetition's jobs come before their job's end; what is
        # left over belongs to no job of ours (or to a later one) and stays.
        self.spans[:] = [s for s in self.spans if id(s) not in keep]
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _jvm_pid(spark: Any) -> int | None:
    """The pid of the session's JVM (a child of this process in local mode)."""
    with contextlib.suppress(AttributeError):
        return int(spark.sparkContext._gateway.proc.pid)
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.name() == "java":
                return p.pid
    return None


def _tree_cpu(pid: int | None) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its descendants (so far)."""
    if pid is None:
        return (0.0, 0.0)
    user = system = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return (0.0, 0.0)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            user += t.user + t.children_user
            system += t.system + t.children_system
    return (user, system)


class _Session:
    def __init__(self, spec: RunSpec, ctx: Context) -> None:
        from pyspark.sql import SparkSession

        self._logdir = Path(tempfile.mkdtemp(prefix="wattspan-experiment-spark-"))
        b = SparkSession.builder.master(spec.master).appName(f"wattspan-{ctx.cfg.name}")
        b = b.config("spark.ui.enabled", "false")
        for k, v in spec.conf.items():
            b = b.config(k, v)
        # What the Spark integration reads (wattspan.engines.spark.session.event_log_conf).
        b = b.config("spark.eventLog.enabled", "true")
        b = b.config("spark.eventLog.dir", self._logdir.resolve().as_uri())
        b = b.config("spark.eventLog.compress", "false")
        # One file that grows (Spark 4 rolls logs into a directory of files by default).
        b = b.config("spark.eventLog.rolling.enabled", "false")
        self.spark = b.getOrCreate()
        self.pid = _jvm_pid(self.spark)
        self.log = _EventLog(self._logdir)
        for t in spec.tables:
            reader = self.spark.read.format(t.format)
            for k, v in t.options.items():
                reader = reader.option(k, v)
            df = reader.load(t.path) if t.path else reader.load()
            df.createOrReplaceTempView(t.name)
        self.group = f"wattspan-{uuid.uuid4().hex[:8]}"
        self.timed_out = False
        self._n = 0

    def next_id(self) -> int:
        self._n += 1
        return self._n

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self.spark.sparkContext.cancelAllJobs()

    def execute(self, sql: str, action: str) -> int | None:
        df = self.spark.sql(sql)
        if action == "count":
            return int(df.count())
        if action == "collect":
            return len(df.collect())
        df.write.format("noop").mode("overwrite").save()
        return None

    def jobs_of(self, group: str) -> int:
        with contextlib.suppress(Exception):
            return len(self.spark.sparkContext.statusTracker().getJobIdsForGroup(group))
        return 0

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.spark.stop()
        self.log.close()
        shutil.rmtree(self._logdir, ignore_errors=True)


class SparkSqlExecutor:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sessions: dict[int, _Session] = {}
        ctx.on_interrupt.append(self._cancel_all)

    def _cancel_all(self) -> None:
        for s in self._sessions.values():
            s.cancel()

    def _session(self, spec: RunSpec, conf: Configuration) -> _Session:
        s = self._sessions.get(spec.index)
        if s is None:
            with self.ctx.output.redirect():
                s = self._sessions[spec.index] = _Session(spec, self.ctx)
            for i in range(spec.session_warmups):
                out = self._measure(s, spec, conf, SESSION_WARMUP, i)
                self.ctx.record_extra(conf, SESSION_WARMUP, i, out)
        return s

    def run(self, conf: Configuration, phase: str, repetition: int) -> Outcome:
        spec = self.ctx.cfg.runs[conf.run]
        session = self._session(spec, conf)
        return self._measure(session, spec, conf, phase, repetition)

    def _measure(
        self, s: _Session, spec: RunSpec, conf: Configuration, phase: str, repetition: int
    ) -> Outcome:
        ctx = self.ctx
        m = InProcess(
            ctx.agent_config,
            ctx.store_path,
            run_name(ctx, spec),
            ["spark-sql", spec.master, *(sn.name for sn in spec.snippets)],
            description(ctx, conf, phase, repetition),
            [s.pid] if s.pid is not None else [],
            lambda: _tree_cpu(s.pid),
            ctx.cfg.interval,
        )
        spans: list[tuple[str, float, float, float, str]] = []
        rows: dict[str, int] = {}
        error = ""
        code = 0
        timer: threading.Timer | None = None
        s.timed_out = False
        if spec.timeout is not None:

            def expire() -> None:
                s.timed_out = True
                s.cancel()

            timer = threading.Timer(spec.timeout, expire)
            timer.daemon = True
        with ctx.output.redirect():
            m.begin()
            if timer is not None:
                timer.start()
            try:
                for i, sn in enumerate(spec.snippets):
                    sql = render(sn.sql, conf.params)
                    group = f"{s.group}-{phase}-{repetition}-{s.next_id()}-{i}"
                    s.spark.sparkContext.setJobGroup(group, sn.name, True)
                    c0 = sum(_tree_cpu(s.pid))
                    t0 = time.time()
                    n = s.execute(sql, spec.action)
                    t1 = time.time()
                    spans.append((sn.name, t0, t1, sum(_tree_cpu(s.pid)) - c0, group))
                    if n is not None:
                        rows[sn.name] = n
            except Exception:
                error = traceback.format_exc(limit=3)[-1500:]
                code = 1
            finally:
                if timer is not None:
                    timer.cancel()
            summary = m.finish(code, "jvm process tree")
        self._store_spans(s, m, spans)
        figs = figures(ctx.store, m.run, summary)
        figs["exit_code"] = code
        if rows:
            figs["rows"] = rows
        ctx.store.write_params(m.run.id, None, dict(conf.params))
        status = "timeout" if s.timed_out else ("ok" if code == 0 else "failed")
        if status == "timeout":
            error = f"timed out after {spec.timeout:g} s"
        return Outcome(
            status=status,
            exit_code=code,
            start_ts=m.start,
            end_ts=m.end,
            run_id=m.run.id,
            figures=figs,
            spans=span_figures(ctx.store, m.run.id),
            error=error,
        )

    def _store_spans(
        self, s: _Session, m: InProcess, spans: list[tuple[str, float, float, float, str]]
    ) -> None:
        """Each snippet's span, and under it its jobs' spans from the event log."""
        from wattspan import semconv as sc
        from wattspan.engines.spark.spans import to_rows

        rows = snippet_rows(m.run, [(n, a, b) for n, a, b, _, _ in spans], s.pid)
        cpu: list[float | None] = [c for _, _, _, c, _ in spans]
        for snippet, (_, _, _, _, group) in zip(list(rows), spans, strict=True):
            got = s.log.take(group, s.jobs_of(group))
            app_parent = {sp.parent_id.hex() for sp in got if sp.name == "spark.job"}
            for r, sp in zip(to_rows(got, m.run.id, "spark"), got, strict=True):
                r.trace_id = snippet.trace_id
                if r.parent_span_id in app_parent:
                    r.parent_span_id = snippet.span_id
                r.pid = s.pid
                rows.append(r)
                v = sp.attributes.get(sc.ATTR_CPU_PROCESS)
                cpu.append(float(v) if isinstance(v, int | float) else None)
        store_spans(self.ctx.store, m.run, rows, cpu)

    def close(self) -> None:
        for s in self._sessions.values():
            s.stop()
        self._sessions.clear()
