"""The ``wattspan`` command line."""

from __future__ import annotations

import sys

from wattspan import __version__

# argparse is imported where a parser is built: `wattspan run` reads its usual forms without
# it (wattspan/cli/run_fast.py), and the import costs milliseconds before the command starts.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def _interval(text: str) -> float:
    """A sampling interval, checked as the config's ``agent.interval`` is."""
    from wattspan.agent.config import INTERVAL
    from wattspan.agent.errors import ConfigError

    try:
        return float(INTERVAL("--interval", float(text)))
    except (ValueError, ConfigError) as exc:
        import argparse

        why = exc.message if isinstance(exc, ConfigError) else f"not a number: {text!r}"
        raise argparse.ArgumentTypeError(why) from None


def build_parser() -> argparse.ArgumentParser:
    import argparse

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

    from wattspan.cli.run_parser import STORE_HELP, add_run_parser

    add_run_parser(sub, common, _interval)

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
    a.add_argument("--store", metavar="PATH", help=STORE_HELP)
    a.add_argument("--no-store", action="store_true", help="do not write the embedded store")

    st = sub.add_parser("status", help="show a running agent's delivery and ingest counters")
    st.add_argument("--config", metavar="FILE", help="the agent's config (for its metrics port)")
    st.add_argument("--metrics-port", type=int, help="the agent's metrics port")
    st.add_argument("--json", action="store_true", help="print one JSON object instead")

    from wattspan.cli.analysis_parsers import add_store_parsers

    add_store_parsers(sub)

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

    from wattspan.cli.spark_cmd import add_parser as add_spark_parser

    add_spark_parser(sub, common)

    from wattspan.cli.experiment_cmd import add_parser as add_experiment_parser

    add_experiment_parser(sub, common)

    from wattspan.cli.stream_cmd import add_parser as add_stream_parser

    add_stream_parser(sub, common)

    from wattspan.cli.analysis_parsers import add_analysis_parsers

    add_analysis_parsers(sub)
    return p


def _setup_logging(level: str | None, default: str = "warning") -> None:
    import logging  # here: `wattspan run` sets it up once its command runs

    logging.basicConfig(
        level=getattr(logging, (level or default).upper(), logging.WARNING),
        format="wattspan %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `wattspan runs | head`: the reader left. Point stdout at /dev/null so the flush at
        # exit does not raise again, and exit as a process killed by SIGPIPE would.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def console_main() -> None:
    """The ``wattspan`` script and ``python -m wattspan``: :func:`main`, and after ``run`` an
    exit that skips the interpreter's teardown.

    By the time ``run`` returns, the run is stored and closed and its summary written; what
    is left is unloading the modules the agent needed (grpc, SQLite, numpy), about 5 ms more
    on the command's wall time for nothing. Not with MLflow loaded: its exit hooks flush.
    """
    code = main()
    if sys.argv[1:2] == ["run"] and "mlflow" not in sys.modules:
        import os

        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            code = code or 141
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
        os._exit(code)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        # The whole parser loads every subcommand's module: `wattspan run` starts its
        # command sooner without them (wattspan/cli/run_cmd.py).
        from wattspan.cli.run_cmd import main_run

        return main_run(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse fills a command's positionals at their first stretch: in `export samples
        # --store s.db RUN` the runs' nargs="*" has matched nothing by the time RUN comes.
        # Runs after the options are runs still; anything else is the usual error.
        if isinstance(getattr(args, "runs", None), list) and not any(
            x.startswith("-") for x in extra
        ):
            args.runs.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    import json

    return json.dumps(obj, sort_keys=True, default=str)
