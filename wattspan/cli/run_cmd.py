"""``wattspan run``.

Kept light on purpose: the command starts after the argument parser, the config and the
carbon intensity, with nothing of the agent (grpc, SQLite, the collectors) or of the table
(rich) loaded yet; those load while it runs (agent/runner.py says how).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: typing costs milliseconds before the spawn
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any


def run_parser() -> argparse.ArgumentParser:
    """The parser of ``wattspan run ...`` alone, without the whole CLI's (every subcommand's
    module would load first); usage and errors read as they do from the full parser."""
    import argparse

    from wattspan import __version__
    from wattspan.cli import _interval
    from wattspan.cli.run_parser import add_run_parser

    parser = argparse.ArgumentParser(prog="wattspan")
    parser.add_argument("--version", action="version", version=f"wattspan {__version__}")
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_run_parser(sub, common, _interval)
    return parser


def main_run(argv: Sequence[str]) -> int:
    """``wattspan run ...``: ``argv`` starts with ``run``. The usual forms are read without
    argparse (:mod:`wattspan.cli.run_fast` says why); the rest by :func:`run_parser`."""
    from wattspan.cli import _interval
    from wattspan.cli.run_fast import parse

    fast = parse(argv, _interval)
    if fast is not None:
        return cmd_run(fast)
    parser = run_parser()
    return cmd_run(parser.parse_args(list(argv)), parser)


def mlflow_wanted(args: Any) -> bool:
    return bool(args.mlflow) or os.environ.get("WATTSPAN_MLFLOW", "") not in ("", "0", "false")


def cmd_run(args: Any, parser: argparse.ArgumentParser | None = None) -> int:
    """``args``: argparse's namespace, or :class:`wattspan.cli.run_fast.RunArgs`."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        (parser or run_parser()).error(
            "run: give a command after --, e.g. wattspan run -- python train.py"
        )
    from wattspan.agent.config import load_config
    from wattspan.agent.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wattspan: config error: {exc}", file=sys.stderr)
        return 2
    from wattspan.agent.carbon import CarbonError, resolve

    c = config["carbon"]
    intensity, country = args.carbon_intensity, args.country
    if intensity is None and country is None:
        intensity, country = c["intensity_g_per_kwh"], c["country"] or None
    try:
        carbon = resolve(intensity, country, c["pue"] if args.pue is None else args.pue)
    except CarbonError as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        return 2

    bridge = None
    env_extra: dict[str, str] = {}
    if mlflow_wanted(args):
        from wattspan.cli.mlflow_bridge import MlflowBridge, MlflowError

        try:
            bridge = MlflowBridge.start(args.name or os.path.basename(cmd[0]), dict(args.tag))
        except MlflowError as exc:
            print(f"wattspan: --mlflow: {exc}", file=sys.stderr)
            return 2
        env_extra.update(bridge.child_env())

    from wattspan.cli import _setup_logging
    from wattspan.engines.spark.launch import SparkRunHook, looks_like_spark

    def setup_logging() -> None:
        _setup_logging(args.log_level)

    # Spark commands get the event log turned on and tailed (engines/spark/launch.py).
    spark = SparkRunHook.for_config(config) if looks_like_spark(cmd) else None
    if spark is not None or bridge is not None:
        setup_logging()  # the agent (or MLflow) comes up before the command: log from now

    from wattspan.agent.runner import run_command

    try:
        result = run_command(
            cmd,
            config,
            interval=args.interval,
            store_path=args.store,
            name=args.name,
            description=args.description,
            env_extra=env_extra,
            carbon=carbon,
            tags=dict(args.tag),
            # --json promises a stdout with nothing but the summary on it.
            child_stdout=sys.stderr if args.json else None,
            on_start=spark.on_start if spark else None,
            on_exit=spark.on_exit if spark else None,
            # Logging loads once the command runs, not before (agent/runner.py says why).
            on_spawn=setup_logging,
        )
    except OSError as exc:
        from wattspan.agent.store import StoreError  # loaded by then if it is one

        if not isinstance(exc, StoreError):
            raise
        # Before the command started: nothing ran, so nothing is lost by stopping here.
        print(f"wattspan: {exc}", file=sys.stderr)
        if bridge is not None:
            bridge.abandon()
        return 2
    import json

    out: dict[str, Any] = {
        "run_id": result.run.id,
        "name": result.run.name,
        "exit_code": result.exit_code,
    }
    out.update(result.summary)
    if bridge is not None:
        out["mlflow_run_id"] = bridge.finish(result, args.store)
    if args.json:
        sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
        sys.stdout.flush()
        return result.exit_code
    if args.json_file:
        try:
            with open(args.json_file, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(out, sort_keys=True) + "\n")
        except OSError as exc:
            print(f"wattspan: cannot write {args.json_file}: {exc.strerror}", file=sys.stderr)
    from wattspan.cli.tables import print_summary

    print_summary(result.run, result.summary)
    return result.exit_code
