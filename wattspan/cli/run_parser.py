"""The ``wattspan run`` argument parser (kept apart from :mod:`wattspan.cli.run_cmd` so that
parsing the command line imports nothing of the agent)."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not typing's: `wattspan run` parses before it spawns
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: The default store, as ``wattspan.agent.store.default_store_path`` finds it (repeated
#: here so that ``--help`` imports no store code).
STORE_HELP = (
    "SQLite store (default: $WATTSPAN_STORE, else $XDG_DATA_HOME/wattspan/wattspan.db, "
    "i.e. ~/.local/share/wattspan/wattspan.db)"
)


def tag(text: str) -> tuple[str, str]:
    """``K=V`` of ``--tag``."""
    from wattspan.cli.run_fast import split_tag

    pair = split_tag(text)
    if pair is None:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return pair


def add_carbon_args(p: argparse.ArgumentParser, stored: bool) -> None:
    """``--carbon-intensity``, ``--country`` and ``--pue``."""
    default = (
        "the intensity stored with the run, else the config's [carbon], else 475 g/kWh"
        if stored
        else "the config's [carbon] section, else 475 g/kWh, the world average"
    )
    g = p.add_argument_group("CO2e (grams CO2-equivalent = kWh x PUE x g/kWh)")
    g.add_argument(
        "--carbon-intensity",
        type=float,
        metavar="G",
        help=f"grid carbon intensity, g CO2e per kWh (default: {default})",
    )
    g.add_argument(
        "--country",
        metavar="CC",
        help="use this country's annual average intensity (ISO code, e.g. DE, FRA; "
        "Our World in Data / Ember table shipped with wattspan)",
    )
    g.add_argument(
        "--pue",
        type=float,
        metavar="X",
        help="power usage effectiveness of the site, >= 1 (default 1.0 or the config's)",
    )


def add_run_parser(
    sub: Any, common: argparse.ArgumentParser, interval: Callable[[str], float]
) -> None:
    r = sub.add_parser(
        "run",
        parents=[common],
        help="run a command and report its time, CPU, memory, energy, CO2e and GPU use",
        description="Run CMD under an embedded agent, print a summary table when it ends, "
        "store the run, and exit with CMD's exit code. The table goes to stderr; CMD's "
        "output is untouched unless --json asks for a clean stdout.",
    )
    r.add_argument("--interval", type=interval, default=0.1, help="sampling interval, s (0.1)")
    r.add_argument("--store", metavar="PATH", help=STORE_HELP)
    r.add_argument("--name", help="run name (default: the command's name)")
    r.add_argument("--description", default="", help="free text stored with the run")
    r.add_argument(
        "--tag",
        type=tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag stored with the run (repeatable); `wattspan runs --tag` filters on it",
    )
    r.add_argument("--config", metavar="FILE", help="agent TOML config (collectors, carbon)")
    out = r.add_mutually_exclusive_group()
    out.add_argument(
        "--json",
        action="store_true",
        help="print the summary as ONE JSON object on stdout instead of the table; CMD's "
        "stdout is sent to stderr so that stdout stays machine-readable",
    )
    out.add_argument(
        "--json-file",
        metavar="FILE",
        help="write the summary as one JSON object to FILE (CMD's output untouched; the "
        "table still goes to stderr)",
    )
    r.add_argument(
        "--mlflow",
        action="store_true",
        help="log the summary, per-stage resources and the HTML report to MLflow: the "
        "program's run (MLFLOW_RUN_ID is set for it) or a new one; also WATTSPAN_MLFLOW=1",
    )
    add_carbon_args(r, stored=False)
    r.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS...",
        help="the command to run, after --",
    )
