"""The agent finds a Spark executor's process from its command line (agent/executors.py).

Against real processes: children whose command line is an executor backend's or a driver's
(``python -c CODE org.apache.spark... --executor-id N --app-id APP``: the walk reads argv,
not the binary), a real local-mode Spark driver JVM, and end to end a span naming an
executor, sent over OTLP to a real ``wattspan agent``, stored with that executor's pid and
a sampled CPU share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import wait_for
from tests.test_agent_daemon import AgentProc
from wattspan.agent.executors import (
    DRIVER,
    ExecutorPids,
    SparkProcess,
    parse_cmdline,
)
from wattspan.agent.store import Store

BACKEND = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
SUBMIT = "org.apache.spark.deploy.SparkSubmit"

# Waits for a line on stdin (or holds a file open: argv[1] != "-"), then burns CPU for the
# seconds it reads, printing the wall-clock interval of the burn; exits at EOF.
FAKE = r"""
import json, sys, time
held = open(sys.argv[1], "w") if sys.argv[1] != "-" else None
print("ready", flush=True)
for line in sys.stdin:
    seconds = float(line)
    t0, c0 = time.time(), time.process_time()
    while time.process_time() < c0 + seconds:
        pass
    print(json.dumps({"start": t0, "end": time.time()}), flush=True)
"""


class Fake:
    """A child process whose command line looks like a Spark JVM's."""

    def __init__(self, *argv: str, hold: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE, str(hold) if hold else "-", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def burn(self, seconds: float) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


def executor_argv(executor_id: str, app_id: str) -> list[str]:
    return [
        BACKEND,
        "--driver-url",
        "spark://CoarseGrainedScheduler@127.0.0.1:1",
        "--executor-id",
        executor_id,
        "--hostname",
        "127.0.0.3",
        "--cores",
        "1",
        "--app-id",
        app_id,
        "--resourceProfileId",
        "0",
    ]


@pytest.fixture
def fakes() -> Iterator[list[Fake]]:
    started: list[Fake] = []
    yield started
    for f in started:
        f.stop()


def unique_app() -> str:
    return f"app-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}"


def test_parse_cmdline() -> None:
    assert parse_cmdline(["java", "-cp", "x", *executor_argv("3", "app-1")]) == ("3", "app-1")
    yarn = "org.apache.spark.executor.YarnCoarseGrainedExecutorBackend"
    assert parse_cmdline([yarn, "--executor-id", "1", "--app-id", "application_1_2"]) == (
        "1",
        "application_1_2",
    )
    assert parse_cmdline(["java", SUBMIT, "pyspark-shell"]) == (DRIVER, None)
    assert parse_cmdline([BACKEND, "--executor-id", "3"]) is None  # no app id
    assert parse_cmdline([BACKEND, "--app-id"]) is None
    assert parse_cmdline(["python", "--executor-id", "1", "--app-id", "a"]) is None


def test_an_executor_backend_is_found_and_cached(fakes: list[Fake]) -> None:
    app = unique_app()
    fakes += [Fake(*executor_argv("1", app)), Fake(*executor_argv("2", app))]
    pids = ExecutorPids()
    assert pids.pid_of(app, "1") == fakes[0].pid
    # One walk found both executors: the second is answered from the cache.
    assert pids.pid_of(app, "2") == fakes[1].pid
    assert pids.scans == 1
    # Not on this node: the walk for this application a moment ago did not find it, so no
    # second walk; another application's executor is walked for.
    assert pids.pid_of(app, "9") is None
    assert pids.scans == 1
    assert pids.pid_of("app-other", "1") is None
    assert pids.scans == 2


def test_misses_are_remembered_and_walks_rate_limited(fakes: list[Fake]) -> None:
    app = unique_app()
    pids = ExecutorPids(rescan_s=0.0)
    assert pids.pid_of(app, "1") is None
    assert pids.pid_of(app, "1") is None  # remembered: no second walk
    assert pids.scans == 1
    # An executor started after a walk is found by the next walk, once the miss expires.
    fakes.append(Fake(*executor_argv("2", app)))
    assert pids.pid_of(app, "2") == fakes[0].pid
    assert pids.scans == 2
    # Executors of an application a walk just looked for are not walked for again...
    limited = ExecutorPids(rescan_s=60.0)
    assert [limited.pid_of(app, str(i)) for i in range(3, 50)] == [None] * 47
    assert limited.scans == 1
    # ...those of another application are.
    other = unique_app()
    fakes.append(Fake(*executor_argv("1", other)))
    assert limited.pid_of(other, "1") == fakes[1].pid
    assert limited.scans == 2


def test_an_exited_executor_is_not_answered_from_the_cache(fakes: list[Fake]) -> None:
    app = unique_app()
    fakes.append(Fake(*executor_argv("1", app)))
    pids = ExecutorPids(recheck_s=0.0, negative_ttl_s=0.0, rescan_s=0.0)
    assert pids.pid_of(app, "1") == fakes[0].pid
    fakes[0].stop()
    # Its pid may be given to another process: the start-time check drops the entry.
    assert pids.pid_of(app, "1") is None
    assert pids.scans == 2


def test_the_cache_is_bounded(fakes: list[Fake]) -> None:
    app = unique_app()
    fakes += [Fake(*executor_argv(str(i), app)) for i in range(3)]
    pids = ExecutorPids(max_entries=2, rescan_s=0.0)
    for i, f in enumerate(fakes):
        assert pids.pid_of(app, str(i)) == f.pid
    assert len(pids) <= 2


def test_the_driver_is_the_one_holding_the_applications_event_log(
    fakes: list[Fake], tmp_path: Path
) -> None:
    app = unique_app()
    log = tmp_path / f"{app}.inprogress"
    fakes += [Fake(SUBMIT, "pyspark-shell"), Fake(SUBMIT, "pyspark-shell", hold=log)]
    assert ExecutorPids().pid_of(app, DRIVER) == fakes[1].pid
    # Two drivers, neither holding anything of this application, and no time in its id:
    # no guess.
    assert ExecutorPids().pid_of("app-20260101000000-0001", DRIVER) is None


def test_a_local_mode_driver_is_told_apart_by_its_start_time(fakes: list[Fake]) -> None:
    fakes.append(Fake(SUBMIT, "pyspark-shell"))
    time.sleep(0.3)
    fakes.append(Fake(SUBMIT, "pyspark-shell"))
    pids = ExecutorPids()
    procs = []
    for f in fakes:
        with open(f"/proc/{f.pid}/stat", "rb") as fh:
            ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
        procs.append(SparkProcess(f.pid, ticks, DRIVER, None))
    now_ms = int(time.time() * 1000)
    # Both started before the application: the later one is its driver.
    assert pids._driver_of(f"local-{now_ms}", procs) == procs[1]
    # An application that began before either started is neither's.
    assert pids._driver_of(f"local-{now_ms - 600_000}", procs) is None
    # Only one driver on the node: that one, whatever the id.
    assert pids._driver_of("app-x", procs[:1]) == procs[0]


def test_a_span_naming_an_executor_takes_its_pid(fakes: list[Fake]) -> None:
    app = unique_app()
    fakes.append(Fake(*executor_argv("4", app)))
    pids = ExecutorPids()
    attrs = {"spark.app.id": app, "spark.executor.id": "4"}
    assert pids.pid_for_span(attrs, {}, 1234) == fakes[0].pid
    # On the resource instead of the span.
    assert pids.pid_for_span({"spark.executor.id": "4"}, {"spark.app.id": app}, None) == (
        fakes[0].pid
    )
    # A span's own process.pid wins; a span of an executor not here gets none (the
    # reporter's pid is not the task's).
    assert pids.pid_for_span({**attrs, "process.pid": 77}, {}, 77) == 77
    assert pids.pid_for_span({**attrs, "spark.executor.id": "5"}, {}, 1234) is None
    assert pids.pid_for_span({"other": 1}, {}, 1234) == 1234


def test_a_real_local_mode_driver_jvm(tmp_path: Path) -> None:
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    logs = tmp_path / "events"
    logs.mkdir()
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("test_spark_executors")
        .config("spark.ui.enabled", "false")
        .config("spark.eventLog.enabled", "true")
        .config("spark.eventLog.dir", logs.as_uri())
        .config("spark.eventLog.compress", "false")
        .getOrCreate()
    )
    try:
        sc = spark.sparkContext
        jvm_pid = int(sc._jvm.java.lang.ProcessHandle.current().pid())  # type: ignore[union-attr]
        assert spark.range(1000).count() == 1000
        assert ExecutorPids().pid_of(sc.applicationId, DRIVER) == jvm_pid
    finally:
        spark.stop()


