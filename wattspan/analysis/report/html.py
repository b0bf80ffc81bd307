"""One self-contained HTML file with interactive plots of one or more stored runs.

What the page shows (UMLAUT's single- and multi-pipeline views, plus attribution):

* a summary table of the runs, with differences against the first run;
* per run, resources over time: node and process-tree CPU (cores busy), memory, power per
  energy domain and GPU, GPU utilisation, with the pipeline's spans as a Gantt lane on top
  and as shaded bands behind every panel;
* energy per span (stacked: this process / other processes / idle / GPU for one run,
  grouped by run for several);
* valued metrics (``ml.loss``, ``ml.accuracy``...) of all runs overlaid, one plot each;
* the last confusion matrix of each run as a heatmap;
* hyperparameters as parallel coordinates, one line per run, coloured by final accuracy.

Why plotly.js embedded rather than hand-written SVG: the plots must stay interactive (hover
for exact values, zoom into a spike, brush parallel-coordinate axes) in a file that opens
without network. That costs ~4.8 MB of inlined JavaScript per file, which is small next to
the runs it describes; an SVG-only report would be ~100 kB but static.

Figures are plain plotly.js JSON built here from dicts (no plotly Python figure objects):
the Python package is only the carrier of ``plotly.min.js``.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import math
import shlex
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattspan.agent.attribution import primary_domains
from wattspan.agent.carbon import Intensity
from wattspan.agent.store import Run, Store
from wattspan.analysis import (
    Comparison,
    SpanNode,
    compare_runs,
    curve_points,
    iter_tree,
    json_safe,
    metric_mode,
    metric_summaries,
    metrics_by_name,
    run_figures,
    span_tree,
)
from wattspan.analysis._common import run_samples
from wattspan.analysis.report._template import CSS, ERROR_RECORDER_JS, RENDER_JS
from wattspan.collectors.base import Sample
from wattspan.collectors.base import number as _num
from wattspan.collectors.cpu import busy_seconds

MAX_POINTS = 2000  # per series; more points than pixels only bloat the file
MAX_TIMELINE_RUNS = 6
MAX_GANTT_SPANS = 400
MAX_BANDS = 60
MAX_BAR_NAMES = 40
MAX_METRIC_PLOTS = 8
MAX_CONFUSION_RUNS = 6
MAX_PROCESS_TREES = 5
GIB = 1024.0**3

# d3 category10: distinct, colour-blind-tolerant and the colours users know from plotly.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
# Light to dark (plotly.js's built-in "Blues" runs dark to light, which reads inverted).
_BLUES = [
    [0.0, "#f7fbff"],
    [0.25, "#c6dbef"],
    [0.5, "#6baed6"],
    [0.75, "#2171b5"],
    [1.0, "#08306b"],
]
_BASE_LAYOUT: dict[str, Any] = {
    "paper_bgcolor": "#ffffff",
    "plot_bgcolor": "#fbfcfd",
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
    "margin": {"l": 70, "r": 30, "t": 40, "b": 50},
    # Right of the plot, where no axis title is: below it (plotly's horizontal legend at
    # y < 0) it covered the x axis title.
    "legend": {"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"},
    "hoverlabel": {"namelength": -1},
}


@dataclass(slots=True)
class Figure:
    """One plot: a div id, a section heading, and the plotly.js ``data``/``layout``."""

    id: str
    title: str
    data: list[dict[str, Any]]
    layout: dict[str, Any]
    note: str = ""
    height: int = 420
    section: str = "plots"


@dataclass
class _Ctx:
    """Per-report state: stable colours per run and per span name, and each run's span tree
    (the timeline and the energy figure both need it; a long session has many spans)."""

    runs: list[Run]
    colors: dict[str, str] = field(default_factory=dict)
    trees: dict[str, list[SpanNode]] = field(default_factory=dict)

    def run_color(self, run: Run) -> str:
        return _color(self.runs.index(run))

    def name_color(self, name: str) -> str:
        if name not in self.colors:
            self.colors[name] = _color(len(self.colors))
        return self.colors[name]

    def span_tree(self, store: Store, run: Run) -> list[SpanNode]:
        if run.id not in self.trees:
            self.trees[run.id] = span_tree(store.spans(run.id))
        return self.trees[run.id]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


class _Colors:
    """One colour per thing a figure shows (a process tree, an energy domain, a GPU): the
    same thing keeps its colour across panels, two things never share one (until the
    palette's 10 run out). Grey is the node's."""

    def __init__(self) -> None:
        self._by: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        if key not in self._by:
            self._by[key] = _color(len(self._by))
        return self._by[key]


def _layout(**kw: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(_BASE_LAYOUT))
    out.update(kw)
    return out


def _label(run: Run) -> str:
    return f"{run.name} ({run.id[:8]})"


# -- series helpers -----------------------------------------------------------------------


def _downsample(
    xs: list[float], ys: list[float], max_points: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """Bucket means: keeps the shape and the level of a long series at screen resolution.
    (Means flatten single-sample spikes; the hover on the raw data is what export is for.)"""
    n = len(xs)
    if n <= max_points:
        return xs, ys
    size = math.ceil(n / max_points)
    ox, oy = [], []
    for i in range(0, n, size):
        bx, by = xs[i : i + size], ys[i : i + size]
        ox.append(sum(bx) / len(bx))
        oy.append(sum(by) / len(by))
    return ox, oy


def _rate(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-second rate of a cumulative counter, at the end of each sampling interval.
    A counter that went backwards (restart) gives no point rather than a negative rate."""
    return [
        (t1, (v1 - v0) / (t1 - t0))
        for (t0, v0), (t1, v1) in itertools.pairwise(points)
        if t1 > t0 and v1 >= v0
    ]


def _line(
    name: str, points: list[tuple[float, float]], color: str, dash: str | None = None
) -> dict[str, Any]:
    """A line trace of ``(x, y)`` points; its y axis is set when the panels are laid out."""
    xs, ys = _downsample([p[0] for p in points], [p[1] for p in points])
    style = {"color": color}
    if dash:
        style["dash"] = dash
    return {
        "type": "scatter",
        "mode": "lines",
        "name": name,
        "x": xs,
        "y": ys,
        "xaxis": "x",
        "yaxis": "y?",
        "line": style,
    }


def _tree_cpu_seconds(s: Sample) -> float:
    """User + system CPU seconds of a process tree sample (cumulative)."""
    return (_num(s, "cpu_user_seconds_total") or 0.0) + (_num(s, "cpu_system_seconds_total") or 0.0)


def _band_level(roots: list[SpanNode]) -> list[SpanNode]:
    """The spans to shade behind the time series: the top level, with wrapper spans (ones
    covering >= 90% of the level's extent, like a run's root span) replaced by their
    children, down to three levels. A band over everything says nothing."""
    level = roots
    for _ in range(3):
        if not level:
            break
        lo = min(n.span.start_ts for n in level)
        hi = max(n.span.end_ts for n in level)
        extent = hi - lo
        wrappers = [
            n
            for n in level
            if n.children and extent > 0 and n.span.end_ts - n.span.start_ts >= 0.9 * extent
        ]
        if not wrappers:
            break
        level = [c for n in level for c in (n.children if n in wrappers else [n])]
    return level


def _pack_lanes(nodes: list[SpanNode]) -> tuple[dict[int, int], list[str]]:
    """A Gantt lane per depth, and more where spans of one depth overlap in time (threads,
    an orphan beside its would-be root): each span goes to the first lane of its depth that
    is free at its start. Returns the lane of each node (by ``id``) and the lane labels."""
    by_depth: dict[int, list[SpanNode]] = defaultdict(list)
    for n in nodes:
        by_depth[n.depth].append(n)
    lane_of: dict[int, int] = {}
    labels: list[str] = []
    for depth in sorted(by_depth):
        ends: list[float] = []  # per lane of this depth, when its last span ends
        first = len(labels)
        for n in sorted(by_depth[depth], key=lambda n: (n.span.start_ts, n.span.end_ts)):
            row = next((i for i, e in enumerate(ends) if e <= n.span.start_ts), None)
            if row is None:
                row = len(ends)
                ends.append(n.span.end_ts)
            ends[row] = n.span.end_ts
            lane_of[id(n)] = first + row
        labels += [
            f"depth {depth}" if i == 0 else f"depth {depth} ({i + 1})" for i in range(len(ends))
        ]
    return lane_of, labels


def _span_hover(node: SpanNode) -> str:
    r = node.resources
    s = node.span
    parts = [f"<b>{html.escape(s.name)}</b>", f"wall {s.end_ts - s.start_ts:.3f} s"]
    if r.get("cpu_seconds") is not None:
        parts.append(f"CPU {r['cpu_seconds']:.3f} s")
    if r.get("node_energy_total_joules") is not None:
        est = " (estimated)" if r.get("energy_estimated") else ""
        parts.append(f"node {r['node_energy_total_joules']:.2f} J{est}")
    if r.get("process_energy_joules") is not None:
        parts.append(f"process {r['process_energy_joules']:.2f} J")
    if r.get("gpu_energy_total_joules") is not None:
        parts.append(f"GPU {r['gpu_energy_total_joules']:.2f} J")
    if r.get("peak_rss_bytes") is not None:
        parts.append(f"peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MiB")
    return "<br>".join(parts)


# -- figures ------------------------------------------------------------------------------


def timeline_figure(store: Store, run: Run, ctx: _Ctx, fid: str) -> Figure | None:
    """CPU, memory, power (and GPU) over time, with spans as a Gantt lane and bands."""
    t0 = run.start_ts
    # Per source, so per-process and per-GPU-process samples (the bulk of a long agent
    # session) are never decoded.
    by_src: dict[str, list[Sample]] = {
        src: run_samples(store, run, src)
        for src in ("cpu", "memory", "process_tree", "rapl", "power_model", "gpu")
    }
    panels: list[tuple[str, list[dict[str, Any]]]] = []
    color = _Colors()

    # CPU in cores busy: node (from /proc/stat counters) and process trees share the unit,
    # so "my job used 3 of the 5 busy cores" reads straight off the plot.
    cpu: list[dict[str, Any]] = []
    busy = [
        (s.ts - t0, busy_seconds(s)) for s in by_src.get("cpu", []) if s.tags.get("cpu") == "total"
    ]
    if len(busy) >= 2:
        cpu.append(_line("node", _rate(busy), "#555"))
    trees: dict[str, list[Sample]] = defaultdict(list)
    for s in by_src.get("process_tree", []):
        trees[s.tags.get("root", "?")].append(s)
    # The busiest trees only: an agent session can watch dozens of processes.
    ranked = sorted(trees.items(), key=lambda kv: -_tree_cpu_seconds(kv[1][-1]))
    ranked = ranked[:MAX_PROCESS_TREES]
    for root, pts in ranked:
        name = pts[-1].tags.get("name") or "process"
        counter = [(s.ts - t0, _tree_cpu_seconds(s)) for s in pts]
        if len(counter) >= 2:
            cpu.append(_line(f"{name} ({root})", _rate(counter), color(f"tree {root}")))
    if cpu:
        panels.append(("CPU cores busy", cpu))

    mem: list[dict[str, Any]] = []
    node_mem = [
        (s.ts - t0, v / GIB)
        for s in by_src.get("memory", [])
        if (v := _num(s, "used_bytes")) is not None
    ]
    if node_mem:
        mem.append(_line("node used", node_mem, "#555"))
    for root, pts in ranked:
        rss = [(s.ts - t0, v / GIB) for s in pts if (v := _num(s, "rss_bytes")) is not None]
        if rss:
            name = pts[-1].tags.get("name") or "process"
            mem.append(_line(f"{name} ({root}) RSS", rss, color(f"tree {root}")))
    if mem:
        panels.append(("memory GiB", mem))

    power: list[dict[str, Any]] = []
    domains: dict[str, list[Sample]] = defaultdict(list)
    for src in ("rapl", "power_model"):
        for s in by_src.get(src, []):
            domains[s.tags.get("domain", "?")].append(s)
    primary = set(primary_domains(domains))
    for domain, pts in sorted(domains.items()):
        estimated = pts[0].tags.get("estimated") == "true"
        watts = [(s.ts - t0, v) for s in pts if (v := _num(s, "power_watts")) is not None]
        if not watts:  # older samples without power_watts: derive it from the counter
            watts = _rate(
                [(s.ts - t0, v) for s in pts if (v := _num(s, "energy_joules_total")) is not None]
            )
        if watts:
            label = domain + (" (estimated)" if estimated else "")
            dash = None
            if estimated:
                dash = "dash"  # never let an estimate look like a measurement
            elif domain not in primary:
                dash = "dot"  # a sub-domain, already inside its package
            power.append(_line(label, watts, color(f"domain {domain}"), dash))
    gpus: dict[str, list[Sample]] = defaultdict(list)
    for s in by_src.get("gpu", []):
        gpus[s.tags.get("gpu", "?")].append(s)
    for gpu, pts in sorted(gpus.items()):
        watts = [(s.ts - t0, v) for s in pts if (v := _num(s, "power_watts")) is not None]
        if watts:
            power.append(_line(f"GPU {gpu}", watts, color(f"gpu {gpu}")))
    if power:
        panels.append(("power W", power))

    gpu_util: list[dict[str, Any]] = []
    for gpu, pts in sorted(gpus.items()):
        util = [
            (s.ts - t0, v * 100.0)
            for s in pts
            if (v := _num(s, "utilization_gpu_ratio")) is not None
        ]
        if util:
            gpu_util.append(_line(f"GPU {gpu} util", util, color(f"gpu {gpu}")))
    if gpu_util:
        panels.append(("GPU util %", gpu_util))

    roots = ctx.span_tree(store, run)
    if not panels and not roots:
        return None

    # Gantt lane of spans (depth on y), above the series panels.
    gantt_nodes = [n for n in iter_tree(roots) if n.depth < 4]
    gantt_nodes.sort(key=lambda n: (n.depth, -(n.span.end_ts - n.span.start_ts)))
    gantt_nodes = gantt_nodes[:MAX_GANTT_SPANS]
    lane_of, lane_text = _pack_lanes(gantt_nodes)
    lanes = list(range(len(lane_text)))
    n_panels = len(panels) + (1 if gantt_nodes else 0)
    gap = 0.05
    gantt_h = 0.1 + 0.05 * len(lanes) if gantt_nodes else 0.0
    series_h = (1.0 - gantt_h - gap * (n_panels - 1)) / max(len(panels), 1)
    layout = _layout(
        title={"text": f"Resources over time: {html.escape(_label(run))}"},
        hovermode="closest",
        barmode="overlay",
        showlegend=True,
        # A span name that fits its bar only shrunk below 9 px is left out (the hover has
        # it), rather than drawn as a smudge or over its neighbour.
        uniformtext={"mode": "hide", "minsize": 9},
    )
    data: list[dict[str, Any]] = []
    top = 1.0
    axis_i = 0
    if gantt_nodes:
        axis_i += 1
        layout["yaxis"] = {
            "domain": [top - gantt_h, top],
            "title": {"text": "spans"},
            "tickvals": lanes,
            "ticktext": lane_text,
            "autorange": "reversed",
            "fixedrange": True,
            "zeroline": False,
        }
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": "spans",
                "showlegend": False,
                "xaxis": "x",
                "yaxis": "y",
                "base": [n.span.start_ts - t0 for n in gantt_nodes],
                "x": [max(n.span.end_ts - n.span.start_ts, 1e-6) for n in gantt_nodes],
                "y": [lane_of[id(n)] for n in gantt_nodes],
                "width": 0.8,
                "text": [html.escape(n.name) for n in gantt_nodes],
                "textposition": "inside",
                "insidetextanchor": "start",
                "constraintext": "inside",
                "hovertext": [_span_hover(n) for n in gantt_nodes],
                "hoverinfo": "text",
                "marker": {"color": [ctx.name_color(n.name) for n in gantt_nodes], "opacity": 0.8},
            }
        )
        top -= gantt_h + gap
    for title, traces in panels:
        axis_i += 1
        ref = "y" if axis_i == 1 else f"y{axis_i}"
        key = "yaxis" if axis_i == 1 else f"yaxis{axis_i}"
        layout[key] = {
            "domain": [max(top - series_h, 0.0), top],
            "title": {"text": title},
            "rangemode": "tozero",
        }
        for t in traces:
            t["yaxis"] = ref
            data.append(t)
        top -= series_h + gap
    layout["xaxis"] = {
        "title": {"text": "seconds since run start"},
        "anchor": "y" if axis_i == 1 else f"y{axis_i}",
        "showspikes": True,
        "spikemode": "across",
        "spikethickness": 1,
    }
    # Shaded bands of one span level behind every panel (shapes use paper y: full height).
    bands = sorted(_band_level(roots), key=lambda n: n.span.end_ts - n.span.start_ts, reverse=True)[
        :MAX_BANDS
    ]
    layout["shapes"] = (
        [
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": n.span.start_ts - t0,
                "x1": n.span.end_ts - t0,
                "y0": 0,
                "y1": 1 - gantt_h - gap if gantt_nodes else 1,
                "fillcolor": ctx.name_color(n.name),
                "opacity": 0.08,
                "line": {"width": 0},
                "layer": "below",
            }
            for n in bands
        ]
        if len(bands) >= 2
        else []
    )
    height = int(160 * max(len(panels), 1) + (60 + 40 * len(lanes) if gantt_nodes else 0) + 140)
    return Figure(
        fid,
        f"Resources over time: {_label(run)}",
        data,
        layout,
        note="Shaded bands and the top lane are the pipeline's spans (hover for attributed "
        "time, CPU and energy). CPU in cores busy: node from /proc/stat, processes from "
        "their CPU-time counters. Dashed power lines are estimates (power model), dotted "
        "ones RAPL sub-domains already included in their package.",
        height=height,
    )


