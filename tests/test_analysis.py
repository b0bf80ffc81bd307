"""Analysis over the store (span tree, time/energy-to-target, compare, export) and the
``compare``/``export``/``show`` CLI pieces, on synthetic runs with hand-computable numbers.

The synthetic runs (``make_store``):

* run A, 1000..1010 s, samples every 1 s. RAPL ``package-0`` at 40 W until t=1005 then 60 W
  (counter offset 5000 J), ``package-1`` at 30 W, ``package-0/dram`` at 5 W (a sub-domain:
  never summed), GPU 0 at 100 W. Accuracy 0.5/0.7/0.85/0.92/0.95 at steps 0..4.
* run B, 2000..2012 s: no RAPL, the power model's estimated ``cpu`` domain at 90 W, GPU 0 at
  80 W; accuracy reaches 0.93 at its last step.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from wattspan.agent.attribution import SpanWindow, attribute, build_series
from wattspan.agent.store import ConfusionRow, MetricRow, Run, SpanRow, Store
from wattspan.agent.summary import summarize
from wattspan.analysis import (
    compare_runs,
    csv_cell,
    energy_between,
    export_rows,
    flatten_row,
    iter_tree,
    metric_curves,
    metric_mode,
    metric_summaries,
    span_tree,
    time_to_target,
    write_csv,
    write_jsonl,
)
from wattspan.cli.analysis_cmds import parse_selection, show_details
from wattspan.cli.analysis_parsers import add_analysis_parsers
from wattspan.collectors.base import Sample

RUN_A = "aaaa0000-0000-4000-8000-000000000001"
RUN_B = "bbbb0000-0000-4000-8000-000000000002"
MIB = 2**20


# -- synthetic store ----------------------------------------------------------------------


def _pkg0(t: float) -> float:
    """package-0 counter of run A: 40 W for 5 s, then 60 W, from 5000 J."""
    dt = t - 1000.0
    return 5000.0 + (40.0 * dt if dt <= 5 else 200.0 + 60.0 * (dt - 5))


def _node_samples(
    start: float, seconds: int, *, rapl: bool, cpu_w: float, gpu_w: float, cores: float
) -> list[Sample]:
    out: list[Sample] = []
    for k in range(seconds + 1):
        t = start + k
        dt = float(k)
        out.append(
            Sample(
                "cpu",
                t,
                {"cpu": "total"},
                {
                    "user_seconds_total": 1000.0 + cores * 0.8 * dt,
                    "system_seconds_total": 300.0 + cores * 0.2 * dt,
                    "idle_seconds_total": 5000.0 + (8 - cores) * dt,
                    "utilization_ratio": cores / 8,
                },
            )
        )
        out.append(
            Sample(
                "memory",
                t,
                {},
                {"used_bytes": 8 * 2**30 + 50 * MIB * dt, "total_bytes": 32 * 2**30},
            )
        )
        out.append(
            Sample(
                "process_tree",
                t,
                {"root": "4242", "name": "python"},
                {
                    "cpu_user_seconds_total": 1.5 * dt,
                    "cpu_system_seconds_total": 0.1 * dt,
                    "rss_bytes": 100 * MIB + 10 * MIB * dt,
                    "peak_rss_bytes": 100 * MIB + 10 * MIB * dt,
                },
            )
        )
        if rapl:
            p0 = 40.0 if dt <= 5 else 60.0
            out.append(
                Sample(
                    "rapl",
                    t,
                    {"zone": "intel-rapl:0", "domain": "package-0", "estimated": "false"},
                    {"energy_joules_total": _pkg0(t), **({"power_watts": p0} if k else {})},
                )
            )
            out.append(
                Sample(
                    "rapl",
                    t,
                    {"zone": "intel-rapl:1", "domain": "package-1", "estimated": "false"},
                    {"energy_joules_total": 7000.0 + 30.0 * dt, "power_watts": 30.0},
                )
            )
            out.append(
                Sample(
                    "rapl",
                    t,
                    {"zone": "intel-rapl:0:0", "domain": "package-0/dram", "estimated": "false"},
                    {"energy_joules_total": 200.0 + 5.0 * dt, "power_watts": 5.0},
                )
            )
        else:
            out.append(
                Sample(
                    "power_model",
                    t,
                    {"domain": "cpu", "estimated": "true"},
                    {"energy_joules_total": cpu_w * dt, "power_watts": cpu_w},
                )
            )
        out.append(
            Sample(
                "gpu",
                t,
                {"gpu": "0", "uuid": "GPU-1", "name": "Test GPU", "energy_method": "counter"},
                {
                    "energy_joules_total": 123.0 + gpu_w * dt,
                    "power_watts": gpu_w,
                    "utilization_gpu_ratio": 0.8,
                    "memory_used_bytes": 4 * 2**30,
                    "memory_total_bytes": 16 * 2**30,
                },
            )
        )
    return out


def _spans(run_id: str, t0: float, samples: list[Sample]) -> list[SpanRow]:
    """pipeline > load, train > epoch x3 > batch x8 (first epoch), evaluate; plus an orphan
    whose parent was never stored. Resources come from the real attribution model."""
    rows: list[tuple[str, str, str | None, str, float, float]] = [
        ("t1", "s-root", None, "pipeline", 0.0, 10.0),
        ("t1", "s-load", "s-root", "load", 0.0, 2.0),
        ("t1", "s-train", "s-root", "train", 2.0, 9.0),
        ("t1", "s-ep0", "s-train", "epoch", 2.0, 4.0),
        ("t1", "s-ep1", "s-train", "epoch", 4.0, 6.5),
        ("t1", "s-ep2", "s-train", "epoch", 6.5, 9.0),
        ("t1", "s-eval", "s-root", "evaluate", 9.0, 10.0),
        ("t2", "s-orphan", "ffffffffffffffff", "orphan", 5.0, 6.0),
    ]
    rows += [("t1", f"s-b{i}", "s-ep0", "batch", 2.0 + 0.25 * i, 2.25 + 0.25 * i) for i in range(8)]
    windows = [SpanWindow(t0 + a, t0 + b, pid=4242) for *_, a, b in rows]
    resources = attribute(windows, build_series(samples), idle_watts=20.0)
    return [
        # Trace ids are unique per run: the store keys spans by (trace_id, span_id).
        SpanRow(
            run_id,
            f"{run_id[:4]}-{tr}",
            sid,
            parent,
            name,
            t0 + a,
            t0 + b,
            "ok",
            "svc",
            4242,
            {"k": 1},
            res,
        )
        for (tr, sid, parent, name, a, b), res in zip(rows, resources, strict=True)
    ]


def make_store(path: Path) -> Store:
    """A store with runs A and B (see the module docstring)."""
    store = Store(path)
    specs = [
        (RUN_A, "train-sgd", 1000.0, 10, True, 0.0, 100.0, 2.0),
        (RUN_B, "train-adam", 2000.0, 12, False, 90.0, 80.0, 1.5),
    ]
    for run_id, name, start, secs, rapl, cpu_w, gpu_w, cores in specs:
        store.create_run(
            Run(run_id, name, "node-1", start, command=["python", "train.py", "--name", name])
        )
        samples = _node_samples(start, secs, rapl=rapl, cpu_w=cpu_w, gpu_w=gpu_w, cores=cores)
        store.write_samples(run_id, samples)
        store.finish_run(run_id, start + secs, 0, summarize(samples, start, start + secs))
    store.write_spans(_spans(RUN_A, 1000.0, store.samples(RUN_A)))
    store.write_spans(_spans(RUN_B, 2000.0, store.samples(RUN_B))[:3])

    acc_a = [(1.5, 0.5), (3.0, 0.7), (4.5, 0.85), (6.5, 0.92), (9.0, 0.95)]
    loss_a = [1.2, 0.8, 0.5, 0.3, 0.2]
    acc_b = [(2.0, 0.4), (4.25, 0.6), (7.0, 0.8), (10.0, 0.88), (11.5, 0.93)]
    loss_b = [1.4, 1.0, 0.6, 0.45, 0.35]
    for run_id, start, acc, loss in (
        (RUN_A, 1000.0, acc_a, loss_a),
        (RUN_B, 2000.0, acc_b, loss_b),
    ):
        rows = []
        for step, ((dt, a), lo) in enumerate(zip(acc, loss, strict=True)):
            rows.append(MetricRow(run_id, start + dt, "ml.accuracy", a, step, "t1", "s-train"))
            rows.append(MetricRow(run_id, start + dt, "ml.loss", lo, step, "t1", "s-train"))
        # A metric logged without steps: curves fall back to seconds since the run start.
        rows.append(MetricRow(run_id, start + 9.5, "ml.throughput", 1234.5, None))
        store.write_metrics(rows)
    store.write_params(
        RUN_A, None, {"lr": 0.1, "batch_size": 32, "optimizer": "sgd", "augment": True}
    )
    store.write_params(
        RUN_B, None, {"lr": 0.01, "batch_size": 64, "optimizer": "adam", "augment": False}
    )
    labels = ["cat", "dog", "bird"]
    store.write_confusion(
        [
            ConfusionRow(RUN_A, 1009.5, labels, [[50, 3, 2], [4, 45, 1], [2, 2, 41]], step=4),
            ConfusionRow(RUN_B, 2011.8, labels, [[48, 5, 2], [6, 42, 2], [3, 3, 39]], step=4),
        ]
    )
    return store


@pytest.fixture
def store(store_path: Path) -> Store:
    s = make_store(store_path)
    yield s
    s.close()


# -- span tree ----------------------------------------------------------------------------


def test_span_tree_structure(store: Store) -> None:
    roots = span_tree(store.spans(RUN_A))
    assert [r.name for r in roots] == ["pipeline", "orphan"]  # orphan: parent not stored
    pipeline, orphan = roots
    assert orphan.depth == 0 and orphan.children == []
    assert [c.name for c in pipeline.children] == ["load", "train", "evaluate"]
    train = pipeline.children[1]
    assert [(c.name, c.depth) for c in train.children] == [("epoch", 2)] * 3
    batches = train.children[0].children
    assert [b.span.span_id for b in batches] == [f"s-b{i}" for i in range(8)]
    assert {b.depth for b in batches} == {3}
    order = [n.span.span_id for n in iter_tree(roots)]
    assert order[:5] == ["s-root", "s-load", "s-train", "s-ep0", "s-b0"]
    assert order[-3:] == ["s-ep2", "s-eval", "s-orphan"]
    assert len(order) == 16
    # Attribution reached the store: the pipeline span covers all of run A's energy.
    res = pipeline.resources
    assert res["node_energy_total_joules"] == pytest.approx(500.0 + 300.0)
    assert res["gpu_energy_total_joules"] == pytest.approx(1000.0)


def test_span_tree_survives_a_parent_cycle() -> None:
    a = SpanRow("r", "t", "a", "b", "a", 0.0, 1.0)
    b = SpanRow("r", "t", "b", "a", "b", 0.5, 1.0)
    c = SpanRow("r", "t", "c", "c", "self", 0.2, 0.3)  # its own parent
    roots = span_tree([a, b, c])
    names = sorted(n.name for n in iter_tree(roots))
    assert names == ["a", "b", "self"]


# -- metrics ------------------------------------------------------------------------------


def test_metric_curves_use_steps_else_seconds(store: Store) -> None:
    curves = metric_curves(store, RUN_A)
    assert curves["ml.accuracy"] == [(0.0, 0.5), (1.0, 0.7), (2.0, 0.85), (3.0, 0.92), (4.0, 0.95)]
    assert curves["ml.throughput"] == [(9.5, 1234.5)]
    by_time = metric_curves(store, RUN_A, x="seconds")
    assert [p[0] for p in by_time["ml.loss"]] == [1.5, 3.0, 4.5, 6.5, 9.0]


def test_metric_mode_and_summaries(store: Store) -> None:
    assert metric_mode("ml.loss") == "min"
    assert metric_mode("ml.val_loss") == "min"
    assert metric_mode("ml.error_rate") == "min"
    assert metric_mode("ml.accuracy") == "max"
    assert metric_mode("ml.lossless_ratio") == "max"
    assert metric_mode("wattspan.stream.window.latency.p99") == "min"
    assert metric_mode("wattspan.stream.window.latency.count") == "max"  # windows seen
    assert metric_mode("http.server.request.duration.sum") == "max"
    assert metric_mode("train.step_seconds") == "min"
    assert metric_mode("stream.events_per_joule") == "max"
    assert metric_mode("ml.samples_per_second") == "max"
    s = metric_summaries(store, RUN_B)
    assert (s["ml.loss"].first, s["ml.loss"].last, s["ml.loss"].best) == (1.4, 0.35, 0.35)
    assert s["ml.accuracy"].best_step == 4
    assert s["ml.accuracy"].best_seconds == pytest.approx(11.5)


def test_time_to_accuracy_and_energy_exact(store: Store) -> None:
    tt = time_to_target(store, RUN_A, "ml.accuracy", 0.9)
    # First point >= 0.9: 0.92 at t=1006.5 (step 3). Energy from 1000 to 1006.5:
    # package-0 = 40 W * 5 s + 60 W * 1.5 s = 290 J (interpolated between the 1006 and 1007
    # samples), package-1 = 30 W * 6.5 s = 195 J, dram not summed; GPU = 100 W * 6.5 s.
    assert tt["reached"] is True
    assert tt["seconds"] == 6.5
    assert tt["step"] == 3 and tt["value"] == 0.92
    assert tt["node_joules"] == pytest.approx(290.0 + 195.0, abs=1e-9)
    assert tt["gpu_joules"] == pytest.approx(650.0, abs=1e-9)
    assert tt["joules"] == pytest.approx(1135.0, abs=1e-9)
    assert tt["energy_estimated"] is False


def test_time_to_target_min_mode_for_loss(store: Store) -> None:
    tt = time_to_target(store, RUN_A, "ml.loss", 0.5, mode="min")
    # loss 0.5 at t=1004.5: package-0 40*4.5 = 180, package-1 30*4.5 = 135, GPU 450.
    assert (tt["reached"], tt["seconds"], tt["step"]) == (True, 4.5, 2)
    assert tt["joules"] == pytest.approx(180.0 + 135.0 + 450.0, abs=1e-9)
    assert time_to_target(store, RUN_A, "ml.loss", 0.5, mode="auto")["seconds"] == 4.5


def test_time_to_target_estimated_and_not_reached(store: Store) -> None:
    tt = time_to_target(store, RUN_B, "ml.accuracy", 0.9)
    assert tt["seconds"] == 11.5
    assert tt["node_joules"] == pytest.approx(90.0 * 11.5, abs=1e-9)
    assert tt["gpu_joules"] == pytest.approx(80.0 * 11.5, abs=1e-9)
    assert tt["energy_estimated"] is True  # the power model, never passed off as measured
    miss = time_to_target(store, RUN_A, "ml.accuracy", 0.99)
    assert miss["reached"] is False
    assert miss["seconds"] is miss["joules"] is miss["step"] is None
    assert time_to_target(store, RUN_A, "ml.nothing", 0.5)["reached"] is False


def test_energy_window_clamps_to_samples(store: Store) -> None:
    # Before the first sample the counters are held at their first value (no energy).
    e = energy_between(store, RUN_A, 990.0, 1001.0)
    assert e.node_joules == pytest.approx(70.0) and e.gpu_joules == pytest.approx(100.0)
    assert e.domains == ["package-0", "package-1"]


# -- compare ------------------------------------------------------------------------------


def test_compare_differences_exact(store: Store) -> None:
    comp = compare_runs(store, [RUN_A, RUN_B], target=0.9)
    assert [r.id for r in comp.runs] == [RUN_A, RUN_B]

    def check(key: str, values: list[Any], delta: float | None, pct: float | None) -> None:
        row = comp.row(key)
        assert row.values == pytest.approx(values), key
        assert row.delta[0] is None and row.pct[0] is None  # the baseline
        assert row.delta[1] == (None if delta is None else pytest.approx(delta)), key
        assert row.pct[1] == (None if pct is None else pytest.approx(pct)), key

    check("wall_seconds", [10.0, 12.0], 2.0, 20.0)
    # CPU seconds of the process tree: 1.6/s for 10 s and 12 s.
    check("cpu_seconds", [16.0, 19.2], 3.2, 20.0)
    check("peak_rss_bytes", [200 * MIB, 220 * MIB], 20 * MIB, 10.0)
    # Primary domains only: A = package-0 500 J + package-1 300 J (dram excluded).
    check("energy_joules", [800.0, 1080.0], 280.0, 35.0)
    check("gpu_energy_joules", [1000.0, 960.0], -40.0, -4.0)
    check("total_energy_joules", [1800.0, 2040.0], 240.0, 240.0 / 1800.0 * 100.0)
    check("ml.accuracy.final", [0.95, 0.93], 0.93 - 0.95, (0.93 - 0.95) / 0.95 * 100)
    check("ml.loss.best", [0.2, 0.35], 0.15, 75.0)
    check("time_to_target_seconds", [6.5, 11.5], 5.0, 5.0 / 6.5 * 100)
    check("energy_to_target_joules", [1135.0, 1955.0], 820.0, 820.0 / 1135.0 * 100)
    check("param.lr", [0.1, 0.01], 0.01 - 0.1, -90.0)
    assert comp.row("param.optimizer").values == ["sgd", "adam"]
    assert comp.row("param.optimizer").delta == [None, None]
    assert comp.row("param.augment").delta == [None, None]  # booleans are not numbers
    assert comp.row("energy_estimated").values == [False, True]
    assert comp.row("ml.loss.best").better == "min"
    assert comp.target == {
        "metric": "ml.accuracy",
        "target": 0.9,
        "mode": "max",
        "chosen": "given",
        "reached": [True, True],
    }
    json.dumps(comp.to_dict())  # JSON-ready


def test_compare_default_target_is_the_common_best(store: Store) -> None:
    comp = compare_runs(store, [RUN_A, RUN_B])
    assert comp.target is not None and comp.target["target"] == 0.93
    # A first reaches 0.93 with 0.95 at t=1009: 40*5+60*4 = 440 J + 270 J + GPU 900 J.
    assert comp.row("time_to_target_seconds").values == [9.0, 11.5]
    assert comp.row("energy_to_target_joules").values[0] == pytest.approx(1610.0)


# -- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["runs", "spans", "metrics"])
def test_export_json_round_trip(store: Store, what: str) -> None:
    rows = export_rows(store, [RUN_A, RUN_B], what)
    buf = io.StringIO()
    write_jsonl(rows, buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == len(rows) > 0
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(rows))


@pytest.mark.parametrize("what", ["runs", "spans", "metrics"])
def test_export_csv_round_trip(store: Store, what: str) -> None:
    rows = export_rows(store, [RUN_A, RUN_B], what)
    buf = io.StringIO()
    write_csv(rows, buf)
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert len(back) == len(rows)
    for orig, got in zip(rows, back, strict=True):
        flat = flatten_row(orig)
        for key, value in flat.items():
            assert got[key] == csv_cell(value), key
            if isinstance(value, float):
                assert float(got[key]) == value  # repr: exact, not rounded
        # Columns another row has are empty here.
        assert all(got[k] == "" for k in got if k not in flat)


def test_export_rows_content(store: Store) -> None:
    spans = export_rows(store, [RUN_A], "spans")
    assert len(spans) == 16
    assert spans[0]["name"] == "pipeline" and spans[0]["depth"] == 0
    assert spans[1]["offset_seconds"] == 0.0
    flat = flatten_row(spans[0])
    assert flat["resources.node_energy_joules.package-0"] == pytest.approx(500.0)
    assert flat["attributes.k"] == 1
    runs = export_rows(store, [RUN_A], "runs")
    assert runs[0]["params"]["optimizer"] == "sgd"
    assert runs[0]["metrics"]["ml.accuracy"] == {"final": 0.95, "best": 0.95, "points": 5}
    assert runs[0]["energy_joules"] == pytest.approx(800.0)
    metrics = export_rows(store, [RUN_B], "metrics")
    assert metrics[0]["offset_seconds"] == 2.0 and metrics[0]["run_id"] == RUN_B
    with pytest.raises(ValueError):
        export_rows(store, [RUN_A], "logs")


def test_export_nan_becomes_null() -> None:
    buf = io.StringIO()
    write_jsonl([{"v": math.nan, "w": [math.inf, 1.0]}], buf)
    assert json.loads(buf.getvalue()) == {"v": None, "w": [None, 1.0]}


# -- CLI ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wattspan")
    add_analysis_parsers(p.add_subparsers(dest="command"))
    return p


def _run_cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.handler(args))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def db(store: Store) -> str:
    """The synthetic store's path, as ``--store`` takes it."""
    return str(store.path)