def _send_span(otlp: int, name: str, start: float, end: float, attrs: dict[str, str]) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="spark-test"))
    )
    s = rs.scope_spans.add().spans.add()
    s.trace_id = os.urandom(16)
    s.span_id = os.urandom(8)
    s.name = name
    s.start_time_unix_nano = int(start * 1e9)
    s.end_time_unix_nano = int(end * 1e9)
    for k, v in attrs.items():
        s.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    with grpc.insecure_channel(f"127.0.0.1:{otlp}") as channel:
        resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=30)
    assert not resp.partial_success.rejected_spans


def test_a_task_span_sent_to_a_real_agent_gets_the_executors_pid_and_cpu_share(
    fakes: list[Fake], tmp_path: Path
) -> None:
    from tests.procs import free_port

    app = unique_app()
    executor = Fake(*executor_argv("1", app))
    fakes.append(executor)
    otlp = free_port()
    agent = AgentProc(tmp_path, "--otlp-port", str(otlp), "--interval", "0.1")
    try:
        agent.wait_ready()
        attrs = {"spark.app.id": app, "spark.executor.id": "1"}
        now = time.time()
        # The first span naming the executor makes the agent watch its process.
        _send_span(otlp, "spark.task.first", now - 0.01, now, attrs)
        wait_for(lambda: f'root="{executor.pid}"' in agent.metrics(), 30, "the executor watched")
        burn = executor.burn(1.0)
        time.sleep(0.3)  # sampled after the task's end too: its end is interpolated
        _send_span(otlp, "spark.task", burn["start"], burn["end"], attrs)

        def attributed() -> bool:
            return any(s.name == "spark.task" and s.resources for s in Store(agent.store).spans())

        wait_for(attributed, 30, "the task span attributed")
    finally:
        assert agent.stop() == 0
    spans = {s.name: s for s in Store(agent.store).spans()}
    task = spans["spark.task"]
    # The test process sent it (the peer), but the executor ran it.
    assert task.pid == executor.pid
    assert spans["spark.task.first"].pid == executor.pid
    r = task.resources
    assert r["cpu_source"] == "sampled"
    assert 0.5 < r["cpu_seconds"] < 1.3
    assert 0.0 < r["process_cpu_share"] <= 1.0
