"""The CLI without rough edges: a machine-readable ``run --json``, quiet broken pipes, the
run picker on ``show``, metric and run names resolved helpfully, tags, ``rm``, the
description shown, ``export samples``/``confusion-matrices``, and help for every option."""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_analysis import RUN_A, RUN_B, make_store
from wattspan.agent.store import Run, Store
from wattspan.cli import build_parser, main


def wattspan(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[arg-type]
    )


CHATTY = "print('hello from the child'); print('{not json')"


def test_run_json_keeps_stdout_machine_readable(store_path: Path) -> None:
    p = wattspan("run", "--json", "--store", str(store_path), "--", sys.executable, "-c", CHATTY)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["exit_code"] == 0
    assert "hello from the child" in p.stderr and "{not json" in p.stderr


def test_run_json_file_leaves_the_childs_stdout_alone(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    p = wattspan(
        "run", "--json-file", str(out), "--store", str(store_path),
        "--", sys.executable, "-c", CHATTY,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello from the child\n{not json\n"
    summary = json.loads(out.read_text())
    assert summary["cpu_seconds"] > 0
    assert "wall time" in p.stderr  # the table too


def test_broken_pipe_is_quiet(store_path: Path) -> None:
    store = Store(store_path)
    for i in range(3000):  # more than one pipe buffer of JSON lines
        store.create_run(Run(f"{i:08d}-0000-4000-8000-000000000000", f"r{i}", "h", 1000.0 + i))
    store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wattspan", "runs", "--json", "-n", "0", "--store", str(store_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["name"] == "r2999"
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_show_offers_the_run_picker(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(store_path).close()
    monkeypatch.setattr(sys, "stdin", _Tty("2\n"))
    assert main(["show", "--store", str(store_path)]) == 0
    out = capsys.readouterr()
    assert "Recent runs:" in out.err
    # Newest first: 2 is run A, the older one.
    assert "train-sgd" in out.out and "aaaa0000" in out.out
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["show", "--store", str(store_path)]) == 2
    assert "picked interactively only on a terminal" in capsys.readouterr().err


def test_target_metric_short_name_is_found_and_said(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(store_path).close()
    code = main(
        ["compare", "--store", str(store_path), "--json", "--target-metric", "accuracy", RUN_A,
         RUN_B]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr()
    assert "metric 'accuracy' is 'ml.accuracy' in these runs; using ml.accuracy" in out.err
    comp = json.loads(out.out)
    assert comp["target"]["metric"] == "ml.accuracy"
    assert any(r["key"] == "time_to_target_seconds" for r in comp["rows"])


def test_a_run_without_the_default_target_metric_is_shown_without_complaint(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stream query or a plain script logs no ml.accuracy: not asked for, not missed.
    store = make_store(store_path)
    store.create_run(Run("cccc0000-0000-4000-8000-000000000003", "stream-ysb", "h", 3000.0))
    store.close()
    assert main(["show", "--store", str(store_path), "stream-ysb"]) == 0
    assert "no metric" not in capsys.readouterr().err
    # Asked for by name, a metric the run does not have is still said.
    assert main(["show", "--store", str(store_path), "--target-metric", "f1", RUN_A]) == 0
    assert "no metric 'f1' in these runs" in capsys.readouterr().err


def test_names_that_match_several_runs_or_none(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store(store_path)
    store.create_run(Run("aaaa0000-9999-4000-8000-000000000003", "train-sgd", "h", 3000.0))
    store.close()
    # An id prefix shared by two runs: both listed, nothing chosen.
    assert main(["show", "--store", str(store_path), "aaaa"]) == 1
    err = capsys.readouterr().err
    assert "matches 2 runs" in err and "aaaa0000" in err and err.count("train-sgd") == 2
    # A name two runs share: the newest, and the others listed.
    assert main(["show", "--store", str(store_path), "--json", "train-sgd"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["id"].startswith("aaaa0000-9999")
    assert "name 'train-sgd' matches 2 runs; using the newest" in out.err
    # Nothing matches: the nearest names are suggested.
    assert main(["show", "--store", str(store_path), "train-adm"]) == 1
    assert "did you mean train-adam" in capsys.readouterr().err


def test_compare_takes_every_run_of_a_shared_name(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `compare train-sgd` with two runs of that name compares them, oldest as the baseline,
    # where it used to take the newest alone and then ask for a second run.
    store = make_store(store_path)
    newer = "aaaa0000-9999-4000-8000-000000000003"
    store.create_run(Run(newer, "train-sgd", "h", 3000.0))
    older = store.resolve_run(RUN_A)
    assert older.name == "train-sgd" and older.start_ts < 3000.0
    store.close()
    db = str(store_path)
    assert main(["compare", "--store", db, "--json", "train-sgd"]) == 0
    out = capsys.readouterr()
    assert [r["id"] for r in json.loads(out.out)["runs"]] == [RUN_A, newer]
    assert "name 'train-sgd' matches 2 runs; taking them all, oldest first" in out.err
    # A run named twice, by its name and by its id, is compared once.
    assert main(["compare", "--store", db, "--json", "train-sgd", RUN_A, RUN_B]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]] == [RUN_A, newer, RUN_B]
    # `show` still means one run: the newest of the name.
    assert main(["show", "--store", db, "--json", "train-sgd"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == newer


def test_tags_description_and_rm(store_path: Path) -> None:
    for name, tag in (("keep", "exp=a"), ("drop", "exp=b")):
        p = wattspan(
            "run", "--store", str(store_path), "--name", name, "--tag", tag, "--tag", "host=x",
            "--description", f"the {name} run", "--", "true",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
    listed = wattspan("runs", "--store", str(store_path), "--tag", "exp=a", "--tag", "host=x")
    assert "keep" in listed.stdout and "drop" not in listed.stdout
    assert "the keep run" in listed.stdout  # the description, in place of the command
    shown = wattspan("show", "--store", str(store_path), "keep")
    assert "the keep run" in shown.stdout and "exp=a, host=x" in shown.stdout
    drop = Store(store_path).resolve_run("drop")
    assert Store(store_path).samples(drop.id)
    # A typo among the names deletes nothing.
    bad = wattspan("rm", "--store", str(store_path), "drop", "nosuchrun")
    assert bad.returncode == 1 and "no run matches 'nosuchrun'" in bad.stderr
    assert Store(store_path).resolve_run("drop").id == drop.id
    ok = wattspan("rm", "--store", str(store_path), "drop")
    assert ok.returncode == 0 and f"deleted {drop.id[:8]} drop" in ok.stderr
    store = Store(store_path)
    assert [r.name for r in store.runs()] == ["keep"]
    assert store.samples(drop.id) == []


def test_export_samples_and_confusion_matrices(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(store_path).close()
    assert main(["export", "samples", RUN_A, "--store", str(store_path)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    store = Store(store_path)
    assert len(rows) == len(store.samples(RUN_A))
    pkg = [r for r in rows if r["source"] == "rapl" and r["tags"]["domain"] == "package-0"]
    assert pkg[0]["fields"]["energy_joules_total"] == 5000.0 and pkg[0]["offset_seconds"] == 0
    out = tmp_path / "cm.csv"
    assert main(["export", "confusion-matrices", RUN_A, RUN_B, "--store", str(store_path),
                 "-o", str(out)]) == 0  # fmt: skip
    got = list(csv.DictReader(out.open()))
    assert [r["run_id"] for r in got] == [RUN_A, RUN_B]
    assert json.loads(got[0]["matrix"]) == [[50, 3, 2], [4, 45, 1], [2, 2, 41]]
    assert json.loads(got[0]["labels"]) == ["cat", "dog", "bird"]


def test_runs_may_follow_the_options(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``export samples --store s.db RUN`` was "unrecognized arguments: RUN": argparse had
    filled the runs (nargs="*") with nothing at ``samples``."""
    make_store(store_path).close()
    assert main(["export", "samples", RUN_A, "--store", str(store_path)]) == 0
    before = capsys.readouterr().out
    assert main(["export", "samples", "--store", str(store_path), RUN_A]) == 0
    assert capsys.readouterr().out == before and before
    assert main(["export", "runs", "--json", RUN_A, "--store", str(store_path), RUN_B]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == [RUN_A, RUN_B]
    with pytest.raises(SystemExit) as e:  # what is not a run is still an error
        main(["export", "samples", "--store", str(store_path), RUN_A, "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["runs", "--store", str(store_path), "extra"])


MINE = ("run", "runs", "show", "rm", "compare", "report", "export", "status", "agent")


def test_every_option_has_help_and_store_names_the_default() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name in MINE:
        for action in subs.choices[name]._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
            if "--store" in action.option_strings:
                assert ".local/share/wattspan/wattspan.db" in action.help, name
                assert "$WATTSPAN_STORE" in action.help, name
    assert missing == []
