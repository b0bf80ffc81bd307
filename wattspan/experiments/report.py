"""``wattspan experiment report``: one self-contained HTML page of one or more experiments.

Built on the run report's page (:mod:`wattspan.analysis.report`): the same style sheet,
error recorder and renderer, plotly.js inline, so the file opens offline. Figures:

* per metric, the distribution of every configuration's measured repetitions (box plots
  with every point);
* per numeric parameter, the scaling of the mean (with its 95 % CI as error bars) over the
  parameter's values, one line per combination of the other parameters;
* against the baseline, the ratio of means with its CI per configuration, coloured by the
  rank test's verdict;

and tables: the environment of each experiment, the statistics per configuration.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wattspan.analysis.report import Figure
from wattspan.analysis.report.html import PALETTE, _layout, render_page
from wattspan.experiments.env import MACHINE_KEYS, machine_differences
from wattspan.experiments.results import ConfigResult, results
from wattspan.experiments.stats import verdict_words
from wattspan.experiments.store import Experiment, Repetition

LABELS = {
    "wall_seconds": ("wall time", "s"),
    "cpu_seconds": ("CPU time", "s"),
    "energy_joules": ("node energy", "J"),
    "process_energy_joules": ("process energy", "J"),
    "peak_rss_bytes": ("peak RSS", "B"),
    # the stream kind's (figures shown only where an experiment has them)
    "events_per_second": ("throughput", "events/s"),
    "events_per_joule": ("events per joule", "events/J"),
    "window_latency_p99_seconds": ("window latency p99", "s"),
}
SCALING_METRICS = ("wall_seconds", "cpu_seconds", "energy_joules", "events_per_second")
VERSUS_METRICS = ("wall_seconds", "cpu_seconds", "energy_joules", "events_per_second")
_VERDICT_COLOR = {"lower": "#16794a", "higher": "#b3261e", "no significant difference": "#7f7f7f"}
#: figures where more is better: their "higher" is the green one
HIGHER_IS_BETTER = ("events_per_second", "events_per_joule")


def _verdict_color(metric: str, verdict: str) -> str:
    if metric in HIGHER_IS_BETTER and verdict in ("lower", "higher"):
        verdict = "lower" if verdict == "higher" else "higher"
    return _VERDICT_COLOR[verdict]


def _label(exp: Experiment, c: ConfigResult, several: bool) -> str:
    return f"{exp.name} ({exp.id[:8]}): {c.label}" if several else c.label


def _box_figures(items: list[tuple[Experiment, ConfigResult]], several: bool) -> list[Figure]:
    out = []
    for metric, (title, unit) in LABELS.items():
        traces = []
        for i, (exp, c) in enumerate(items):
            vals = c.values.get(metric) or []
            if not vals:
                continue
            traces.append(
                {
                    "type": "box",
                    "name": _label(exp, c, several),
                    "y": vals,
                    "boxpoints": "all",
                    "jitter": 0.4,
                    "pointpos": 0,
                    "marker": {"color": PALETTE[i % len(PALETTE)], "size": 5},
                    "boxmean": True,
                }
            )
        if not traces:
            continue
        out.append(
            Figure(
                id=f"fig-box-{metric}",
                title=f"{title.capitalize()} per configuration",
                data=traces,
                layout=_layout(
                    yaxis={"title": {"text": f"{title} ({unit})"}, "rangemode": "tozero"},
                    showlegend=False,
                    xaxis={"automargin": True},
                ),
                note="Measured repetitions (warm-ups excluded); the dashed line is the mean.",
                section="distributions",
            )
        )
    return out


def _scaling_figures(items: list[tuple[Experiment, ConfigResult]], several: bool) -> list[Figure]:
    params: dict[str, None] = {}
    for _, c in items:
        params.update(dict.fromkeys(c.params))
    out = []
    for p in params:
        xs = {c.params.get(p) for _, c in items}
        if len(xs) < 2 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in xs
        ):
            continue
        for metric in SCALING_METRICS:
            title, unit = LABELS[metric]
            lines: dict[str, list[tuple[float, Any]]] = defaultdict(list)
            for exp, c in items:
                s = c.stats.get(metric)
                if s is None:
                    continue
                rest = " ".join(f"{k}={v}" for k, v in c.params.items() if k != p)
                name = (f"{exp.name} ({exp.id[:8]}) " if several else "") + (rest or metric)
                lines[name].append((float(c.params[p]), s))
            if not lines:
                continue
            traces = []
            for i, (name, pts) in enumerate(lines.items()):
                pts.sort(key=lambda t: t[0])
                traces.append(
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "name": name,
                        "x": [x for x, _ in pts],
                        "y": [s.mean for _, s in pts],
                        "error_y": {
                            "type": "data",
                            "symmetric": False,
                            "array": [_nz(s.ci_high - s.mean) for _, s in pts],
                            "arrayminus": [_nz(s.mean - s.ci_low) for _, s in pts],
                        },
                        "marker": {"color": PALETTE[i % len(PALETTE)]},
                        "line": {"color": PALETTE[i % len(PALETTE)]},
                    }
                )
            log_x = min(xs) > 0 and max(xs) / min(xs) >= 100  # type: ignore[operator]
            out.append(
                Figure(
                    id=f"fig-scaling-{p}-{metric}",
                    title=f"{title.capitalize()} over {p}",
                    data=traces,
                    layout=_layout(
                        xaxis={"title": {"text": p}, "type": "log" if log_x else "linear"},
                        yaxis={"title": {"text": f"mean {title} ({unit})"}, "rangemode": "tozero"},
                    ),
                    note="Mean of the measured repetitions; error bars: 95 % bootstrap CI.",
                    section="scaling",
                )
            )
    return out


def _nz(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _versus_figures(items: list[tuple[Experiment, ConfigResult]], several: bool) -> list[Figure]:
    out = []
    for metric in VERSUS_METRICS:
        title, _ = LABELS[metric]
        rows = [
            (e, c, c.versus[metric]) for e, c in items if metric in c.versus and not c.is_baseline
        ]
        if not rows:
            continue
        labels = [_label(e, c, several) for e, c, _ in rows]
        out.append(
            Figure(
                id=f"fig-versus-{metric}",
                title=f"{title.capitalize()} against the baseline",
                data=[
                    {
                        "type": "bar",
                        "orientation": "h",
                        "y": labels,
                        "x": [v.ratio for _, _, v in rows],
                        "error_x": {
                            "type": "data",
                            "symmetric": False,
                            "array": [_nz(v.ci_high - v.ratio) for _, _, v in rows],
                            "arrayminus": [_nz(v.ratio - v.ci_low) for _, _, v in rows],
                        },
                        "marker": {
                            "color": [_verdict_color(metric, v.verdict) for _, _, v in rows]
                        },
                        "text": [
                            f"{verdict_words(metric, v.verdict)} (p={v.p:.3g})" for _, _, v in rows
                        ],
                        "hovertemplate": "%{y}<br>ratio %{x:.3f}<br>%{text}<extra></extra>",
                    }
                ],
                layout=_layout(
                    xaxis={"title": {"text": "mean / baseline mean"}},
                    yaxis={"automargin": True},
                    shapes=[
                        {
                            "type": "line",
                            "x0": 1,
                            "x1": 1,
                            "yref": "paper",
                            "y0": 0,
                            "y1": 1,
                            "line": {"dash": "dot", "color": "#1d2330"},
                        }
                    ],
                ),
                note="Ratio of means with its 95 % bootstrap CI. Green: significantly lower "
                "(Mann-Whitney U, p < 0.05), red: higher, grey: no significant difference.",
                height=max(260, 60 + 36 * len(rows)),
                section="baseline",
            )
        )
    return out


def _fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if unit == "B":
        n = float(v)
        for u in ("B", "KiB", "MiB", "GiB"):
            if abs(n) < 1024 or u == "GiB":
                return f"{n:.1f} {u}"
            n /= 1024
    if isinstance(v, float):
        return f"{v:.4g} {unit}".strip()
    return f"{v} {unit}".strip()


def _env_table(exps: Sequence[Experiment]) -> str:
    head = "".join(f"<th>{html.escape(e.name)}<br><code>{e.id[:8]}</code></th>" for e in exps)
    keys = [*MACHINE_KEYS, "python", "git"]
    body = []
    for k in keys:
        cells = []
        for e in exps:
            if k == "python":
                v = e.env.get("software", {}).get("python")
            elif k == "git":
                g = next(iter(e.env.get("software", {}).get("git", {}).values()), {})
                v = (g.get("commit", "")[:12] + (" (dirty)" if g.get("dirty") else "")) or None
            else:
                v = e.env.get("machine", {}).get(k)
            cells.append(f"<td>{html.escape(_fmt(v, 'B' if k == 'memory_bytes' else ''))}</td>")
        body.append(f"<tr><td>{html.escape(k)}</td>{''.join(cells)}</tr>")
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _stats_table(items: list[tuple[Experiment, ConfigResult]], several: bool) -> str:
    metrics = [m for m in LABELS if any(m in c.stats for _, c in items)]
    head = "<th>configuration</th><th>n</th>" + "".join(
        f"<th>{html.escape(LABELS[m][0])}<br>mean [95 % CI]</th>" for m in metrics
    )
    head += "<th>vs baseline (wall)</th><th>notes</th>"
    body = []
    for exp, c in items:
        cells = [
            f"<td>{html.escape(_label(exp, c, several))}</td>",
            f"<td>{c.ok}{f' (+{c.failed} failed)' if c.failed else ''}</td>",
        ]
        notes = []
        for m in metrics:
            s = c.stats.get(m)
            unit = LABELS[m][1]
            if s is None:
                cells.append("<td>–</td>")
                continue
            cells.append(
                f"<td>{html.escape(_fmt(s.mean, unit))}<span class='delta'>"
                f"[{html.escape(_fmt(s.ci_low, unit))}, {html.escape(_fmt(s.ci_high, unit))}]"
                "</span></td>"
            )
            if s.outliers:
                notes.append(f"{LABELS[m][0]}: {len(s.outliers)} outlier(s)")
            if s.hint and m == "wall_seconds":
                notes.append(s.hint)
        v = c.versus.get("wall_seconds")
        if c.is_baseline:
            cells.append("<td>baseline</td>")
        elif v is None:
            cells.append("<td>–</td>")
        else:
            cells.append(
                f"<td>{v.ratio:.3f}x [{_fmt(v.ci_low)}, {_fmt(v.ci_high)}]<span class='delta'>"
                f"{html.escape(verdict_words('wall_seconds', v.verdict))}, p={v.p:.3g}</span></td>"
            )
        cells.append(f"<td>{html.escape('; '.join(notes))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(
    data: Sequence[tuple[Experiment, Sequence[Repetition]]], title: str | None = None
) -> str:
    if not data:
        raise ValueError("a report needs at least one experiment")
    several = len(data) > 1
    exps = [e for e, _ in data]
    items = [(e, c) for e, reps in data for c in results(e, reps)]
    figures = [
        *_box_figures(items, several),
        *_scaling_figures(items, several),
        *_versus_figures(items, several),
    ]
    title = title or "wattspan experiment: " + ", ".join(e.name for e in exps[:4])
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    warn = ""
    diffs = [d for e in exps[1:] for d in machine_differences(exps[0].env, e.env)]
    if diffs:
        warn = (
            '<p class="note" style="color:var(--bad)">These experiments ran on different '
            f"machines: {html.escape('; '.join(diffs))}. Compare with care.</p>"
        )
    sections = [
        f'<section id="sec-env"><h2>Environment</h2>{warn}{_env_table(exps)}</section>',
        f'<section id="sec-stats"><h2>Statistics</h2>{_stats_table(items, several)}</section>',
    ]
    headings = {
        "distributions": "Distributions",
        "scaling": "Scaling",
        "baseline": "Against the baseline",
    }
    toc = ['<a href="#sec-env">Environment</a>', '<a href="#sec-stats">Statistics</a>']
    n_reps = sum(len(r) for _, r in data)
    subtitle = (
        f"{len(exps)} experiment(s), {n_reps} repetition rows, generated {generated} by wattspan"
    )
    return render_page(title, subtitle, toc, sections, figures, headings)


def write(
    data: Sequence[tuple[Experiment, Sequence[Repetition]]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Writes :func:`render` to ``path`` atomically."""
    out = Path(path)
    text = render(data, title)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def figure_ids(text: str) -> list[str]:
    """The plot ids a rendered page holds (for tests and scripts)."""
    start = text.index('id="wattspan-figures">') + len('id="wattspan-figures">')
    end = text.index("</script>", start)
    return [f["id"] for f in json.loads(text[start:end])]
