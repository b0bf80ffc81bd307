"""The ``stream`` kind end to end through the CLI: a grid of YSB runs over events the
experiment generates itself, each repetition a stored run of the real stream engine with its
query and task spans and the stream figures in the repetition, shown, exported and modelled;
a file input with a replay rate; and the config's validation of the stream keys.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from wattspan.agent.store import Store
from wattspan.experiments.config import ExperimentConfigError, load_config, parse_config
from wattspan.experiments.store import ExperimentStore

EVENTS = 200_000
SEED = 3
WORKERS = (1, 2)
TASK_SIZES = {"64K": 64 * 1024, "1M": 1024 * 1024}
STREAM_COLUMNS = (
    "events",
    "events_per_second",
    "events_per_joule",
    "window_latency_p50_seconds",
    "window_latency_p99_seconds",
)


def _toml(s: str) -> str:
    return textwrap.dedent(s).lstrip()


def _wattspan(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "250"},
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("stream-grid")
    cfg = d / "ysb.toml"
    cfg.write_text(
        _toml(
            f"""
            [experiment]
            name = "ysb-grid"
            warmups = 1
            repetitions = 2
            order = "interleaved"
            baseline = {{ workers = 1 }}

            [quiet]
            check = "off"

            [matrix]
            workers = {list(WORKERS)}
            task_size = {json.dumps(list(TASK_SIZES))}

            [[run]]
            kind = "stream"
            query = "ysb"
            generate = {{ events = {EVENTS}, seed = {SEED} }}
            workers = "{{workers}}"
            task_size = "{{task_size}}"
            scheduler = "fcfs"
            task_spans = 0.05
            """
        )
    )
    store = d / "wattspan.db"
    p = _wattspan("experiment", "run", str(cfg), "--store", str(store), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    es = ExperimentStore(store)
    try:
        reps = es.repetitions(out["experiment_id"])
    finally:
        es.close()
    return {"dir": d, "store": store, "out": out, "reps": reps}


def _measured(reps: list[Any]) -> list[Any]:
    return [r for r in reps if r.phase == "measured" and r.final]


def test_every_repetition_is_a_stream_run(grid: dict[str, Any]) -> None:
    reps = grid["reps"]
    measured = _measured(reps)
    warm = [r for r in reps if r.phase == "warmup" and r.final]
    assert len(measured) == len(WORKERS) * len(TASK_SIZES) * 2
    assert len(warm) == len(WORKERS) * len(TASK_SIZES)
    assert all(r.status == "ok" for r in measured + warm)
    combos = {(r.params["workers"], r.params["task_size"]) for r in measured}
    assert combos == {(w, t) for w in WORKERS for t in TASK_SIZES}
    for r in measured:
        f = r.figures
        assert f["events"] == EVENTS
        assert f["events_per_second"] > 0
        # The engine's figure is over its own wall time, which lies inside the run's.
        assert 0 < f["query_seconds"] < f["wall_seconds"]
        assert f["events_per_second"] == pytest.approx(EVENTS / f["query_seconds"], rel=1e-6)
        assert f["window_latency_p50_seconds"] <= f["window_latency_p99_seconds"]
        assert f["window_latency_kind"] == "processing"
        assert f["windows"] >= 1 and f["result_rows"] >= 1
        # The task size reached the worker in bytes (binary units): one task per size.
        size = TASK_SIZES[r.params["task_size"]]
        assert f["tasks"] == pytest.approx(f["input_bytes"] / size, abs=1)
        assert f["gpu_tasks"] == 0
        if f["events_per_joule"] is not None:
            joules = f["query_process_energy_joules"] or f["process_energy_joules"]
            assert f["events_per_joule"] == pytest.approx(EVENTS / joules, rel=1e-6)


def test_runs_hold_the_query_and_task_spans(grid: dict[str, Any]) -> None:
    measured = _measured(grid["reps"])
    store = Store(grid["store"])
    try:
        runs = {r.id: r for r in store.runs()}
        for r in measured:
            run = runs[r.run_id]
            cmd = run.command
            assert cmd[1:4] == ["-P", "-m", "wattspan.engines.stream.cli_worker"]
            assert cmd[cmd.index("--workers") + 1] == str(r.params["workers"])
            tags = run.summary["tags"]
            assert tags["engine"] == "stream" and tags["query"] == "ysb"
            assert tags["workers"] == str(r.params["workers"])
            assert store.params(run.id) == r.params
            spans = store.spans(run.id)
            query = [s for s in spans if s.name == "stream.query"]
            tasks = [s for s in spans if s.name == "stream.task"]
            assert len(query) == 1
            # task_spans = 0.05 of the tasks, the first included.
            assert 1 <= len(tasks) <= r.figures["tasks"]
            assert all(t.parent_span_id == query[0].span_id for t in tasks)
            names = {s["name"]: s for s in r.spans}
            assert names["stream.query"]["count"] == 1
            assert names["stream.task"]["count"] == len(tasks)
            assert r.figures["query_cpu_seconds"] == query[0].resources.get("cpu_seconds")
    finally:
        store.close()


def test_input_generated_once_outside_the_measured_runs(grid: dict[str, Any]) -> None:
    from wattspan.engines.stream.io import parquet_metadata

    exp_id = grid["out"]["experiment_id"]
    data = grid["store"].parent / "experiments" / exp_id / "data"
    files = sorted(p.name for p in data.iterdir())
    assert files == [f"ysb-{EVENTS}-seed{SEED}.ads.parquet", f"ysb-{EVENTS}-seed{SEED}.parquet"]
    meta = parquet_metadata(data / files[1])
    assert meta["wattspan.events"] == str(EVENTS) and meta["wattspan.seed"] == str(SEED)
    first = min(r.start_ts for r in grid["reps"])
    assert (data / files[1]).stat().st_mtime <= first
    # Every run in the store is a repetition: the generation was no run of its own.
    store = Store(grid["store"])
    try:
        assert {r.id for r in store.runs()} == {r.run_id for r in grid["reps"]}
    finally:
        store.close()


def test_show_export_and_model_have_the_stream_figures(grid: dict[str, Any]) -> None:
    store = str(grid["store"])
    p = _wattspan("experiment", "show", "latest", "--store", store, "--json")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)["configurations"]
    assert len(shown) == 4
    for c in shown:
        st = c["stats"]["events_per_second"]
        assert st["n"] == 2 and st["mean"] > 0
        assert st["min"] <= st["mean"] <= st["max"]
        if c["config"]["workers"] != 1:
            assert "events_per_second" in c["versus_baseline"]

    p = _wattspan("experiment", "show", "latest", "--store", store, "--metric", "events_per_second")
    assert p.returncode == 0, p.stderr
    assert "events/s" in p.stdout and "events_per_second vs baseline" in p.stdout

    out = grid["dir"] / "results.csv"
    p = _wattspan("experiment", "export", "latest", "--store", store, "-o", str(out))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 12
    for col in STREAM_COLUMNS:
        assert col in rows[0]
    for row in rows:
        assert int(row["events"]) == EVENTS
        assert float(row["events_per_second"]) > 0
        assert int(row["span.stream.query.count"]) == 1

    pq_out = grid["dir"] / "results.parquet"
    p = _wattspan("experiment", "export", "latest", "--store", store, "-o", str(pq_out))
    assert p.returncode == 0, p.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(pq_out)
    assert set(STREAM_COLUMNS) <= set(table.column_names)
    assert table.column("events").to_pylist() == [EVENTS] * 12

    p = _wattspan(
        "experiment", "model", "latest", "--store", store, "--target", "events_per_second",
        "--method", "linear", "--predict", "workers=2,task_size=1M", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["target"] == "events_per_second"
    assert m["predictions"][0]["value"] > 0


def test_file_input_and_replay_rate(tmp_path: Path) -> None:
    events = tmp_path / "cm.csv"
    p = _wattspan("stream", "generate", "cm", "--events", "20k", "--seed", "1", "-o", str(events))
    assert p.returncode == 0, p.stderr
    cfg = tmp_path / "cm.toml"
    cfg.write_text(
        _toml(
            """
            [experiment]
            warmups = 0
            repetitions = 1
            [quiet]
            check = "off"
            [matrix]
            rate = [0, "200k"]
            [[run]]
            kind = "stream"
            query = "cm1"
            input = "cm.csv"
            workers = 1
            rate = "{rate}"
            """
        )
    )
    store = tmp_path / "w.db"
    p = _wattspan("experiment", "run", str(cfg), "--store", str(store), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    es = ExperimentStore(store)
    try:
        reps = _measured(es.repetitions(json.loads(p.stdout)["experiment_id"]))
    finally:
        es.close()
    by_rate = {r.params["rate"]: r.figures for r in reps}
    assert set(by_rate) == {0, "200k"}
    assert all(f["events"] == 20_000 for f in by_rate.values())
    # rate 0: read as fast as it comes; 200k: replayed, so event-time latency and at most
    # the target rate (20k events take at least 0.1 s).
    assert by_rate[0]["window_latency_kind"] == "processing"
    assert "input_rate_achieved" not in by_rate[0]
    paced = by_rate["200k"]
    assert paced["window_latency_kind"] == "event_time"
    assert 0 < paced["input_rate_achieved"] <= 200_000 * 1.05
    assert paced["query_seconds"] >= 20_000 / 200_000 * 0.9
    # No data of its own: a file input is read where it is.
    assert not (tmp_path / "experiments").exists()


def _parse(text: str, base: Path | None = None) -> Any:
    import tomllib

    return parse_config(tomllib.loads(text), base_dir=base)


GEN = "generate = { events = 1000 }"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[[run]]\nkind = "stream"\n' + GEN, "run[0].query", "required"),
        ('[[run]]\nkind = "stream"\nquery = "ysbx"\n' + GEN, "run[0].query", "unknown query"),
        ('[[run]]\nkind = "stream"\nquery = "cm1"', "run[0].input", "exactly one of input"),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\ninput = "x.csv"\n' + GEN,
            "run[0].input",
            "exactly one of input",
        ),
        ('[[run]]\nkind = "stream"\nquery = "cm1"\ninput = "nope.csv"', "run[0].input", "no such"),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\nworkers = -1\n' + GEN,
            "run[0].workers",
            "at least 0",
        ),
        (
            '[matrix]\nw = [1, "two"]\n[[run]]\nkind = "stream"\nquery = "cm1"\nworkers = "{w}"\n'
            + GEN,
            "run[0].workers",
            "'two' (configuration w=two)",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\ntask_size = "1 ton"\n' + GEN,
            "run[0].task_size",
            "not a size",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\nscheduler = "lifo"\n' + GEN,
            "run[0].scheduler",
            "not one of fcfs, static, hls",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\nrate = "fast"\n' + GEN,
            "run[0].rate",
            "not a rate",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\ntask_spans = 2\n' + GEN,
            "run[0].task_spans",
            "between 0 and 1",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\ngenerate = { events = 10, sed = 1 }',
            "run[0].generate.sed",
            "unknown key",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\ngenerate = { seed = 1 }',
            "run[0].generate.events",
            "required",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\ngenerate = { events = 0 }',
            "run[0].generate.events",
            ">= 1",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\nworkers = "{n}"\n' + GEN,
            "run[0].workers",
            "{n} names no parameter",
        ),
        (
            '[[run]]\nkind = "stream"\nquery = "cm1"\nargv = ["x"]\n' + GEN,
            "run[0].argv",
            "unknown key",
        ),
    ],
)
def test_bad_stream_config_names_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    with pytest.raises(ExperimentConfigError) as info:
        _parse(text, tmp_path)
    assert info.value.key == key
    assert words in info.value.message


def test_file_inputs_are_checked_before_anything_runs(tmp_path: Path) -> None:
    # A CSV without the query's columns, and a YSB file without its ads table beside it.
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ExperimentConfigError) as info:
        _parse('[[run]]\nkind = "stream"\nquery = "cm1"\ninput = "bad.csv"', tmp_path)
    assert info.value.key == "run[0].input" and "bad.csv" in info.value.message
    p = _wattspan("stream", "generate", "ysb", "--events", "2k", "-o", str(tmp_path / "y.parquet"))
    assert p.returncode == 0, p.stderr
    (tmp_path / "y.ads.parquet").rename(tmp_path / "elsewhere.parquet")
    with pytest.raises(ExperimentConfigError) as info:
        _parse('[[run]]\nkind = "stream"\nquery = "ysb"\ninput = "y.parquet"', tmp_path)
    assert info.value.key == "run[0].ads" and "y.ads.parquet" in info.value.message
    cfg = _parse(
        '[[run]]\nkind = "stream"\nquery = "ysb"\ninput = "y.parquet"\nads = "elsewhere.parquet"',
        tmp_path,
    )
    (args,) = cfg.runs[0].stream_args.values()
    assert args.input == tmp_path / "y.parquet" and args.ads == tmp_path / "elsewhere.parquet"
    assert (args.workers, args.task_size, args.scheduler, args.rate) == (2, 1 << 20, "fcfs", None)
    with pytest.raises(ExperimentConfigError) as info:
        _parse('[[run]]\nkind = "stream"\nquery = "cm1"\ninput = "y.parquet"', tmp_path)
    assert info.value.key == "run[0].input"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('query = "nope"\n' + GEN, "run[0].query: unknown query 'nope'"),
        ('query = "cm1"\ninput = "missing.parquet"', "run[0].input: "),
        ('query = "cm1"\nworkers = 1.5\n' + GEN, "run[0].workers: expected a whole number"),
    ],
)
def test_bad_stream_config_cli_one_line_exit_2(tmp_path: Path, body: str, words: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[quiet]\ncheck = "off"\n[[run]]\nkind = "stream"\n' + body + "\n")
    p = _wattspan("experiment", "run", str(cfg), "--store", str(tmp_path / "w.db"), timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert words in lines[0]
    assert not (tmp_path / "w.db").exists()


def test_example_stream_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "stream.toml"
    cfg = load_config(example)
    assert cfg.runs[0].kind == "stream"
    assert cfg.configurations and all(
        c.key in cfg.runs[c.run].stream_args for c in cfg.configurations
    )


def test_events_per_joule_falls_back_from_the_span_to_the_run() -> None:
    from wattspan.experiments.stream_kind import events_per_joule

    run = {"process_energy_joules": 4.0, "energy_joules": 10.0}
    assert events_per_joule(100, {"process_energy_joules": 2.0}, run) == (
        50.0,
        "query span, process share",
    )
    assert events_per_joule(100, {}, run) == (25.0, "run, process share")
    assert events_per_joule(100, None, {"energy_joules": 10.0}) == (10.0, "run, node energy")
    assert events_per_joule(100, None, {"energy_joules": 0.0}) == (None, "no energy measured")