def span_energy_figure(store: Store, runs: Sequence[Run], ctx: _Ctx, fid: str) -> Figure | None:
    """Energy per span name. One run: stacked by where the energy went; several: totals
    (node + GPU) grouped by run."""
    per_run: list[tuple[Run, dict[str, dict[str, float]]]] = []
    order: dict[str, None] = {}
    estimated = False
    for run in runs:
        agg: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for node in iter_tree(ctx.span_tree(store, run)):
            r = node.resources
            if (
                r.get("node_energy_total_joules") is None
                and r.get("gpu_energy_total_joules") is None
            ):
                continue
            estimated |= bool(r.get("energy_estimated"))
            a = agg[node.name]
            order.setdefault(node.name)
            a["count"] += 1
            a["wall"] += r.get("wall_seconds") or 0.0
            node_j = r.get("node_energy_total_joules") or 0.0
            idle = r.get("idle_energy_joules") or 0.0
            a["node"] += node_j
            a["idle"] += idle
            if r.get("process_energy_joules") is not None:
                a["process"] += r["process_energy_joules"]
                a["other"] += r.get("other_energy_joules") or 0.0
                a["with_process"] += 1
            else:
                a["active"] += max(node_j - idle, 0.0)
            a["gpu"] += r.get("gpu_energy_total_joules") or 0.0
        per_run.append((run, agg))
    if not order:
        return None
    # Keep pipeline order (first start), but only the names that matter most.
    totals = {n: sum(a[n]["node"] + a[n]["gpu"] for _, a in per_run if n in a) for n in order}
    keep = set(sorted(order, key=lambda n: -totals[n])[:MAX_BAR_NAMES])
    names = [n for n in order if n in keep]
    rev = list(reversed(names))  # horizontal bars read top-down in pipeline order
    ys = [html.escape(n) for n in rev]  # plotly renders labels as pseudo-HTML
    data: list[dict[str, Any]] = []
    if len(runs) == 1:
        _, agg = per_run[0]
        parts = [
            ("process", "this process", "#1f77b4"),
            ("other", "other processes", "#aec7e8"),
            ("active", "active (no process split)", "#6baed6"),
            ("idle", "idle", "#c7c7c7"),
            ("gpu", "GPU", "#2ca02c"),
        ]
        for key, label, color in parts:
            xs = [agg[n][key] for n in rev]
            if any(x > 0 for x in xs):
                data.append(
                    {
                        "type": "bar",
                        "orientation": "h",
                        "name": label,
                        "x": xs,
                        "y": ys,
                        "marker": {"color": color},
                        "customdata": [[agg[n]["count"], agg[n]["wall"]] for n in rev],
                        "hovertemplate": "%{y}: %{x:.2f} J "
                        + label
                        + "<br>%{customdata[0]} spans, %{customdata[1]:.2f} s<extra></extra>",
                    }
                )
        barmode = "stack"
    else:
        # Process share first: on a shared node the node's energy says more about the
        # neighbours than about the run (identical runs differed by 43 % in node energy).
        by_process = all(a[n]["with_process"] == a[n]["count"] for _, a in per_run for n in a)
        what = "process energy + GPU" if by_process else "node energy + GPU"
        for run, agg in per_run:
            key = "process" if by_process else "node"
            data.append(
                {
                    "type": "bar",
                    "orientation": "h",
                    "name": _label(run),
                    "x": [agg[n][key] + agg[n]["gpu"] if n in agg else 0.0 for n in rev],
                    "y": ys,
                    "customdata": [
                        [agg[n]["node"] + agg[n]["gpu"] if n in agg else 0.0] for n in rev
                    ],
                    "marker": {"color": ctx.run_color(run)},
                    "hovertemplate": "%{y}: %{x:.2f} J "
                    + what
                    + " (node + GPU %{customdata[0]:.2f} J)<extra>"
                    + html.escape(_label(run))
                    + "</extra>",
                }
            )
        barmode = "group"
    if not data:
        return None
    est = " (CPU side estimated by the power model)" if estimated else ""
    if len(runs) > 1:
        est = f", {what}{est}"
    height = max(300, 120 + len(names) * (22 if len(runs) == 1 else 14 * len(runs) + 8))
    return Figure(
        fid,
        "Energy per span",
        data,
        _layout(
            title={"text": f"Energy per span, J{est}"},
            barmode=barmode,
            legend={
                "orientation": "v",
                "x": 1.02,
                "xanchor": "left",
                "y": 1,
                "yanchor": "top",
                "traceorder": "normal",
            },
            xaxis={"title": {"text": "joules"}},
            yaxis={"automargin": True, "type": "category"},
            margin={"l": 160, "r": 30, "t": 40, "b": 50},
        ),
        note="Summed over spans of the same name. Spans nest, so a parent's bar includes its "
        "children's energy. Node energy is split per the attribution model: the span's "
        "process gets its CPU-time share of active power; idle power is shown apart.",
        height=height,
    )


