"""Per-configuration results of a stored experiment: statistics and the baseline comparison.

What ``wattspan experiment show``, the end-of-run table and the report display. A
configuration's baseline is the configuration with the ``experiment.baseline`` values in
place of its own and its other parameters unchanged (so with ``baseline = { rows = 1000 }``
each ``impl`` is compared with itself at 1000 rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wattspan.experiments.config import config_key
from wattspan.experiments.measure import METRICS, STREAM_METRICS
from wattspan.experiments.stats import Summary, Versus, describe, versus
from wattspan.experiments.store import Experiment, Repetition


@dataclass(slots=True)
class ConfigResult:
    key: str
    params: dict[str, Any]
    run_name: str
    ok: int = 0
    failed: int = 0
    warmups: int = 0
    stats: dict[str, Summary] = field(default_factory=dict)
    versus: dict[str, Versus] = field(default_factory=dict)
    baseline_key: str | None = None
    values: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items()) or "(no parameters)"

    @property
    def is_baseline(self) -> bool:
        return self.baseline_key == self.key


def metric_values(reps: Sequence[Repetition], metric: str) -> list[float]:
    out = []
    for r in reps:
        v = r.figures.get(metric)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def baseline_of(exp: Experiment) -> dict[str, Any] | None:
    b = exp.config.get("experiment", {}).get("baseline")
    return dict(b) if isinstance(b, dict) and b else None


def results(
    exp: Experiment,
    reps: Sequence[Repetition],
    metrics: Sequence[str] | None = None,
    seed: int | None = None,
) -> list[ConfigResult]:
    """One :class:`ConfigResult` per configuration, in the order configurations first ran;
    ``metrics`` default to :data:`METRICS` and the :data:`STREAM_METRICS` some repetition
    has."""
    seed = exp.seed if seed is None else seed
    if metrics is None:
        metrics = METRICS + tuple(
            m for m in STREAM_METRICS if any(r.figures.get(m) is not None for r in reps)
        )
    by_key: dict[str, ConfigResult] = {}
    measured: dict[str, list[Repetition]] = {}
    for r in reps:
        c = by_key.get(r.config_key)
        if c is None:
            c = by_key[r.config_key] = ConfigResult(r.config_key, r.params, r.run_name)
            measured[r.config_key] = []
        if not r.final:
            continue
        if r.phase != "measured":
            c.warmups += r.status == "ok"
        elif r.status == "ok":
            c.ok += 1
            measured[r.config_key].append(r)
        else:
            c.failed += 1
    for key, c in by_key.items():
        ordered = sorted(measured[key], key=lambda r: (r.repetition, r.seq))
        for m in metrics:
            vals = metric_values(ordered, m)
            c.values[m] = vals
            s = describe(vals, seed=seed)
            if s is not None:
                c.stats[m] = s
    base = baseline_of(exp)
    if base is not None:
        for c in by_key.values():
            bkey = config_key({**c.params, **base})
            if bkey not in by_key:
                continue
            c.baseline_key = bkey
            b = by_key[bkey]
            for m in metrics:
                if c.values.get(m) and b.values.get(m):
                    v = versus(c.values[m], b.values[m], seed=seed)
                    if v is not None:
                        c.versus[m] = v
    return list(by_key.values())


def to_dict(c: ConfigResult) -> dict[str, Any]:
    """JSON-ready form of one configuration's result (``show --json``)."""

    def summ(s: Summary) -> dict[str, Any]:
        return {
            "n": s.n,
            "mean": s.mean,
            "median": s.median,
            "sd": s.sd,
            "min": s.min,
            "max": s.max,
            "ci95": [s.ci_low, s.ci_high],
            "outliers": s.outliers,
            "hint": s.hint,
        }

    return {
        "config": json.loads(c.key),
        "run": c.run_name,
        "ok": c.ok,
        "failed": c.failed,
        "warmups": c.warmups,
        "baseline": None if c.baseline_key is None else json.loads(c.baseline_key),
        "stats": {m: summ(s) for m, s in c.stats.items()},
        "versus_baseline": {
            m: {
                "ratio": v.ratio,
                "ci95": [v.ci_low, v.ci_high],
                "u": v.u,
                "p": v.p,
                "method": v.method,
                "verdict": v.verdict,
            }
            for m, v in c.versus.items()
        },
    }
