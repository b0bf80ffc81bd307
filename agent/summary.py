"""A run's summary, computed from its stored samples alone (so ``wattspan show`` can
recompute and a reader can check it by hand)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from wattspan.collectors.base import Sample
from wattspan.collectors.base import number as _num


def _counter_delta(series: list[Sample], key: str) -> tuple[float, float] | None:
    """(increase, seconds covered) of a cumulative field between first and last sample."""
    pts = [(s.ts, v) for s in series if (v := _num(s, key)) is not None]
    if len(pts) < 2:
        return None
    return pts[-1][1] - pts[0][1], pts[-1][0] - pts[0][0]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """Figures for the run table. Units: seconds, bytes, joules, watts, percent (of one core
    for CPU %, so 200 means two cores busy)."""
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_source[s.source].append(s)
    out: dict[str, Any] = {"wall_seconds": end - start}

    tree = by_source.get("process_tree", [])
    usage = by_source.get("run", [])
    final = usage[-1] if usage else (tree[-1] if tree else None)
    if final is not None:
        user = _num(final, "cpu_user_seconds_total") or 0.0
        system = _num(final, "cpu_system_seconds_total") or 0.0
        out["cpu_user_seconds"] = user
        out["cpu_system_seconds"] = system
        out["cpu_seconds"] = user + system
        wall = out["wall_seconds"]
        out["cpu_percent_avg"] = 100.0 * (user + system) / wall if wall > 0 else None
    # The tree's peak is the larger of the sampled sum over its processes and the kernel's
    # high-water mark (VmHWM) of its largest process, which catches peaks between samples.
    peak_rss = [
        v
        for s in tree + by_source.get("process", [])
        if (v := _num(s, "peak_rss_bytes")) is not None
    ]
    if peak_rss:
        out["peak_rss_bytes"] = int(max(peak_rss))
    peaks = []
    for a, b in itertools.pairwise(tree):
        dt = b.ts - a.ts
        if dt <= 0:
            continue
        cpu_a = (_num(a, "cpu_user_seconds_total") or 0) + (
            _num(a, "cpu_system_seconds_total") or 0
        )
        cpu_b = (_num(b, "cpu_user_seconds_total") or 0) + (
            _num(b, "cpu_system_seconds_total") or 0
        )
        peaks.append(100.0 * max(cpu_b - cpu_a, 0.0) / dt)
    if peaks:
        out["cpu_percent_peak"] = max(peaks)
    if tree:
        for key in ("read_bytes_total", "write_bytes_total"):
            v = _num(tree[-1], key)
            if v is not None:
                out[key.replace("_total", "")] = int(v)

    node_util = [
        v
        for s in by_source.get("cpu", [])
        if s.tags.get("cpu") == "total"
        if (v := _num(s, "utilization_ratio")) is not None
    ]
    if node_util:
        out["node_cpu_utilization_avg"] = _mean(node_util)

    energy: list[dict[str, Any]] = []
    for source in ("rapl", "power_model"):
        series: dict[str, list[Sample]] = defaultdict(list)
        for s in by_source.get(source, []):
            series[s.tags.get("domain", "?")].append(s)
        for domain, pts in sorted(series.items()):
            d = _counter_delta(pts, "energy_joules_total")
            if d is None:
                continue
            joules, secs = d
            energy.append(
                {
                    "domain": domain,
                    "joules": joules,
                    "watts_avg": joules / secs if secs > 0 else None,
                    "estimated": pts[0].tags.get("estimated") == "true",
                    "source": source,
                }
            )
    out["energy"] = energy

    gpus: list[dict[str, Any]] = []
    per_gpu: dict[str, list[Sample]] = defaultdict(list)
    for s in by_source.get("gpu", []):
        per_gpu[s.tags.get("gpu", "?")].append(s)
    for gpu, pts in sorted(per_gpu.items()):
        g: dict[str, Any] = {"gpu": gpu, "name": pts[0].tags.get("name", "")}
        d = _counter_delta(pts, "energy_joules_total")
        if d is not None:
            g["joules"] = d[0]
            g["watts_avg"] = d[0] / d[1] if d[1] > 0 else None
        g["energy_method"] = pts[0].tags.get("energy_method", "")
        util = [v for s in pts if (v := _num(s, "utilization_gpu_ratio")) is not None]
        g["utilization_avg"] = _mean(util)
        mem = [v for s in pts if (v := _num(s, "memory_used_bytes")) is not None]
        g["memory_used_peak_bytes"] = int(max(mem)) if mem else None
        total = _num(pts[-1], "memory_total_bytes")
        g["memory_total_bytes"] = int(total) if total is not None else None
        gpus.append(g)
    out["gpus"] = gpus
    return out
