"""Analysis commands over the embedded store: ``show``, ``compare``, ``report``, ``export``.

Non-interactive by default, as scripts and CI need: runs are named on the command line. When
none is named and stdin is a terminal, a numbered list of recent runs is offered to pick
from (UMLAUT's selection prompt); otherwise the command fails with exit code 2.

Exit codes: 0 success, 1 store or run not found / output not writable, 2 usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from wattspan.agent.carbon import CarbonError, Intensity, annotate, resolve
from wattspan.agent.store import Run, Store
from wattspan.analysis import (
    Comparison,
    SpanNode,
    compare_runs,
    export_rows,
    metric_summaries,
    run_carbon,
    run_summary,
    span_tree,
    time_to_target,
    write_csv,
    write_jsonl,
)
from wattspan.cli.resolve import resolve_runs
from wattspan.cli.store_cmds import open_store
from wattspan.cli.tables import fmt_bytes, fmt_grams, fmt_num, fmt_ts, print_table

PICK_LIMIT = 20  # runs offered by the interactive prompt


# -- parsers ------------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(f"wattspan: {msg}", file=sys.stderr)


def parse_selection(text: str, n: int) -> list[int] | None:
    """Indices (0-based) from ``"1 3"``, ``"1,3"``, ``"2-4"`` or ``"all"`` over ``n``
    numbered items; None when the text is not a valid selection."""
    text = text.strip().lower()
    if text == "all":
        return list(range(n))
    out: list[int] = []
    for tok in text.replace(",", " ").split():
        lo_s, sep, hi_s = tok.partition("-")
        if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
            return None
        lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        if not 1 <= lo <= hi <= n:
            return None
        out.extend(i - 1 for i in range(lo, hi + 1) if i - 1 not in out)
    return out or None


def pick_runs(
    store: Store,
    minimum: int = 1,
    stdin: IO[str] | None = None,
    out: IO[str] | None = None,
    limit: int = PICK_LIMIT,
) -> list[Run] | None:
    """Numbered prompt over the newest runs; the chosen runs in the order typed, or None
    when the user cancels (empty line or end of input). The prompt goes to ``out``
    (stderr by default) so that stdout stays clean for ``--json``."""
    stdin = stdin or sys.stdin
    out = out or sys.stderr
    runs = store.runs(limit=limit)
    if len(runs) < minimum:
        print(f"need {minimum} run(s), the store has {len(runs)}", file=out)
        return None
    print("Recent runs:", file=out)
    for i, r in enumerate(runs, 1):
        wall = fmt_num(r.end_ts - r.start_ts, "s") if r.end_ts else "running"
        print(f"  {i:>2}  {r.id[:8]}  {r.name[:30]:<30}  {fmt_ts(r.start_ts)}  {wall}", file=out)
    what = "a run" if minimum == 1 else f"at least {minimum} runs"
    for _ in range(3):
        print(f"Select {what} (e.g. 1 3, 2-4, all; empty to cancel): ", end="", file=out)
        out.flush()
        line = stdin.readline()
        if not line.strip():
            return None
        sel = parse_selection(line, len(runs))
        if sel is not None and len(sel) >= minimum:
            return [runs[i] for i in sel]
        print(f"not a valid selection of {what}: {line.strip()!r}", file=out)
    return None


def _select(store: Store, refs: Sequence[str], command: str, minimum: int) -> list[Run] | int:
    """Resolves ``refs``; with none, prompts on a terminal, else usage error (exit 2)."""
    if refs:
        # Commands over several runs take a shared name as all its runs (`compare train`).
        return resolve_runs(store, refs, every_of_name=minimum >= 2 or command == "report")
    if sys.stdin is not None and sys.stdin.isatty():
        runs = pick_runs(store, minimum=minimum)
        if runs is None:
            _err(f"{command}: no runs selected")
            return 2
        return runs
    _err(
        f"{command}: name {'a run' if minimum == 1 else f'at least {minimum} runs'} "
        "(see `wattspan runs`); runs are picked interactively only on a terminal"
    )
    return 2


def _store_and_runs(
    args: argparse.Namespace, command: str, minimum: int, every: bool = False
) -> tuple[Store, list[Run]] | int:
    """The store of ``--store`` and the runs a command acts on (with ``every``, all of them,
    oldest first; else as :func:`_select` picks them), or the exit code to return instead."""
    store = open_store(args.store)
    if store is None:
        return 1
    if every:
        return store, list(reversed(store.runs()))  # oldest first, like a log
    runs = _select(store, args.runs, command, minimum)
    if isinstance(runs, int):
        return runs
    return store, runs


# -- compare ------------------------------------------------------------------------------


def _fmt_value(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if unit == "B":
            return fmt_bytes(v)
        if unit == "g":
            return fmt_grams(v)
        if unit == "%":
            return fmt_num(v, "%", 1)
        if unit:
            return fmt_num(v, unit, 3 if abs(v) < 100 else 1)
        return f"{v:.6g}"
    if isinstance(v, str):
        return v
    return json.dumps(v)


def comparison_table(comp: Comparison) -> Table:
    """A rich table of :func:`compare_runs`: one column per run, the difference to the
    first run under each value (green better, red worse where a direction is known)."""
    t = Table(title="wattspan compare", show_header=True, header_style="bold", show_lines=False)
    t.add_column("metric")
    for i, r in enumerate(comp.runs):
        head = f"{r.name}\n{r.id[:8]}" + ("\n(baseline)" if i == 0 else "")
        t.add_column(head, justify="right")
    group = None
    for row in comp.rows:
        if row.group != group:
            if group is not None:
                t.add_section()
            group = row.group
        cells: list[Text | str] = []
        for i, v in enumerate(row.values):
            cell = Text(_fmt_value(v, row.unit))
            d = row.delta[i]
            if i > 0 and d is not None:
                style = "dim"
                if row.better and d != 0:
                    style = "green" if (d < 0) == (row.better == "min") else "red"
                mag = _fmt_value(abs(d), row.unit)
                pct = row.pct[i]
                ptxt = "" if pct is None else f", {pct:+.1f}%"
                cell.append(f"\n{'+' if d >= 0 else '-'}{mag}{ptxt}", style=style)
            cells.append(cell)
        t.add_row(row.label, *cells)
    notes = []
    if comp.target:
        op = ">=" if comp.target["mode"] == "max" else "<="
        how = "common best of all runs" if comp.target.get("chosen") == "common best" else "given"
        notes.append(f"target: {comp.target['metric']} {op} {comp.target['target']:g} ({how})")
    if comp.carbon is not None:
        notes.append(f"CO2e at {comp.carbon.label()}")
    notes.append("process energy: each run's CPU-time share of its node's active energy")
    t.caption = "\n".join(notes)
    return t


def carbon_arg(args: argparse.Namespace) -> Intensity | int | None:
    """The intensity ``--carbon-intensity``/``--country``/``--pue`` ask for; None when none
    is given (each command then uses what the runs were stored with); exit code 2 on a bad
    value."""
    if args.carbon_intensity is None and args.country is None and args.pue is None:
        return None
    try:
        return resolve(args.carbon_intensity, args.country, 1.0 if args.pue is None else args.pue)
    except CarbonError as exc:
        _err(str(exc))
        return 2


#: the metric of time/energy-to-target when ``--target-metric`` is not given
DEFAULT_TARGET_METRIC = "ml.accuracy"


def resolve_metric(store: Store, runs: Sequence[Run], name: str | None) -> str:
    """The stored metric name ``name`` means: itself when a run logged it, else the one
    metric whose last dotted part it is (``accuracy`` -> ``ml.accuracy``), said on stderr.
    Unknown names are returned as they are, with the names the runs have. ``None`` (the
    option not given) is :data:`DEFAULT_TARGET_METRIC`, and says nothing when the runs did
    not log it: a run without a learning curve (a stream query) is not a mistake."""
    explicit = name is not None
    name = name or DEFAULT_TARGET_METRIC
    have: dict[str, None] = {}
    for r in runs:
        have.update(dict.fromkeys(metric_summaries(store, r)))
    if not have or name in have:
        return name
    tail = [m for m in have if m.rsplit(".", 1)[-1] == name or m.endswith("." + name)]
    if len(tail) == 1:
        _err(f"metric {name!r} is {tail[0]!r} in these runs; using {tail[0]}")
        return tail[0]
    if tail:
        _err(f"metric {name!r} matches {', '.join(tail)}; using {tail[0]}")
        return tail[0]
    if explicit:
        _err(f"no metric {name!r} in these runs (they have: {', '.join(list(have)[:12])})")
    return name


def cmd_compare(args: argparse.Namespace) -> int:
    selected = _store_and_runs(args, "compare", minimum=2)
    if isinstance(selected, int):
        return selected
    store, runs = selected
    if len(runs) < 2:
        _err("compare: name at least two runs")
        return 2
    carbon = carbon_arg(args)
    if isinstance(carbon, int):
        return carbon
    metric = resolve_metric(store, runs, args.target_metric)
    comp = compare_runs(
        store, runs, target_metric=metric, target=args.target, mode=args.mode, carbon=carbon
    )
    if args.json:
        sys.stdout.write(json.dumps(comp.to_dict(), sort_keys=True, default=str) + "\n")
    else:
        print_table(comparison_table(comp))
    return 0


# -- report -------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    selected = _store_and_runs(args, "report", minimum=1)
    if isinstance(selected, int):
        return selected
    store, runs = selected
    from wattspan.analysis.report import write_report  # plotly is only needed here

    carbon = carbon_arg(args)
    if isinstance(carbon, int):
        return carbon
    try:
        path = write_report(
            store,
            runs,
            args.output,
            title=args.title,
            target_metric=resolve_metric(store, runs, args.target_metric),
            target=args.target,
            carbon=carbon,
        )
    except OSError as exc:
        _err(f"report: cannot write {args.output}: {exc.strerror or exc}")
        return 1
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({len(runs)} run(s), {size:.1f} MB)", file=sys.stderr)
    return 0


# -- export -------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    selected = _store_and_runs(args, "export", minimum=1, every=args.all)
    if isinstance(selected, int):
        return selected
    store, runs = selected
    fmt = "csv" if args.csv else "json" if args.json else None
    if fmt is None:
        fmt = "csv" if args.output and Path(args.output).suffix.lower() == ".csv" else "json"
    rows = export_rows(store, runs, args.what)
    writer = write_csv if fmt == "csv" else write_jsonl
    if not args.output:
        writer(rows, sys.stdout)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8", newline="") as fh:
            writer(rows, fh)
    except OSError as exc:
        _err(f"export: cannot write {args.output}: {exc.strerror or exc}")
        return 1
    return 0


# -- show: span tree and metrics ----------------------------------------------------------


def _agg(nodes: Sequence[SpanNode]) -> dict[str, float | None]:
    """Sums over spans (max for peak RSS); None where no span has the figure."""
    keys = {
        "wall": "wall_seconds",
        "cpu": "cpu_seconds",
        "node": "node_energy_total_joules",
        "proc": "process_energy_joules",
        "gpu": "gpu_energy_total_joules",
    }
    out: dict[str, float | None] = {}
    for k, rk in keys.items():
        vals = [n.resources[rk] for n in nodes if n.resources.get(rk) is not None]
        if k == "wall" and not vals:
            vals = [n.span.end_ts - n.span.start_ts for n in nodes]
        out[k] = sum(vals) if vals else None
    peaks = [n.resources["peak_rss_bytes"] for n in nodes if n.resources.get("peak_rss_bytes")]
    out["rss"] = max(peaks) if peaks else None
    out["estimated"] = 1.0 if any(n.resources.get("energy_estimated") for n in nodes) else 0.0
    return out


def _span_label(name: str, nodes: Sequence[SpanNode]) -> Text:
    a = _agg(nodes)
    label = Text(name, style="bold")
    if len(nodes) > 1:
        label.append(f" ×{len(nodes)}", style="cyan")
    if any(n.span.status == "error" for n in nodes):
        label.append(" error", style="red")
    parts = [f"{fmt_num(a['wall'], 's', 3)}"]
    if a["cpu"] is not None:
        parts.append(f"CPU {fmt_num(a['cpu'], 's', 3)}")
    if a["node"] is not None:
        est = "~" if a["estimated"] else ""
        e = f"{est}{fmt_num(a['node'], 'J')}"
        if a["proc"] is not None:
            e += f" (proc {est}{fmt_num(a['proc'], 'J')})"
        parts.append(e)
    if a["rss"] is not None:
        parts.append(f"RSS {fmt_bytes(a['rss'])}")
    if a["gpu"] is not None:
        parts.append(f"GPU {fmt_num(a['gpu'], 'J')}")
    label.append("  " + " · ".join(parts), style="dim")
    return label


def span_tree_view(
    roots: Sequence[SpanNode], title: str = "spans", collapse: int = 5, max_nodes: int = 200
) -> Tree:
    """A rich Tree: name, wall s, CPU s, node energy J (process share), peak RSS, GPU J.

    Siblings sharing a name more than ``collapse`` times (the batches of an epoch) show as
    one line ``name ×N`` with summed figures, so training loops stay readable; at most
    ``max_nodes`` lines are drawn. ``~`` marks estimated (power model) energy.
    """
    tree = Tree(Text(title, style="bold"))
    budget = [max_nodes]
    hidden = [0]

    def count(nodes: Sequence[SpanNode]) -> int:
        return sum(1 + count(n.children) for n in nodes)

    def add(parent: Tree, nodes: Sequence[SpanNode]) -> None:
        groups: dict[str, list[SpanNode]] = {}
        for n in nodes:
            groups.setdefault(n.name, []).append(n)
        for n in nodes:
            group = groups[n.name]
            if len(group) > collapse:
                if group[0] is not n:
                    continue  # drawn once, at its first occurrence
                if budget[0] <= 0:
                    hidden[0] += count(group)
                    continue
                budget[0] -= 1
                parent.add(_span_label(n.name, group))
                hidden[0] += count([c for g in group for c in g.children])
                continue
            if budget[0] <= 0:
                hidden[0] += count([n])
                continue
            budget[0] -= 1
            add(parent.add(_span_label(n.name, [n])), n.children)

    add(tree, roots)
    if hidden[0]:
        tree.add(Text(f"… {hidden[0]} more span(s) not shown", style="dim italic"))
    return tree


def show_details(
    store: Store,
    run: Run,
    target_metric: str = "ml.accuracy",
    target: float = 0.9,
) -> list[RenderableType]:
    """What ``wattspan show RUN`` prints below the summary: the span tree and a valued
    metrics table (first/last/best per metric), plus time- and energy-to-target for
    ``target_metric`` when the run logged it. Empty list when the run has neither."""
    out: list[RenderableType] = []
    spans = store.spans(run.id)
    roots = span_tree(spans)
    if roots:
        out.append(span_tree_view(roots, title=f"spans of {run.name} ({run.id[:8]})"))
    from wattspan.cli.spark_cmd import show_section  # Spark stages' skew, if it has any

    out.extend(show_section(store, run, spans))
    summaries = metric_summaries(store, run)
    if summaries:
        t = Table(title="valued metrics", show_header=True, header_style="bold")
        # Names often share a long prefix (wattspan.stream.window.latency.*): on a narrow
        # terminal they wrap rather than end in the same ellipsis.
        t.add_column("metric", justify="left", overflow="fold")
        for col in ("points", "first", "last", "best", "best at"):
            t.add_column(col, justify="right")
        for s in summaries.values():
            at = "-"
            if s.best_step is not None:
                at = f"step {s.best_step}"
            elif s.best_seconds is not None:
                at = fmt_num(s.best_seconds, "s")
            t.add_row(
                f"{s.name} ({'max' if s.mode == 'max' else 'min'})",
                str(s.points),
                _fmt_value(s.first, ""),
                _fmt_value(s.last, ""),
                _fmt_value(s.best, ""),
                at,
            )
        out.append(t)
        if target_metric in summaries:
            tt = time_to_target(store, run, target_metric, target, "auto")
            op = ">=" if tt["mode"] == "max" else "<="
            line = Text(f"time to {target_metric} {op} {target:g}: ", style="bold")
            if tt["reached"]:
                line.append(fmt_num(tt["seconds"], "s", 3))
                if tt["joules"] is not None:
                    est = "~" if tt["energy_estimated"] else ""
                    line.append(f", energy {est}{fmt_num(tt['joules'], 'J')}")
                    parts = []
                    if tt["node_joules"] is not None:
                        parts.append(f"node {est}{fmt_num(tt['node_joules'], 'J')}")
                    if tt["gpu_joules"] is not None:
                        parts.append(f"GPU {fmt_num(tt['gpu_joules'], 'J')}")
                    line.append(f" ({' + '.join(parts)})", style="dim")
                if tt["step"] is not None:
                    line.append(f" at step {tt['step']}", style="dim")
            else:
                best = summaries[target_metric].best
                line.append(f"not reached (best {_fmt_value(best, '')})", style="yellow")
            out.append(line)
    return out


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    if store is None:
        return 1
    picked = _select(store, [args.run] if args.run else [], "show", 1)
    if isinstance(picked, int):
        return picked
    run = picked[0]
    carbon = carbon_arg(args)
    if isinstance(carbon, int):
        return carbon
    # An agent session or a program run has no stored table: computed from its samples.
    summary = dict(run_summary(store, run))
    stored = run_carbon(run)
    if carbon is not None or stored is None:
        if carbon is None:
            from wattspan.agent.carbon import from_config
            from wattspan.agent.config import load_config

            carbon = from_config(load_config()["carbon"])
        annotate(summary, carbon)
    if args.json:
        row = dataclasses.asdict(run)
        row["summary"] = summary
        sys.stdout.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        return 0
    from wattspan.cli.tables import console, summary_table

    out = console()
    out.print(summary_table(run, summary))
    metric = resolve_metric(store, [run], args.target_metric)
    for renderable in show_details(store, run, target_metric=metric, target=args.target):
        out.print(renderable)
    return 0
