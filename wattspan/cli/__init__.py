"""The ``wattspan`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from wattspan import __version__


def _interval(text: str) -> float:
    """A sampling interval, checked as the config's ``agent.interval`` is."""
    from wattspan.agent.config import INTERVAL
    from wattspan.agent.errors import ConfigError

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return float(INTERVAL("--interval", value))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wattspan",
        description="Resource and energy attribution for data and ML pipelines.",
    )
    p.add_argument("--version", action="version", version=f"wattspan {__version__}")
    p.add_argument("--log-level", default=None, help="debug, info, warning (default) or error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # Also accepted after the subcommand (``wattspan agent --log-level debug``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    r = sub.add_parser(
        "run",
        parents=[common],
        help="run a command and report its time, CPU, memory, energy and GPU use",
        description="Run CMD under an embedded agent, print a summary table when it ends, "
        "store the run, and exit with CMD's exit code.",
    )
    r.add_argument("--interval", type=_interval, default=0.1, help="sampling interval, s (0.1)")
    r.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite store (default: $WATTSPAN_STORE or $XDG_DATA_HOME/wattspan/wattspan.db)",
    )
    r.add_argument("--name", help="run name (default: the command's name)")
    r.add_argument("--description", default="", help="free text stored with the run")
    r.add_argument("--config", metavar="FILE", help="agent TOML config (collectors section)")
    r.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout instead of the table",
    )
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")

    a = sub.add_parser(
        "agent",
        parents=[common],
        help="run the node agent (daemon)",
        description="Sample the node, serve Prometheus metrics, store samples, export. "
        "SIGTERM or SIGINT flushes and exits 0.",
    )
    a.add_argument("--config", metavar="FILE", help="TOML config file (see README)")
    a.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus /metrics port (default 9879; 0 picks a free one)",
    )
    a.add_argument("--metrics-listen", help="address for /metrics (default 127.0.0.1)")
    a.add_argument("--otlp-port", type=int, help="OTLP/gRPC receiver port (default 4317)")
    a.add_argument("--interval", type=_interval, help="sampling interval, s (default 1)")
    a.add_argument("--store", metavar="PATH", help="SQLite store path")
    a.add_argument("--no-store", action="store_true", help="do not write the embedded store")

    st = sub.add_parser("status", help="show a running agent's delivery and ingest counters")
    st.add_argument("--config", metavar="FILE", help="the agent's config (for its metrics port)")
    st.add_argument("--metrics-port", type=int, help="the agent's metrics port")
    st.add_argument("--json", action="store_true")

    ls = sub.add_parser("runs", help="list stored runs")
    ls.add_argument("--store", metavar="PATH")
    ls.add_argument("-n", "--limit", type=int, default=20)
    ls.add_argument(
        "--kind",
        choices=["run", "agent", "program"],
        help="only runs of this kind (program: a process that sent spans to a daemon agent)",
    )
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    sh = sub.add_parser("show", help="show one stored run's summary")
    sh.add_argument("run", help="run id, id prefix, name, or 'latest'")
    sh.add_argument("--store", metavar="PATH")
    sh.add_argument("--json", action="store_true")

    cal = sub.add_parser(
        "calibrate",
        parents=[common],
        help="measure this host's idle power (on a quiet node) for energy attribution",
        description="Sample RAPL on a quiet node and store its idle power in the agent's "
        "state directory, where the agent and wattspan run use it.",
    )
    cal.add_argument("--seconds", type=_interval, default=60.0, help="how long to measure (60)")
    cal.add_argument("--interval", type=_interval, default=0.5, help="sampling interval, s")
    cal.add_argument("--config", metavar="FILE", help="agent TOML config (state_dir, rapl root)")

    from wattspan.cli.dashboards_cmd import add_parser as add_dashboards_parser

    add_dashboards_parser(sub, common)

    from wattspan.cli.analysis_parsers import add_analysis_parsers

    add_analysis_parsers(sub)
    return p


def _setup_logging(level: str | None, default: str = "warning") -> None:
    logging.basicConfig(
        level=getattr(logging, (level or default).upper(), logging.WARNING),
        format="wattspan %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        from wattspan.cli.run_cmd import cmd_run

        _setup_logging(args.log_level)
        return cmd_run(args, parser)
    if args.command == "agent":
        from wattspan.cli.agent_cmd import cmd_agent

        _setup_logging(args.log_level, default="info")
        return cmd_agent(args)
    _setup_logging(args.log_level)
    if hasattr(args, "handler"):
        return int(args.handler(args))
    if args.command == "calibrate":
        from wattspan.cli.calibrate_cmd import cmd_calibrate

        return cmd_calibrate(args)
    if args.command == "dashboards":
        from wattspan.cli.dashboards_cmd import cmd_dashboards

        return cmd_dashboards(args)
    if args.command == "status":
        from wattspan.cli.status_cmd import cmd_status

        return cmd_status(args)
    if args.command == "show":
        from wattspan.cli.analysis_cmds import cmd_show

        return cmd_show(args)
    from wattspan.cli.store_cmds import cmd_runs

    return cmd_runs(args)


def dump_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
