"""Analysis over the embedded store: span trees, metric curves, time- and energy-to-target,
run comparison and flat exports.

Every function here reads a :class:`~wattspan.agent.store.Store` and returns plain data
(dataclasses, dicts, lists): the CLI renders it as tables, the HTML report as plots, and tests
check it against hand-computed numbers. Nothing here prints or writes files except the
``write_csv``/``write_jsonl`` helpers, which write to a stream they are given.

Units follow the store: seconds, bytes, joules, watts; times are Unix seconds unless a name
says ``seconds`` (a duration, or an offset from the run start).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Literal

import numpy as np

from wattspan.agent.attribution import Series, build_series, primary_domains
from wattspan.agent.store import MetricRow, Run, SpanRow, Store
from wattspan.agent.summary import summarize

Mode = Literal["max", "min", "auto"]
ExportKind = Literal["runs", "spans", "metrics"]
EXPORT_KINDS: tuple[str, ...] = ("runs", "spans", "metrics")

# Tokens that mark a metric where lower is better. Matched against the name split at
# non-alphanumerics, so ``ml.val_loss`` and ``ml.error_rate`` are "min" but ``ml.accuracy``
# (or a made-up ``ml.lossless_ratio``) is "max".
_LOWER_IS_BETTER = frozenset(
    {"loss", "error", "err", "mse", "mae", "rmse", "mape", "perplexity", "ppl", "wer", "cer"}
)


# -- span tree ----------------------------------------------------------------------------


@dataclass(slots=True)
class SpanNode:
    """A span with its place in the tree. ``depth`` is 0 for roots."""

    span: SpanRow
    depth: int
    children: list[SpanNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def resources(self) -> dict[str, Any]:
        return self.span.resources


def span_tree(spans: Iterable[SpanRow]) -> list[SpanNode]:
    """Roots of the span forest, children ordered by start time.

    A span whose parent is not among ``spans`` (a parent in another process that has not
    finished, or outside the run) becomes a root rather than disappearing. Parent links are
    looked up within the span's own trace, as in OpenTelemetry.
    """
    rows = sorted(spans, key=lambda s: (s.start_ts, s.end_ts, s.span_id))
    by_key = {(s.trace_id, s.span_id): s for s in rows}
    children: dict[tuple[str, str], list[SpanRow]] = {}
    roots: list[SpanRow] = []
    for s in rows:
        parent = (s.trace_id, s.parent_span_id) if s.parent_span_id else None
        if parent is not None and parent in by_key and parent != (s.trace_id, s.span_id):
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)

    seen: set[tuple[str, str]] = set()

    def build(s: SpanRow, depth: int) -> SpanNode:
        # Iterative over the stack would avoid deep recursion, but span trees are shallow
        # (pipeline > stage > epoch > batch); the ``seen`` set guards against cycles.
        seen.add((s.trace_id, s.span_id))
        node = SpanNode(s, depth)
        for c in children.get((s.trace_id, s.span_id), []):
            if (c.trace_id, c.span_id) not in seen:
                node.children.append(build(c, depth + 1))
        return node

    out = [build(r, 0) for r in roots]
    # Spans on a parent cycle (corrupt input) are reachable from no root: show them as roots.
    for s in rows:
        if (s.trace_id, s.span_id) not in seen:
            out.append(build(s, 0))
    out.sort(key=lambda n: (n.span.start_ts, n.span.end_ts, n.span.span_id))
    return out


def iter_tree(nodes: Iterable[SpanNode]) -> Iterator[SpanNode]:
    """Depth-first, pre-order walk (parents before children, siblings by start time)."""
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


# -- valued metrics -----------------------------------------------------------------------


def metric_mode(name: str) -> Literal["max", "min"]:
    """``"min"`` for metrics where lower is better (loss, error...), else ``"max"``."""
    tokens = {t for t in re.split(r"[^0-9a-z]+", name.lower()) if t}
    return "min" if tokens & _LOWER_IS_BETTER else "max"


def _finite(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _run(store: Store, ref: str | Run) -> Run:
    return ref if isinstance(ref, Run) else store.resolve_run(ref)


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
    run = _run(store, run_id)
    out: dict[str, list[tuple[float, float]]] = {}
    for name, rows in metrics_by_name(store, run).items():
        use_step = x == "step" or (x == "auto" and all(r.step is not None for r in rows))
        out[name] = curve_points(rows, run, use_step)
    return out


def curve_axis(store: Store, run_id: str | Run, name: str) -> Literal["step", "seconds"]:
    """Which x :func:`metric_curves` uses for ``name`` in ``auto`` mode."""
    rows = store.metrics(_run(store, run_id).id, name=name)
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
    run = _run(store, run_id)
    out: dict[str, MetricSummary] = {}
    for name, rows in metrics_by_name(store, run).items():
        mode = metric_mode(name)
        ok = [r for r in rows if _finite(r.value)]
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


# -- time- and energy-to-target -----------------------------------------------------------


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
    run = _run(store, run_id)
    samples = [
        s for src in ("rapl", "power_model", "gpu") for s in store.samples(run.id, source=src)
    ]
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
    run = _run(store, run_id)
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
        if not _finite(row.value):
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


# -- run figures and comparison -----------------------------------------------------------


def run_summary(store: Store, run: Run) -> dict[str, Any]:
    """The stored summary, or one computed from the samples for a run that has none yet
    (still running, or an agent session)."""
    if run.summary:
        return run.summary
    samples = store.samples(run.id)
    end = run.end_ts or (samples[-1].ts if samples else run.start_ts)
    return summarize(samples, run.start_ts, end)


def run_figures(store: Store, run: Run) -> dict[str, Any]:
    """Headline numbers of a run, with the energy summed over primary domains only (the
    sub-domains such as ``package-0/dram`` are inside their package and would double count).
    """
    s = run_summary(store, run)
    energy = s.get("energy") or []
    by_domain = {e["domain"]: e for e in energy if e.get("joules") is not None}
    primary = primary_domains(by_domain)
    node = sum(by_domain[d]["joules"] for d in primary) if primary else None
    gpus = [g for g in s.get("gpus") or [] if g.get("joules") is not None]
    gpu = sum(g["joules"] for g in gpus) if gpus else None
    total = None if node is None and gpu is None else (node or 0.0) + (gpu or 0.0)
    wall = s.get("wall_seconds")
    if wall is None and run.end_ts is not None:
        wall = run.end_ts - run.start_ts
    return {
        "wall_seconds": wall,
        "cpu_seconds": s.get("cpu_seconds"),
        "cpu_percent_avg": s.get("cpu_percent_avg"),
        "peak_rss_bytes": s.get("peak_rss_bytes"),
        "energy_joules": node,
        "energy_estimated": any(by_domain[d].get("estimated") for d in primary)
        if primary
        else None,
        "gpu_energy_joules": gpu,
        "total_energy_joules": total,
    }


@dataclass(slots=True)
class CompareRow:
    """One line of a comparison: a figure for every run and its difference to the first.

    ``delta``/``pct`` are None for the first run (the baseline), for non-numeric values, and
    (``pct``) where the baseline is 0. ``better`` says which direction is better, if any.
    """

    key: str
    label: str
    unit: str
    group: Literal["resources", "metrics", "target", "params"]
    values: list[Any]
    delta: list[float | None]
    pct: list[float | None]
    better: Literal["min", "max"] | None = None


@dataclass(slots=True)
class Comparison:
    runs: list[Run]
    rows: list[CompareRow]
    target: dict[str, Any] | None = None

    def row(self, key: str) -> CompareRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``wattspan compare --json``)."""
        return {
            "runs": [
                {"id": r.id, "name": r.name, "start_ts": r.start_ts, "host": r.host}
                for r in self.runs
            ],
            "target": self.target,
            "rows": [asdict(r) for r in self.rows],
        }


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _diffs(values: Sequence[Any]) -> tuple[list[float | None], list[float | None]]:
    base = values[0] if values else None
    delta: list[float | None] = [None]
    pct: list[float | None] = [None]
    for v in values[1:]:
        if _is_num(v) and _is_num(base) and _finite(v) and _finite(base):
            d = v - base
            delta.append(d)
            pct.append(d / abs(base) * 100.0 if base != 0 else None)
        else:
            delta.append(None)
            pct.append(None)
    return delta, pct


