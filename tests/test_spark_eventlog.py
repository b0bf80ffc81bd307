"""The event-log reader and tailer on the logs of a real local Spark application.

One session for the module (local[2]); its log is tailed while jobs run, and its lines are
replayed into the other layouts (single file renamed at the end, rolling files) to check the
tailer follows each the way Spark writes them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.spark_local import event_log, rest, session, stage_counts
from wattspan.engines.spark.eventlog import (
    TASK_METRICS,
    Application,
    EventLogError,
    EventLogParser,
    Job,
    StageAttempt,
    Task,
    read_event_log,
    task_metrics,
)
from wattspan.engines.spark.tail import EventLogTailer, log_files

pytestmark = pytest.mark.server


class Recorder:
    """A listener that keeps everything it is told."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.stages: list[StageAttempt] = []
        self.jobs: list[Job] = []
        self.apps: list[Application] = []

    def task_ended(self, app: Application, stage: StageAttempt | None, task: Task) -> None:
        self.tasks.append(task)

    def stage_ended(self, app: Application, stage: StageAttempt) -> None:
        self.stages.append(stage)

    def job_ended(self, app: Application, job: Job) -> None:
        self.jobs.append(job)

    def app_ended(self, app: Application) -> None:
        self.apps.append(app)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished application: 3 jobs, one of 40 tasks while the UI keeps 10 per stage.
    Yields its event-log directory, Spark's counts and the tailer's recorder."""
    from pyspark.sql import functions as F

    d = tmp_path_factory.mktemp("eventlog")
    rec = Recorder()
    tailer = EventLogTailer(d, lambda p: rec, poll_s=0.05).start()
    spark = session("eventlog-test", d, **{"spark.ui.retainedTasks": "10"})
    sc = spark.sparkContext
    try:
        sc.setJobDescription("grouped count")
        spark.range(0, 200_000, 1, 4).groupBy((F.col("id") % 7).alias("k")).count().collect()
        sc.setJobDescription("forty tasks")
        sc.parallelize(range(4000), 40).map(lambda x: x * x).sum()
        sc.setJobDescription(None)  # type: ignore[arg-type]
        spark.range(1000).selectExpr("sum(id)").collect()
        # Mid-application: the tailer saw every ended task already (within its polls).
        counts = stage_counts(spark)
        deadline = time.monotonic() + 20
        expected = sum(sum(c) for c in counts.values())
        while len(rec.tasks) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        live_tasks = len(rec.tasks)
        retained = {
            key: len(rest(spark, f"/stages/{key[0]}/{key[1]}/taskList?length=1000"))
            for key in counts
        }
        app_id = sc.applicationId
    finally:
        spark.stop()
    tailer.wait_done(20)
    tailer.finish()
    yield {
        "dir": d,
        "log": event_log(d),
        "counts": counts,
        "retained": retained,
        "live_tasks": live_tasks,
        "rec": rec,
        "app_id": app_id,
        "tailer": tailer,
    }


def test_every_task_is_reported_while_the_application_runs(app: dict[str, Any]) -> None:
    counts = app["counts"]
    total = sum(sum(c) for c in counts.values())
    assert app["live_tasks"] == total  # before the application ended
    rec: Recorder = app["rec"]
    assert len(rec.tasks) == total
    per_stage: dict[tuple[int, int], int] = {}
    for t in rec.tasks:
        per_stage[(t.stage_id, t.stage_attempt)] = (
            per_stage.get((t.stage_id, t.stage_attempt), 0) + 1
        )
    assert per_stage == {k: sum(c) for k, c in counts.items()}
    # The UI forgot tasks of the 40-task stage; the log, and so wattspan, did not.
    big = next(k for k, c in counts.items() if sum(c) == 40)
    assert app["retained"][big] < 40
    assert per_stage[big] == 40


def test_the_model_has_jobs_stages_and_the_application(app: dict[str, Any]) -> None:
    rec: Recorder = app["rec"]
    assert len(rec.apps) == 1 and rec.apps[0].app_id == app["app_id"]
    a = rec.apps[0]
    assert a.end_ms is not None and a.end_ms >= a.start_ms > 0
    assert a.executors["driver"].cores == 2
    assert {s.key for s in rec.stages} == set(app["counts"])
    descriptions = [j.description for j in sorted(rec.jobs, key=lambda j: j.job_id)]
    assert "grouped count" in descriptions and "forty tasks" in descriptions
    sql_jobs = [j for j in rec.jobs if j.sql_execution_id is not None]
    assert sql_jobs and all(j.call_site for j in rec.jobs)
    for s in rec.stages:
        assert s.job_id is not None and s.status == "succeeded"
        assert s.succeeded == sum(app["counts"][s.key])
        # Sums are the sums of the tasks the stage was told of.
        cpu = sum(t.metrics["cpu_time_seconds"] for t in rec.tasks if t.stage_id == s.stage_id)
        assert s.sums["cpu_time_seconds"] == pytest.approx(cpu)
    assert all(t.metrics["cpu_time_seconds"] > 0 and t.duration_s > 0 for t in rec.tasks)
    shuffled = [t for t in rec.tasks if t.metrics["shuffle_read_records"] > 0]
    assert shuffled and all(t.metrics["shuffle_read_bytes"] > 0 for t in shuffled)
    assert any(t.metrics["shuffle_write_bytes"] > 0 for t in rec.tasks)


def test_reading_the_finished_log_gives_what_the_tailer_saw(app: dict[str, Any]) -> None:
    rec, again = app["rec"], Recorder()
    parser = read_event_log(str(app["log"]), again)
    assert parser.bad_lines == 0
    assert [(t.task_id, t.metrics) for t in again.tasks] == [
        (t.task_id, t.metrics) for t in rec.tasks
    ]
    assert [j.job_id for j in again.jobs] == [j.job_id for j in rec.jobs]


def _lines(app: dict[str, Any]) -> list[bytes]:
    out: list[bytes] = []
    for f in log_files(app["log"]):
        out.extend(f.read_bytes().splitlines(keepends=True))
    return out


def test_a_single_file_log_is_followed_across_its_rename(
    app: dict[str, Any], tmp_path: Path
) -> None:
    lines = _lines(app)
    rec = Recorder()
    tailer = EventLogTailer(tmp_path, lambda p: rec)
    live = tmp_path / "local-1.inprogress"
    with open(live, "wb") as f:
        half = len(lines) // 2
        f.writelines(lines[:half])
        f.write(lines[half][:7])  # half a line: held back until its newline comes
        f.flush()
        tailer.poll_once()
        seen = len(rec.tasks)
        f.write(lines[half][7:])
        f.writelines(lines[half + 1 :])
    os.rename(live, tmp_path / "local-1")
    tailer.poll_once()
    assert len(tailer.followers) == 1 and next(iter(tailer.followers.values())).done
    assert 0 < seen < len(rec.tasks) == len(app["rec"].tasks)
    assert len(rec.apps) == 1 and rec.apps[0].end_ms == app["rec"].apps[0].end_ms


def test_a_rolling_log_moves_on_to_its_next_file(app: dict[str, Any], tmp_path: Path) -> None:
    lines = _lines(app)
    rec = Recorder()
    tailer = EventLogTailer(tmp_path, lambda p: rec)
    d = tmp_path / "eventlog_v2_local-2"
    d.mkdir()
    (d / "appstatus_local-2.inprogress").touch()
    third = len(lines) // 3
    (d / "events_1_local-2.inprogress").write_bytes(b"".join(lines[:third]))
    tailer.poll_once()
    first = len(rec.tasks)
    os.rename(d / "events_1_local-2.inprogress", d / "events_1_local-2")
    (d / "events_2_local-2.inprogress").write_bytes(b"".join(lines[third:-1]))
    tailer.poll_once()
    assert not next(iter(tailer.followers.values())).done  # appstatus still in progress
    with open(d / "events_2_local-2.inprogress", "ab") as f:
        f.write(lines[-1])
    os.rename(d / "events_2_local-2.inprogress", d / "events_2_local-2")
    os.rename(d / "appstatus_local-2.inprogress", d / "appstatus_local-2")
    tailer.poll_once()
    assert next(iter(tailer.followers.values())).done
    assert first < len(rec.tasks) == len(app["rec"].tasks)
    assert len(rec.apps) == 1


def test_logs_already_there_are_left_alone_and_huge_unread_lines_are_skipped(
    app: dict[str, Any], tmp_path: Path
) -> None:
    shutil.copytree(app["log"], tmp_path / app["log"].name) if app["log"].is_dir() else None
    rec = Recorder()
    tailer = EventLogTailer(tmp_path, lambda p: rec)
    lines = _lines(app)
    # A 5 MB line of an event nothing reads, written in pieces, between real ones.
    huge = b'{"Event":"org.apache.spark.sql.execution.ui.SparkListenerSQLAdaptiveExecutionUpdate"'
    huge += b',"x":"' + b"y" * 5_000_000 + b'"}\n'
    live = tmp_path / "local-3.inprogress"
    with open(live, "wb") as f:
        f.writelines(lines[:5])
        for i in range(0, len(huge), 1 << 20):
            f.write(huge[i : i + (1 << 20)])
            f.flush()
            tailer.poll_once()
        f.writelines(lines[5:])
    tailer.poll_once(final=True)
    assert len(tailer.followers) == 1  # the copied finished log was not followed
    follower = next(iter(tailer.followers.values()))
    assert follower.reader is not None and len(follower.reader.partial) == 0
    assert len(rec.tasks) == len(app["rec"].tasks)
    assert follower.parser.bad_lines == 0


def test_an_application_cut_short_ends_its_open_spans_as_unfinished(
    app: dict[str, Any], tmp_path: Path
) -> None:
    lines = _lines(app)
    # Up to the middle of the 40-task stage: its job, stage and running tasks never end.
    cut = next(i for i, line in enumerate(lines) if b'"forty tasks"' in line) + 30
    rec = Recorder()
    parser = EventLogParser(rec)
    for line in lines[:cut]:
        parser.feed(line)
    parser.close()
    assert rec.apps and rec.apps[0].end_ms == parser.last_ms
    unfinished = [t for t in rec.tasks if t.status == "unfinished"]
    assert unfinished and all(t.finish_ms == parser.last_ms for t in unfinished)
    assert any(s.status == "unfinished" for s in rec.stages)
    assert any(j.result == "unfinished" for j in rec.jobs)


def test_what_is_not_an_event_log_is_one_clear_error(tmp_path: Path) -> None:
    z = tmp_path / "local-9.zstd"
    z.write_bytes(b"\x28\xb5\x2f\xfd....")
    with pytest.raises(EventLogError, match="compressed"):
        read_event_log(str(z), Recorder())
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\nworld\n")
    with pytest.raises(EventLogError, match="no Spark listener events"):
        read_event_log(str(junk), Recorder())
    with pytest.raises(EventLogError, match="no such file"):
        read_event_log(str(tmp_path / "missing"), Recorder())
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(EventLogError, match="not an application's event log"):
        read_event_log(str(empty), Recorder())


def test_task_metrics_are_in_base_units_in_the_documented_order() -> None:
    tm = {
        "Executor Run Time": 1500,
        "Executor CPU Time": 250_000_000,
        "JVM GC Time": 20,
        "Input Metrics": {"Bytes Read": 100, "Records Read": 3},
        "Shuffle Read Metrics": {
            "Remote Bytes Read": 7,
            "Local Bytes Read": 5,
            "Fetch Wait Time": 40,
            "Total Records Read": 9,
        },
        "Shuffle Write Metrics": {"Shuffle Write Time": 2_000_000},
    }
    m = task_metrics(tm, 2.0, 0.1)
    assert tuple(m) == TASK_METRICS
    assert m["run_time_seconds"] == 1.5 and m["cpu_time_seconds"] == 0.25
    assert m["gc_time_seconds"] == 0.02 and m["shuffle_fetch_wait_seconds"] == 0.04
    assert m["shuffle_read_bytes"] == 12 and m["shuffle_read_records"] == 9
    assert m["shuffle_write_time_seconds"] == 0.002
    assert m["scheduler_delay_seconds"] == pytest.approx(2.0 - 1.5 - 0.1)
    assert task_metrics(None, 1.0, 0.0)["scheduler_delay_seconds"] == 1.0
