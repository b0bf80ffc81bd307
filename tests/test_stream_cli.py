"""``wattspan stream generate|run|queries`` end to end, on real processes: the generator's
file, the query under the embedded agent (the same one ``wattspan run`` uses), the stored
run with its spans, attribution and latency metric, and what ``runs``/``show``/``compare``/
``report`` make of it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench._stream_baselines import pandas_ysb
from wattspan.agent.store import Store
from wattspan.engines.stream import io
from wattspan.engines.stream.datasets.ysb import ADS_SCHEMA, SCHEMA
from wattspan.engines.stream.queries import QUERIES

EVENTS, GEN_RATE = 200_000, 2_000  # 100 s of event time: 10 YSB windows


def wattspan(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("stream-cli")
    p = wattspan(
        "stream", "generate", "ysb", "--events", "200k", "--rate", "2k", "--seed", "5",
        "-o", str(d / "ysb.parquet"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (d / "ysb.ads.parquet").exists()
    return d / "ysb.parquet"


@pytest.fixture(scope="module")
def stored(data: Path) -> dict[str, Any]:
    """One run of YSB with every task traced, its results in counts.csv."""
    store = data.parent / "wattspan.db"
    out = data.parent / "counts.csv"
    p = wattspan(
        "stream", "run", "ysb", "--input", str(data), "-o", str(out), "--store", str(store),
        "--workers", "2", "--task-size", "256k", "--task-spans", "1", "--name", "ysb-all-tasks",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return {"store": store, "out": out, "stdout": p.stdout, "stderr": p.stderr}


def _events(data: Path) -> list[dict[str, Any]]:
    return list(io.read_batches(data, SCHEMA))


def test_counts_equal_the_pandas_baseline(data: Path, stored: dict[str, Any]) -> None:
    ads = io.read_table(data.with_name("ysb.ads.parquet"), ADS_SCHEMA)
    want = pandas_ysb(_events(data), ads)
    got = pd.read_csv(stored["out"])
    assert len(want) > 0 and want["window_start"].nunique() == 10
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_prints_the_stream_figures_after_the_run_table(stored: dict[str, Any]) -> None:
    out = stored["stdout"]
    for words in ("events/s", "events/s per core", "window latency", "p50", "p99",
                  "tasks (CPU/GPU)", "events per joule"):  # fmt: skip
        assert words in out, out
    assert f"{EVENTS:,} events, 10 windows" in out
    assert "wall time" in stored["stderr"]  # the run table, as `wattspan run` prints it


def test_the_run_is_stored_with_query_and_task_spans(stored: dict[str, Any]) -> None:
    store = Store(stored["store"])
    try:
        (run,) = [r for r in store.runs() if r.name == "ysb-all-tasks"]
        spans = store.spans(run.id)
        metrics = store.metrics(run.id)
    finally:
        store.close()
    assert run.exit_code == 0 and run.summary and run.summary["tags"]["query"] == "ysb"
    (query,) = [s for s in spans if s.name == "stream.query"]
    tasks = [s for s in spans if s.name == "stream.task"]
    a = query.attributes
    assert a["wattspan.items"] == EVENTS == a["wattspan.stream.events"]
    assert a["wattspan.stream.workers"] == 2 and a["wattspan.stream.scheduler"] == "fcfs"
    assert a["wattspan.stream.windows"] == 10
    # Every task traced (--task-spans 1): as many spans as tasks, all under the query span.
    assert len(tasks) == a["wattspan.stream.tasks.cpu"] == a["wattspan.stream.task_spans"] > 1
    assert {t.parent_span_id for t in tasks} == {query.span_id}
    assert sum(t.attributes["wattspan.items"] for t in tasks) == EVENTS
    assert all(query.start_ts <= t.start_ts <= t.end_ts <= query.end_ts for t in tasks)
    # Attribution: CPU seconds and energy on the query span and on each task span.
    for s in [query, *tasks]:
        r = s.resources
        assert r["cpu_source"] == "self-reported"
        assert "node_energy_total_joules" in r and "process_energy_joules" in r, r
    assert query.resources["cpu_seconds"] > 0
    assert sum(t.resources["cpu_seconds"] for t in tasks) > 0
    assert query.resources["throughput_items_per_second"] > 0
    # The latency histogram: count and sum, one value per window.
    by_name = {m.name: m for m in metrics}
    count = by_name["wattspan.stream.window.latency.count"]
    assert count.value == 10 and count.attributes["wattspan.stream.query"] == "ysb"
    assert by_name["wattspan.stream.window.latency.sum"].value > 0
    assert "wattspan.stream.window.latency.p99" in by_name


def test_runs_show_compare_and_report_read_it(data: Path, stored: dict[str, Any]) -> None:
    db = str(stored["store"])
    runs = wattspan("runs", "--store", db, "--json", "--tag", "engine=stream")
    assert runs.returncode == 0
    assert "ysb-all-tasks" in [json.loads(line)["name"] for line in runs.stdout.splitlines()]
    show = wattspan("show", "ysb-all-tasks", "--store", db)
    assert show.returncode == 0 and "stream.query" in show.stdout and "stream.task" in show.stdout
    second = wattspan(
        "stream", "run", "ysb", "--input", str(data), "--store", db, "--workers", "1",
        "--name", "ysb-one-worker",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    cmp = wattspan("compare", "ysb-all-tasks", "ysb-one-worker", "--store", db, "--json")
    assert cmp.returncode == 0, cmp.stderr
    assert [r["name"] for r in json.loads(cmp.stdout)["runs"]] == [
        "ysb-all-tasks",
        "ysb-one-worker",
    ]
    html = data.parent / "report.html"
    rep = wattspan("report", "ysb-all-tasks", "ysb-one-worker", "--store", db, "-o", str(html))
    assert rep.returncode == 0, rep.stderr
    assert "stream.query" in html.read_text(encoding="utf-8")


def test_json_is_one_machine_readable_object(data: Path, tmp_path: Path) -> None:
    p = wattspan(
        "stream", "run", "ysb", "--input", str(data), "--store", str(tmp_path / "w.db"), "--json",
        "--gpu",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (line,) = p.stdout.strip().splitlines()
    obj = json.loads(line)
    s = obj["stream"]
    assert obj["exit_code"] == 0 and obj["summary"]["cpu_seconds"] > 0
    assert s["events"] == EVENTS and s["windows"] == 10 and s["latency_kind"] == "processing"
    assert s["events_per_second"] > 0 and s["latency_seconds"]["p99"] >= s["latency_seconds"]["p50"]
    assert s["tasks"]["cpu"] >= 1 and s["gpu"] is True and s["latency_metric_sent"] is True
    # --gpu: the GPU worker takes tasks where CuPy sees a device; else it is off, in one line.
    if importlib.util.find_spec("cupy") is None:
        assert s["task_share"] == {"cpu": 1.0}
        assert "wattspan: stream engine: GPU worker off: no CuPy" in p.stderr
    else:
        assert sum(s["tasks"].values()) == sum(s["tasks"].get(k, 0) for k in ("cpu", "gpu"))
    e = s["energy"]
    assert e["basis"] == "query span, process share" and e["events_per_joule"] > 0
    assert e["events_per_joule"] == pytest.approx(EVENTS / s["query_span"]["process_energy_joules"])


def test_rate_replays_the_input_and_measures_event_time_latency(data: Path, tmp_path: Path) -> None:
    rate = 400_000  # 200k events: half a second of replay, 50 ms of it per window
    p = wattspan(
        "stream", "run", "ysb", "--input", str(data), "--store", str(tmp_path / "w.db"),
        "--rate", "400k", "--task-size", "64k", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)["stream"]
    assert s["latency_kind"] == "event_time" and s["rate"] == rate
    assert s["wall_seconds"] >= EVENTS / rate * 0.95
    assert s["input_rate_achieved"] <= rate * 1.02
    # Measured from when each window's end was due in the replay (not from the start: the
    # last window would then wait ~0.5 s): about one 64 KiB task (~1,900 rows, 5 ms).
    assert s["latency_seconds"]["windows"] == 10
    assert 0 <= s["latency_seconds"]["p50"] < 0.25


def test_runs_from_a_directory_with_a_wattspan_folder(data: Path, tmp_path: Path) -> None:
    """From a checkout's top level with a regular install, `python -m` in the worker found
    the checkout's `wattspan/` (the root package alone) first: "No module named
    'wattspan.engines'". The stand-in here fails louder still if it is imported."""
    shadow = tmp_path / "wattspan"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing folder was imported')\n")
    p = subprocess.run(
        [sys.executable, "-P", "-m", "wattspan", "stream", "run", "ysb", "--input", str(data),
         "--store", str(tmp_path / "w.db"), "--json"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["stream"]["events"] == EVENTS


def _one_line_exit_2(p: subprocess.CompletedProcess[str], words: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wattspan: ") and words in lines[0], lines


def test_bad_input_is_one_line_and_exit_2(data: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    _one_line_exit_2(
        wattspan("stream", "run", "ysb", "--input", str(tmp_path / "nope.parquet"), "--store",
                 str(db)),
        "no such file",
    )  # fmt: skip
    # CM1 reads the cluster-monitoring schema: the YSB file lacks its columns.
    _one_line_exit_2(
        wattspan("stream", "run", "cm1", "--input", str(data), "--store", str(db)),
        "missing column 'timestamp'",
    )
    lone = tmp_path / "lone.parquet"
    lone.write_bytes(data.read_bytes())  # events without the ads table beside them
    _one_line_exit_2(wattspan("stream", "run", "ysb", "--input", str(lone)), "ad -> campaign")
    _one_line_exit_2(
        wattspan("stream", "run", "ysb", "--input", str(data), "-o", str(tmp_path / "x.txt")),
        "unknown file type",
    )
    _one_line_exit_2(wattspan("stream", "run", "nope", "--input", str(data)), "unknown query")
    bad = wattspan("stream", "run", "ysb", "--input", str(data), "--task-size", "lots")
    assert bad.returncode == 2 and "not a size in bytes" in bad.stderr
    assert not db.exists()  # nothing ran, nothing was stored


def test_queries_lists_every_shipped_query_with_schema_and_window() -> None:
    p = wattspan("stream", "queries")
    assert p.returncode == 0
    for name in QUERIES:
        assert f"\n{name} " in "\n" + p.stdout
    assert "RANGE 10000 SLIDE 10000 on event_time" in p.stdout
    assert "RANGE 3600 SLIDE 1 on timestamp" in p.stdout
    rows = [json.loads(line) for line in wattspan("stream", "queries", "--json").stdout.split("\n")
            if line]  # fmt: skip
    assert [r["query"] for r in rows] == list(QUERIES)
    ysb = rows[0]
    assert ysb["schema"]["event_time"] == "int64" and ysb["group_by"] == ["campaign_id"]
