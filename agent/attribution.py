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
* **History for a process first seen late**: a span whose process was never watched (or only
  from after the span's start) takes its CPU from the node-wide process history
  (``collectors/node_processes.py``, :func:`add_history`). That history is not stored, so a
  span that read any of its points carries the points it read (``cpu_points``, at most
  four): ``cpu_seconds = max(interp(end) - interp(start), 0)`` over them, linear between
  points and clamped at the ends, exactly as here.

Two equivalent implementations: plain Python for batches under ``NUMPY_MIN_SPANS`` spans (a
daemon sent a span now and then never imports numpy, ~12 MiB of its RSS), numpy above,
where vectorising pays (tests/test_attribution_paths.py checks that they agree).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wattspan.agent.domains import primary_domains
from wattspan.collectors.base import Sample
from wattspan.collectors.base import number as _f
from wattspan.collectors.cpu import BUSY_FIELDS, busy_seconds

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BUSY_FIELDS",
    "NUMPY_MIN_SPANS",
    "NodeSeries",
    "Series",
    "SpanWindow",
    "add_history",
    "attribute",
    "build_series",
    "interp",
    "min_interval_power",
    "primary_domains",
]

#: Batches at least this long are attributed with numpy; smaller ones in plain Python, which
#: is as fast there and loads nothing (bench/bench_ingest.py --mode attribution measures
#: both: about 3.3 us per span in Python whatever the size; numpy 59 us for one span, 5 for
#: 16, equal near 32, 1.7 from 256 on).
NUMPY_MIN_SPANS = 32


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


def interp(t: float, ts: Sequence[float], vs: Sequence[float]) -> float:
    """``np.interp(t, ts, vs)`` for one ``t``, to the bit: linear between the points, clamped
    to the first and last value outside them, the last of equal times at a tie."""
    i = bisect_right(ts, t)
    if i == 0:
        return vs[0]
    n = len(ts)
    if i == n:
        return vs[n - 1]
    j = i - 1
    x0 = ts[j]
    if x0 == t:
        return vs[j]
    y0 = vs[j]
    return (vs[i] - y0) / (ts[i] - x0) * (t - x0) + y0


