"""Helpers of the local-mode Spark tests: a session writing its event log, Spark's own
counts from its REST API, and Python UDFs whose cost is chosen per value."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: JVM options of the test's short-lived Spark JVMs: the applications a test runs in a
#: subprocess, the standalone daemons, the executors of the cluster tests' small jobs. They
#: live seconds, too short for C2's compilations to pay off, and a parallel GC's threads
#: only compete with the tasks on a small machine: tests/test_spark_run.py took 33 s of CPU
#: (42 s wall) with the defaults, 20 s (31 s) with these. Not for the in-process sessions,
#: whose JVM does heavier work for longer (the skew jobs ran slower with C1 only). What the
#: tests check depends on neither. ``WATTSPAN_TEST_JVM_OPTS`` replaces them.
SHORT_JVM_OPTS = os.environ.get(
    "WATTSPAN_TEST_JVM_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
)


def conf(event_dir: Path | None, **extra: str) -> dict[str, str]:
    """Spark properties of a small, quiet local session (event log in ``event_dir``)."""
    out = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.memory": "1g",
        "spark.ui.port": "0",
        "spark.port.maxRetries": "64",
    }
    if event_dir is not None:
        out.update(
            {
                "spark.eventLog.enabled": "true",
                "spark.eventLog.dir": event_dir.resolve().as_uri(),
                "spark.eventLog.compress": "false",
            }
        )
    out.update(extra)
    return out


def session(
    name: str,
    event_dir: Path | None,
    master: str = "local[2]",
    wrap: Callable[[Any], Any] | None = None,
    **extra: str,
) -> Any:
    from pyspark.sql import SparkSession

    b = SparkSession.builder.master(master).appName(name)
    for k, v in conf(event_dir, **extra).items():
        b = b.config(k, v)
    if wrap is not None:
        b = wrap(b)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def rest(spark: Any, path: str) -> Any:
    """GET the driver's REST API (``/api/v1/applications/APP`` + ``path``)."""
    sc = spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}{path}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def stage_counts(spark: Any) -> dict[tuple[int, int], tuple[int, int, int]]:
    """Spark's own (complete, failed, killed) task counts per stage attempt that ran."""
    return {
        (s["stageId"], s["attemptId"]): (
            s["numCompleteTasks"],
            s["numFailedTasks"],
            s["numKilledTasks"],
        )
        for s in rest(spark, "/stages")
        if s["status"] != "SKIPPED"
    }


def busy_udf(iterations: Callable[[int], int]) -> Any:
    """A Python UDF of a long whose CPU cost is ``iterations(value)`` loop turns."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    def f(v: int) -> int:
        x = 0
        for i in range(iterations(v)):
            x += i
        return x

    return F.udf(f, LongType())


def event_log(event_dir: Path) -> Path:
    """The one application log in ``event_dir`` (a file or a rolling log's directory)."""
    logs = [p for p in event_dir.iterdir() if not p.name.startswith(".")]
    assert len(logs) == 1, logs
    return logs[0]
