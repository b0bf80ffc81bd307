"""A ``spark-sql`` experiment on a real ``local[2]`` session over a Parquet table.

One session for the whole experiment (its own warm-up stored and flagged), a snippet per
span with the Spark integration's job, stage and task spans (task metrics from the event
log) under it, placeholders rendered into the SQL, and each repetition a stored run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from wattspan.agent.store import Store
from wattspan.experiments.store import ExperimentStore

pytestmark = pytest.mark.server

LIMITS = (10, 100)


@pytest.fixture(scope="module")
def spark_experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("spark")
    n = 20_000
    pq.write_table(
        pa.table({"k": list(range(n)), "v": [float((i * 7919) % 1000) for i in range(n)]}),
        d / "t.parquet",
    )
    cfg = d / "sql.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [experiment]
            name = "spark-sql"
            warmups = 1
            repetitions = 2
            order = "sequential"

            [quiet]
            check = "off"

            [matrix]
            limit = [{LIMITS[0]}, {LIMITS[1]}]

            [[run]]
            kind = "spark-sql"
            master = "local[2]"
            tables = {{ t = "t.parquet" }}
            action = "count"
            session_warmups = 1
            conf = {{ "spark.sql.shuffle.partitions" = 2 }}
            sql = '''
            -- name: top
            SELECT * FROM t ORDER BY v DESC LIMIT {{limit}};
            -- name: agg
            SELECT k % 7 AS g, sum(v) AS s FROM t GROUP BY k % 7
            '''
            """
        ).lstrip()
    )
    store = d / "wattspan.db"
    p = subprocess.run(
        [sys.executable, "-m", "wattspan", "experiment", "run", str(cfg), "--store", str(store),
         "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    es = ExperimentStore(store)
    try:
        reps = es.repetitions(out["experiment_id"])
    finally:
        es.close()
    return {"store": store, "out": out, "reps": reps}


def test_session_warmup_and_repetitions(spark_experiment: dict[str, Any]) -> None:
    reps = spark_experiment["reps"]
    session = [r for r in reps if r.phase == "session-warmup"]
    warm = [r for r in reps if r.phase == "warmup" and r.final]
    measured = [r for r in reps if r.phase == "measured" and r.final]
    assert len(session) == 1 and not session[0].final and session[0].warmup
    assert len(warm) == 2 and all(r.warmup for r in warm)
    assert len(measured) == 4 and all(r.status == "ok" for r in measured)
    # One session: the session warm-up ran before anything else.
    assert min(reps, key=lambda r: r.start_ts).phase == "session-warmup"
    for r in measured:
        # The placeholder reached the SQL: the top snippet returns `limit` rows.
        assert r.figures["rows"] == {"top": r.params["limit"], "agg": 7}
        assert r.figures["cpu_seconds"] > 0
        assert r.figures["cpu_source"] == "jvm process tree"


def test_snippet_spans_with_spark_task_metrics(spark_experiment: dict[str, Any]) -> None:
    measured = [r for r in spark_experiment["reps"] if r.phase == "measured" and r.final]
    store = Store(spark_experiment["store"])
    try:
        for r in measured:
            names = {s["name"] for s in r.spans}
            assert {"top", "agg", "spark.job", "spark.stage", "spark.task"} <= names
            spans = store.spans(r.run_id)
            by_id = {s.span_id: s for s in spans}
            snippets = {s.name: s for s in spans if s.name in ("top", "agg")}
            assert len(snippets) == 2
            for s in snippets.values():
                assert s.end_ts > s.start_ts
                assert s.resources["wall_seconds"] == pytest.approx(s.end_ts - s.start_ts)
                assert s.resources.get("cpu_seconds", 0) >= 0
            jobs = [s for s in spans if s.name == "spark.job"]
            assert jobs and all(by_id[j.parent_span_id].name in snippets for j in jobs)
            tasks = [s for s in spans if s.name == "spark.task"]
            assert tasks
            for t in tasks:
                assert t.attributes["spark.task.cpu_time_seconds"] >= 0
                assert t.attributes["spark.task.run_time_seconds"] >= 0
                # A task hangs under a stage of a job of one of this repetition's snippets.
                stage = by_id[t.parent_span_id]
                assert stage.name == "spark.stage"
                assert by_id[stage.parent_span_id].name == "spark.job"
            # The agg snippet's jobs are inside its own interval, not the top snippet's.
            agg = snippets["agg"]
            for j in jobs:
                if j.parent_span_id == agg.span_id:
                    assert agg.start_ts - 0.05 <= j.start_ts <= agg.end_ts + 0.05
    finally:
        store.close()


def test_spark_results_compare_configurations(spark_experiment: dict[str, Any]) -> None:
    confs = spark_experiment["out"]["configurations"]
    assert {c["config"]["limit"] for c in confs} == set(LIMITS)
    for c in confs:
        assert c["ok"] == 2 and c["warmups"] == 1
        assert c["stats"]["wall_seconds"]["n"] == 2


def test_spark_sql_file_and_bad_table(tmp_path: Path) -> None:
    from wattspan.experiments.config import ExperimentConfigError, parse_config

    (tmp_path / "q.sql").write_text("-- name: one\nSELECT 1;\n\nSELECT {x} AS y;\n")
    cfg = parse_config(
        {
            "matrix": {"x": [1]},
            "run": [{"kind": "spark-sql", "sql_file": "q.sql", "tables": {"t": "d.csv"}}],
        },
        base_dir=tmp_path,
    )
    spec = cfg.runs[0]
    assert [(s.name, s.sql) for s in spec.snippets] == [
        ("one", "SELECT 1"),
        ("q2", "SELECT {x} AS y"),
    ]
    assert spec.tables[0].format == "csv" and spec.tables[0].options["header"] == "true"
    with pytest.raises(ExperimentConfigError, match=r"run\[0\]\.sql\[q2\]: placeholder \{x\}"):
        parse_config({"run": [{"kind": "spark-sql", "sql_file": "q.sql"}]}, base_dir=tmp_path)
    with pytest.raises(ExperimentConfigError, match=r"run\[0\]\.tables\.t\.path"):
        parse_config({"run": [{"kind": "spark-sql", "sql": "SELECT 1", "tables": {"t": {}}}]})