def metric_figures(
    store: Store, runs: Sequence[Run], ctx: _Ctx, fid: str, target: dict[str, Any] | None
) -> list[Figure]:
    """One plot per valued metric, all runs overlaid."""
    by_run = [metrics_by_name(store, run) for run in runs]
    names = sorted({n for rows in by_run for n in rows})
    figs = []
    for i, name in enumerate(names[:MAX_METRIC_PLOTS]):
        # Common x across runs: steps only if every run logged steps for this metric.
        use_step = all(all(r.step is not None for r in rows.get(name, ())) for rows in by_run)
        curves = [(run, curve_points(rows.get(name, ()), run, use_step)) for run, rows in
                  zip(runs, by_run, strict=True)]  # fmt: skip
        curves = [(run, pts) for run, pts in curves if pts]
        if curves and all(len(pts) == 1 for _, pts in curves):
            figs.append(_single_value_figure(f"{fid}-{i}", name, curves, ctx))
            continue
        data = []
        for run, pts in curves:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": _label(run),
                    "x": [p[0] for p in pts],
                    "y": [p[1] for p in pts],
                    "line": {"color": ctx.run_color(run)},
                    "marker": {"size": 5},
                }
            )
        shapes = []
        if target and target.get("metric") == name and target.get("target") is not None:
            shapes.append(
                {
                    "type": "line",
                    "xref": "paper",
                    "x0": 0,
                    "x1": 1,
                    "yref": "y",
                    "y0": target["target"],
                    "y1": target["target"],
                    "line": {"dash": "dash", "color": "#888", "width": 1},
                }
            )
        better = "higher" if metric_mode(name) == "max" else "lower"
        figs.append(
            Figure(
                f"{fid}-{i}",
                name,
                data,
                _layout(
                    title={"text": f"{html.escape(name)} ({better} is better)"},
                    xaxis={"title": {"text": "step" if use_step else "seconds since run start"}},
                    yaxis=_value_axis(name, [p[1] for _, pts in curves for p in pts]),
                    shapes=shapes,
                ),
                note="Dashed line: the time-to-target level." if shapes else "",
                height=380,
                section="metrics",
            )
        )
    return figs


