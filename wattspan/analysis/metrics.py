"""Valued metrics of a run: per-name curves, final and best values, which way is better."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from wattspan.agent.store import MetricRow, Run, Store
from wattspan.analysis._common import as_run, finite

# Tokens that mark a metric where lower is better. Matched against the name split at
# non-alphanumerics, so ``ml.val_loss`` and ``ml.error_rate`` are "min" but ``ml.accuracy``
# (or a made-up ``ml.lossless_ratio``) is "max". Costs are lower-is-better too: the stream
# engine's ``wattspan.stream.window.latency.p99``, a ``step_seconds`` or ``energy_joules``;
# a rate (``events_per_joule``, ``samples_per_second``) is not matched, its tokens being
# singular.
_LOWER_IS_BETTER = frozenset(
    {"loss", "error", "err", "mse", "mae", "rmse", "mape", "perplexity", "ppl", "wer", "cer"}
    | {"latency", "delay", "duration", "seconds", "joules"}
)


# The parts an OTLP histogram becomes (agent/receiver/convert.py): its count and sum say how
# much was observed, not how good it was; ``...latency.count`` is not a latency.
_TALLIES = frozenset({"count", "sum"})


def metric_mode(name: str) -> Literal["max", "min"]:
    """``"min"`` for metrics where lower is better (loss, error, latency...), else ``"max"``
    (a histogram's ``.count`` and ``.sum`` included)."""
    tokens = [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]
    if tokens and tokens[-1] in _TALLIES:
        return "max"
    return "min" if set(tokens) & _LOWER_IS_BETTER else "max"


def metrics_by_name(store: Store, run: Run) -> dict[str, list[MetricRow]]:
    """A run's metric points per name, names sorted, points in logging order: one query."""
    by_name: dict[str, list[MetricRow]] = {}
    for m in store.metrics(run.id):
        by_name.setdefault(m.name, []).append(m)
    return dict(sorted(by_name.items()))


def curve_points(rows: Sequence[MetricRow], run: Run, use_step: bool) -> list[tuple[float, float]]:
    """``[(x, value), ...]`` of one metric's points: x is the step (points without one are
    dropped) or the seconds since the run start."""
    if use_step:
        return [(float(r.step), r.value) for r in rows if r.step is not None]
    return [(r.ts - run.start_ts, r.value) for r in rows]


def metric_curves(
    store: Store, run_id: str | Run, x: Literal["auto", "step", "seconds"] = "auto"
) -> dict[str, list[tuple[float, float]]]:
    """``{metric name: [(x, value), ...]}`` in logging order.

    ``x`` is the step when every point of that metric carries one (``auto``), otherwise the
    seconds since the run start: relative time, so curves of several runs overlay. Force one
    or the other with ``x="step"`` (points without a step are dropped) or ``x="seconds"``.
    """
    run = as_run(store, run_id)
    out: dict[str, list[tuple[float, float]]] = {}
    for name, rows in metrics_by_name(store, run).items():
        use_step = x == "step" or (x == "auto" and all(r.step is not None for r in rows))
        out[name] = curve_points(rows, run, use_step)
    return out


def curve_axis(store: Store, run_id: str | Run, name: str) -> Literal["step", "seconds"]:
    """Which x :func:`metric_curves` uses for ``name`` in ``auto`` mode."""
    rows = store.metrics(as_run(store, run_id).id, name=name)
    return "step" if rows and all(r.step is not None for r in rows) else "seconds"


@dataclass(slots=True)
class MetricSummary:
    """First, last and best value of one metric of one run."""

    name: str
    mode: Literal["max", "min"]
    points: int
    first: float | None
    last: float | None
    best: float | None
    best_step: int | None
    best_seconds: float | None
    last_step: int | None


def metric_summaries(store: Store, run_id: str | Run) -> dict[str, MetricSummary]:
    """Per metric name: first/last/best (best per :func:`metric_mode`); NaN points are
    ignored for best so that one diverged step does not hide the run's best value."""
    run = as_run(store, run_id)
    out: dict[str, MetricSummary] = {}
    for name, rows in metrics_by_name(store, run).items():
        mode = metric_mode(name)
        ok = [r for r in rows if finite(r.value)]
        best_row = None
        if ok:
            vals = [r.value for r in ok]
            best = max(vals) if mode == "max" else min(vals)
            # The first point with the best value wins ties: that is when it was reached.
            best_row = next(r for r in ok if r.value == best)
        out[name] = MetricSummary(
            name=name,
            mode=mode,
            points=len(rows),
            first=rows[0].value,
            last=rows[-1].value,
            best=None if best_row is None else best_row.value,
            best_step=None if best_row is None else best_row.step,
            best_seconds=None if best_row is None else best_row.ts - run.start_ts,
            last_step=rows[-1].step,
        )
    return out
