"""Resources attributed to a span, computed from node samples alone.

The model (also in the README, "How attribution works"):

* **Node energy** over a span ``[t0, t1]`` is, per domain, ``E(t1) - E(t0)`` where ``E`` is
  the domain's cumulative energy counter linearly interpolated between the two samples that
  bracket each instant. Counters are clamped to the sampled range: a span that outlives the
  samples is marked ``coverage < 1``.
* **Primary domains** are the non-overlapping ones whose sum is the node's CPU-side energy:
  RAPL packages (``package-N``, ``package-N-die-M``), else ``psys``, else the power model's
  estimate ``cpu``. Sub-domains (``package-0/dram``) and ``psys`` are reported but not summed.
* **Idle power** ``P_idle`` is the lowest mean power of any sampling interval the agent has
  seen for the primary domains (the approach Kepler uses without a calibrated idle figure);
  ``idle = P_idle * (t1 - t0)`` and ``active = max(node - idle, 0)``.
* **Process share**: the span's process tree used ``c`` CPU seconds over the span while the
  whole node was busy for ``C`` CPU seconds (from ``/proc/stat``); share ``s = min(c / C, 1)``
  and the process's energy is ``s * active``. What is left, ``(1 - s) * active``, belongs to
  other processes and the kernel (``other_energy_joules``); so for every span
  ``process + other + idle == node`` whenever ``node >= idle``.
* **GPU energy**: per GPU, the difference of the interpolated NVML energy counter.
* **CPU seconds** and **peak RSS** of the span's process tree come from the same samples,
  unless the span carries ``wattspan.cpu.process_seconds``: the CPU time its process
  measured of itself over the span (``time.process_time``, exact, the process without its
  children). Then that figure is ``c`` above, and ``cpu_source`` says which it was.

Everything is vectorised over a batch of spans with numpy, so attribution costs a few
microseconds per span.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wattspan.agent.domains import primary_domains
from wattspan.collectors.base import Sample
from wattspan.collectors.base import number as _f
from wattspan.collectors.cpu import BUSY_FIELDS, busy_seconds

__all__ = [
    "BUSY_FIELDS",
    "NodeSeries",
    "Series",
    "SpanWindow",
    "attribute",
    "build_series",
    "min_interval_power",
    "primary_domains",
]


@dataclass(slots=True)
class SpanWindow:
    """What attribution needs of a span: its interval (Unix s), process, item count and the
    CPU seconds its process reported using over the span (``wattspan.cpu.process_seconds``),
    which, when present, replace the sampled figure: the process measured it exactly."""

    start: float
    end: float
    pid: int | None = None
    items: float | None = None
    cpu_seconds: float | None = None


@dataclass(slots=True)
class Series:
    ts: np.ndarray
    values: np.ndarray

    def at(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.ts, self.values)


@dataclass
class NodeSeries:
    """Cumulative series extracted from samples, ready for interpolation."""

    energy: dict[str, Series] = field(default_factory=dict)
    estimated: dict[str, bool] = field(default_factory=dict)
    busy_cpu: Series | None = None
    proc_cpu: dict[int, Series] = field(default_factory=dict)
    proc_rss: dict[int, Series] = field(default_factory=dict)
    proc_hwm: dict[int, Series] = field(default_factory=dict)
    gpu_energy: dict[str, Series] = field(default_factory=dict)

    @property
    def span(self) -> tuple[float, float] | None:
        ends = [s.ts for s in self.energy.values()]
        if self.busy_cpu is not None:
            ends.append(self.busy_cpu.ts)
        if not ends:
            return None
        return min(float(t[0]) for t in ends), max(float(t[-1]) for t in ends)


def _series(points: list[tuple[float, float]]) -> Series | None:
    if not points:
        return None
    points.sort()
    ts = np.fromiter((p[0] for p in points), float, len(points))
    vs = np.fromiter((p[1] for p in points), float, len(points))
    return Series(ts, vs)


def _add_cpu_rss(
    s: Sample,
    pid: int,
    cpu: dict[int, list[tuple[float, float]]],
    rss: dict[int, list[tuple[float, float]]],
) -> None:
    """Appends a process (or tree) sample's CPU seconds (user + system) and RSS points."""
    u, sy = _f(s, "cpu_user_seconds_total"), _f(s, "cpu_system_seconds_total")
    if u is not None and sy is not None:
        cpu[pid].append((s.ts, u + sy))
    r = _f(s, "rss_bytes")
    if r is not None:
        rss[pid].append((s.ts, r))