def _value_axis(name: str, values: list[float]) -> dict[str, Any]:
    axis: dict[str, Any] = {"title": {"text": html.escape(name)}}
    if values and _integral(values):
        axis.update(tickformat=",d", hoverformat=",d")  # counts: 13,993, not 13.993k
    return axis


def _single_value_figure(
    fid: str, name: str, curves: list[tuple[Run, list[tuple[float, float]]]], ctx: _Ctx
) -> Figure:
    """A metric logged once per run (a test accuracy, a final throughput): one bar per run,
    not a line of single dots."""
    values = [pts[0][1] for _, pts in curves]
    better = "higher" if metric_mode(name) == "max" else "lower"
    integral = _integral(values)
    return Figure(
        fid,
        name,
        [
            {
                "type": "bar",
                "x": [html.escape(_label(run)) for run, _ in curves],
                "y": values,
                "marker": {"color": [ctx.run_color(run) for run, _ in curves]},
                "text": [f"{int(v):,}" if integral else f"{v:.4g}" for v in values],
                "textposition": "auto",
                "hovertemplate": "%{x}: %{text}<extra></extra>",
                "showlegend": False,
            }
        ],
        _layout(
            title={"text": f"{html.escape(name)} ({better} is better)"},
            xaxis={"title": {"text": "run"}, "type": "category"},
            yaxis=_value_axis(name, values),
        ),
        note="Logged once per run: one bar each.",
        height=340,
        section="metrics",
    )