def test_cli_compare_json_and_table(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["compare", RUN_A[:8], "train-adam", "--store", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in out["runs"]] == [RUN_A, RUN_B]
    wall = next(r for r in out["rows"] if r["key"] == "wall_seconds")
    assert wall["delta"] == [None, 2.0] and wall["pct"] == [None, 20.0]

    assert _run_cli(["compare", RUN_A, RUN_B, "--store", db, "--target", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "train-sgd" in text and "train-adam" in text
    assert "+20.0%" in text and "time to ml.accuracy >= 0.9" in text


def test_cli_exit_codes(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    assert _run_cli(["compare", "--store", db]) == 2
    assert "name at least 2 runs" in capsys.readouterr().err
    assert _run_cli(["report", "--store", db, "-o", str(tmp_path / "r.html")]) == 2
    assert _run_cli(["export", "spans", "--store", db]) == 2
    assert _run_cli(["compare", RUN_A, "--store", db]) == 2  # one run is no comparison
    assert _run_cli(["compare", RUN_A, "nope", "--store", db]) == 1
    assert "no run matches 'nope'" in capsys.readouterr().err
    assert _run_cli(["compare", RUN_A, RUN_B, "--store", str(tmp_path / "missing.db")]) == 1
    with pytest.raises(SystemExit) as exc:  # argparse usage error
        _run_cli(["export", "logs", RUN_A, "--store", db])
    assert exc.value.code == 2


def test_cli_interactive_pick(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Newest first: 1 = B, 2 = A. A bad answer is asked again.
    monkeypatch.setattr("sys.stdin", _Tty("9\n2 1\n"))
    assert _run_cli(["compare", "--store", db, "--json"]) == 0
    captured = capsys.readouterr()
    assert "Recent runs:" in captured.err and "not a valid selection" in captured.err
    assert [r["id"] for r in json.loads(captured.out)["runs"]] == [RUN_A, RUN_B]
    monkeypatch.setattr("sys.stdin", _Tty("\n"))  # cancelled
    assert _run_cli(["compare", "--store", db]) == 2


def test_parse_selection() -> None:
    assert parse_selection("1 3", 5) == [0, 2]
    assert parse_selection("2-4,1", 5) == [1, 2, 3, 0]
    assert parse_selection("all", 3) == [0, 1, 2]
    assert parse_selection("0", 3) is None
    assert parse_selection("2-9", 3) is None
    assert parse_selection("x", 3) is None
    assert parse_selection("", 3) is None


def test_cli_export_files(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_csv = tmp_path / "spans.csv"
    assert _run_cli(["export", "spans", RUN_A, "--store", db, "-o", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 16 and rows[0]["name"] == "pipeline"
    assert _run_cli(["export", "runs", "--all", "--store", db, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [RUN_A, RUN_B]
    assert _run_cli(["export", "metrics", RUN_B, "--store", db, "--csv"]) == 0
    assert capsys.readouterr().out.startswith("run_id,name,ts,offset_seconds,step,value")
    bad = tmp_path / "no-such-dir" / "x.csv"
    assert _run_cli(["export", "runs", RUN_A, "--store", db, "-o", str(bad)]) == 1


def test_show_details(store: Store) -> None:
    run = store.resolve_run(RUN_A)
    console = Console(record=True, width=220)
    for r in show_details(store, run):
        console.print(r)
    text = console.export_text()
    assert "pipeline" in text and "orphan" in text
    assert "batch ×8" in text  # eight sibling batches collapse into one line
    assert "epoch" in text and "CPU" in text and "GPU" in text
    assert "time to ml.accuracy >= 0.9: 6.500 s" in text
    assert "1,135.00 J" in text
    other = Console(record=True, width=220)
    for r in show_details(store, store.resolve_run(RUN_B), target=0.99):
        other.print(r)
    assert "not reached (best 0.93)" in other.export_text()


def test_show_keeps_metric_names_apart_on_a_narrow_terminal(tmp_path: Path) -> None:
    # The stream engine's latency metrics share 32 characters of prefix: at 80 columns
    # they used to end in the same ellipsis, four rows that looked alike.
    s = Store(tmp_path / "n.db")
    s.add_run(Run(id="narrow", name="narrow", host="h", start_ts=0.0, kind="run"))
    names = [f"wattspan.stream.window.latency.{q}" for q in ("count", "p50", "p99", "sum")]
    s.write_metrics([MetricRow("narrow", 1.0, n, 0.123456789) for n in names])
    console = Console(record=True, width=80)
    for r in show_details(s, s.resolve_run("narrow")):
        console.print(r)
    cells = "".join(
        line.split("│")[1].strip() for line in console.export_text().splitlines() if "│" in line
    )
    for n in names:
        mode = "max" if n.endswith((".count", ".sum")) else "min"
        assert f"{n} ({mode})" in cells, cells


def test_export_kinds_of_the_parser_match_the_analysis() -> None:
    from wattspan import analysis
    from wattspan.cli import analysis_parsers

    assert tuple(analysis_parsers.EXPORT_KINDS) == tuple(analysis.EXPORT_KINDS)


def test_show_on_a_pipe_keeps_each_span_on_one_line(
    store: Store, store_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """The summary table fitted 160 columns on a pipe, the span tree rich's 80, where a
    span's line (name, time, CPU, energy, RSS) wrapped its last figures onto a line of
    their own (with ``COLUMNS=80`` too, as the table ignores it on a pipe)."""
    monkeypatch.setenv("COLUMNS", "80")
    from wattspan.cli import main

    assert main(["show", "--store", str(store_path), RUN_A]) == 0
    out = capsys.readouterr().out
    tree = out[out.index("spans of") : out.index("valued metrics")].splitlines()[1:-1]
    # Nine spans (one line for the eight batches): every line a span's own, with a branch,
    # a name and its figures to the last, none a wrapped tail.
    assert len(tree) == 9, tree
    for line in tree:
        assert line.lstrip("│ ").startswith(("├── ", "└── ")) and line.endswith(" J"), line
    assert max(len(line) for line in tree) > 80
