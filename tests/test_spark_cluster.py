"""The two-node Spark fixture itself: a job on it runs tasks on both worker hosts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("pyspark")

from pyspark.sql import SparkSession

from tests.procs import free_port, http_get, wait_for
from tests.spark_local import SHORT_JVM_OPTS

if TYPE_CHECKING:
    from tests.spark_cluster import SparkCluster

# Loaded as a plugin, not imported: the fixture module's names come through the fixture.
pytest_plugins = ["tests.spark_cluster"]
pytestmark = pytest.mark.server


def cluster_session(cluster: SparkCluster, name: str) -> SparkSession:
    """A driver on 127.0.0.1 using both workers' single cores (one executor each)."""
    spark = (
        SparkSession.builder.master(cluster.master_url)
        .appName(name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        # Explicit: the first session of a process passes its options to the JVM as system
        # properties, which later sessions inherit unless they set them (the other test
        # modules' sessions turn the UI off and the event log on).
        .config("spark.ui.enabled", "true")
        .config("spark.eventLog.enabled", "false")
        .config("spark.ui.port", str(free_port()))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.extraJavaOptions", SHORT_JVM_OPTS)
        .config("spark.executor.memory", "512m")
        .config("spark.executor.cores", "1")
        .config("spark.cores.max", str(len(cluster.worker_hosts)))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def executor_hosts(spark: SparkSession) -> dict[str, str]:
    """Executor id -> host, from the driver's REST API (the driver itself left out)."""
    app = spark.sparkContext.applicationId
    url = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{app}/executors"
    got = json.loads(http_get(url)[1])
    return {e["id"]: e["hostPort"].rpartition(":")[0] for e in got if e["id"] != "driver"}


@pytest.fixture(scope="module")
def spark(spark_cluster: SparkCluster) -> Iterator[SparkSession]:
    session = cluster_session(spark_cluster, "test_spark_cluster")
    # Tasks go to whichever executor has registered: wait for both before the first job.
    wait_for(
        lambda: set(executor_hosts(session).values()) == set(spark_cluster.worker_hosts),
        timeout=90,
        what="an executor on each worker",
    )
    yield session
    session.stop()


def test_both_workers_are_registered(spark_cluster: SparkCluster) -> None:
    state = spark_cluster.state()
    assert state is not None
    assert sorted(spark_cluster.alive_worker_hosts(state)) == sorted(spark_cluster.worker_hosts)
    assert {w["cores"] for w in state["workers"]} == {1}


def test_a_job_runs_tasks_on_both_worker_hosts(
    spark: SparkSession, spark_cluster: SparkCluster
) -> None:
    df = spark.range(0, 200_000, numPartitions=8)
    total = df.selectExpr("sum(id) AS s").collect()[0]["s"]
    assert total == 200_000 * 199_999 // 2
    sc = spark.sparkContext
    base = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
    hosts: dict[str, int] = {}
    tasks = 0
    for stage in spark_cluster.get_json(f"{base}/stages?status=complete"):
        sid, attempt = stage["stageId"], stage["attemptId"]
        for t in spark_cluster.get_json(f"{base}/stages/{sid}/{attempt}/taskList?length=10000"):
            tasks += 1
            hosts[t["host"]] = hosts.get(t["host"], 0) + 1
    assert tasks >= 8
    assert set(hosts) == set(spark_cluster.worker_hosts), hosts
    # Each host's tasks ran in the executor bound to it.
    by_executor = executor_hosts(spark)
    assert sorted(by_executor.values()) == sorted(spark_cluster.worker_hosts)


def test_each_executors_jvm_is_found_from_its_command_line(spark: SparkSession) -> None:
    from wattspan.agent.executors import ExecutorPids

    app = spark.sparkContext.applicationId
    pids = ExecutorPids()
    hosts = executor_hosts(spark)
    assert len(hosts) == 2
    for eid, host in hosts.items():
        pid = pids.pid_of(app, eid)
        assert pid is not None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        assert "org.apache.spark.executor.CoarseGrainedExecutorBackend" in argv
        assert argv[argv.index("--hostname") + 1] == host
    assert pids.scans == 1
