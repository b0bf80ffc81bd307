"""Argument parsers of ``compare``, ``report`` and ``export``.

Kept apart from :mod:`wattspan.cli.analysis_cmds` so that building the CLI parser (which
every command does, ``wattspan agent`` included) does not import numpy, rich and plotly.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

# The kinds of rows ``export`` writes (``wattspan.analysis.EXPORT_KINDS``, repeated
# here so that parsing the command line imports no analysis code; a test keeps them equal).
EXPORT_KINDS = ("runs", "spans", "metrics")


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from wattspan.cli import analysis_cmds

        return int(getattr(analysis_cmds, name)(args))

    return run


def add_analysis_parsers(subparsers: Any) -> None:
    """Adds ``compare``, ``report`` and ``export`` to the ``wattspan`` sub-command parsers.
    Each sets ``handler`` (the ``cmd_*`` function taking the parsed args) as a default."""
    run_help = "run id, id prefix, name, or 'latest' (none: pick interactively on a terminal)"

    c = subparsers.add_parser(
        "compare",
        help="compare stored runs side by side",
        description="Wall time, CPU, peak RSS, energy, GPU energy, final and best valued "
        "metrics, time- and energy-to-target and hyperparameters of two or more runs, with "
        "absolute and relative differences against the first run.",
    )
    c.add_argument("runs", nargs="*", metavar="RUN", help=run_help)
    c.add_argument("--store", metavar="PATH", help="SQLite store (default: $WATTSPAN_STORE)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead")
    c.add_argument(
        "--target-metric",
        default="ml.accuracy",
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
    r.add_argument("--store", metavar="PATH", help="SQLite store (default: $WATTSPAN_STORE)")
    r.add_argument("--title", help="page title")
    r.add_argument("--target-metric", default="ml.accuracy", metavar="NAME")
    r.add_argument("--target", type=float, metavar="VALUE")
    r.set_defaults(handler=_lazy("cmd_report"))

    e = subparsers.add_parser(
        "export",
        help="export runs, spans or metrics as CSV or JSON lines",
        description="Rows of the store for other tools. JSON lines keep nesting (attributes, "
        "resources); CSV flattens it to dotted columns (resources.node_energy_joules.package-0). "
        "Format: --csv/--json, else from the -o suffix (.csv), else JSON lines.",
    )
    e.add_argument("what", choices=EXPORT_KINDS, help="what to export")
    e.add_argument("runs", nargs="*", metavar="RUN", help=run_help)
    e.add_argument("--all", action="store_true", help="every run in the store")
    fmt = e.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    fmt.add_argument("--json", action="store_true", help="JSON lines (one object per line)")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    e.add_argument("--store", metavar="PATH", help="SQLite store (default: $WATTSPAN_STORE)")
    e.set_defaults(handler=_lazy("cmd_export"))


# -- run selection ------------------------------------------------------------------------