def confusion_figures(store: Store, runs: Sequence[Run], fid: str) -> list[Figure]:
    """The last confusion matrix of each run: rows true class, columns predicted."""
    figs = []
    for i, run in enumerate(runs[:MAX_CONFUSION_RUNS]):
        cms = store.confusion_matrices(run.id)
        if not cms:
            continue
        cm = cms[-1]
        n = len(cm.matrix)
        labels = [str(x) for x in cm.labels] if len(cm.labels) == n else [str(k) for k in range(n)]
        step = f", step {cm.step}" if cm.step is not None else ""
        figs.append(
            Figure(
                f"{fid}-{i}",
                f"Confusion matrix: {_label(run)}",
                [
                    {
                        "type": "heatmap",
                        "z": cm.matrix,
                        "x": labels,
                        "y": labels,
                        "colorscale": _BLUES,
                        "texttemplate": "%{z}",
                        "hoverongaps": False,
                        "hovertemplate": "true %{y}, predicted %{x}: %{z}<extra></extra>",
                    }
                ],
                _layout(
                    title={"text": f"{html.escape(cm.name)}: {html.escape(_label(run))}{step}"},
                    xaxis={"title": {"text": "predicted"}, "type": "category", "side": "bottom"},
                    yaxis={"title": {"text": "true"}, "type": "category", "autorange": "reversed"},
                    margin={"l": 90, "r": 30, "t": 40, "b": 60},
                ),
                height=min(200 + 40 * n, 700),
                section="confusion",
            )
        )
    return figs


