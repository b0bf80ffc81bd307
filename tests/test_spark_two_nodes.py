"""Two nodes on one machine: each node's agent stores exactly the tasks that ran on its worker.

A Spark standalone master and two workers bound to 127.0.0.2 and 127.0.0.3
(``tests/spark_cluster.py``), a ``wattspan agent`` listening on each address (the same OTLP
port on both, as on real nodes), and a driver instrumented with
``wattspan.engines.spark.instrument`` whose endpoint template is ``HOST:PORT``. The tasks
each agent stored are compared with the tasks Spark's own REST API says ran on that host.
Nothing is flushed by hand: the monitor's time-based flush must get the task spans to the
agents while the executors still run. Both agents export to one real influxd, where the
Spark dashboard's per-job energy query must sum each job's tasks over the two nodes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("pyspark")

from tests.procs import free_port, http_get, wait_for
from tests.spark_local import SHORT_JVM_OPTS
from tests.test_dashboards_queries import _expand, _series
from wattspan.agent.executors import ExecutorPids
from wattspan.agent.store import Store
from wattspan.dashboards import build_dashboards

if TYPE_CHECKING:
    from tests.servers import InfluxD
    from tests.spark_cluster import SparkCluster

pytest_plugins = ["tests.spark_cluster", "tests.fixtures_influx"]
pytestmark = pytest.mark.server

DB = "spark_two_nodes"


def port_free_on(port: int, *hosts: str) -> bool:
    import socket

    for h in hosts:
        with socket.socket() as s:
            try:
                s.bind((h, port))
            except OSError:
                return False
    return True


class NodeAgent:
    """``wattspan agent`` with its OTLP receiver and /metrics on one loopback address."""

    def __init__(self, tmp: Path, host: str, otlp_port: int, influx_url: str) -> None:
        self.host = host
        self.otlp_port = otlp_port
        self.metrics_port = free_port()
        self.store = tmp / f"agent-{host}.db"
        config = tmp / f"agent-{host}.toml"
        config.write_text(
            f'[agent]\nhost = "{host}"\ninterval = 0.2\nstate_dir = "{tmp / host}"\n'
            f'[otlp]\nlisten = "{host}"\nport = {otlp_port}\n'
            f'[metrics]\nlisten = "{host}"\nport = {self.metrics_port}\n'
            f'[exporters.influxdb]\nurl = "{influx_url}"\napi = "v1"\ndatabase = "{DB}"\n'
            "flush_interval = 0.1\n"
        )
        self.log = tmp / f"agent-{host}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wattspan",
                "agent",
                "--config",
                str(config),
                "--store",
                str(self.store),
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent on {self.host} exited:\n{self.log.read_text()[-2000:]}")
        status, body = http_get(f"http://{self.host}:{self.metrics_port}/metrics")
        return status == 200 and b"wattspan_cpu_user_seconds_total" in body

    def metrics(self) -> str:
        return http_get(f"http://{self.host}:{self.metrics_port}/metrics")[1].decode()

    def tasks(self) -> list[Any]:
        return [s for s in Store(self.store).spans() if s.name == "spark.task"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def agents(
    spark_cluster: SparkCluster, tmp_path_factory: pytest.TempPathFactory, influxd_server: InfluxD
) -> Iterator[dict[str, NodeAgent]]:
    tmp = tmp_path_factory.mktemp("agents")
    hosts = spark_cluster.worker_hosts
    port = free_port()
    while not port_free_on(port, *hosts):
        port = free_port()
    influxd_server.create_database(DB)
    started = {h: NodeAgent(tmp, h, port, influxd_server.url) for h in hosts}
    try:
        for a in started.values():
            wait_for(a.ready, 60, f"the agent on {a.host}")
        yield started
    finally:
        for a in started.values():
            a.stop()


def test_each_agent_stores_exactly_the_tasks_of_its_worker(
    spark_cluster: SparkCluster,
    agents: dict[str, NodeAgent],
    influxd_server: InfluxD,
    tmp_path: Path,
) -> None:
    from pyspark.sql import SparkSession

    import wattspan.engines.spark as ws

    hosts = spark_cluster.worker_hosts
    port = agents[hosts[0]].otlp_port
    builder = (
        SparkSession.builder.master(spark_cluster.master_url)
        .appName("test_spark_two_nodes")
        # The driver on the first node: its job and stage spans go to that node's agent.
        .config("spark.driver.host", hosts[0])
        .config("spark.driver.bindAddress", hosts[0])
        # Explicit: a process's first session leaves its options as JVM system properties
        # for later ones (other modules turn the UI off).
        .config("spark.ui.enabled", "true")
        .config("spark.ui.port", str(free_port()))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.extraJavaOptions", SHORT_JVM_OPTS)
        .config("spark.executor.memory", "512m")
        .config("spark.executor.cores", "1")
        .config("spark.cores.max", str(len(hosts)))
    )
    builder = ws.instrument(
        builder,
        event_log_dir=tmp_path / "events",
        endpoint=f"http://{hosts[0]}:{port}",
        endpoint_template=f"HOST:{port}",
    )
    handle = builder._wattspan
    spark = builder.getOrCreate()
    try:
        sc = spark.sparkContext
        sc.setLogLevel("ERROR")
        base = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"

        def executor_hosts() -> set[str]:
            got = spark_cluster.get_json(f"{base}/executors")
            return {e["hostPort"].rpartition(":")[0] for e in got if e["id"] != "driver"}

        wait_for(lambda: executor_hosts() == set(hosts), 90, "an executor on each worker")
        # Two jobs, one with a shuffle: CPU-bound enough for each task to take CPU time.
        df = spark.range(0, 400_000, numPartitions=8)
        assert df.selectExpr("sum(id * id % 7) AS s").collect()[0]["s"] > 0
        grouped = df.groupBy((df.id % 16).alias("k")).count().collect()
        assert len(grouped) == 16
        # Spark's own account: every task of the application and the host it ran on.
        truth: dict[str, set[int]] = {h: set() for h in hosts}
        for stage in spark_cluster.get_json(f"{base}/stages?status=complete"):
            sid, attempt = stage["stageId"], stage["attemptId"]
            for t in spark_cluster.get_json(f"{base}/stages/{sid}/{attempt}/taskList?length=10000"):
                truth[t["host"]].add(int(t["taskId"]))
        app_id = sc.applicationId
        # Each host's executor JVM, from its command line (as the agents find it).
        jvm = {}
        for e in spark_cluster.get_json(f"{base}/executors"):
            if e["id"] != "driver":
                jvm[e["hostPort"].rpartition(":")[0]] = ExecutorPids().pid_of(app_id, e["id"])
        expected = sum(len(v) for v in truth.values())

        def all_sent() -> bool:
            # The tailer reads the log as Spark flushes it (at each stage's and job's end);
            # the sender sends what waited a second at the next poll.
            return sum(len(a.tasks()) for a in agents.values()) >= expected

        # While the executors still run: the agents find their JVMs, and watch them.
        wait_for(all_sent, 60, f"{expected} task spans at the agents")
        jobs_told = {
            int(j["jobId"]): int(j["numCompletedTasks"])
            for j in spark_cluster.get_json(f"{base}/jobs")
        }
        for host, agent in agents.items():
            wait_for(
                lambda a=agent, h=host: f'root="{jvm[h]}"' in a.metrics(),
                30,
                f"the executor on {host} watched by its agent",
            )
    finally:
        spark.stop()
        handle.stop(wait_s=10.0)
    assert all(truth.values()), truth  # tasks ran on both hosts

    def stored() -> int:
        return sum(1 for a in agents.values() for s in a.tasks() if s.resources)

    wait_for(lambda: stored() >= expected, 60, f"{expected} task spans attributed")
    for host, agent in agents.items():
        tasks = agent.tasks()
        ids = [int(s.attributes["spark.task.id"]) for s in tasks]
        assert len(ids) == len(set(ids)), f"a task stored twice on {host}"
        assert set(ids) == truth[host], host
        for s in tasks:
            assert s.attributes["spark.executor.host"] == host
            assert s.attributes["spark.app.id"] == app_id
            # Attributed on this node: its own CPU time and a share of this node's energy.
            r = s.resources
            assert r["node_energy_total_joules"] > 0
            assert r["cpu_source"] == "self-reported"
            assert r["cpu_seconds"] == pytest.approx(s.attributes["wattspan.cpu.process_seconds"])
            assert 0.0 <= r["process_energy_joules"] <= r["node_energy_total_joules"]
        busy = sum(s.resources["process_energy_joules"] for s in tasks)
        assert busy > 0, f"no energy attributed to the tasks on {host}"
        # Each task was attributed to the executor JVM of this host.
        assert jvm[host] is not None
        assert {s.pid for s in tasks} == {jvm[host]}
    # Job and stage spans went to the driver's node only.
    others = [a for h, a in agents.items() if h != hosts[0]]
    names_driver = {s.name for s in Store(agents[hosts[0]].store).spans()}
    assert {"spark.application", "spark.job", "spark.stage"} <= names_driver
    for a in others:
        # Tasks, and the run's root span that ends the application's run on that agent too.
        assert {s.name for s in Store(a.store).spans()} == {"spark.task", "wattspan.run"}

    # Per-job energy across the nodes: the Spark dashboard's query over both agents' points.
    by_job: dict[int, float] = {}
    count: dict[int, int] = {}
    hosts_of: dict[int, set[str]] = {}
    for host, agent in agents.items():
        for t in agent.tasks():
            job = int(t.attributes["spark.job.id"])
            by_job[job] = by_job.get(job, 0.0) + t.resources["process_energy_joules"]
            count[job] = count.get(job, 0) + 1
            hosts_of.setdefault(job, set()).add(host)
    assert count == jobs_told  # each job's tasks, as Spark counted them
    assert any(len(h) == 2 for h in hosts_of.values()), hosts_of  # a job on both nodes
    (panel,) = [
        p
        for p in build_dashboards()["wattspan-spark-influxdb"]["panels"]
        if p["title"] == "Energy per job"
    ]
    every_host = "(" + "|".join(re.escape(h) for h in hosts) + ")"
    query = _expand(panel["targets"][0]["query"], {"host": every_host, "app": re.escape(app_id)})

    def per_job() -> dict[int, tuple[int, float]]:
        rows = _series(influxd_server.query(query, db=DB))
        out = {}
        for r in rows:
            v = dict(zip(r["columns"], r["values"][0], strict=True))
            out[int(r["tags"]["spark_job"])] = (int(v["tasks"]), float(v["energy"]))
        return out

    wait_for(
        lambda: {j: n for j, (n, _) in per_job().items()} == jobs_told,
        60,
        "every task point in influxd",
    )
    got = per_job()
    for job, joules in by_job.items():
        assert got[job][1] == pytest.approx(joules, rel=1e-6), job
