"""Rich tables of ``wattspan experiment``: experiments, per-configuration statistics, models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from wattspan.cli.tables import fmt_bytes, fmt_ts
from wattspan.experiments.results import ConfigResult
from wattspan.experiments.stats import Summary, verdict_words
from wattspan.experiments.store import Experiment

COLUMNS = (
    ("wall_seconds", "wall s", "s"),
    ("cpu_seconds", "CPU s", "s"),
    ("energy_joules", "energy J", "J"),
    ("peak_rss_bytes", "peak RSS", "B"),
    ("events_per_second", "events/s", ""),
)


def _num(v: float | None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}"


def _stat(s: Summary | None, unit: str) -> str:
    if s is None:
        return "-"
    if unit == "B":
        return fmt_bytes(s.mean)
    # Half the CI's width relative to the mean: "0.1435 ±4%" reads at a glance.
    ci = "" if math.isnan(s.rel_ci) else f" ±{s.rel_ci * 100:.0f}%"
    return f"{_num(s.mean)}{ci}"


def experiments_table(exps: Sequence[Experiment], counts: dict[str, int]) -> Table:
    t = Table(show_header=True, header_style="bold")
    for col in ("id", "name", "status", "start", "done", "host", "energy source"):
        t.add_column(col, justify="right" if col == "done" else "left")
    for e in exps:
        t.add_row(
            e.id[:8],
            e.name,
            e.status,
            fmt_ts(e.start_ts),
            f"{counts.get(e.id, 0)}/{e.planned}",
            e.host,
            str(e.env.get("machine", {}).get("energy_source", "?")),
        )
    return t


def results_table(
    exp: Experiment, rows: Sequence[ConfigResult], metric: str = "wall_seconds"
) -> Table:
    """Per configuration: n, mean [95 % CI] of each figure, and the baseline comparison of
    ``metric``."""
    title = (
        f"experiment {exp.name} ({exp.id[:8]}, {exp.status}): mean ±95% CI half-width; "
        "n.s.: no significant difference (Mann-Whitney U)"
    )
    t = Table(title=title, show_header=True, header_style="bold")
    # fold, not the ellipsis: in an 80-column terminal a header cut to "wall_se…" says
    # nothing; folded onto two lines it still names the figure.
    t.add_column("configuration", overflow="fold")
    t.add_column("n", justify="right", overflow="fold")
    shown = [c for c in COLUMNS if any(c[0] in r.stats for r in rows)]
    for _, head, _ in shown:
        t.add_column(head, justify="right", overflow="fold")
    t.add_column(f"{metric} vs baseline [95% CI]", justify="right", overflow="fold")
    t.add_column("notes", style="dim", overflow="fold")
    for r in rows:
        cells = [r.label, f"{r.ok}" + (f" +{r.failed} failed" if r.failed else "")]
        cells += [_stat(r.stats.get(key), unit) for key, _, unit in shown]
        v = r.versus.get(metric)
        if r.is_baseline:
            cells.append("baseline")
        elif v is None:
            cells.append("-")
        else:
            ci = "" if math.isnan(v.ci_low) else f" [{v.ci_low:.2f}-{v.ci_high:.2f}]"
            word = verdict_words(metric, v.verdict).replace("no significant difference", "n.s.")
            cells.append(f"{v.ratio:.2f}x{ci} {word} p={v.p:.2g}")
        notes = []
        s = r.stats.get(metric)
        if s is not None and s.outliers:
            notes.append(f"{len(s.outliers)} outlier(s)")
        if s is not None and s.hint:
            notes.append(s.hint)
        cells.append("; ".join(notes))
        t.add_row(*cells)
    return t


def model_table(
    model: dict[str, Any], predictions: Sequence[tuple[dict[str, Any], float]]
) -> Table:
    t = Table(title=f"model of {model['target']} ({model['method']})", header_style="bold")
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("rows / configurations", f"{model['rows']} / {model['configurations']}")
    t.add_row(f"CV R² ({model['folds']} folds)", _num(model["cv_r2"], 3))
    t.add_row(
        "CV MAPE", "-" if not math.isfinite(model["cv_mape"]) else f"{model['cv_mape'] * 100:.1f} %"
    )
    for name, alt in model.get("alternatives", {}).items():
        if name != model["method"]:
            t.add_row(
                f"{name}: CV R² / MAPE", f"{_num(alt['cv_r2'], 3)} / {alt['cv_mape'] * 100:.1f} %"
            )
    for k, v in model.get("coefficients", {}).items():
        t.add_row(f"coef {k}", f"{v:.6g}")
    for params, y in predictions:
        label = " ".join(f"{k}={v}" for k, v in params.items())
        t.add_row(f"predict {label}", f"{y:.6g}")
    return t
