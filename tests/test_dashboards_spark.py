"""The Spark dashboard: its structure, and every query against a real Spark application.

A real ``wattspan agent`` with the InfluxDB exporter, a real influxd, and a real PySpark
application on ``local[2]`` instrumented with ``wattspan.engines.spark.instrument`` that
sends its spans to that agent: two jobs, one with a shuffle whose tasks differ in cost. Each
panel target, variable and annotation query then runs as Grafana would send it (variables
replaced by values in the data, macros expanded, as in tests/test_dashboards_queries.py) and
must return a non-null value; a few panels are checked against what Spark itself reported.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.procs import free_port, wait_for
from tests.servers import InfluxD
from tests.spark_local import SHORT_JVM_OPTS
from tests.test_agent_influx import _config, _start
from tests.test_dashboards_queries import _expand, _series
from wattspan.agent.span_fields import FIELDS, TAGS
from wattspan.dashboards import build_dashboards

pytest_plugins = ["tests.fixtures_influx"]

UID = "wattspan-spark-influxdb"
DB = "spark_dashboard"
DASHBOARD = build_dashboards()[UID]

# Two jobs; the second's shuffle stage has one heavy partition (key 0 does the sqrt work).
SPARK_APP = r"""
import json, sys
from pyspark.sql import SparkSession, functions as F
import wattspan.engines.spark as ws

builder = ws.instrument(
    SparkSession.builder.master("local[2]").appName("dashboard-spark")
    .config("spark.driver.extraJavaOptions", sys.argv[2])
    .config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false")
    .config("spark.sql.shuffle.partitions", "4")
    .config("spark.sql.adaptive.enabled", "false"),
    endpoint=sys.argv[1],
)
spark = builder.getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
df = spark.range(0, 400_000, numPartitions=4)
df.selectExpr("sum(id * id % 7)").collect()
k = (F.col("id") % 4).alias("k")
heavy = F.when(k == 0, F.expr("aggregate(sequence(1, 200), 0D, (a, x) -> a + sqrt(x))"))
df.select(k, F.col("id")).groupBy("k").agg(F.sum(heavy.otherwise(F.lit(0.0)))).collect()
tracker = spark.sparkContext.statusTracker()
jobs = tracker.getJobIdsForGroup()
stages = [s for j in jobs for s in tracker.getJobInfo(j).stageIds]
tasks = sum(tracker.getStageInfo(s).numTasks for s in stages)
per_job = {j: sum(tracker.getStageInfo(s).numTasks for s in tracker.getJobInfo(j).stageIds)
           for j in jobs}
app = spark.sparkContext.applicationId
spark.stop()
builder._wattspan.stop(wait_s=10)
print(json.dumps({"app": app, "tasks": tasks, "stages": len(stages), "jobs": len(jobs),
                  "per_job": per_job}))
