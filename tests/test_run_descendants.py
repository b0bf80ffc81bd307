"""``wattspan run`` counts the CPU of descendants that their parent never reaped.

Real process trees: a child (the command) starts a CPU-burning grandchild and exits without
waiting for it. Every process writes what it measured of itself (``os.times()``, its own
user + system CPU) to a file; the run's CPU seconds must match their sum.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# The grandchild: burns CPU, reporting its own CPU seconds as it goes (``report``).
#   burn-exit T    burn T s, report, exit
#   burn-sleep T   burn T s, report, sleep (until killed)
#   burn-until P   burn until process P is gone (the command exited), report, sleep: the
#                  CPU it reports is what it had when the run ended, give or take one check
GRANDCHILD = r"""
import json, os, sys, time
report, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]

def cpu():
    t = os.times()
    return t.user + t.system

def write(done):
    tmp = report + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "cpu": cpu(), "done": done}, f)
    os.replace(tmp, report)

def parent_alive():
    return os.path.exists(f"/proc/{arg}")

last = 0.0
while True:
    x = 0
    for _ in range(20000):
        x += 1
    c = cpu()
    if mode == "burn-until":
        if not parent_alive() or c > 10:
            break
    elif c >= float(arg):
        break
    if c - last > 0.05:
        write(False)
        last = c
write(True)
if mode != "burn-exit":
    time.sleep(30)  # outlives the run; the test kills it well before this
"""

# The command: burns a little itself, starts the grandchild one way or another, and exits
# without waiting for it (except in ``waited``, the control).
CHILD = r"""
import json, os, signal, subprocess, sys, time
mode, out = sys.argv[1], sys.argv[2]
g_report = os.path.join(out, "grandchild.json")
g = [sys.executable, os.path.join(out, "grandchild.py"), g_report]
# Off the run's stdio: the test reads wattspan's output to its end, which a grandchild that
# outlives the run would hold open.
quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

def read():
    try:
        with open(g_report) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def wait_for(pred):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = read()
        if r is not None and pred(r):
            return r
        time.sleep(0.01)
    raise SystemExit("grandchild never reported")

if mode == "waited":
    subprocess.run([*g, "burn-exit", "0.8"], check=True, **quiet)
elif mode == "killed":
    p = subprocess.Popen([*g, "burn-sleep", "1.0"], **quiet)
    wait_for(lambda r: r["done"])
elif mode == "left":
    subprocess.Popen([*g, "burn-until", str(os.getpid())], **quiet)
    wait_for(lambda r: r["cpu"] >= 1.0)
elif mode == "daemonised":
    # The shell forks the grandchild and exits at once: an orphan from its first instant,
    # never a child of the command, so no sample can have seen it below the command.
    cmd = " ".join([*g, "burn-until", str(os.getpid())]) + " &"
    subprocess.run(["sh", "-c", cmd], check=True, **quiet)
    wait_for(lambda r: r["cpu"] >= 1.0)

t0 = time.process_time()
while time.process_time() - t0 < 0.2:
    pass
if mode == "killed":
    os.kill(p.pid, signal.SIGKILL)  # and exit at once: nobody in the tree reaps it
t = os.times()
with open(os.path.join(out, "child.json"), "w") as f:
    json.dump({"cpu": t.user + t.system}, f)
# os._exit: no interpreter teardown, whose Popen.__del__ would reap a dead grandchild.
os._exit(0)
"""


def _run(store_path: Path, tmp_path: Path, mode: str) -> dict[str, Any]:
    (tmp_path / "grandchild.py").write_text(GRANDCHILD)
    (tmp_path / "child.py").write_text(CHILD)
    p = subprocess.run(
        [
            *(sys.executable, "-m", "wattspan", "run", "--json", "--store", str(store_path)),
            *("--", sys.executable, str(tmp_path / "child.py"), mode, str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def _report(tmp_path: Path, name: str, done: bool = True) -> dict[str, Any]:
    """A process's last report of itself, waiting for its final one (``done``)."""
    path = tmp_path / name
    deadline = time.monotonic() + 10
    while True:
        try:
            r = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            r = {}
        if r and (r.get("done", True) or not done):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: no final report ({r})")
        time.sleep(0.02)


