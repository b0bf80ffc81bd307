"""Time- and energy-to-target, and energy between two instants, from the stored counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wattspan.agent.attribution import Series, build_series, primary_domains
from wattspan.agent.store import Run, Store
from wattspan.analysis._common import Mode, as_run, finite, run_samples
from wattspan.analysis.metrics import metric_mode


@dataclass(slots=True)
class EnergyWindow:
    """Energy over ``[t0, t1]`` from the run's cumulative counters (see :func:`energy_between`)."""

    node_joules: float | None
    gpu_joules: float | None
    estimated: bool
    domains: list[str]

    @property
    def total_joules(self) -> float | None:
        if self.node_joules is None and self.gpu_joules is None:
            return None
        return (self.node_joules or 0.0) + (self.gpu_joules or 0.0)


def _delta(ser: Series, t0: float, t1: float) -> float:
    v = ser.at(np.array([t0, t1], dtype=float))
    return float(v[1] - v[0])


def energy_between(store: Store, run_id: str | Run, t0: float, t1: float) -> EnergyWindow:
    """Node (primary domains) and GPU energy consumed between Unix times ``t0`` and ``t1``.

    Uses the attribution model exactly: each cumulative counter (``rapl``/``power_model``
    ``energy_joules_total``, ``gpu`` ``energy_joules_total``) is interpolated linearly at both
    instants, clamped to its sampled range, and differenced. So the figure can be recomputed
    by hand from the stored samples, and agrees with span attribution for the same window.
    """
    run = as_run(store, run_id)
    samples = [s for src in ("rapl", "power_model", "gpu") for s in run_samples(store, run, src)]
    series = build_series(samples)
    primary = primary_domains(series.energy)
    node = None
    if primary:
        node = 0.0
        for d in primary:
            ser = series.energy[d]
            node += _delta(ser, t0, t1)
    gpu = None
    if series.gpu_energy:
        gpu = sum(_delta(ser, t0, t1) for _, ser in sorted(series.gpu_energy.items()))
    estimated = any(series.estimated.get(d, False) for d in primary)
    return EnergyWindow(node, gpu, estimated, primary)


def time_to_target(
    store: Store,
    run_id: str | Run,
    metric: str = "ml.accuracy",
    target: float = 0.9,
    mode: Mode = "max",
) -> dict[str, Any]:
    """Time and energy from the run start until ``metric`` first reaches ``target``.

    Reaching means ``value >= target`` for ``mode="max"`` (accuracy) and ``value <= target``
    for ``"min"`` (loss); ``"auto"`` picks by the name (:func:`metric_mode`). The energy is
    the node's primary-domain energy plus all GPUs' energy between the run start and that
    metric point's timestamp (:func:`energy_between`). Keys: ``reached``, ``seconds``,
    ``joules`` (node + GPU, None without any energy samples), ``node_joules``,
    ``gpu_joules``, ``energy_estimated``, ``step``, ``ts``, ``value``, plus the inputs
    ``metric``, ``target``, ``mode``. When the target is never reached the figures are None.
    """
    run = as_run(store, run_id)
    m = metric_mode(metric) if mode == "auto" else mode
    out: dict[str, Any] = {
        "metric": metric,
        "target": target,
        "mode": m,
        "reached": False,
        "seconds": None,
        "joules": None,
        "node_joules": None,
        "gpu_joules": None,
        "energy_estimated": None,
        "step": None,
        "ts": None,
        "value": None,
    }
    for row in store.metrics(run.id, name=metric):
        if not finite(row.value):
            continue
        if (row.value >= target) if m == "max" else (row.value <= target):
            e = energy_between(store, run, run.start_ts, row.ts)
            out.update(
                reached=True,
                seconds=row.ts - run.start_ts,
                joules=e.total_joules,
                node_joules=e.node_joules,
                gpu_joules=e.gpu_joules,
                energy_estimated=e.estimated if e.node_joules is not None else None,
                step=row.step,
                ts=row.ts,
                value=row.value,
            )
            break
    return out
