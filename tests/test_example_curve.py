"""The example teaches (issue 15, item 8): examples/pipeline.py learns over its epochs and
crosses the default target of ``wattspan show``, so time- and energy-to-accuracy have
something to show."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

from wattspan.agent.store import Store

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline.py"


def test_the_example_shows_a_learning_curve_past_its_target(store_path: Path) -> None:
    run = [sys.executable, "-m", "wattspan", "run", "--store", str(store_path), "--name"]
    p = subprocess.run(
        [*run, "curve", "--", sys.executable, str(EXAMPLE), "--epochs", "10"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    store = Store(store_path)
    rid = store.resolve_run("curve").id
    acc = [m.value for m in store.metrics(rid, "ml.accuracy")]
    assert len(acc) == 10
    # A curve, not a step: below the target at first, above it later, rising throughout.
    assert acc[0] < 0.9 < acc[-1], acc
    assert acc[-1] - acc[0] > 0.03, acc
    assert all(b >= a - 0.002 for a, b in itertools.pairwise(acc)), acc
    crossed = next(i for i, a in enumerate(acc) if a >= 0.9)
    assert 1 <= crossed <= 6, acc  # reached within the run, not in its first epoch
    show = subprocess.run(
        [sys.executable, "-m", "wattspan", "show", "curve", "--store", str(store_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0, show.stderr
    m = re.search(r"time to ml\.accuracy >= 0\.9: ([\d.]+) s, energy ~?([\d.]+) J", show.stdout)
    assert m, show.stdout
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0
    assert f"at step {crossed}" in show.stdout