"""


@dataclass
class SparkWorld:
    influx: InfluxD
    app: str
    tasks: int
    stages: int
    jobs: int
    #: Spark's own task count per job id
    per_job: dict[int, int]


def _count(influx: InfluxD, span: str) -> int:
    data = influx.query(
        f'SELECT count("duration_seconds") FROM "spans" WHERE "span_name" = \'{span}\'', db=DB
    )
    return sum(int(s["values"][0][1]) for s in _series(data))


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, influxd_server: InfluxD
) -> Iterator[SparkWorld]:
    pytest.importorskip("pyspark")
    tmp = tmp_path_factory.mktemp("spark-dashboard")
    influxd_server.create_database(DB)
    otlp = free_port()
    agent, _ = _start(_config(tmp, influxd_server, DB), tmp, otlp)
    try:
        p = subprocess.run(
            [sys.executable, "-c", SPARK_APP, f"http://127.0.0.1:{otlp}", SHORT_JVM_OPTS],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        got = json.loads(p.stdout.strip().splitlines()[-1])
        wait_for(
            lambda: (
                _count(influxd_server, "spark.task") == got["tasks"]
                and _count(influxd_server, "spark.application") == 1
            ),
            60,
            "the application's spans in influxd",
        )
        per_job = {int(j): n for j, n in got["per_job"].items()}
        yield SparkWorld(
            influxd_server, got["app"], got["tasks"], got["stages"], got["jobs"], per_job
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()


def _values(w: SparkWorld) -> dict[str, str]:
    return {"host": re.escape("node-a"), "app": re.escape(w.app)}


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p['title']}/{t['refId']}", t) for p in DASHBOARD["panels"] for t in p.get("targets", [])
    ]


def _panel(title: str) -> dict[str, Any]:
    (p,) = [p for p in DASHBOARD["panels"] if p["title"] == title and p["type"] != "row"]
    return p


def _query(w: SparkWorld, q: str) -> list[dict[str, Any]]:
    return _series(w.influx.query(_expand(q, _values(w)), db=DB, epoch="ms"))


# -- structure (no servers) ------------------------------------------------------------------


def test_it_reads_only_what_the_agent_exports() -> None:
    """Every spark_* tag and field a query names is one agent/span_fields.py exports, and
    every span name one the Spark integration emits."""
    from wattspan.engines.spark import spans

    names = {spans.APPLICATION, spans.JOB, spans.STAGE, spans.STAGE_TAIL, spans.TASK}
    texts = [t["query"] for _, t in _targets()]
    texts += [v["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    texts += [a["query"] for a in DASHBOARD["annotations"]["list"]]
    used = {m for q in texts for m in re.findall(r'"(spark_[a-z0-9_]+)"', q)}
    assert used and used <= set(TAGS.values()) | set(FIELDS.values()), used - set(FIELDS.values())
    span_names = {m for q in texts for m in re.findall(r"\"span_name\" = '([^']+)'", q)}
    assert span_names and span_names <= names
    # Grouped by tags only (InfluxQL groups by no field).
    for q in texts:
        for group in re.findall(r"GROUP BY (.*?)(?: fill|$| ORDER)", q):
            keys = {k for k in re.findall(r'"(\w+)"', group)}
            assert keys <= set(TAGS.values()) | {"host", "status"}, (q, keys)


def test_sections_and_variables() -> None:
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Summary", "Stages", "Tasks", "Skew", "Energy", "Executors"]
    assert [v["name"] for v in DASHBOARD["templating"]["list"]] == ["datasource", "host", "app"]
    assert "prometheus" not in DASHBOARD["tags"]


# -- against the real application ------------------------------------------------------------

TARGETS = _targets()


@pytest.mark.server
@pytest.mark.parametrize(("where", "target"), TARGETS, ids=[w for w, _ in TARGETS])
def test_target_returns_data(world: SparkWorld, where: str, target: dict[str, Any]) -> None:
    values = [v for s in _query(world, target["query"]) for row in s["values"] for v in row[1:]]
    assert any(v is not None for v in values), where


@pytest.mark.server
def test_variable_and_annotation_queries(world: SparkWorld) -> None:
    (app,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == "app"]
    got = {row[1] for s in _query(world, app["query"]) for row in s["values"]}
    assert got == {world.app}
    (ann,) = DASHBOARD["annotations"]["list"]
    series = _query(world, ann["query"])
    assert series and all(s["values"] for s in series)


@pytest.mark.server
def test_counts_match_what_spark_reported(world: SparkWorld) -> None:
    def stat(title: str) -> float:
        (s,) = _query(world, _panel(title)["targets"][0]["query"])
        return float(s["values"][0][1])

    assert stat("Tasks") == world.tasks
    assert stat("Stages") == world.stages
    assert stat("Jobs") == world.jobs >= 2
    assert stat("Task energy") > 0
    # Every task ran on the driver (local mode): one executor row holding them all.
    (row,) = _query(world, _panel("Executors")["targets"][0]["query"])
    assert row["tags"]["spark_executor"] == "driver"
    assert row["values"][0][1] == world.tasks
    # Energy per stage sums to the tasks' energy.
    per_stage = _query(world, _panel("Energy per stage")["targets"][0]["query"])
    assert len(per_stage) == world.stages
    assert sum(s["values"][0][1] for s in per_stage) == pytest.approx(stat("Task energy"))


@pytest.mark.server
def test_energy_per_job_sums_the_tasks_of_each_job(world: SparkWorld) -> None:
    """ "Energy per job" groups the task spans by their ``spark_job`` tag: one row per job
    holding Spark's own count of its tasks, the rows adding up to all the tasks' energy.
    (Across nodes: tests/test_spark_two_nodes.py runs the same query on two agents' points.)"""
    rows = _query(world, _panel("Energy per job")["targets"][0]["query"])
    cols = rows[0]["columns"]
    got = {int(r["tags"]["spark_job"]): dict(zip(cols, r["values"][0], strict=True)) for r in rows}
    assert {j: int(v["tasks"]) for j, v in got.items()} == world.per_job
    (total,) = _query(world, _panel("Task energy")["targets"][0]["query"])
    assert all(v["energy"] > 0 for v in got.values())
    assert sum(v["energy"] for v in got.values()) == pytest.approx(total["values"][0][1])
    # The job spans carry the same tag: the job spans' table names each job once.
    (jobs,) = _query(world, _panel("Job spans")["targets"][0]["query"])
    at = jobs["columns"].index("job")
    assert sorted(int(row[at]) for row in jobs["values"]) == sorted(world.per_job)
