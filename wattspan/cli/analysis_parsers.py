"""Argument parsers of ``compare``, ``report`` and ``export``.

Kept apart from :mod:`wattspan.cli.analysis_cmds` so that building the CLI parser (which
every command does, ``wattspan agent`` included) does not import numpy, rich and plotly.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from wattspan.cli.run_parser import STORE_HELP, add_carbon_args, tag

# The kinds of rows ``export`` writes (``wattspan.analysis.EXPORT_KINDS``, repeated
# here so that parsing the command line imports no analysis code; a test keeps them equal).
EXPORT_KINDS = ("runs", "spans", "metrics", "samples", "confusion-matrices")


def _lazy(name: str, module: str = "analysis_cmds") -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"wattspan.cli.{module}")
        return int(getattr(mod, name)(args))

    return run


RUN_HELP = "run id, id prefix, name, or 'latest' (none: pick interactively on a terminal)"


def add_store_parsers(subparsers: Any) -> None:
    """``runs``, ``show`` and ``rm``: the stored runs, one run, and deleting runs."""
    ls = subparsers.add_parser("runs", help="list stored runs")
    ls.add_argument("--store", metavar="PATH", help=STORE_HELP)
    ls.add_argument(
        "-n", "--limit", type=int, default=20, metavar="N", help="newest N runs (20; 0: all)"
    )
    ls.add_argument(
        "--kind",
        choices=["run", "agent", "program"],
        help="only runs of this kind (program: a process that sent spans to a daemon agent)",
    )
    ls.add_argument(
        "--tag",
        type=tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this tag (`wattspan run --tag`; repeat: all must match)",
    )
    ls.add_argument(
        "--json",
        action="store_true",
        help="JSON lines instead of a table: one object per run, newest first",
    )
    ls.set_defaults(handler=_lazy("cmd_runs", "store_cmds"))

    sh = subparsers.add_parser(
        "show",
        help="show one stored run: summary, span tree, valued metrics",
        description="The run table of one run (recomputed from its samples for a run that "
        "has none stored), its span tree and its valued metrics with time-to-target.",
    )
    sh.add_argument("run", nargs="?", metavar="RUN", help=RUN_HELP)
    sh.add_argument("--store", metavar="PATH", help=STORE_HELP)
    sh.add_argument("--json", action="store_true", help="print the run as one JSON object")
    sh.add_argument(
        "--target-metric",
        default=None,
        metavar="NAME",
        help="metric for time/energy-to-target (default ml.accuracy; 'accuracy' finds it)",
    )
    sh.add_argument("--target", type=float, default=0.9, metavar="VALUE", help="target value (0.9)")
    add_carbon_args(sh, stored=True)
    sh.set_defaults(handler=_lazy("cmd_show"))

    rm = subparsers.add_parser(
        "rm",
        help="delete stored runs and all their data",
        description="Delete runs from the store: their samples, spans, metrics and the run.",
    )
    rm.add_argument("runs", nargs="+", metavar="RUN", help="run id, id prefix, or name")
    rm.add_argument("--store", metavar="PATH", help=STORE_HELP)
    rm.set_defaults(handler=_lazy("cmd_rm", "store_cmds"))


def add_analysis_parsers(subparsers: Any) -> None:
    """Adds ``compare``, ``report`` and ``export`` to the ``wattspan`` sub-command parsers.
    Each sets ``handler`` (the ``cmd_*`` function taking the parsed args) as a default."""
    run_help = RUN_HELP

    c = subparsers.add_parser(
        "compare",
        help="compare stored runs side by side",
        description="Wall time, CPU, peak RSS, energy, GPU energy, final and best valued "
        "metrics, time- and energy-to-target and hyperparameters of two or more runs, with "
        "absolute and relative differences against the first run.",
    )
    c.add_argument("runs", nargs="*", metavar="RUN", help=run_help)
    c.add_argument("--store", metavar="PATH", help=STORE_HELP)
    c.add_argument(
        "--json", action="store_true", help="print ONE JSON object (runs, rows, target, carbon)"
    )
    c.add_argument(
        "--target-metric",
        default=None,
        metavar="NAME",
        help="metric for time/energy-to-target (default ml.accuracy)",
    )
    c.add_argument(
        "--target",
        type=float,
        metavar="VALUE",
        help="target value (default: the best value every run reached)",
    )
    c.add_argument(
        "--mode",
        choices=["auto", "max", "min"],
        default="auto",
        help="reached means >= (max) or <= (min); auto: min for loss/error names",
    )
    add_carbon_args(c, stored=True)
    c.set_defaults(handler=_lazy("cmd_compare"))

    r = subparsers.add_parser(
        "report",
        help="write an HTML report with interactive plots of runs",
        description="Write ONE self-contained HTML file (plots, data and plotly.js inline; "
        "opens offline): resources over time with spans, energy per span, valued metrics "
        "overlaid, confusion matrices, hyperparameters in parallel coordinates, summary.",
    )
    r.add_argument("runs", nargs="*", metavar="RUN", help=run_help)
    r.add_argument("-o", "--output", required=True, metavar="FILE", help="HTML file to write")
    r.add_argument("--store", metavar="PATH", help=STORE_HELP)
    r.add_argument("--title", help="page title (default: the runs' names)")
    r.add_argument(
        "--target-metric",
        default=None,
        metavar="NAME",
        help="metric for time/energy-to-target (default ml.accuracy)",
    )
    r.add_argument(
        "--target",
        type=float,
        metavar="VALUE",
        help="target value (default: the best value every run reached)",
    )
    add_carbon_args(r, stored=True)
    r.set_defaults(handler=_lazy("cmd_report"))

    e = subparsers.add_parser(
        "export",
        help="export runs, spans or metrics as CSV or JSON lines",
        description="Rows of the store for other tools. JSON lines keep nesting (attributes, "
        "resources); CSV flattens it to dotted columns (resources.node_energy_joules.package-0). "
        "Format: --csv/--json, else from the -o suffix (.csv), else JSON lines.",
    )
    e.add_argument(
        "what",
        choices=EXPORT_KINDS,
        help="runs (summary, figures, params), spans (tree, resources), metrics (points), "
        "samples (node/process/energy/GPU series), confusion-matrices",
    )
    e.add_argument("runs", nargs="*", metavar="RUN", help=run_help)
    e.add_argument("--all", action="store_true", help="every run in the store")
    fmt = e.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    fmt.add_argument("--json", action="store_true", help="JSON lines (one object per line)")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    e.add_argument("--store", metavar="PATH", help=STORE_HELP)
    e.set_defaults(handler=_lazy("cmd_export"))


# -- run selection ------------------------------------------------------------------------
