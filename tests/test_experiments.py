"""The experiments harness end to end: a real grid of CPU-burning commands under wattspan's
measuring, stored, ordered, summarised, modelled, exported and reported; the config's
validation; failure policies, timeouts, the quiet-node check and the machine check on resume.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from wattspan.agent.store import Store
from wattspan.experiments.config import ExperimentConfigError, load_config, parse_config
from wattspan.experiments.loop import ExperimentError, run_experiment
from wattspan.experiments.plan import make_plan
from wattspan.experiments.store import ExperimentStore

# A CPU burn whose cost is linear in argv[1]; -S skips site, so start-up is small.
BURN = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"
# Long enough that a repetition's CPU seconds vary a few per cent, not 20 %, on a shared VM.
N = (1_000_000, 2_000_000, 4_000_000)


def _toml(s: str) -> str:
    return textwrap.dedent(s).lstrip()


def _wattspan(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich tables do not wrap the labels the tests look for.
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real experiment: 2 x 3 configurations, 2 warm-ups and 5 repetitions each, in a
    seeded random order, run through the CLI."""
    d = tmp_path_factory.mktemp("grid")
    cfg = d / "burn.toml"
    argv = json.dumps([sys.executable, "-S", "-c", BURN, "{n}", "{mode}"])
    cfg.write_text(
        _toml(
            f"""
            [experiment]
            name = "burn-grid"
            warmups = 2
            repetitions = 5
            order = "random"
            seed = 7
            baseline = {{ n = {N[0]} }}

            [quiet]
            check = "off"

            [matrix]
            n = [{N[0]}, {N[1]}, {N[2]}]
            mode = ["a", "b"]

            [[run]]
            kind = "command"
            argv = {argv}
            """
        )
    )
    store = d / "wattspan.db"
    t0 = time.monotonic()
    p = _wattspan("experiment", "run", str(cfg), "--store", str(store), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    return {
        "dir": d,
        "config": cfg,
        "store": store,
        "out": out,
        "elapsed": time.monotonic() - t0,
    }


def _reps(store: Path, exp_id: str) -> list[Any]:
    es = ExperimentStore(store)
    try:
        return es.repetitions(exp_id)
    finally:
        es.close()


def test_grid_stores_30_measured_runs_and_flagged_warmups(grid: dict[str, Any]) -> None:
    out = grid["out"]
    assert out["status"] == "finished" and out["failed"] == 0
    reps = _reps(grid["store"], out["experiment_id"])
    final = [r for r in reps if r.final]
    measured = [r for r in final if r.phase == "measured"]
    warm = [r for r in final if r.phase == "warmup"]
    assert len(measured) == 30 and len(warm) == 12
    assert all(r.warmup for r in warm) and not any(r.warmup for r in measured)
    assert all(r.status == "ok" for r in final)
    per_config: dict[str, list[int]] = {}
    for r in measured:
        per_config.setdefault(r.config_key, []).append(r.repetition)
    assert len(per_config) == 6
    assert all(sorted(v) == [0, 1, 2, 3, 4] for v in per_config.values())
    # Each repetition is a run of the store, with its parameters as the run's params.
    store = Store(grid["store"])
    try:
        for r in final:
            run = store.resolve_run(r.run_id)
            assert run.kind == "run" and out["experiment_id"] in run.description
            assert run.exit_code == 0
            assert store.params(r.run_id) == r.params
            assert r.figures["cpu_seconds"] > 0 and r.figures["wall_seconds"] > 0
            assert str(r.params["n"]) in " ".join(run.command)
    finally:
        store.close()


def test_grid_ran_in_the_seeded_random_order(grid: dict[str, Any]) -> None:
    cfg = load_config(grid["config"])
    reps = [r for r in _reps(grid["store"], grid["out"]["experiment_id"]) if r.final]
    ran = [(r.config_key, r.phase, r.repetition) for r in sorted(reps, key=lambda r: r.start_ts)]
    plan = make_plan(6, 2, 5, "random", seed=7)
    keys = [c.key for c in cfg.configurations]
    assert ran == [(keys[i.config], i.phase, i.repetition) for i in plan]
    sequential = make_plan(6, 2, 5, "sequential")
    assert ran != [(keys[i.config], i.phase, i.repetition) for i in sequential]
    assert [r.seq for r in sorted(reps, key=lambda r: r.start_ts)] == list(range(42))


def test_grid_cost_scales_and_is_compared_with_the_baseline(grid: dict[str, Any]) -> None:
    confs = {(c["config"]["n"], c["config"]["mode"]): c for c in grid["out"]["configurations"]}
    for mode in ("a", "b"):
        lo = confs[(N[0], mode)]["stats"]["cpu_seconds"]
        hi = confs[(N[2], mode)]["stats"]["cpu_seconds"]
        assert hi["mean"] > lo["mean"] * 1.3
        assert hi["ci95"][0] <= hi["mean"] <= hi["ci95"][1]
        v = confs[(N[2], mode)]["versus_baseline"]["cpu_seconds"]
        assert v["verdict"] == "higher" and v["p"] < 0.05
        assert v["ratio"] == pytest.approx(hi["mean"] / lo["mean"])
        assert confs[(N[2], mode)]["baseline"] == {"n": N[0], "mode": mode}
    p = _wattspan("experiment", "show", "latest", "--store", str(grid["store"]))
    assert p.returncode == 0, p.stderr
    assert "baseline" in p.stdout and f"n={N[2]}" in p.stdout
    # In an 80-column terminal the headers fold rather than end in an ellipsis.
    env = {**os.environ, "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "wattspan", "experiment", "show", "latest"]
    p = subprocess.run(
        [*cmd, "--store", str(grid["store"])], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    assert max(len(line) for line in p.stdout.splitlines()) <= 80
    assert "\u2026" not in p.stdout, p.stdout


def test_model_predicts_a_held_out_parameter_value(grid: dict[str, Any]) -> None:
    store = str(grid["store"])
    p = _wattspan(
        "experiment", "model", "latest", "--store", store, "--target", "cpu_seconds",
        "--method", "linear", "--exclude", f"n={N[1]}",
        "--predict", f"n={N[1]},mode=a", "--predict", f"n={N[1]},mode=b", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    model = json.loads(p.stdout)
    assert model["rows"] == 20  # the held-out configurations are not in the fit
    confs = {(c["config"]["n"], c["config"]["mode"]): c for c in grid["out"]["configurations"]}
    # mode is a label only (both modes run the same burn), so the claim is about n: the mean
    # prediction at the held-out n against the mean measured there, over both modes.
    preds = [pred["value"] for pred in model["predictions"]]
    assert len(preds) == 2
    stats = {(n, m): confs[(n, m)]["stats"]["cpu_seconds"] for n in N for m in ("a", "b")}

    def mean_at(n: int) -> float:
        return (stats[(n, "a")]["mean"] + stats[(n, "b")]["mean"]) / 2

    # With two values of n left in the fit, a linear model must interpolate their means.
    lo, hi = mean_at(N[0]), mean_at(N[2])
    assert sum(preds) / 2 == pytest.approx(lo + (hi - lo) * (N[1] - N[0]) / (N[2] - N[0]))
    # Against the held-out measurement: 10 % plus the noise of the means it came from (the
    # CIs' relative half-widths), since on a shared VM a 5-repetition mean can itself move
    # by more than 10 % when a neighbour is busy.
    noise = sum((s["ci95"][1] - s["ci95"][0]) / 2 / s["mean"] for s in stats.values()) / 2
    assert sum(preds) / 2 == pytest.approx(mean_at(N[1]), rel=0.10 + noise)


def test_export_formats_have_one_row_per_repetition(grid: dict[str, Any]) -> None:
    store = str(grid["store"])
    p = _wattspan("experiment", "export", "latest", "--store", store, "--format", "csv")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert len(rows) == 42
    assert sum(r["warmup"] == "true" for r in rows) == 12
    assert {int(r["param.n"]) for r in rows} == set(N)
    assert all(float(r["cpu_seconds"]) > 0 for r in rows)
    assert rows[0]["env.cpu_model"]
    pq_path = grid["dir"] / "r.parquet"
    p = _wattspan("experiment", "export", "latest", "--store", store, "-o", str(pq_path))
    assert p.returncode == 0, p.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(pq_path)
    assert t.num_rows == 42
    assert sorted(set(t.column("param.n").to_pylist())) == list(N)
    assert t.schema.field("cpu_seconds").type == "double"
    jl = _wattspan("experiment", "export", "latest", "--store", store, "--format", "jsonl")
    lines = [json.loads(x) for x in jl.stdout.splitlines()]
    assert len(lines) == 42 and all("wall_seconds" in x for x in lines)
    md = _wattspan("experiment", "export", "latest", "--store", store, "--format", "md",
                   "--no-warmups")  # fmt: skip
    table = md.stdout.strip().splitlines()
    assert len(table) == 2 + 30 and table[0].startswith("| experiment_id |")


def test_report_has_distributions_scaling_and_baseline(grid: dict[str, Any]) -> None:
    from wattspan.experiments.report import figure_ids

    out = grid["dir"] / "report.html"
    p = _wattspan("experiment", "report", "latest", "--store", str(grid["store"]), "-o", str(out))
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    ids = figure_ids(text)
    assert "fig-box-wall_seconds" in ids and "fig-box-cpu_seconds" in ids
    assert "fig-scaling-n-cpu_seconds" in ids
    assert "fig-versus-cpu_seconds" in ids
    assert "fig-scaling-mode-cpu_seconds" not in ids  # mode is not numeric
    assert "Plotly" in text and f"n={N[2]}" in text


def test_harness_overhead_per_repetition(grid: dict[str, Any]) -> None:
    reps = _reps(grid["store"], grid["out"]["experiment_id"])
    wall = sum(r.figures["wall_seconds"] for r in reps)
    first, last = min(r.start_ts for r in reps), max(r.end_ts for r in reps)
    # Between the first start and the last end: the harness's own time between runs.
    gaps = (last - first - wall) / (len(reps) - 1)
    assert gaps < 0.25, gaps  # the bench holds the 50 ms target; this is a loaded CI box
    assert grid["out"]["harness_seconds_per_repetition"] < 0.25


# -- plans and configs ----------------------------------------------------------------------


def test_plan_orders() -> None:
    seq = make_plan(2, 1, 2, "sequential")
    assert [(i.config, i.phase, i.repetition) for i in seq] == [
        (0, "warmup", 0), (0, "measured", 0), (0, "measured", 1),
        (1, "warmup", 0), (1, "measured", 0), (1, "measured", 1),
    ]  # fmt: skip
    inter = make_plan(2, 1, 2, "interleaved")
    assert [(i.config, i.phase) for i in inter] == [
        (0, "warmup"), (1, "warmup"), (0, "measured"), (1, "measured"),
        (0, "measured"), (1, "measured"),
    ]  # fmt: skip
    r1 = make_plan(4, 1, 5, "random", seed=3)
    assert r1 == make_plan(4, 1, 5, "random", seed=3)
    assert r1 != make_plan(4, 1, 5, "random", seed=4)
    assert all(i.warmup for i in r1[:4]) and not any(i.warmup for i in r1[4:])
    for c in range(4):
        reps = [i.repetition for i in r1 if i.config == c and not i.warmup]
        assert reps == [0, 1, 2, 3, 4]  # numbered in execution order


def _cfg(text: str) -> Any:
    import tomllib

    return parse_config(tomllib.loads(_toml(text)))


def test_config_grid_include_exclude_and_typed_placeholders() -> None:
    cfg = _cfg(
        """
        [matrix]
        rows = [10, 20]
        impl = ["hash", "sort"]
        exclude = [{ rows = 20, impl = "sort" }]
        include = [{ rows = 99, impl = "merge" }]

        [[run]]
        kind = "python"
        function = "m:f"
        kwargs = { rows = "{rows}", label = "{impl}-{rows}", nested = ["{rows}"] }
        """
    )
    points = [c.params for c in cfg.configurations]
    assert points == [
        {"rows": 10, "impl": "hash"}, {"rows": 10, "impl": "sort"},
        {"rows": 20, "impl": "hash"}, {"rows": 99, "impl": "merge"},
    ]  # fmt: skip
    from wattspan.experiments.config import render_value

    kw = render_value(cfg.runs[0].kwargs, {"rows": 10, "impl": "hash"})
    assert kw == {"rows": 10, "label": "hash-10", "nested": [10]}


def test_config_baseline_and_several_runs() -> None:
    cfg = _cfg(
        """
        [experiment]
        baseline = { run = "old" }
        [matrix]
        n = [1, 2]
        [[run]]
        name = "old"
        kind = "command"
        argv = ["echo", "{run}", "{n}"]
        [[run]]
        name = "new"
        kind = "command"
        shell = "echo {n}"
        """
    )
    assert cfg.parameters == ["run", "n"]
    assert len(cfg.configurations) == 4
    new2 = next(c for c in cfg.configurations if c.params == {"run": "new", "n": 2})
    base = cfg.baseline_of(new2)
    assert base is not None and base.params == {"run": "old", "n": 2}
    assert cfg.runs[1].argv == ["/bin/sh", "-c", "echo {n}"]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[[run]]\nkind = "bogus"\nargv = ["x"]', "run[0].kind", "unknown kind 'bogus'"),
        ('[[run]]\nkind = "command"\nargv = ["x", "{rows}"]', "run[0].argv[1]", "{rows}"),
        ('[matrix]\nrows = []\n[[run]]\nkind = "command"\nargv = ["x"]', "matrix.rows", "empty"),
        (
            '[matrix]\nn = [1]\nexclude = [{ n = 1 }]\n[[run]]\nkind = "command"\nargv = ["x"]',
            "matrix",
            "empty grid",
        ),
        ('[[run]]\nkind = "stream"', "run[0].query", "required"),
        (
            '[experiment]\nrepetitons = 3\n[[run]]\nkind = "command"\nargv = ["x"]',
            "experiment.repetitons",
            "unknown key",
        ),
        (
            '[experiment]\nbaseline = { n = 3 }\n[matrix]\nn = [1, 2]\n[[run]]\nkind = "command"\n'
            'argv = ["x"]',
            "experiment.baseline.n",
            "no configuration",
        ),
        (
            '[experiment]\norder = "shuffled"\n[[run]]\nkind = "command"\nargv = ["x"]',
            "experiment.order",
            "not one of",
        ),
        ("[experiment]\nname = 'x'", "run", "at least one [[run]]"),
        ('[[run]]\nkind = "python"\nfunction = "nocolon"', "run[0].function", "module:function"),
    ],
)
def test_bad_config_names_the_key(text: str, key: str, words: str) -> None:
    import tomllib

    with pytest.raises(ExperimentConfigError) as info:
        parse_config(tomllib.loads(text))
    assert info.value.key == key
    assert words in info.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[run]]\nkind = "bogus"\nargv = ["x"]', "run[0].kind: unknown kind 'bogus'"),
        (
            '[[run]]\nkind = "command"\nargv = ["x", "{rows}"]',
            "run[0].argv[1]: placeholder {rows} names no parameter",
        ),
        ('[matrix]\nrows = []\n[[run]]\nkind = "command"\nargv = ["x"]', "matrix.rows: empty"),
    ],
)
def test_bad_config_cli_one_line_exit_2(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    p = _wattspan("experiment", "run", str(cfg), "--store", str(tmp_path / "s.db"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert words in lines[0] and str(cfg) in lines[0]
    assert not (tmp_path / "s.db").exists()  # nothing ran, nothing was created


# -- failures, timeouts, quiet check, machine check ------------------------------------------


def _run(tmp_path: Path, body: str, **kw: Any) -> Any:
    (tmp_path / "e.toml").write_text(_toml(body))
    cfg = load_config(tmp_path / "e.toml")
    return run_experiment(cfg, store_path=tmp_path / "s.db", progress=False, notify=lambda m: None,
                          **kw)  # fmt: skip


QUIET_OFF = '[quiet]\ncheck = "off"\n'


def test_retry_then_success(tmp_path: Path) -> None:
    marker = tmp_path / "once"
    res = _run(
        tmp_path,
        f"""
        [experiment]
        warmups = 0
        repetitions = 1
        on_failure = "retry"
        retries = 2
        {QUIET_OFF}
        [[run]]
        kind = "command"
        shell = "test -e {marker} || {{{{ touch {marker}; exit 3; }}}}"
        """,
    )
    assert res.status == "finished" and res.exit_code == 0 and res.ran == 2
    reps = _reps(tmp_path / "s.db", res.experiment.id)
    assert [(r.attempt, r.status, r.final, r.exit_code) for r in reps] == [
        (1, "failed", False, 3),
        (2, "ok", True, 0),
    ]


def test_abort_and_continue(tmp_path: Path) -> None:
    body = """
        [experiment]
        warmups = 0
        repetitions = 3
        on_failure = "{policy}"
        [quiet]
        check = "off"
        [[run]]
        kind = "command"
        shell = "echo doomed >&2; exit 4"
        """
    res = _run(tmp_path, body.replace("{policy}", "abort"))
    assert res.status == "aborted" and res.exit_code == 1
    reps = _reps(tmp_path / "s.db", res.experiment.id)
    assert len(reps) == 1 and reps[0].status == "failed" and reps[0].final
    assert "exit code 4" in reps[0].error and "doomed" in reps[0].error  # the output's tail
    (tmp_path / "s.db").unlink()
    res = _run(tmp_path, body.replace("{policy}", "continue"))
    assert res.status == "finished" and res.exit_code == 1 and res.failed == 3
    assert len(_reps(tmp_path / "s.db", res.experiment.id)) == 3


def test_timeout_kills_the_repetition(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = _run(
        tmp_path,
        f"""
        [experiment]
        warmups = 0
        repetitions = 1
        on_failure = "continue"
        timeout = 0.5
        {QUIET_OFF}
        [[run]]
        kind = "command"
        argv = ["sleep", "30"]
        """,
    )
    assert time.monotonic() - t0 < 15
    (rep,) = _reps(tmp_path / "s.db", res.experiment.id)
    assert rep.status == "timeout" and "timed out after 0.5 s" in rep.error
    assert 0.4 < rep.figures["wall_seconds"] < 5


def test_quiet_check_refuses_on_a_busy_node(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with pytest.raises(ExperimentError) as info:
            _run(
                tmp_path,
                """
                [quiet]
                check = "refuse"
                seconds = 0.5
                max_other_cpu = 0.05
                [[run]]
                kind = "command"
                argv = ["true"]
                """,
            )
    finally:
        busy.kill()
        busy.wait()
    assert info.value.exit_code == 1
    assert "not quiet" in str(info.value) and "other processes used" in str(info.value)


def test_resume_on_another_machine_is_refused(tmp_path: Path) -> None:
    body = f"""
        [experiment]
        warmups = 0
        repetitions = 2
        {QUIET_OFF}
        [[run]]
        kind = "command"
        argv = ["true"]
        """
    res = _run(tmp_path, body)
    db = sqlite3.connect(tmp_path / "s.db")
    env = json.loads(db.execute("SELECT env FROM experiments").fetchone()[0])
    env["machine"]["cpu_model"] = "Some Other CPU"
    with db:
        db.execute("UPDATE experiments SET env=?, status='interrupted'", (json.dumps(env),))
    db.close()
    with pytest.raises(ExperimentError, match="cpu_model: 'Some Other CPU'"):
        _run(tmp_path, body, resume=res.experiment.id[:8])
    again = _run(tmp_path, body, resume=True, allow_mixed_env=True)
    assert again.experiment.id == res.experiment.id and again.ran == 0 and again.skipped == 2


def test_python_kind_fresh_and_in_process(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "burnmod.py").write_text(
        "import os\n"
        "def burn(n, tag):\n"
        "    x = 0\n"
        "    for i in range(n):\n"
        "        x += i\n"
        "    return {'n': n, 'tag': tag, 'env': os.environ.get('BURN_TAG')}\n"
    )
    res = _run(
        tmp_path,
        f"""
        [experiment]
        warmups = 0
        repetitions = 2
        {QUIET_OFF}
        [matrix]
        n = [100000]
        [[run]]
        name = "fresh"
        kind = "python"
        function = "burnmod:burn"
        kwargs = {{ n = "{{n}}", tag = "t{{n}}" }}
        cwd = "work"
        env = {{ BURN_TAG = "e{{n}}" }}
        [[run]]
        name = "here"
        kind = "python"
        function = "burnmod:burn"
        kwargs = {{ n = "{{n}}", tag = "h" }}
        fresh_process = false
        cwd = "work"
        env = {{ BURN_TAG = "x{{n}}" }}
        """,
    )
    assert res.status == "finished" and res.exit_code == 0, res
    reps = _reps(tmp_path / "s.db", res.experiment.id)
    fresh = [r for r in reps if r.run_name == "fresh"]
    here = [r for r in reps if r.run_name == "here"]
    assert len(fresh) == len(here) == 2
    for r in fresh:
        assert r.figures["result"] == {"n": 100000, "tag": "t100000", "env": "e100000"}
        assert 0 < r.figures["call_seconds"] < r.figures["wall_seconds"]
        assert r.figures["cpu_source"].startswith("wait4")
    for r in here:
        assert r.figures["result"] == {"n": 100000, "tag": "h", "env": "x100000"}
        assert r.figures["cpu_seconds"] >= r.figures["call_cpu_seconds"] * 0.9
    assert "BURN_TAG" not in os.environ  # the in-process call's env is undone
