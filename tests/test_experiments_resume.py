"""SIGINT half-way through an experiment, then ``--resume``: every configuration ends with
exactly the requested repetitions, none run twice, the interrupted one run again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from wattspan.agent.store import Store
from wattspan.experiments.store import ExperimentStore

BURN = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"
CONFIGS, WARMUPS, REPS = 3, 1, 4
PLANNED = CONFIGS * (WARMUPS + REPS)


def _final_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        c = sqlite3.connect(db, timeout=5)
        try:
            return int(c.execute("SELECT count(*) FROM experiment_repetitions WHERE final=1")
                       .fetchone()[0])  # fmt: skip
        finally:
            c.close()
    except sqlite3.OperationalError:
        return 0  # the tables are not there yet


def test_sigint_then_resume(tmp_path: Path) -> None:
    argv = json.dumps([sys.executable, "-S", "-c", BURN, "{n}"])
    cfg = tmp_path / "e.toml"
    cfg.write_text(
        f"""
[experiment]
name = "resume"
warmups = {WARMUPS}
repetitions = {REPS}
order = "interleaved"
[quiet]
check = "off"
[matrix]
n = [300000, 600000, 900000]
[[run]]
kind = "command"
argv = {argv}
"""
    )
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "wattspan", "experiment", "run", str(cfg), "--store", str(db),
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _final_count(db) < PLANNED // 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    done_first = _final_count(db)
    assert PLANNED // 2 <= done_first < PLANNED

    es = ExperimentStore(db)
    try:
        (exp,) = es.experiments()
        assert exp.status == "interrupted"
    finally:
        es.close()

    p = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert f"({done_first} done before)" in p.stderr

    es = ExperimentStore(db)
    try:
        (exp2,) = es.experiments()
        assert exp2.id == exp.id and exp2.status == "finished"
        reps = es.repetitions(exp.id)
    finally:
        es.close()
    final = [r for r in reps if r.final]
    keys = Counter((r.config_key, r.phase, r.repetition) for r in final)
    assert all(v == 1 for v in keys.values())  # nothing ran twice to completion
    per_config = Counter(r.config_key for r in final if r.phase == "measured")
    assert len(per_config) == CONFIGS and set(per_config.values()) == {REPS}
    assert Counter(r.config_key for r in final if r.phase == "warmup") == {
        k: WARMUPS for k in per_config
    }
    assert all(r.status == "ok" for r in final)
    # A repetition cut short by the signal is kept as interrupted, not counted.
    assert all(r.status == "interrupted" for r in reps if not r.final)
    store = Store(db)
    try:
        for r in final:
            assert store.resolve_run(r.run_id).exit_code == 0
    finally:
        store.close()
