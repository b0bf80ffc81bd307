"""Flat rows of runs, spans and metrics for JSON lines and CSV export."""

from __future__ import annotations

import csv
import json
import math
import shlex
from collections.abc import Iterable, Sequence
from typing import IO, Any, Literal

from wattspan.agent.store import Run, Store
from wattspan.analysis._common import as_run, run_samples
from wattspan.analysis.metrics import metric_summaries
from wattspan.analysis.runs import run_figures, run_summary
from wattspan.analysis.spans import iter_tree, span_tree

ExportKind = Literal["runs", "spans", "metrics", "samples", "confusion-matrices"]
EXPORT_KINDS: tuple[str, ...] = ("runs", "spans", "metrics", "samples", "confusion-matrices")


def export_rows(
    store: Store, run_ids: Sequence[str | Run], what: ExportKind | str
) -> list[dict[str, Any]]:
    """Rows for JSON/CSV export, nested (dicts for attributes, resources, summary...).

    ``runs``: one row per run with its summary, headline figures (see :func:`run_figures`),
    hyperparameters and per-metric final/best. ``spans``: one row per span with its depth in
    the tree, ``offset_seconds`` from the run start, attributes and attributed resources.
    ``metrics``: one row per metric point with ``offset_seconds``. ``samples``: one row per
    stored sample (``source``, ``ts``, ``offset_seconds``, ``tags``, ``fields``): the node,
    process, RAPL, power model and GPU series the figures are computed from.
    ``confusion-matrices``: one row per logged matrix (``labels``, ``matrix`` as a list of
    rows: true class by row, predicted by column, ``step``).
    Flatten with :func:`flatten_row` for CSV.
    """
    if what not in EXPORT_KINDS:
        raise ValueError(f"unknown export {what!r}; one of {', '.join(EXPORT_KINDS)}")
    runs = [as_run(store, r) for r in run_ids]
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
        elif what == "samples":
            for smp in run_samples(store, run):
                out.append(
                    {
                        "run_id": run.id,
                        "source": smp.source,
                        "ts": smp.ts,
                        "offset_seconds": smp.ts - run.start_ts,
                        "tags": dict(smp.tags),
                        "fields": dict(smp.fields),
                    }
                )
        elif what == "confusion-matrices":
            for cm in store.confusion_matrices(run.id):
                out.append(
                    {
                        "run_id": run.id,
                        "name": cm.name,
                        "ts": cm.ts,
                        "offset_seconds": cm.ts - run.start_ts,
                        "step": cm.step,
                        "labels": list(cm.labels),
                        "matrix": [list(r) for r in cm.matrix],
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