def _row(key: str, label: str, unit: str, group: Any, values: list[Any], better: Any) -> CompareRow:
    delta, pct = _diffs(values)
    return CompareRow(key, label, unit, group, values, delta, pct, better)


def compare_runs(
    store: Store,
    run_ids: Sequence[str | Run],
    target_metric: str = "ml.accuracy",
    target: float | None = None,
    mode: Mode = "auto",
) -> Comparison:
    """Side-by-side figures of runs, with differences against the first run.

    Rows: resources (wall time, CPU seconds, peak RSS, node energy of the primary domains,
    GPU energy, their total), per metric the final and best value, time- and
    energy-to-target for ``target_metric``, and every hyperparameter.

    Without ``target`` the target is the best value that *every* run reached (the lowest
    of the runs' best accuracies, or the highest of their best losses), so each run gets a
    time-to-target and the rows answer "which run got to a common quality level first, and
    for how many joules". The chosen target is in ``Comparison.target``.
    """
    runs = [_run(store, r) for r in run_ids]
    rows: list[CompareRow] = []
    figs = [run_figures(store, r) for r in runs]
    for key, label, unit, better in (
        ("wall_seconds", "wall time", "s", "min"),
        ("cpu_seconds", "CPU time", "s", "min"),
        ("cpu_percent_avg", "CPU avg", "%", None),
        ("peak_rss_bytes", "peak RSS", "B", "min"),
        ("energy_joules", "node energy", "J", "min"),
        ("gpu_energy_joules", "GPU energy", "J", "min"),
        ("total_energy_joules", "total energy", "J", "min"),
    ):
        values = [f[key] for f in figs]
        if any(v is not None for v in values):
            rows.append(_row(key, label, unit, "resources", values, better))
    if any(f["energy_estimated"] for f in figs):
        rows.append(
            _row(
                "energy_estimated",
                "node energy estimated",
                "",
                "resources",
                [f["energy_estimated"] for f in figs],
                None,
            )
        )

    summaries = [metric_summaries(store, r) for r in runs]
    names = sorted({n for s in summaries for n in s})
    for name in names:
        mode_n = metric_mode(name)
        finals = [s[name].last if name in s else None for s in summaries]
        bests = [s[name].best if name in s else None for s in summaries]
        rows.append(_row(f"{name}.final", f"{name} final", "", "metrics", finals, mode_n))
        rows.append(_row(f"{name}.best", f"{name} best", "", "metrics", bests, mode_n))

    tmode = metric_mode(target_metric) if mode == "auto" else mode
    target_info: dict[str, Any] | None = None
    if target is None:
        # Best per run in the direction asked (which --mode may set against the name).
        points = [
            [m.value for m in store.metrics(r.id, name=target_metric) if _finite(m.value)]
            for r in runs
        ]
        if points and all(points):
            bests = [max(p) if tmode == "max" else min(p) for p in points]
            target = min(bests) if tmode == "max" else max(bests)
            target_info = {
                "metric": target_metric,
                "target": target,
                "mode": tmode,
                "chosen": "common best",
            }
    else:
        target_info = {"metric": target_metric, "target": target, "mode": tmode, "chosen": "given"}
    if target is not None and any(target_metric in s for s in summaries):
        tts = [time_to_target(store, r, target_metric, target, tmode) for r in runs]
        op = ">=" if tmode == "max" else "<="
        rows.append(
            _row(
                "time_to_target_seconds",
                f"time to {target_metric} {op} {target:g}",
                "s",
                "target",
                [t["seconds"] for t in tts],
                "min",
            )
        )
        rows.append(
            _row(
                "energy_to_target_joules",
                f"energy to {target_metric} {op} {target:g}",
                "J",
                "target",
                [t["joules"] for t in tts],
                "min",
            )
        )
        if target_info is not None:
            target_info["reached"] = [t["reached"] for t in tts]

    params = [store.params(r.id) for r in runs]
    for key in sorted({k for p in params for k in p}):
        rows.append(_row(f"param.{key}", key, "", "params", [p.get(key) for p in params], None))
    return Comparison(runs, rows, target_info)


