"""``wattspan run -- spark-submit app.py`` and ``wattspan run -- python etl.py`` end to end,
with no configuration: the run stores application > jobs > stages > tasks, attributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.spark_local import SHORT_JVM_OPTS
from wattspan.agent.store import Store
from wattspan.engines.spark.launch import looks_like_spark, submit_opts

pytestmark = pytest.mark.server

APP = r"""
import json, sys
from pyspark.sql import SparkSession, functions as F

spark = (SparkSession.builder.master("local[2]").appName("etl")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.shuffle.partitions", "4").getOrCreate())
sc = spark.sparkContext
sc.setLogLevel("ERROR")
sc.setJobDescription("aggregate")
spark.range(0, 200_000, 1, 4).groupBy((F.col("id") % 9).alias("k")).agg(F.sum("id")).collect()
sc.setJobDescription("squares")
sc.parallelize(range(10_000), 6).map(lambda x: x * x).sum()
st = sc.statusTracker()
tasks = 0
for job in sorted(st.getJobIdsForGroup(None)):
    for sid in st.getJobInfo(job).stageIds:
        info = st.getStageInfo(sid)
        if info is not None:
            tasks += info.numCompletedTasks + info.numFailedTasks
jobs = len(st.getJobIdsForGroup(None))
print(json.dumps({"tasks": tasks, "jobs": jobs, "app_id": sc.applicationId}), file=sys.stderr)
spark.stop()
"""


def _spark_submit() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def _run(tmp_path: Path, cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], dict]:
    db = tmp_path / "w.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "WATTSPAN_"))}
    env["PYSPARK_PYTHON"] = sys.executable
    # A user's own SPARK_SUBMIT_OPTS, kept behind wattspan's (and a faster start for the test).
    env["SPARK_SUBMIT_OPTS"] = SHORT_JVM_OPTS
    proc = subprocess.run(
        [sys.executable, "-m", "wattspan", "run", "--store", str(db), "--json", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    told = next(
        json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"tasks"')
    )
    return proc, told


def _check_stored(tmp_path: Path, proc: subprocess.CompletedProcess[str], told: dict) -> None:
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    store = Store(tmp_path / "w.db")
    try:
        spans = store.spans(summary["run_id"])
    finally:
        store.close()
    names = [s.name for s in spans]
    assert names.count("spark.application") == 1
    assert names.count("spark.job") == told["jobs"] >= 2
    tasks = [s for s in spans if s.name == "spark.task"]
    assert len(tasks) == told["tasks"] > 0  # Spark's own count (status tracker)
    (app,) = [s for s in spans if s.name == "spark.application"]
    assert app.attributes["spark.app.id"] == told["app_id"]
    assert "wattspan.run" not in names  # the run is wattspan run's own
    by_id = {s.span_id: s for s in spans}
    for t in tasks:
        assert by_id[t.parent_span_id].name == "spark.stage"  # type: ignore[index]
        # Attributed on this node with the CPU time Spark measured for the task.
        r = t.resources
        assert r["cpu_source"] == "self-reported"
        assert r["cpu_seconds"] == pytest.approx(t.attributes["spark.task.cpu_time_seconds"])
        assert r["wall_seconds"] > 0
        if "active_energy_joules" in r:
            assert 0 <= r["process_energy_joules"] <= r["active_energy_joules"] + 1e-9
    jobs = {s.attributes["spark.job.description"] for s in spans if s.name == "spark.job"}
    assert {"aggregate", "squares"} <= jobs


def test_spark_submit_under_wattspan_run_stores_the_tree(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    proc, told = _run(tmp_path, [_spark_submit(), "--master", "local[2]", "app.py"])
    _check_stored(tmp_path, proc, told)


def test_pyspark_script_under_wattspan_run_stores_the_tree(tmp_path: Path) -> None:
    (tmp_path / "etl.py").write_text(APP)
    proc, told = _run(tmp_path, [sys.executable, "etl.py"])
    _check_stored(tmp_path, proc, told)


def test_only_spark_commands_are_taken_for_spark(tmp_path: Path) -> None:
    plain = tmp_path / "plain.py"
    plain.write_text("print('no spark here')\n")
    etl = tmp_path / "etl.py"
    etl.write_text("from pyspark.sql import SparkSession\n")
    assert looks_like_spark(["/opt/spark/bin/spark-submit", "app.py"], {})
    assert looks_like_spark(["pyspark"], {})
    assert looks_like_spark(["python3", "-u", str(etl)], {})
    assert looks_like_spark(["python", "-m", "pyspark.sql.tests"], {})
    assert not looks_like_spark(["python3", str(plain)], {})
    assert not looks_like_spark(["python", "-c", "print(1)"], {})
    assert not looks_like_spark(["ls", "-l"], {})
    assert not looks_like_spark(["spark-submit"], {"WATTSPAN_SPARK": "0"})
    assert looks_like_spark(["ls"], {"WATTSPAN_SPARK": "1"})
    opts = submit_opts(tmp_path, "-Dspark.eventLog.dir=file:/mine -Xmx1g")
    # Ours first: a -D the user put in SPARK_SUBMIT_OPTS comes later and wins.
    assert opts.startswith("-Dspark.eventLog.enabled=true ")
    assert opts.endswith("-Dspark.eventLog.dir=file:/mine -Xmx1g")
    assert "-Dspark.eventLog.compress=false" in opts


def test_a_plain_command_loads_no_spark_engine(tmp_path: Path) -> None:
    code = (
        "import sys, wattspan.cli.run_cmd as r\n"
        "from wattspan.engines.spark.launch import looks_like_spark\n"
        "looks_like_spark(['python', '-c', 'pass'])\n"
        "heavy = [m for m in sys.modules if m.startswith(('pyspark', 'py4j'))"
        " or m in ('wattspan.engines.spark.monitor', 'wattspan.engines.spark.spans')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_bad_spark_setting_is_one_warning_and_a_run_without_spark_spans(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from wattspan.engines.spark.launch import SparkRunHook

    agent = SimpleNamespace(otlp_endpoint="http://127.0.0.1:1", run=None)
    for bad, key in (
        ({"WATTSPAN_SPARK_FLUSH_S": "soon"}, "WATTSPAN_SPARK_FLUSH_S"),
        ({"WATTSPAN_SPARK_ENDPOINT_TEMPLATE": "node:4317"}, "WATTSPAN_SPARK_ENDPOINT_TEMPLATE"),
    ):
        caplog.clear()
        hook = SparkRunHook(env=bad)
        with caplog.at_level("WARNING", logger="wattspan.spark"):
            assert hook.on_start(agent) == {}  # the child's environment is left as it is
        (record,) = caplog.records
        assert key in record.getMessage() and "no Spark spans" in record.getMessage()
        assert hook.on_exit() == {} and hook.directory is None
