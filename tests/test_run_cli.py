"""``wattspan run`` end to end on real child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wattspan.agent.store import Store

BURN = r"""
import json, os, sys, time
t0 = time.process_time()
x = 0
while time.process_time() - t0 < float(sys.argv[1]):
    x += 1
c = os.times()
print(json.dumps({"self_cpu": c.user + c.system}), file=sys.stderr)
"""


def wattspan(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[arg-type]
    )


def wattspan_run_until_ready(
    store_path: Path, code: str, *, start_new_session: bool = False
) -> subprocess.Popen[str]:
    """Start ``wattspan run`` of ``python -c code`` in the background, and return once the
    child has printed its first line, which must be ``ready``."""
    child = [sys.executable, "-c", code]
    proc = subprocess.Popen(
        [sys.executable, "-m", "wattspan", "run", "--store", str(store_path), "--", *child],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=start_new_session,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _self_cpu(stderr: str) -> float:
    for line in stderr.splitlines():
        if line.startswith('{"self_cpu"'):
            return float(json.loads(line)["self_cpu"])
    raise AssertionError(f"child did not report its CPU time: {stderr}")


def test_cpu_seconds_match_what_the_child_measures(store_path: Path) -> None:
    p = wattspan(
        "run",
        "--json",
        "--store",
        str(store_path),
        "--name",
        "burn",
        "--",
        sys.executable,
        "-c",
        BURN,
        "1.5",
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    child = _self_cpu(p.stderr)
    assert summary["cpu_seconds"] == pytest.approx(child, rel=0.10)
    assert summary["wall_seconds"] >= child * 0.9
    assert 50 <= summary["cpu_percent_avg"] <= 105  # a single-threaded burner
    assert summary["peak_rss_bytes"] > 1_000_000
    # No RAPL on this machine: the energy is the power model's, and says so.
    assert summary["energy"], "no energy figure at all"
    for e in summary["energy"]:
        assert e["joules"] > 0
        assert e["estimated"] is (e["source"] == "power_model")
    store = Store(store_path)
    run = store.resolve_run(summary["run_id"])
    assert run.name == "burn" and run.exit_code == 0
    assert run.command[-1] == "1.5"
    # The summary is reproducible from the stored samples.
    from wattspan.agent.carbon import Intensity, annotate
    from wattspan.agent.summary import summarize

    assert run.end_ts is not None and run.summary is not None
    idle = run.summary["idle_power_watts"], run.summary["idle_method"]
    again = summarize(store.samples(run.id), run.start_ts, run.end_ts, *idle)
    carbon = Intensity.from_dict(run.summary["carbon"])
    assert carbon is not None
    assert annotate(again, carbon) == run.summary
    assert len(store.samples(run.id, source="process_tree")) >= 5


def test_table_goes_to_stderr_and_names_estimates(store_path: Path) -> None:
    p = wattspan("run", "--store", str(store_path), "--", sys.executable, "-c", "print('hi')")
    assert p.returncode == 0
    assert p.stdout == "hi\n"  # the child's output is untouched
    for label in (
        "wall time",
        "CPU user",
        "CPU system",
        "CPU avg",
        "CPU peak",
        "peak RSS",
        "energy",
        "estimated",
    ):
        assert label in p.stderr


def test_exit_code_is_the_childs(store_path: Path) -> None:
    p = wattspan(
        "run", "--store", str(store_path), "--", sys.executable, "-c", "import sys; sys.exit(7)"
    )
    assert p.returncode == 7
    assert Store(store_path).resolve_run("latest").exit_code == 7


def test_command_not_found_is_127(store_path: Path) -> None:
    p = wattspan("run", "--store", str(store_path), "--", "no-such-command-xyz", "a")
    assert p.returncode == 127
    assert "no-such-command-xyz: command not found" in p.stderr


def test_sigterm_is_forwarded_to_the_child(store_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    child = (
        "import signal, sys, time, pathlib\n"
        "def h(s, f):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('term')\n"
        "    sys.exit(42)\n"
        "signal.signal(signal.SIGTERM, h)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = wattspan_run_until_ready(store_path, child)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 42
    assert marker.read_text() == "term"
    assert Store(store_path).resolve_run("latest").exit_code == 42


def test_sigint_not_from_a_terminal_is_forwarded(store_path: Path) -> None:
    proc = wattspan_run_until_ready(
        store_path,
        "import time; print('ready', flush=True); time.sleep(60)",
        start_new_session=True,
    )
    proc.send_signal(signal.SIGINT)
    # Python's default SIGINT handling raises KeyboardInterrupt: exit status 1... or the
    # signal's 130 when the child dies of it. Either way it ended because we forwarded.
    assert proc.wait(30) in (1, 130)


def test_runs_and_show_read_the_store(store_path: Path) -> None:
    wattspan("run", "--store", str(store_path), "--name", "first", "--", "true")
    wattspan("run", "--store", str(store_path), "--name", "second", "--", "false")
    ls = wattspan("runs", "--store", str(store_path), "--json")
    rows = [json.loads(line) for line in ls.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["second", "first"]
    assert [r["exit_code"] for r in rows] == [1, 0]
    table = wattspan("runs", "--store", str(store_path))
    assert "second" in table.stdout and "first" in table.stdout
    show = wattspan("show", "first", "--store", str(store_path))
    assert show.returncode == 0 and "wall time" in show.stdout
    missing = wattspan("show", "nope", "--store", str(store_path))
    assert missing.returncode == 1 and "no run matches" in missing.stderr


def test_child_sees_run_id_in_its_environment(store_path: Path) -> None:
    p = wattspan(
        "run",
        "--json",
        "--store",
        str(store_path),
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['WATTSPAN_RUN_ID'])",
    )
    # Under --json the child's stdout goes to stderr: stdout is the summary alone.
    (line,) = p.stdout.strip().splitlines()
    assert json.loads(line)["run_id"] in p.stderr.splitlines()


def test_interval_controls_sampling(store_path: Path) -> None:
    wattspan(
        "run",
        "--interval",
        "0.05",
        "--store",
        str(store_path),
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(1)",
    )
    s = Store(store_path)
    run = s.resolve_run("latest")
    ts = [x.ts for x in s.samples(run.id, source="memory")]
    assert len(ts) >= 12  # about 20 at 50 ms; anything near 10 would mean 0.1 s
    assert os.path.exists(store_path)
    assert time.time() > run.start_ts


def test_a_signal_right_after_the_child_starts_is_forwarded(store_path: Path) -> None:
    # The child signals ``wattspan run`` at once, while it is still setting up around the
    # spawn: the signal must reach the child (exit 128 + 15), not kill wattspan by default.
    p = wattspan(
        "run", "--store", str(store_path), "--", "sh", "-c", 'kill -TERM "$PPID"; exec sleep 5'
    )
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert Store(store_path).resolve_run("latest").exit_code == 128 + signal.SIGTERM


def test_summary_is_what_was_measured_when_the_store_fails_mid_run(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A store that stops taking samples mid-run costs the stored samples, not the table:
    CPU seconds still match what the child measured of itself, and the run is marked."""
    import sqlite3

    from wattspan.agent.config import load_config
    from wattspan.agent.runner import run_command

    real = Store.write_samples
    calls = []

    def failing_after_one(self: Store, run_id: str | None, samples: object) -> int:
        calls.append(1)
        if len(calls) > 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, run_id, samples)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "write_samples", failing_after_one)
    result = run_command(
        [sys.executable, "-c", BURN, "2.0"],
        load_config(environ={}),
        interval=0.1,
        store_path=str(store_path),
        name="failing-store",
    )
    assert result.exit_code == 0
    self_cpu = json.loads(capfd.readouterr().err.strip().splitlines()[-1])["self_cpu"]
    assert len(calls) > 1, "the store never failed: the test proves nothing"
    assert result.summary["cpu_seconds"] == pytest.approx(self_cpu, rel=0.10, abs=0.05)
    assert result.summary["store_incomplete"] is True and result.summary["store_errors"] > 0
    monkeypatch.setattr(Store, "write_samples", real)
    stored = Store(store_path).resolve_run(result.run.id)
    assert stored.summary is not None and stored.summary["store_incomplete"] is True
    assert stored.summary["cpu_seconds"] == pytest.approx(result.summary["cpu_seconds"])


@pytest.mark.parametrize("command", [["run", "--", "true"], ["agent", "--otlp-port", "0"]])
def test_a_store_path_that_is_a_directory_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    p = wattspan(*command[:1], "--store", str(tmp_path), *command[1:])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"wattspan: store {tmp_path}: is a directory"
    assert "Traceback" not in p.stderr


def test_co2e_masses_keep_three_significant_digits_down_to_micrograms() -> None:
    from wattspan.cli.tables import fmt_grams

    assert fmt_grams(1234.0) == "1.23 kg"
    assert fmt_grams(12.345) == "12.35 g"
    assert fmt_grams(0.0123) == "12.30 mg"
    assert fmt_grams(1.27e-6) == "1.27 µg"
    assert fmt_grams(0.0) == "0.00 g" and fmt_grams(None) == "-"