def _integral(values: Sequence[float]) -> bool:
    return all(float(v).is_integer() for v in values)


def _num_dim(label: str, values: list[float]) -> dict[str, Any]:
    dim: dict[str, Any] = {"label": label, "values": values}
    lo, hi = min(values), max(values)
    if lo == hi:  # a constant axis needs a range, or plotly invents a meaningless one
        pad = abs(lo) * 0.1 or 1.0
        dim["range"] = [lo - pad, hi + pad]
    if _integral(values):
        dim["tickformat"] = ",d"  # 128, not 128.00 or 0.128k
    return dim


def _log_dim(label: str, values: list[float]) -> dict[str, Any]:
    """A parallel-coordinates axis on a log scale (plotly's parcoords has none): log10 of
    the values, ticked at the decades (and the values' own ones) with the real numbers."""
    logs = [math.log10(v) for v in values]
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    ticks = sorted({float(d) for d in range(lo, hi + 1)} | set(logs))
    return {
        "label": f"{label} (log)",
        "values": logs,
        "range": [lo, hi] if hi > lo else [lo - 1, hi + 1],
        "tickvals": ticks,
        "ticktext": [f"{10**t:.3g}" for t in ticks],
    }


def _wants_log(key: str, values: list[float]) -> bool:
    """Learning rates, and any positive parameter spanning a factor of 10 or more (weight
    decay, regularisation...), read on a log axis: 0.001 and 0.01 are as far apart as 0.01
    and 0.1."""
    if not values or min(values) <= 0:
        return False
    named = any(w in key.lower() for w in ("lr", "learning_rate", "learning-rate"))
    return (named and max(values) > min(values)) or max(values) / min(values) >= 10


def params_figure(store: Store, runs: Sequence[Run], fid: str, color_metric: str) -> Figure | None:
    """Parallel coordinates: one line per run over its hyperparameters and outcomes.

    Only parameters every run has can be drawn (a line needs a value on every axis); runs
    without any parameters are left out. Strings and booleans become categorical axes.
    """
    # Runs that logged no parameters at all (a plain command) have no line to draw.
    pairs = [(r, p) for r in runs if (p := store.params(r.id))]
    runs = [r for r, _ in pairs]
    params = [p for _, p in pairs]
    keys = sorted(set.intersection(*(set(p) for p in params))) if params else []
    if len(params) > 1:
        # An axis every line crosses at the same point tells nothing about the runs; the
        # note names what was left out.
        constant = [k for k in keys if len({json.dumps(p[k], sort_keys=True) for p in params}) == 1]
        keys = [k for k in keys if k not in constant]
    else:
        constant = []
    dims: list[dict[str, Any]] = []
    for key in keys:
        vals = [p[key] for p in params]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            fv = [float(v) for v in vals]
            if not all(math.isfinite(v) for v in fv):
                continue
            dims.append(_log_dim(key, fv) if _wants_log(key, fv) else _num_dim(key, fv))
        elif all(isinstance(v, str | bool) for v in vals):
            cats = sorted({json.dumps(v) if isinstance(v, bool) else v for v in vals})
            if len(cats) > 30:
                continue
            idx = {c: j for j, c in enumerate(cats)}
            dims.append(
                {
                    "label": key,
                    "values": [idx[json.dumps(v) if isinstance(v, bool) else v] for v in vals],
                    "tickvals": list(range(len(cats))),
                    "ticktext": cats,
                    "range": [-0.5, len(cats) - 0.5],
                }
            )
    if not dims:
        return None
    # Outcome axes: final value of each metric all runs have, time and energy.
    summaries = [metric_summaries(store, r) for r in runs]
    figs = [run_figures(store, r) for r in runs]
    color_vals: list[float] | None = None
    color_title = ""
    common = sorted(set.intersection(*(set(s) for s in summaries)))
    for name in common[:4]:
        vals = [s[name].last for s in summaries]
        if all(v is not None and math.isfinite(v) for v in vals):
            dims.append(_num_dim(f"{name} final", vals))
            if name == color_metric:
                color_vals, color_title = vals, f"{name} final"  # type: ignore[assignment]
    for key, label in (("wall_seconds", "wall s"), ("total_energy_joules", "energy J")):
        vals = [f[key] for f in figs]
        if all(v is not None for v in vals):
            dims.append(_num_dim(label, vals))
            if color_vals is None and key == "total_energy_joules":
                color_vals, color_title = vals, label
    line: dict[str, Any] = {"color": "#1f77b4"}
    if color_vals is not None:
        line = {
            "color": color_vals,
            "colorscale": "Viridis",
            "showscale": True,
            "colorbar": {"title": {"text": color_title}},
        }
        lo, hi = min(color_vals), max(color_vals)
        if lo == hi:
            line.update(cmin=lo - 1, cmax=hi + 1)
    same = ""
    if constant:
        shown = ", ".join(f"{k} = {_fmt(params[0][k])}" for k in constant[:8])
        more = f" and {len(constant) - 8} more" if len(constant) > 8 else ""
        same = f" The same in every run, so not drawn: {shown}{more}."
    return Figure(
        fid,
        "Hyperparameters",
        [
            {
                "type": "parcoords",
                "line": line,
                "dimensions": dims,
                "labelangle": -20,
                "labelside": "top",
            }
        ],
        _layout(margin={"l": 70, "r": 70, "t": 90, "b": 40}),
        note=f"One line per run ({len(runs)}), coloured by {color_title or 'run'}. Drag along "
        "an axis to filter runs; drag axis titles to reorder. Axes marked (log) are on a "
        f"log scale.{same}",
        height=460,
        section="params",
    )


