"""``wattspan run`` before its command starts (issue 15, item 5): its command line read
without argparse gives argparse's answers, what is loaded before the spawn stays small, and
the command spawned with ``posix_spawn`` behaves as ``Popen``'s child did."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattspan.cli import _interval
from wattspan.cli.run_cmd import run_parser
from wattspan.cli.run_fast import DEFAULTS, FLAGS, VALUES, parse


def argparse_answer(argv: list[str]) -> dict[str, Any] | None:
    """What the argparse parser makes of ``argv``, ``cmd`` without a leading ``--`` (as
    ``cmd_run`` takes it); None where it exits with an error."""
    parser = run_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit:
        return None
    out = vars(ns)
    if out["cmd"][:1] == ["--"]:
        out["cmd"] = out["cmd"][1:]
    return out


def fast_answer(argv: list[str]) -> dict[str, Any] | None:
    got = parse(argv, _interval)
    return None if got is None else dict(vars(got))


def run_subparser() -> argparse.ArgumentParser:
    parser = run_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_the_fast_table_names_every_option_argparse_has_with_its_default() -> None:
    seen: dict[str, str] = {}
    for action in run_subparser()._actions:
        for opt in action.option_strings:
            if opt in ("-h", "--help"):
                continue
            seen[opt] = action.dest
            if action.default is not argparse.SUPPRESS:
                assert DEFAULTS[action.dest] == action.default, opt
            if action.nargs == 0:
                assert FLAGS.get(opt) == action.dest, f"{opt} is a flag"
            else:
                assert VALUES.get(opt) == action.dest, f"{opt} takes a value"
    assert set(seen) == set(FLAGS) | set(VALUES)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "python", "x.py"],
        ["run", "python", "x.py", "--json"],  # after the command: the command's own
        ["run", "--json", "--name", "a b", "--tag", "k=v", "--tag", "x==y", "--", "true"],
        ["run", "--interval=0.5", "--store=/tmp/s.db", "--description=", "--", "ls", "-l"],
        ["run", "--json-file", "out.json", "--mlflow", "--pue", "1.2", "--", "true"],
        ["run", "--carbon-intensity", "300", "--country", "DE", "--config", "c.toml", "true"],
        ["run", "--log-level", "debug", "--", "sh", "-c", "exit 3"],
        ["run", "--", "--", "x"],
    ],
)
def test_usual_forms_read_as_argparse_reads_them(argv: list[str]) -> None:
    fast = fast_answer(argv)
    assert fast is not None, "a usual form left to argparse"
    assert fast == argparse_answer(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["run", "-h"],
        ["run", "--int", "0.5", "--", "true"],  # an abbreviation
        ["run", "--interval", "abc", "--", "true"],
        ["run", "--interval", "0", "--", "true"],
        ["run", "--tag", "novalue", "--", "true"],
        ["run", "--json", "--json-file", "x", "--", "true"],
        ["run", "--name"],
        ["run", "--name", "--json", "--", "true"],
        ["run", "--pue", "-1", "--", "true"],
        ["run"],
        ["run", "--"],
        ["run", "--nope", "--", "true"],
    ],
)
def test_the_rest_is_left_to_argparse(argv: list[str]) -> None:
    assert fast_answer(argv) is None


TOKENS = st.sampled_from(
    [
        *FLAGS,
        *VALUES,
        "--interval=0.2",
        "--tag=a=b",
        "--",
        "-x",
        "--he",
        "k=v",
        "0.5",
        "7",
        "DE",
        "python",
        "-c",
        "pass",
        "",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=8))
def test_any_command_line_either_reads_as_argparse_or_is_left_to_it(tokens: list[str]) -> None:
    argv = ["run", *tokens]
    fast = fast_answer(argv)
    if fast is not None:
        assert fast == argparse_answer(argv), argv


# Runs `wattspan run` in a fresh interpreter and lists the modules loaded when the command
# is spawned (what every run waits for), then lets it go on.
PRESPAWN = r"""
import os, sys
spawn, out, store = os.posix_spawn, sys.argv[1], sys.argv[2]
def peek(*a, **k):
    with open(out, "w") as f:
        f.write("\n".join(sorted(set(sys.modules) - base)))
    return spawn(*a, **k)
base = set(sys.modules)
os.posix_spawn = peek
sys.argv = ["wattspan", "run", "--json", "--store", store, "--", "true"]
from wattspan.cli import main
raise SystemExit(main())
"""

# Each costs milliseconds at import, or brings in what does; none is needed to start the
# command (the agent loads them while it runs).
HEAVY = {
    "argparse",
    "re",
    "subprocess",
    "logging",
    "typing",
    "dataclasses",
    "pathlib",
    "socket",
    "json",
    "tempfile",
    "shutil",
    "grpc",
    "sqlite3",
    "numpy",
    "psutil",
    "rich",
    "tomllib",
    "enum",
    "threading",
    "ctypes",
    "struct",
    "collections",
    "functools",
    "resource",
    "math",
}


def test_nothing_heavy_is_loaded_before_the_command_starts(tmp_path: Path) -> None:
    out = tmp_path / "modules.txt"
    p = subprocess.run(
        [sys.executable, "-c", PRESPAWN, str(out), str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["exit_code"] == 0
    loaded = set(out.read_text().split())
    assert "wattspan.agent.runner" in loaded, "the peek saw no spawn of the runner"
    assert not (HEAVY & loaded), sorted(HEAVY & loaded)


def wattspan(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_the_command_gets_sigpipe_back_as_popen_gave_it(store_path: Path) -> None:
    # Python ignores SIGPIPE; a child that inherited that would see `yes` spin on EPIPE
    # (write error) instead of dying quietly when `head` leaves.
    p = wattspan("run", "--store", str(store_path), "--", "sh", "-c", "yes | head -n 2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["y", "y"]
    assert "Broken pipe" not in p.stderr and "write error" not in p.stderr


def test_the_command_is_found_on_its_own_path_and_a_file_without_x_is_126(
    store_path: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mytool"
    tool.write_text("#!/bin/sh\necho from-mytool\n")
    tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    p = wattspan("run", "--store", str(store_path), "--", "mytool", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "from-mytool"
    tool.chmod(0o644)
    p = wattspan("run", "--store", str(store_path), "--", "mytool", env=env)
    assert p.returncode == 126, p.stderr
    assert "mytool: Permission denied" in p.stderr
