"""Analysis over the embedded store: span trees, metric curves, time- and energy-to-target,
run comparison, flat exports and the HTML report.

The CLI, the engines and the experiments harness share this package. Every function reads a
:class:`~wattspan.agent.store.Store` through its public methods and returns plain data
(dataclasses, dicts, lists): the CLI renders it as tables, the HTML report as plots, and tests
check it against hand-computed numbers. Nothing here prints or writes files except the
``write_csv``/``write_jsonl`` helpers, which write to a stream they are given. The daemon
never imports this package.

Units follow the store: seconds, bytes, joules, watts; times are Unix seconds unless a name
says ``seconds`` (a duration, or an offset from the run start).
"""

from wattspan.analysis._common import Mode
from wattspan.analysis.export import (
    EXPORT_KINDS,
    ExportKind,
    csv_cell,
    export_rows,
    flatten_row,
    json_safe,
    write_csv,
    write_jsonl,
)
from wattspan.analysis.metrics import (
    MetricSummary,
    curve_axis,
    curve_points,
    metric_curves,
    metric_mode,
    metric_summaries,
    metrics_by_name,
)
from wattspan.analysis.runs import (
    CompareRow,
    Comparison,
    compare_runs,
    run_carbon,
    run_figures,
    run_summary,
)
from wattspan.analysis.spans import SpanNode, iter_tree, span_tree
from wattspan.analysis.targets import EnergyWindow, energy_between, time_to_target

__all__ = [
    "EXPORT_KINDS",
    "CompareRow",
    "Comparison",
    "EnergyWindow",
    "ExportKind",
    "MetricSummary",
    "Mode",
    "SpanNode",
    "compare_runs",
    "csv_cell",
    "curve_axis",
    "curve_points",
    "energy_between",
    "export_rows",
    "flatten_row",
    "iter_tree",
    "json_safe",
    "metric_curves",
    "metric_mode",
    "metric_summaries",
    "metrics_by_name",
    "run_carbon",
    "run_figures",
    "run_summary",
    "span_tree",
    "time_to_target",
    "write_csv",
    "write_jsonl",
]