@dataclass(slots=True)
class Series:
    """A cumulative series in time order (lists of floats), interpolated linearly."""

    ts: Sequence[float]
    values: Sequence[float]
    _arrays: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The series as numpy arrays (made once: numpy loads only when asked)."""
        if self._arrays is None:
            import numpy as np

            self._arrays = (np.asarray(self.ts, dtype=float), np.asarray(self.values, dtype=float))
        return self._arrays

    def at(self, t: np.ndarray) -> np.ndarray:
        """Values at the times ``t`` (an array)."""
        import numpy as np

        ts, vs = self.arrays()
        return np.interp(t, ts, vs)

    def at1(self, t: float) -> float:
        """The value at one time ``t`` (no numpy)."""
        return interp(t, self.ts, self.values)


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
    #: pid -> how many leading points of its ``proc_cpu`` series came from the node-wide
    #: history (:func:`add_history`): spans that read any carry the points (``cpu_points``)
    history: dict[int, int] = field(default_factory=dict)

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
    return Series([float(p[0]) for p in points], [float(p[1]) for p in points])


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


def add_history(series: NodeSeries, pid: int, ts: list[float], vs: list[float]) -> bool:
    """Gives ``pid`` the node-wide history ``(ts, vs)`` (cumulative CPU seconds): as its CPU
    series where it has none, else spliced before the first sample of its own series and
    shifted to meet it (before it, the watched tree's figure moves as the process's own).
    False when the history adds nothing (it starts no earlier than the series)."""
    have = series.proc_cpu.get(pid)
    if have is None:
        if not ts:
            return False
        series.proc_cpu[pid] = Series(list(ts), list(vs))
        series.history[pid] = len(ts)
        return True
    cut = have.ts[0]
    n = bisect_left(ts, cut)
    if n == 0:
        return False
    offset = float(have.values[0]) - interp(cut, ts, vs)
    series.proc_cpu[pid] = Series(
        [*ts[:n], *have.ts], [v + offset for v in vs[:n]] + [float(v) for v in have.values]
    )
    series.history[pid] = n
    return True


_Memo = dict[tuple[int, int], "list[list[float]] | None"]


def _history_points(
    ser: Series, n_history: int, t0: float, t1: float, memo: _Memo
) -> list[list[float]] | None:
    """The points of ``ser`` that interpolation at ``t0`` and ``t1`` reads (at most four, in
    time order: interpolating over them alone gives the same two values), when any of them
    is one of its first ``n_history`` (from the node-wide history); else None. Spans that
    read the same points share one list (``memo``, per series)."""
    ts = ser.ts
    n = len(ts)
    key = (bisect_right(ts, t0), bisect_right(ts, t1))
    if key in memo:
        return memo[key]
    idx: set[int] = set()
    for i in key:
        if i == 0:
            idx.add(0)
        elif i == n:
            idx.add(n - 1)
        else:
            idx.update((i - 1, i))
    vs = ser.values
    got = None if min(idx) >= n_history else [[float(ts[k]), float(vs[k])] for k in sorted(idx)]
    memo[key] = got
    return got


def min_interval_power(series: NodeSeries, domains: Sequence[str]) -> float | None:
    """The lowest mean power (W) of any sampling interval, summed over ``domains``."""
    parts = [series.energy[d] for d in domains if d in series.energy]
    if not parts:
        return None
    ts = parts[0].ts
    total = [sum(p.at1(t) for p in parts) for t in ts]
    best: float | None = None
    for i in range(1, len(ts)):
        dt = ts[i] - ts[i - 1]
        if dt > 0:
            w = (total[i] - total[i - 1]) / dt
            if best is None or w < best:
                best = w
    return None if best is None else float(best)


def attribute(
    spans: Sequence[SpanWindow],
    series: NodeSeries,
    idle_watts: float | None,
    idle_method: str | None = None,
) -> list[dict[str, Any]]:
    """The ``resources`` dict of each span (units in the key names); ``idle_method`` names
    where ``idle_watts`` came from (:mod:`wattspan.agent.idle`) and is stored beside it."""
    if len(spans) >= NUMPY_MIN_SPANS:
        return attribute_numpy(spans, series, idle_watts, idle_method)
    return attribute_python(spans, series, idle_watts, idle_method)


def _peak(rss: Series | None, hwm: Series | None, t0: float, t1: float) -> float:
    """Peak resident memory within [t0, t1]: the larger of the sampled RSS inside the span
    (with interpolated endpoints) and, when the kernel's high-water mark rose between the
    samples bracketing the span, the new mark: that peak happened within the span or the
    sampling interval around it. -inf when neither says anything."""
    best = -math.inf
    if rss is not None:
        a, b = rss.at1(t0), rss.at1(t1)
        best = a if a >= b else b
        lo = bisect_left(rss.ts, t0)
        hi = bisect_right(rss.ts, t1)
        if hi > lo:
            inside = max(rss.values[lo:hi])
            if inside > best:
                best = inside
    if hwm is not None:
        ts = hwm.ts
        after = bisect_left(ts, t1)
        if after < len(ts):
            before = bisect_right(ts, t0) - 1
            prev = hwm.values[before] if before >= 0 else 0.0
            nxt = hwm.values[after]
            if nxt > prev and nxt > best:
                best = nxt
    return float(best)


def attribute_python(
    spans: Sequence[SpanWindow],
    series: NodeSeries,
    idle_watts: float | None,
    idle_method: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`attribute` in plain Python, span by span (the same results as
    :func:`attribute_numpy`, in the same key order)."""
    bounds = series.span
    lo, hi = bounds if bounds is not None else (0.0, 0.0)
    energy = list(series.energy.items())
    doms = sorted(series.energy)
    primary = primary_domains(series.energy)
    prim = set(primary)
    estimated = any(series.estimated.get(d, False) for d in primary)
    busy = series.busy_cpu
    with_share = busy is not None and bool(primary)
    gpus = sorted(series.gpu_energy.items())
    idle_w = float(idle_watts or 0.0)
    proc_cpu, proc_rss, proc_hwm = series.proc_cpu, series.proc_rss, series.proc_hwm
    history = series.history
    memos: dict[int, _Memo] = {}
    out: list[dict[str, Any]] = []
    for s in spans:
        t0, t1 = s.start, s.end
        d = t1 - t0
        dur = d if d > 0.0 else 0.0
        r: dict[str, Any] = {"wall_seconds": dur}
        if bounds is not None:
            c = min(t1, hi) - max(t0, lo)
            if c < 0.0:
                c = 0.0
            r["coverage"] = c / dur if dur > 0 else 1.0
        total = 0.0
        if energy:
            per: dict[str, float] = {}
            for name, ser in energy:
                e = ser.at1(t1) - ser.at1(t0)
                per[name] = e
                if name in prim:
                    total += e
            r["node_energy_joules"] = {k: per[k] for k in doms}
        active = 0.0
        if primary:
            idle = idle_w * dur
            active = total - idle
            if active < 0.0:
                active = 0.0
            # Idle can exceed a short span's measured energy through counter granularity;
            # the idle share then takes all of it so the parts still add up to the node's.
            if idle > total:
                idle = total
            r["node_energy_total_joules"] = total
            r["idle_power_watts"] = idle_w
            if idle_method is not None:
                r["idle_method"] = idle_method
            r["idle_energy_joules"] = idle
            r["active_energy_joules"] = active
            r["energy_estimated"] = estimated
        if gpus:
            g: dict[str, float] = {}
            gt = 0.0
            for k, ser in gpus:
                e = ser.at1(t1) - ser.at1(t0)
                g[k] = e
                gt += e
            r["gpu_energy_joules"] = g
            r["gpu_energy_total_joules"] = gt
        pid = s.pid
        cpu: float | None = s.cpu_seconds
        points = None
        if cpu is not None:
            source = "self-reported"
        elif pid is not None and (ps := proc_cpu.get(pid)) is not None:
            cpu = ps.at1(t1) - ps.at1(t0)
            source = "sampled"
            if pid in history:
                memo = memos.get(pid)
                if memo is None:
                    memo = memos[pid] = {}
                points = _history_points(ps, history[pid], t0, t1, memo)
        if cpu is not None:
            if cpu < 0.0:
                cpu = 0.0
            r["cpu_seconds"] = cpu
            r["cpu_source"] = source
            if points is not None:
                r["cpu_points"] = points
            if with_share:
                assert busy is not None
                nb = busy.at1(t1) - busy.at1(t0)
                share = min(cpu / nb, 1.0) if nb > 0 else 0.0
                r["process_cpu_share"] = share
                r["process_energy_joules"] = share * active
                r["other_energy_joules"] = (1.0 - share) * active
        if pid is not None:
            rss, hwm = proc_rss.get(pid), proc_hwm.get(pid)
            if rss is not None or hwm is not None:
                peak = _peak(rss, hwm, t0, t1)
                if peak != -math.inf:
                    r["peak_rss_bytes"] = int(peak)
        items = s.items
        if items is not None:
            r["items"] = items
            if dur > 0:
                r["throughput_items_per_second"] = items / dur
            if items > 0:
                r["latency_seconds_per_item"] = dur / items
        out.append(r)
    return out