def _kill_grandchild(tmp_path: Path) -> None:
    try:
        pid = json.loads((tmp_path / "grandchild.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_grandchild_killed_as_the_child_exits_is_reaped_and_counted(
    store_path: Path, tmp_path: Path
) -> None:
    try:
        s = _run(store_path, tmp_path, "killed")
    finally:
        _kill_grandchild(tmp_path)
    child = _report(tmp_path, "child.json")["cpu"]
    grandchild = _report(tmp_path, "grandchild.json")["cpu"]
    # wait4 of the child alone is its own 0.2 s and change: the grandchild is the most of it.
    assert s["cpu_seconds"] == pytest.approx(child + grandchild, rel=0.10)
    assert s["cpu_source"] == "wait4"
    assert s["orphans_reaped"] == 1
    assert s["cpu_seconds_orphans"] == pytest.approx(grandchild, rel=0.10)
    assert s["cpu_seconds_reaped"] == pytest.approx(s["cpu_seconds"])
    assert s["outlived_processes"] == 0 and s["outlived"] == []


@pytest.mark.parametrize("mode", ["left", "daemonised"])
def test_a_grandchild_left_running_is_counted_and_listed(
    store_path: Path, tmp_path: Path, mode: str
) -> None:
    try:
        s = _run(store_path, tmp_path, mode)
        g = _report(tmp_path, "grandchild.json")
        show = subprocess.run(
            [sys.executable, "-m", "wattspan", "show", "latest", "--store", str(store_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        _kill_grandchild(tmp_path)
    child = _report(tmp_path, "child.json")["cpu"]
    assert s["cpu_seconds"] == pytest.approx(child + g["cpu"], rel=0.10)
    assert s["cpu_source"] == "wait4+proc"
    assert s["outlived_processes"] == 1
    [left] = s["outlived"]
    assert left["pid"] == g["pid"] and left["name"].startswith("python")
    assert left["exited"] is False
    assert left["cpu_seconds"] == pytest.approx(g["cpu"], rel=0.10)
    assert s["cpu_seconds_outlived"] == pytest.approx(left["cpu_seconds"])
    assert s["orphans_reaped"] == 0  # the shell of "daemonised" was the child's to reap
    assert s["cpu_seconds_reaped"] + s["cpu_seconds_outlived"] == pytest.approx(s["cpu_seconds"])
    assert show.returncode == 0, show.stderr
    assert "CPU outlived" in show.stdout and f"pid {g['pid']}" in show.stdout


def test_a_grandchild_its_parent_waited_for_is_counted_once(
    store_path: Path, tmp_path: Path
) -> None:
    # The control: the grandchild is in wait4's figure already, and the process collector
    # sampled it too; counting both would make about child + 2 x grandchild.
    s = _run(store_path, tmp_path, "waited")
    child = _report(tmp_path, "child.json")["cpu"]
    grandchild = _report(tmp_path, "grandchild.json")["cpu"]
    assert grandchild > 0.7
    assert s["cpu_seconds"] == pytest.approx(child + grandchild, rel=0.10)
    assert s["cpu_source"] == "wait4"
    assert s["orphans_reaped"] == 0 and s["outlived_processes"] == 0


def test_an_in_process_run_stops_being_a_subreaper(store_path: Path) -> None:
    # A program that calls run_command must not keep adopting orphans of unrelated
    # processes afterwards.
    from wattspan.agent.config import load_config
    from wattspan.agent.runner import run_command
    from wattspan.agent.subreaper import is_subreaper as _is_subreaper

    if _is_subreaper():
        pytest.skip("this test process is a subreaper already")
    result = run_command(
        [sys.executable, "-c", "pass"], load_config(environ={}), store_path=str(store_path)
    )
    assert result.exit_code == 0
    assert result.summary["cpu_source"] == "wait4"  # it was one while the command ran
    assert not _is_subreaper()


SUBREAPER_PATHS = """
import json, sys
from wattspan.agent import subreaper as s
light, full = s._light(), s._full()
seen = []
for setter, getter in ((light, full), (full, light), (light, light)):
    for on in (True, False):
        s._cached[:] = [setter]
        ok = s.set_subreaper(on)
        s._cached[:] = [getter]
        seen.append([on, ok, s.is_subreaper()])
print(json.dumps(seen))
"""


def test_the_light_prctl_path_and_ctypes_agree() -> None:
    # The flag set through _ctypes is the one ctypes reads back, and the other way round
    # (in a fresh interpreter: the test process's own flag is left alone).
    p = subprocess.run(
        [sys.executable, "-c", SUBREAPER_PATHS], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout)
    assert seen == [[on, True, on] for _ in range(3) for on in (True, False)]