def build_series(samples: Iterable[Sample]) -> NodeSeries:
    energy: dict[str, list[tuple[float, float]]] = defaultdict(list)
    estimated: dict[str, bool] = {}
    busy: list[tuple[float, float]] = []
    cpu: dict[int, list[tuple[float, float]]] = defaultdict(list)
    rss: dict[int, list[tuple[float, float]]] = defaultdict(list)
    hwm: dict[int, list[tuple[float, float]]] = defaultdict(list)
    gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
    pcpu: dict[int, list[tuple[float, float]]] = defaultdict(list)
    prss: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        src = s.source
        if src in ("rapl", "power_model"):
            v = _f(s, "energy_joules_total")
            if v is not None:
                d = s.tags.get("domain", "?")
                energy[d].append((s.ts, v))
                estimated[d] = s.tags.get("estimated") == "true"
        elif src == "cpu" and s.tags.get("cpu") == "total":
            busy.append((s.ts, busy_seconds(s)))
        elif src == "process_tree":
            _add_cpu_rss(s, int(s.tags["root"]), cpu, rss)
        elif src == "process":
            pid = int(s.tags["pid"])
            # The kernel's per-process high-water mark (VmHWM) catches peaks that fall
            # between samples.
            h = _f(s, "peak_rss_bytes")
            if h is not None:
                hwm[pid].append((s.ts, h))
            # A process inside a watched tree (a worker of the root, say) gets its own CPU
            # series; a tree root's series below takes precedence over it.
            _add_cpu_rss(s, pid, pcpu, prss)
        elif src == "gpu":
            v = _f(s, "energy_joules_total")
            if v is not None:
                gpu[s.tags.get("gpu", "?")].append((s.ts, v))
    out = NodeSeries(estimated=estimated)
    for d, pts in energy.items():
        if (ser := _series(pts)) is not None:
            out.energy[d] = ser
    out.busy_cpu = _series(busy)
    for pid, pts in pcpu.items():
        cpu.setdefault(pid, pts)
    for pid, pts in prss.items():
        rss.setdefault(pid, pts)
    for pid, pts in cpu.items():
        if (ser := _series(pts)) is not None:
            out.proc_cpu[pid] = ser
    for pid, pts in rss.items():
        if (ser := _series(pts)) is not None:
            out.proc_rss[pid] = ser
    for pid, pts in hwm.items():
        if (ser := _series(pts)) is not None:
            out.proc_hwm[pid] = ser
    for g, pts in gpu.items():
        if (ser := _series(pts)) is not None:
            out.gpu_energy[g] = ser
    return out


def min_interval_power(series: NodeSeries, domains: Sequence[str]) -> float | None:
    """The lowest mean power (W) of any sampling interval, summed over ``domains``."""
    parts = [series.energy[d] for d in domains if d in series.energy]
    if not parts:
        return None
    ts = parts[0].ts
    total = sum(p.at(ts) for p in parts)
    dt = np.diff(ts)
    ok = dt > 0
    if not ok.any():
        return None
    return float((np.diff(total)[ok] / dt[ok]).min())