def _peaks(rss: Series | None, hwm: Series | None, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """:func:`_peak`, vectorised over spans."""
    import numpy as np

    best = np.full(len(t0), -np.inf)
    if rss is not None:
        rts, rvs = rss.arrays()
        best = np.maximum(rss.at(t0), rss.at(t1))
        lo = np.searchsorted(rts, t0, side="left")
        hi = np.searchsorted(rts, t1, side="right")
        inside = hi > lo
        if inside.any():
            # Running maximum over each span's samples: reduceat on [lo, hi) slices.
            idx = np.flatnonzero(inside)
            for i, a, b in zip(idx, lo[idx], hi[idx], strict=True):
                best[i] = max(best[i], rvs[a:b].max())
    if hwm is not None:
        hts, hvs = hwm.arrays()
        before = np.searchsorted(hts, t0, side="right") - 1
        after = np.searchsorted(hts, t1, side="left")
        ok = after < len(hts)
        prev = np.where(before >= 0, hvs[np.clip(before, 0, None)], 0.0)
        nxt = hvs[np.clip(after, 0, len(hts) - 1)]
        rose = ok & (nxt > prev)
        best = np.where(rose, np.maximum(best, nxt), best)
    return best


def attribute_numpy(
    spans: Sequence[SpanWindow],
    series: NodeSeries,
    idle_watts: float | None,
    idle_method: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`attribute` vectorised over the batch with numpy."""
    import numpy as np

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
        idle = np.full(n, float(idle_watts or 0.0)) * dur
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
        history = series.history
        memos: dict[int, _Memo] = {}
        for i in np.flatnonzero(has_cpu).tolist():
            r = out[i]
            r["cpu_seconds"] = cpu_l[i]
            r["cpu_source"] = "self-reported" if reported_l[i] else "sampled"
            pid = spans[i].pid
            if not reported_l[i] and pid in history:
                s = spans[i]
                memo = memos.get(pid)
                if memo is None:
                    memo = memos[pid] = {}
                pts = _history_points(series.proc_cpu[pid], history[pid], s.start, s.end, memo)
                if pts is not None:
                    r["cpu_points"] = pts
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
