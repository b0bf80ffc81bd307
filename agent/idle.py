"""Idle power: the part of the node's power that no process is charged for.

Attribution splits node energy into idle and active, and shares only the active part among
processes (README, "How attribution works"), so the idle figure decides every process's
energy. In order of preference:

1. ``model``: with the power model (no RAPL), its own ``P_idle = idle_fraction * TDP``.
2. ``calibration``: a per-host figure measured on a quiet node by ``wattspan calibrate`` and
   kept in the state directory (``calibration.json``).
3. ``regression``: a least-squares fit of the primary domains' mean power on busy CPU cores
   over the sampling intervals the agent holds (merged into windows of at least
   ``MIN_WINDOW_SECONDS``), ``P = P_idle + k * busy``; its intercept is the idle power. Used
   only when utilisation varied enough to pin the line down (busy range at least
   ``MIN_BUSY_RANGE`` cores over at least ``MIN_INTERVALS`` windows) and the fit
   explains most of the variance (``r2 >= MIN_R2``), with ``P_idle`` between 0 and the
   quietest interval's power (give or take twice the residual spread).
4. ``min-interval``: the lowest mean power of any interval seen, the last resort (it is
   whatever the quietest second happened to be, so it varies with history).

A run keeps the first figure it was given (see :class:`~wattspan.agent.ingest.TelemetryIngest`),
so every span of a run is charged the same idle power; the method is stored with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wattspan.agent.attribution import NodeSeries, min_interval_power
from wattspan.agent.calibration import Calibration

if TYPE_CHECKING:
    import numpy as np

MIN_INTERVALS = 10
MIN_BUSY_RANGE = 0.5  # CPU cores
MIN_R2 = 0.6
MIN_WINDOW_SECONDS = 0.3


@dataclass(frozen=True, slots=True)
class IdleEstimate:
    watts: float
    method: str  # "model", "calibration", "regression" or "min-interval"
    r2: float | None = None


def interval_rates(
    series: NodeSeries, domains: list[str], min_seconds: float = 0.0
) -> tuple[list[float], list[float]]:
    """Per sampling interval: mean power of ``domains`` (W) and mean busy CPU cores.

    With ``min_seconds``, consecutive intervals are merged until each window lasts at least
    that long: the energy and CPU counters are read a moment apart and the CPU counter moves
    in 10 ms ticks, so short intervals carry noise in *both* variables, which would bias a
    fitted slope low and its intercept (the idle figure) high. Plain Python: the agent
    estimates idle with its first span, and numpy is not loaded for that.
    """
    parts = [series.energy[d] for d in domains if d in series.energy]
    busy_ser = series.busy_cpu
    if not parts or busy_ser is None:
        return [], []
    ts = list(parts[0].ts)
    energy = [sum(p.at1(t) for p in parts) for t in ts]
    busy = [busy_ser.at1(t) for t in ts]
    if min_seconds > 0 and len(ts) > 1:
        keep = [0]
        for i in range(1, len(ts)):
            if ts[i] - ts[keep[-1]] >= min_seconds:
                keep.append(i)
        ts, energy, busy = [ts[i] for i in keep], [energy[i] for i in keep], [busy[i] for i in keep]
    power: list[float] = []
    cores: list[float] = []
    for i in range(1, len(ts)):
        dt = ts[i] - ts[i - 1]
        if dt > 0:
            power.append((energy[i] - energy[i - 1]) / dt)
            cores.append((busy[i] - busy[i - 1]) / dt)
    return power, cores


def interval_power(
    series: NodeSeries, domains: list[str], min_seconds: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`interval_rates` as numpy arrays (for ``wattspan calibrate``)."""
    import numpy as np

    power, busy = interval_rates(series, domains, min_seconds)
    return np.asarray(power, dtype=float), np.asarray(busy, dtype=float)


def fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y`` on ``x`` (``np.polyfit(x, y, 1)``, to
    rounding); ``x`` must not be constant."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    slope = sxy / sxx
    return slope, my - slope * mx


def regression(series: NodeSeries, domains: list[str]) -> IdleEstimate | None:
    """The intercept of power on busy cores, when the samples pin it down (module doc)."""
    power, busy = interval_rates(series, domains, MIN_WINDOW_SECONDS)
    if len(power) < MIN_INTERVALS or max(busy) - min(busy) < MIN_BUSY_RANGE:
        return None
    slope, intercept = fit_line(busy, power)
    mean = sum(power) / len(power)
    ss_res = sum((p - (intercept + slope * b)) ** 2 for p, b in zip(power, busy, strict=True))
    ss_tot = sum((p - mean) ** 2 for p in power)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    # Idle cannot be above the quietest interval, give or take the fit's own noise.
    noise = 2.0 * (ss_res / len(power)) ** 0.5
    if r2 < MIN_R2 or slope < 0 or not 0.0 <= intercept <= min(power) + noise:
        return None
    return IdleEstimate(float(intercept), "regression", r2)


def estimate(
    series: NodeSeries,
    domains: list[str],
    *,
    model_watts: float | None = None,
    calibration: Calibration | None = None,
) -> IdleEstimate | None:
    """The best idle figure available for these samples (module doc, in that order)."""
    if model_watts is not None:
        return IdleEstimate(model_watts, "model")
    if calibration is not None:
        return IdleEstimate(calibration.idle_watts, "calibration")
    fitted = regression(series, domains)
    if fitted is not None:
        return fitted
    low = min_interval_power(series, domains)
    return None if low is None else IdleEstimate(low, "min-interval")


def calibrate(
    power: np.ndarray, busy_ratio: np.ndarray, *, host: str, domains: list[str], seconds: float
) -> Calibration:
    """A calibration from interval powers and busy shares (0..1) taken on a quiet node.

    The idle figure is the mean power of the quieter half of the intervals: a stray cron job
    during calibration lifts a few intervals, not the figure. The node counts as quiet when
    its CPUs were under 5 % busy on average.
    """
    import numpy as np

    order = np.argsort(busy_ratio)
    quieter = power[order[: max(1, len(order) // 2)]]
    mean_busy = float(busy_ratio.mean()) if len(busy_ratio) else 0.0
    return Calibration(
        host=host,
        idle_watts=float(quieter.mean()),
        domains=list(domains),
        seconds=seconds,
        busy_ratio=mean_busy,
        measured_at=time.time(),
        quiet=mean_busy < 0.05,
    )