def _peaks(rss: Series | None, hwm: Series | None, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Peak resident memory within each [t0, t1], vectorised over spans.

    The larger of the sampled RSS inside the span (with interpolated endpoints) and, when
    the kernel's high-water mark rose between the samples bracketing the span, the new
    mark: that peak happened within the span or the sampling interval around it.
    """
    best = np.full(len(t0), -np.inf)
    if rss is not None:
        best = np.maximum(rss.at(t0), rss.at(t1))
        lo = np.searchsorted(rss.ts, t0, side="left")
        hi = np.searchsorted(rss.ts, t1, side="right")
        inside = hi > lo
        if inside.any():
            # Running maximum over each span's samples: reduceat on [lo, hi) slices.
            idx = np.flatnonzero(inside)
            for i, a, b in zip(idx, lo[idx], hi[idx], strict=True):
                best[i] = max(best[i], rss.values[a:b].max())
    if hwm is not None:
        before = np.searchsorted(hwm.ts, t0, side="right") - 1
        after = np.searchsorted(hwm.ts, t1, side="left")
        ok = after < len(hwm.ts)
        prev = np.where(before >= 0, hwm.values[np.clip(before, 0, None)], 0.0)
        nxt = hwm.values[np.clip(after, 0, len(hwm.ts) - 1)]
        rose = ok & (nxt > prev)
        best = np.where(rose, np.maximum(best, nxt), best)
    return best


def attribute(
    spans: Sequence[SpanWindow],
    series: NodeSeries,
    idle_watts: float | None,
    idle_method: str | None = None,
) -> list[dict[str, Any]]:
    """The ``resources`` dict of each span (units in the key names); ``idle_method`` names
    where ``idle_watts`` came from (:mod:`wattspan.agent.idle`) and is stored beside it."""
    n = len(spans)
    if n == 0:
        return []
    t0 = np.fromiter((s.start for s in spans), float, n)
    t1 = np.fromiter((s.end for s in spans), float, n)
    dur = np.maximum(t1 - t0, 0.0)

    bounds = series.span
    if bounds is not None:
        lo, hi = bounds
        covered = np.clip(np.minimum(t1, hi) - np.maximum(t0, lo), 0.0, None)
        cov = np.where(dur > 0, covered / np.where(dur > 0, dur, 1.0), 1.0)
    else:
        cov = None

    primary = primary_domains(series.energy)
    node_total = np.zeros(n)
    per_domain: dict[str, np.ndarray] = {}
    for d, ser in series.energy.items():
        e = ser.at(t1) - ser.at(t0)
        per_domain[d] = e
        if d in primary:
            node_total += e
    estimated = any(series.estimated.get(d, False) for d in primary)
    if primary:
        idle = np.full(n, idle_watts or 0.0) * dur
        active = np.maximum(node_total - idle, 0.0)
        # Idle can exceed a short span's measured energy through counter granularity; the
        # idle share then takes all of it so the parts still add up to the node figure.
        idle = np.minimum(idle, node_total)
    busy = series.busy_cpu
    node_busy = busy.at(t1) - busy.at(t0) if busy is not None else None

    by_pid: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(spans):
        if s.pid is not None:
            by_pid[s.pid].append(i)
    proc_cpu = np.full(n, np.nan)
    peak = np.full(n, -np.inf)
    for pid, idx in by_pid.items():
        ix = np.array(idx)
        ser = series.proc_cpu.get(pid)
        if ser is not None:
            proc_cpu[ix] = ser.at(t1[ix]) - ser.at(t0[ix])
        rss, hwm = series.proc_rss.get(pid), series.proc_hwm.get(pid)
        if rss is not None or hwm is not None:
            peak[ix] = _peaks(rss, hwm, t0[ix], t1[ix])
    reported = np.fromiter(
        (np.nan if s.cpu_seconds is None else s.cpu_seconds for s in spans), float, n
    )
    self_reported = ~np.isnan(reported)
    if self_reported.any():
        proc_cpu = np.where(self_reported, reported, proc_cpu)
    gpu_parts = {k: v.at(t1) - v.at(t0) for k, v in sorted(series.gpu_energy.items())}
    gpu_total = sum(gpu_parts.values()) if gpu_parts else None

    # Columns first, then one dict per span from zipped lists: building the dicts key by key
    # in a Python loop cost more than all the numpy work above.
    keys: list[str] = []
    cols: list[list[Any]] = []

    def col(key: str, values: Any) -> None:
        keys.append(key)
        cols.append(values.tolist() if isinstance(values, np.ndarray) else values)

    col("wall_seconds", dur)
    if cov is not None:
        col("coverage", cov)
    if per_domain:
        doms = sorted(per_domain)
        col(
            "node_energy_joules",
            [
                dict(zip(doms, v, strict=True))
                for v in zip(*(per_domain[d].tolist() for d in doms), strict=True)
            ],
        )
    if primary:
        col("node_energy_total_joules", node_total)
        col("idle_power_watts", [float(idle_watts or 0.0)] * n)
        if idle_method is not None:
            col("idle_method", [idle_method] * n)
        col("idle_energy_joules", idle)
        col("active_energy_joules", active)
        col("energy_estimated", [estimated] * n)
    if gpu_total is not None:
        gk = list(gpu_parts)
        col(
            "gpu_energy_joules",
            [
                dict(zip(gk, v, strict=True))
                for v in zip(*(gpu_parts[k].tolist() for k in gk), strict=True)
            ],
        )
        col("gpu_energy_total_joules", gpu_total)
    out = [dict(zip(keys, row, strict=True)) for row in zip(*cols, strict=True)]

    has_cpu = ~np.isnan(proc_cpu)
    if has_cpu.any():
        cpu = np.maximum(np.where(has_cpu, proc_cpu, 0.0), 0.0)
        with_share = node_busy is not None and bool(primary)
        if with_share:
            assert node_busy is not None
            share = np.where(
                node_busy > 0, np.minimum(cpu / np.where(node_busy > 0, node_busy, 1.0), 1.0), 0.0
            )
            proc_e, other_e = share * active, (1.0 - share) * active
            share_l, proc_l, other_l = share.tolist(), proc_e.tolist(), other_e.tolist()
        cpu_l = cpu.tolist()
        reported_l = self_reported.tolist()
        for i in np.flatnonzero(has_cpu).tolist():
            r = out[i]
            r["cpu_seconds"] = cpu_l[i]
            r["cpu_source"] = "self-reported" if reported_l[i] else "sampled"
            if with_share:
                r["process_cpu_share"] = share_l[i]
                r["process_energy_joules"] = proc_l[i]
                r["other_energy_joules"] = other_l[i]
    has_peak = peak != -np.inf
    if has_peak.any():
        peak_l = peak.tolist()
        for i in np.flatnonzero(has_peak).tolist():
            out[i]["peak_rss_bytes"] = int(peak_l[i])
    dur_l = dur.tolist()
    for i, s in enumerate(spans):
        if s.items is not None:
            r = out[i]
            r["items"] = s.items
            if dur_l[i] > 0:
                r["throughput_items_per_second"] = s.items / dur_l[i]
            if s.items > 0:
                r["latency_seconds_per_item"] = dur_l[i] / s.items
    return out