def build_figures(
    store: Store,
    runs: Sequence[Run],
    comparison: Comparison | None = None,
    target_metric: str = "ml.accuracy",
) -> list[Figure]:
    """All figures of a report, in page order."""
    ctx = _Ctx(list(runs))
    out: list[Figure] = []
    for i, run in enumerate(runs[:MAX_TIMELINE_RUNS]):
        f = timeline_figure(store, run, ctx, f"fig-timeline-{i}")
        if f is not None:
            f.section = "timeline"
            out.append(f)
    f = span_energy_figure(store, runs, ctx, "fig-span-energy")
    if f is not None:
        f.section = "energy"
        out.append(f)
    out += metric_figures(store, runs, ctx, "fig-metric", comparison.target if comparison else None)
    out += confusion_figures(store, runs, "fig-confusion")
    f = params_figure(store, runs, "fig-params", target_metric)
    if f is not None:
        out.append(f)
    return out


# -- HTML ---------------------------------------------------------------------------------


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no ``</script>``, ``<!--`` or ``&`` can end or confuse the
    element, whatever run names or labels contain. NaN becomes null: plotly draws a gap."""
    text = json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if unit == "B":
            return _fmt_bytes(float(v))
        if unit == "g" and 0 < abs(v) < 1:
            return f"{v * 1000:.4g} mg"
        if isinstance(v, int) or (v.is_integer() and abs(v) < 1e15):
            # Counts, batch sizes, epochs: 128, not 128.00; 13,993, not 1.399e+04.
            return f"{int(v):,} {unit}".strip()
        text = f"{v:,.2f}" if abs(v) >= 100 else f"{v:.4g}"
        return f"{text} {unit}".strip()
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _fmt_delta(d: float, pct: float | None, unit: str) -> str:
    sign = "+" if d >= 0 else "−"
    mag = _fmt(abs(d), unit)
    p = f", {'+' if pct >= 0 else '−'}{abs(pct):.1f}%" if pct is not None else ""
    return f"{sign}{mag}{p}"


def _summary_table(comp: Comparison) -> str:
    runs = comp.runs
    head = "".join(
        f"<th>{html.escape(r.name)}<br><code>{html.escape(r.id[:8])}</code>"
        f"{'<br>baseline' if i == 0 and len(runs) > 1 else ''}</th>"
        for i, r in enumerate(runs)
    )
    body = []
    titles = {
        "resources": "Resources",
        "metrics": "Valued metrics",
        "target": "Time and energy to target",
        "params": "Hyperparameters",
    }
    group = None
    for row in comp.rows:
        if row.group != group:
            group = row.group
            body.append(
                f'<tr class="group"><th colspan="{len(runs) + 1}">{titles[group]}</th></tr>'
            )
        nums = [
            v
            for v in row.values
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        best = None
        if row.better and len(nums) > 1 and len(set(nums)) > 1:
            best = max(nums) if row.better == "max" else min(nums)
        cells = []
        for i, v in enumerate(row.values):
            cls = ' class="best"' if best is not None and v == best else ""
            text = html.escape(_fmt(v, row.unit))
            d = row.delta[i]
            if d is not None and i > 0:
                tone = ""
                if row.better and d != 0:
                    good = (d < 0) == (row.better == "min")
                    tone = " good" if good else " bad"
                text += (
                    f'<span class="delta{tone}">'
                    f"{html.escape(_fmt_delta(d, row.pct[i], row.unit))}</span>"
                )
            cells.append(f"<td{cls}>{text}</td>")
        body.append(f"<tr><td>{html.escape(row.label)}</td>{''.join(cells)}</tr>")
    return (
        f"<table><thead><tr><th>run</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        when = dt.datetime.fromtimestamp(r.start_ts).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(c))}</td>"
                for c in (
                    r.name,
                    r.id,
                    r.kind,
                    r.host,
                    when,
                    "–" if r.exit_code is None else r.exit_code,
                )
            )
            + f"<td><code>{html.escape(shlex.join(r.command)[:300])}</code></td></tr>"
        )
    return (
        "<table><thead><tr><th>name</th><th>id</th><th>kind</th><th>host</th>"
        "<th>start</th><th>exit</th><th>command</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:  # pragma: no cover - plotly is a declared dependency
        raise RuntimeError("the HTML report needs plotly: pip install plotly") from exc
    # The bundle contains no "</script"; guard anyway, as the element would end there.
    return get_plotlyjs().replace("</script", "<\\/script")


def render_report(
    store: Store,
    run_refs: Sequence[str | Run],
    title: str | None = None,
    target_metric: str = "ml.accuracy",
    target: float | None = None,
    carbon: Intensity | None = None,
) -> str:
    """The report page as one HTML string (plotly.js, data and styles all inline). CO2e is
    computed with ``carbon`` (default: as :func:`compare_runs` chooses)."""
    runs = [r if isinstance(r, Run) else store.resolve_run(r) for r in run_refs]
    if not runs:
        raise ValueError("a report needs at least one run")
    comp = compare_runs(store, runs, target_metric=target_metric, target=target, carbon=carbon)
    figures = build_figures(store, runs, comp, target_metric)
    title = title or "wattspan report: " + ", ".join(r.name for r in runs[:4]) + (
        f" and {len(runs) - 4} more" if len(runs) > 4 else ""
    )
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    sections: list[str] = []
    sections.append(f'<section id="sec-runs"><h2>Runs</h2>{_runs_table(runs)}</section>')
    note = ""
    if comp.target:
        op = ">=" if comp.target["mode"] == "max" else "<="
        how = (
            "the best value every run reached"
            if comp.target.get("chosen") == "common best"
            else "as given"
        )
        note = (
            f'<p class="note">Target: {html.escape(comp.target["metric"])} {op} '
            f"{comp.target['target']:g} ({how}); energy is node (primary RAPL domains or "
            "power model) plus GPU from the run start.</p>"
        )
    if comp.carbon is not None:
        note += (
            f'<p class="note">CO2e at {html.escape(comp.carbon.label())}. Process energy: '
            "each run's CPU-time share of its node's active energy (what the run itself "
            "used on a shared node); runs are ranked by it.</p>"
        )
    diff_note = (
        '<p class="note">Below each value: the difference to the first run '
        "(green better, red worse). Bold: the best run.</p>"
        if len(runs) > 1
        else ""
    )
    sections.append(
        f'<section id="sec-summary"><h2>Summary</h2>{diff_note}{note}'
        f"{_summary_table(comp)}</section>"
    )
    headings = {
        "timeline": "Resources over time",
        "energy": "Energy per span",
        "metrics": "Valued metrics",
        "confusion": "Confusion matrices",
        "params": "Hyperparameters",
    }
    toc = ['<a href="#sec-runs">Runs</a>', '<a href="#sec-summary">Summary</a>']
    return render_page(
        title, f"{len(runs)} run(s), generated {generated} by wattspan", toc, sections,
        figures, headings,
    )  # fmt: skip


def render_page(
    title: str,
    subtitle: str,
    toc: list[str],
    sections: list[str],
    figures: Sequence[Figure],
    headings: dict[str, str],
) -> str:
    """The self-contained page every wattspan report is: the sections given, then one
    section per figure (the first figure of a section carries its anchor and its entry in
    ``toc``), Plotly inlined, the figures' data as JSON for the renderer."""
    toc, sections = list(toc), list(sections)
    seen: set[str] = set()
    for f in figures:
        anchor = ""
        if f.section not in seen:
            seen.add(f.section)
            # "sec-" keeps section anchors apart from plot div ids (Plotly draws into the
            # first element with the id it is given).
            anchor = f' id="sec-{f.section}"'
            toc.append(f'<a href="#sec-{f.section}">{headings.get(f.section, f.section)}</a>')
        sections.append(
            f"<section{anchor}><h2>{html.escape(f.title)}</h2>"
            + (f'<p class="note">{html.escape(f.note)}</p>' if f.note else "")
            + f'<div class="plot" id="{f.id}" style="height:{f.height}px"></div></section>'
        )
    fig_json = _script_json([{"id": f.id, "data": f.data, "layout": f.layout} for f in figures])
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="wattspan">',
            f"<title>{html.escape(title)}</title>",
            f"<script>{ERROR_RECORDER_JS}</script>",
            f"<style>{CSS}</style>",
            f"<script>{_plotly_js()}</script>",
            "</head><body>",
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>",
            f"<nav>{''.join(toc)}</nav>",
            '<div id="wattspan-errors" hidden></div>',
            f"<main>{''.join(sections)}</main>",
            f'<script type="application/json" id="wattspan-figures">{fig_json}</script>',
            f"<script>{RENDER_JS}</script>",
            "</body></html>\n",
        ]
    )


def write_report(
    store: Store,
    run_refs: Sequence[str | Run],
    path: str | Path,
    title: str | None = None,
    target_metric: str = "ml.accuracy",
    target: float | None = None,
    carbon: Intensity | None = None,
) -> Path:
    """Writes :func:`render_report` to ``path`` atomically (temp file, then rename), so a
    reader never sees half a report. Returns the path."""
    out = Path(path)
    text = render_report(store, run_refs, title, target_metric, target, carbon)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = [
    "Figure",
    "build_figures",
    "confusion_figures",
    "metric_figures",
    "params_figure",
    "render_report",
    "span_energy_figure",
    "timeline_figure",
    "write_report",
]