# -- exports ------------------------------------------------------------------------------


def export_rows(
    store: Store, run_ids: Sequence[str | Run], what: ExportKind | str
) -> list[dict[str, Any]]:
    """Rows for JSON/CSV export, nested (dicts for attributes, resources, summary...).

    ``runs``: one row per run with its summary, headline figures (see :func:`run_figures`),
    hyperparameters and per-metric final/best. ``spans``: one row per span with its depth in
    the tree, ``offset_seconds`` from the run start, attributes and attributed resources.
    ``metrics``: one row per metric point with ``offset_seconds``.
    Flatten with :func:`flatten_row` for CSV.
    """
    if what not in EXPORT_KINDS:
        raise ValueError(f"unknown export {what!r}; one of {', '.join(EXPORT_KINDS)}")
    runs = [_run(store, r) for r in run_ids]
    out: list[dict[str, Any]] = []
    for run in runs:
        if what == "runs":
            row: dict[str, Any] = {
                "id": run.id,
                "name": run.name,
                "kind": run.kind,
                "host": run.host,
                "description": run.description,
                "command": shlex.join(run.command),
                "start_ts": run.start_ts,
                "end_ts": run.end_ts,
                "exit_code": run.exit_code,
            }
            row.update(run_figures(store, run))
            row["params"] = store.params(run.id)
            row["metrics"] = {
                n: {"final": s.last, "best": s.best, "points": s.points}
                for n, s in metric_summaries(store, run).items()
            }
            row["summary"] = run_summary(store, run)
            out.append(row)
        elif what == "spans":
            for node in iter_tree(span_tree(store.spans(run.id))):
                s = node.span
                out.append(
                    {
                        "run_id": run.id,
                        "trace_id": s.trace_id,
                        "span_id": s.span_id,
                        "parent_span_id": s.parent_span_id,
                        "name": s.name,
                        "depth": node.depth,
                        "start_ts": s.start_ts,
                        "end_ts": s.end_ts,
                        "offset_seconds": s.start_ts - run.start_ts,
                        "status": s.status,
                        "service": s.service,
                        "pid": s.pid,
                        "attributes": s.attributes,
                        "resources": s.resources,
                    }
                )
        else:
            for m in store.metrics(run.id):
                out.append(
                    {
                        "run_id": run.id,
                        "name": m.name,
                        "ts": m.ts,
                        "offset_seconds": m.ts - run.start_ts,
                        "step": m.step,
                        "value": m.value,
                        "trace_id": m.trace_id,
                        "span_id": m.span_id,
                        "attributes": m.attributes,
                    }
                )
    return out


def flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys (``resources.node_energy_joules.package-0``); lists
    stay as they are (:func:`csv_cell` writes them as JSON)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_row(v, key + "."))
        elif isinstance(v, dict):
            continue  # an empty dict has no columns
        else:
            out[key] = v
    return out


def csv_cell(v: Any) -> str:
    """A CSV cell that parses back to the same value: floats by ``repr`` (shortest exact
    form), None as empty, booleans as ``true``/``false``, lists and dicts as JSON."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def write_csv(rows: Sequence[dict[str, Any]], fh: IO[str]) -> None:
    """Flattened rows as CSV; the header is the union of keys in first-seen order, so rows
    with different attributes share one table."""
    flat = [flatten_row(r) for r in rows]
    columns: dict[str, None] = {}
    for r in flat:
        columns.update(dict.fromkeys(r))
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(columns)
    for r in flat:
        w.writerow([csv_cell(r.get(c)) for c in columns])


def json_safe(v: Any) -> Any:
    """``v`` with NaN and infinities (not JSON) replaced by None, in nested dicts and lists
    too (tuples become lists)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


def write_jsonl(rows: Iterable[dict[str, Any]], fh: IO[str]) -> None:
    """One JSON object per line (like ``wattspan runs --json``); NaN and inf become null."""
    for r in rows:
        # null keeps every line parseable by strict readers (jq, pandas).
        fh.write(json.dumps(json_safe(r), sort_keys=True, allow_nan=False) + "\n")
