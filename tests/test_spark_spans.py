"""Spark spans over OTLP from ``instrument(SparkSession.builder)``, checked against Spark.

One session for the module: ``local[2,4]`` (two task threads, a task may fail 4 times),
instrumented to send to a real OTLP/gRPC receiver on a free loopback port. It runs a SQL
aggregation, a job whose task fails on its first attempt, and a job whose stage is retried
(its shuffle files are deleted under it, so the reduce stage hits a fetch failure and the map
stage runs again). Spark's own figures come from its REST API.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.spark_local import event_log, rest, session, stage_counts
from wattspan.agent.receiver import OtlpReceiver
from wattspan.agent.records import SpanRecord
from wattspan.agent.store import Store
from wattspan.engines.spark.eventlog import TASK_METRICS
from wattspan.engines.spark.sender import EndpointRouter, SpanSender, flush_interval
from wattspan.engines.spark.session import instrument
from wattspan.engines.spark.spans import APPLICATION, JOB, STAGE, STAGE_TAIL, TASK, SpanOut

pytestmark = pytest.mark.server


class Spans:
    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self._lock = threading.Lock()

    def on_spans(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            self.spans.extend(spans)

    def on_metrics(self, points: list[Any]) -> None:
        return None

    def on_logs(self, logs: list[Any]) -> None:
        return None


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from pyspark.sql import functions as F

    # Defined here, not at module level: Spark's workers get it by value (they cannot
    # import this test module).
    def fail_first_attempt(it: Iterator[int]) -> Iterator[int]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and ctx.partitionId() == 1 and ctx.attemptNumber() == 0:
            raise ValueError("partition 1 fails on its first attempt")
        yield from it

    events = tmp_path_factory.mktemp("events")
    local = tmp_path_factory.mktemp("local")
    got = Spans()
    receiver = OtlpReceiver(got, port=0)  # type: ignore[arg-type]
    receiver.start()
    endpoint = f"http://127.0.0.1:{receiver.port}"
    handle: list[Any] = []

    def wrap(b: Any) -> Any:
        b = instrument(b, event_log_dir=events, endpoint=endpoint, poll_s=0.05, flush_s=0.3)
        handle.append(b._wattspan)
        return b

    spark = session(
        "spans-test", None, master="local[2,4]", wrap=wrap, **{"spark.local.dir": str(local)}
    )
    sc = spark.sparkContext
    try:
        sc.setJobDescription("grouped")
        spark.range(0, 100_000, 1, 4).groupBy((F.col("id") % 5).alias("k")).count().collect()
        sc.setJobDescription("fails once")
        sc.parallelize(range(400), 4).mapPartitions(fail_first_attempt).count()
        sc.setJobDescription("retried stage")
        pairs = (
            sc.parallelize(range(1000), 4)
            .map(lambda x: (x % 7, x))
            .reduceByKey(lambda a, b: a + b, 4)
        )
        pairs.count()
        shuffle = glob.glob(str(local / "**" / "shuffle_*"), recursive=True)
        assert shuffle, "no shuffle files to delete"
        for f in shuffle:
            os.remove(f)
        pairs.count()
        counts = stage_counts(spark)
        jobs = {j["jobId"]: j for j in rest(spark, "/jobs")}
        tasks = {
            key: rest(spark, f"/stages/{key[0]}/{key[1]}/taskList?length=10000") for key in counts
        }
        app_id = sc.applicationId
        # While the application still runs, nothing flushed by hand: the time-based flush
        # sends each stage's tasks within flush_s (0.3 s here) of the poll that read them.
        expected = sum(sum(c) for c in counts.values())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_named(got.spans, TASK)) < expected:
            time.sleep(0.05)
        live_tasks = len(_named(got.spans, TASK))
    finally:
        spark.stop()
        handle[0].stop(wait_s=20)
        receiver.stop(grace=1.0)
    yield {
        "spans": got.spans,
        "counts": counts,
        "jobs": jobs,
        "tasks": tasks,
        "app_id": app_id,
        "log": event_log(events),
        "monitor": handle[0].monitor,
        "live_tasks": live_tasks,
    }


def _named(spans: list[SpanRecord], name: str) -> list[SpanRecord]:
    return [s for s in list(spans) if s.name == name]


def _by_name(app: dict[str, Any], name: str) -> list[SpanRecord]:
    return _named(app["spans"], name)


def test_task_spans_equal_sparks_count_of_tasks(app: dict[str, Any]) -> None:
    counts = app["counts"]
    tasks = _by_name(app, TASK)
    assert len(tasks) == sum(sum(c) for c in counts.values())
    per_stage: dict[tuple[int, int], list[int]] = {}
    for t in tasks:
        key = (t.attributes["spark.stage.id"], t.attributes["spark.stage.attempt"])
        c = per_stage.setdefault(key, [0, 0, 0])  # type: ignore[arg-type]
        c[["succeeded", "failed", "killed"].index(t.attributes["spark.task.status"])] += 1
    assert {k: tuple(v) for k, v in per_stage.items()} == counts
    assert len({t.span_id for t in tasks}) == len(tasks)
    assert app["monitor"].dropped == 0
    # Every one of them reached the agent before the application ended (time-based flush).
    assert app["live_tasks"] == len(tasks)


def test_parents_are_application_job_stage_task(app: dict[str, Any]) -> None:
    spans = {s.span_id: s for s in app["spans"]}
    (application,) = _by_name(app, APPLICATION)
    assert application.attributes["spark.app.id"] == app["app_id"]
    jobs = _by_name(app, JOB)
    assert sorted(j.attributes["spark.job.id"] for j in jobs) == sorted(app["jobs"])
    assert all(j.parent_span_id == application.span_id for j in jobs)
    for j in jobs:
        theirs = app["jobs"][j.attributes["spark.job.id"]]
        assert j.attributes["spark.job.result"] == "Job" + theirs["status"].title()
        assert sorted(j.attributes["spark.job.stage_ids"]) == sorted(theirs["stageIds"])
    descriptions = {j.attributes["spark.job.description"] for j in jobs}
    assert {"grouped", "fails once", "retried stage"} <= descriptions
    assert any("spark.sql.execution.id" in j.attributes for j in jobs)
    for st in _by_name(app, STAGE):
        job = spans[st.parent_span_id]  # type: ignore[index]
        assert job.name == JOB
        assert job.attributes["spark.job.id"] == st.attributes["spark.job.id"]
        assert st.attributes["spark.stage.id"] in job.attributes["spark.job.stage_ids"]
    for t in _by_name(app, TASK) + _by_name(app, STAGE_TAIL):
        stage = spans[t.parent_span_id]  # type: ignore[index]
        assert stage.name == STAGE
        for k in ("spark.stage.id", "spark.stage.attempt"):
            assert t.attributes[k] == stage.attributes[k]
        assert stage.start_ns <= t.start_ns and t.end_ns <= stage.end_ns
    for t in _by_name(app, TASK):
        # A task names its job too (per-job sums over nodes): one whose stages hold its own.
        job = t.attributes["spark.job.id"]
        assert t.attributes["spark.stage.id"] in app["jobs"][job]["stageIds"]
        assert job == spans[t.parent_span_id].attributes["spark.job.id"]  # type: ignore[index]
    assert {s.trace_id for s in app["spans"]} == {application.trace_id}


def test_task_metrics_are_sparks_own(app: dict[str, Any]) -> None:
    by_id = {t.attributes["spark.task.id"]: t for t in _by_name(app, TASK)}
    compared = 0
    for rows in app["tasks"].values():
        for row in rows:
            t = by_id[row["taskId"]].attributes
            m = row.get("taskMetrics")
            assert t["spark.executor.id"] == row["executorId"] == "driver"
            assert t["spark.executor.host"] == row["host"]
            assert t["spark.task.locality"] == row["taskLocality"]
            assert t["spark.task.speculative"] is row["speculative"]
            assert t["spark.task.attempt"] == row["attempt"]
            if m is None or row["status"] != "SUCCESS":
                continue
            assert t["spark.task.cpu_time_seconds"] == m["executorCpuTime"] / 1e9
            assert t["spark.task.run_time_seconds"] == m["executorRunTime"] / 1e3
            assert t["spark.task.gc_time_seconds"] == m["jvmGcTime"] / 1e3
            assert t["spark.task.result_size_bytes"] == m["resultSize"]
            assert t["spark.task.peak_execution_memory_bytes"] == m["peakExecutionMemory"]
            sr, sw = m["shuffleReadMetrics"], m["shuffleWriteMetrics"]
            read = sr["localBytesRead"] + sr["remoteBytesRead"]
            assert t["spark.task.shuffle_read_bytes"] == read
            assert t["spark.task.shuffle_read_records"] == sr["recordsRead"]
            assert t["spark.task.shuffle_write_bytes"] == sw["bytesWritten"]
            assert t["spark.task.shuffle_write_records"] == sw["recordsWritten"]
            assert t["spark.task.input_records"] == m["inputMetrics"]["recordsRead"]
            # Spark's CPU time is the self-reported CPU attribution charges the task with.
            assert t["wattspan.cpu.process_seconds"] == t["spark.task.cpu_time_seconds"]
            assert isinstance(t["wattspan.cpu.process_seconds"], float)
            # Non-zero where Spark's are.
            for ours, theirs in (
                ("cpu_time_seconds", m["executorCpuTime"]),
                ("shuffle_write_bytes", sw["bytesWritten"]),
                ("shuffle_read_bytes", read),
            ):
                assert (t[f"spark.task.{ours}"] > 0) == (theirs > 0)
            compared += 1
    assert compared >= 20
    every = {f"spark.task.{k}" for k in TASK_METRICS}
    assert all(every <= set(t.attributes) for t in _by_name(app, TASK))


def test_a_failing_task_and_its_retry_show_as_such(app: dict[str, Any]) -> None:
    tasks = _by_name(app, TASK)
    failed = [t for t in tasks if t.attributes["spark.task.status"] == "failed"]
    raised = [t for t in failed if t.attributes["spark.task.end_reason"] == "ExceptionFailure"]
    assert len(raised) == 1
    (bad,) = raised
    assert bad.status_code == "error"
    assert "partition 1 fails on its first attempt" in bad.attributes["spark.task.error"]
    assert bad.attributes["spark.task.attempt"] == 0
    stage_key = (bad.attributes["spark.stage.id"], bad.attributes["spark.stage.attempt"])
    retry = [
        t
        for t in tasks
        if (t.attributes["spark.stage.id"], t.attributes["spark.stage.attempt"]) == stage_key
        and t.attributes["spark.task.index"] == bad.attributes["spark.task.index"]
        and t.attributes["spark.task.attempt"] == 1
    ]
    assert len(retry) == 1 and retry[0].status_code == "ok"
    assert app["counts"][stage_key][1] == 1  # Spark counted the one failure too
    (stage,) = [
        s
        for s in _by_name(app, STAGE)
        if (s.attributes["spark.stage.id"], s.attributes["spark.stage.attempt"]) == stage_key
    ]
    assert stage.attributes["spark.stage.tasks.failed"] == 1
    assert stage.attributes["spark.stage.status"] == "succeeded"


def test_a_retried_stage_shows_its_failed_attempt_and_the_retry(app: dict[str, Any]) -> None:
    stages = _by_name(app, STAGE)
    retried = [s for s in stages if s.attributes["spark.stage.attempt"] > 0]
    assert retried, "no stage was retried"
    for s in retried:
        assert s.attributes["spark.stage.status"] == "succeeded"
    failed = [s for s in stages if s.attributes["spark.stage.status"] == "failed"]
    assert failed and all(s.status_code == "error" for s in failed)
    assert any("FetchFailed" in s.attributes["spark.stage.failure_reason"] for s in failed)
    ids = {s.attributes["spark.stage.id"] for s in failed}
    assert ids & {s.attributes["spark.stage.id"] for s in retried}
    fetch = [
        t for t in _by_name(app, TASK) if t.attributes["spark.task.end_reason"] == "FetchFailed"
    ]
    assert fetch and all(t.attributes["spark.stage.id"] in ids for t in fetch)


def test_stage_spans_carry_sums_and_distributions(app: dict[str, Any]) -> None:
    tasks = _by_name(app, TASK)
    for st in _by_name(app, STAGE):
        a = st.attributes
        mine = [
            t.attributes
            for t in tasks
            if (t.attributes["spark.stage.id"], t.attributes["spark.stage.attempt"])
            == (a["spark.stage.id"], a["spark.stage.attempt"])
        ]
        assert a["spark.stage.tasks.count"] == len(mine)
        for k in ("cpu_time_seconds", "run_time_seconds", "shuffle_write_bytes"):
            assert a[f"spark.stage.tasks.{k}.sum"] == pytest.approx(
                sum(t[f"spark.task.{k}"] for t in mine)
            )
        ok = [t for t in mine if t["spark.task.status"] == "succeeded"]
        if not ok:
            continue
        durations = sorted(t["spark.task.duration_seconds"] for t in ok)
        assert a["spark.stage.tasks.duration_seconds.max"] == pytest.approx(durations[-1])
        assert durations[0] <= a["spark.stage.tasks.duration_seconds.p50"] <= durations[-1]
        p50 = a["spark.stage.tasks.duration_seconds.p50"]
        assert p50 <= a["spark.stage.tasks.duration_seconds.p95"] <= durations[-1]
        assert a["spark.stage.skew.class"] in (
            "none",
            "data_skew",
            "computation_skew",
            "stragglers",
        )
        # Local mode: the stage's self-reported CPU is its tasks' CPU.
        assert a["wattspan.cpu.process_seconds"] == pytest.approx(
            sum(t["spark.task.cpu_time_seconds"] for t in mine)
        )


def test_the_resource_names_the_run_and_no_process(app: dict[str, Any]) -> None:
    from wattspan.engines.spark.spans import run_id_of

    (application,) = _by_name(app, APPLICATION)
    res = application.resource_attributes
    assert res["spark.app.id"] == app["app_id"]
    assert res["service.name"] == "spans-test"
    assert "process.pid" not in res
    (root,) = [s for s in app["spans"] if s.name == "wattspan.run"]
    assert application.parent_span_id == root.span_id
    from wattspan.engines.spark.eventlog import Application

    expected = run_id_of(Application(app_id=app["app_id"]))
    assert res["wattspan.run_id"] == expected
    assert res["wattspan.run.name"] == "spans-test"


def test_the_event_log_import_gives_the_same_tree(app: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    cmd = [sys.executable, "-m", "wattspan", "spark", "import", str(app["log"]), "--store"]
    out = subprocess.run([*cmd, str(db), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    store = Store(db)
    try:
        run = store.resolve_run(result["run_id"])
        stored = store.spans(run.id)
    finally:
        store.close()
    assert run.name == "spans-test" and run.end_ts is not None
    (application,) = _by_name(app, APPLICATION)

    def tree(spans: list[Any]) -> set[tuple[str, str, str | None]]:
        return {
            (s.name, s.span_id, None if s.span_id == application.span_id else s.parent_span_id)
            for s in spans
            if s.name != "wattspan.run"
        }

    assert tree(stored) == tree(app["spans"])
    assert result["tasks"] == len(_by_name(app, TASK))
    live = {s.span_id: s.attributes for s in app["spans"]}
    for s in stored:
        if s.name == TASK:
            assert s.attributes == live[s.span_id]
    # Importing again stores nothing twice.
    again = subprocess.run([*cmd, str(db), "--json"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    store = Store(db)
    try:
        assert len(store.spans(run.id)) == len(stored)
        assert len(store.runs()) == 1
    finally:
        store.close()


def test_tasks_go_to_their_nodes_agent_and_the_rest_to_the_drivers() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://driver.example:4317"}
    r = EndpointRouter(env=env)
    r.driver_hosts.add("10.0.0.1")
    assert r.endpoint(None) == "https://driver.example:4317"
    assert r.endpoint("10.0.0.7") == "https://10.0.0.7:4317"
    assert r.endpoint("10.0.0.1") == "https://driver.example:4317"  # the driver's own node
    t = EndpointRouter(env={**env, "WATTSPAN_SPARK_ENDPOINT_TEMPLATE": "http://HOST:14317"})
    t.driver_hosts.add("10.0.0.1")
    assert t.endpoint("10.0.0.1") == "http://10.0.0.1:14317"  # an explicit template rules
    with pytest.raises(ValueError, match="must contain HOST"):
        EndpointRouter(env={"WATTSPAN_SPARK_ENDPOINT_TEMPLATE": "localhost:4317"})


def test_spans_wait_at_most_flush_s_for_a_full_batch() -> None:
    got = Spans()
    receiver = OtlpReceiver(got, port=0)  # type: ignore[arg-type]
    receiver.start()
    try:
        router = EndpointRouter(f"http://127.0.0.1:{receiver.port}", env={})
        sender = SpanSender({"service.name": "t"}, router, batch=512, flush_s=1.0)
        spans = [
            SpanOut(TASK, b"\x01" * 16, bytes([0] * 7 + [i + 1]), b"", 10**18, 10**18 + 1, {})
            for i in range(3)
        ]
        t0 = time.monotonic()
        for s in spans:
            sender.add(s)
        assert sender.flush_due(t0 + 0.5) == 0 and got.spans == []  # not yet due
        assert sender.flush_due(t0 + 1.01) == 3
        assert len(got.spans) == 3 and sender.sent == {router.driver: 3}
        assert sender.flush_due(t0 + 5.0) == 0  # nothing left
        sender.add(spans[0])  # a new batch's clock starts at its first span
        assert sender.flush_due(time.monotonic() + 0.5) == 0
        sender.close()  # sends the rest
        assert len(got.spans) == 4
    finally:
        receiver.stop(grace=1.0)
    assert flush_interval(env={}) == 1.0
    assert flush_interval(env={"WATTSPAN_SPARK_FLUSH_S": "0.25"}) == 0.25
    assert flush_interval(2.0, env={"WATTSPAN_SPARK_FLUSH_S": "0.25"}) == 2.0
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="WATTSPAN_SPARK_FLUSH_S") as e:
            flush_interval(env={"WATTSPAN_SPARK_FLUSH_S": bad})
        assert "\n" not in str(e.value)
