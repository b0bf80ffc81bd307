"""``wattspan run``."""

from __future__ import annotations

import argparse
import json
import sys

from wattspan.agent.config import load_config
from wattspan.agent.errors import ConfigError


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("run: give a command after --, e.g. wattspan run -- python train.py")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wattspan: config error: {exc}", file=sys.stderr)
        return 2
    from wattspan.agent.runner import run_command
    from wattspan.agent.store import StoreError
    from wattspan.cli.tables import print_table, summary_table

    try:
        result = run_command(
            cmd,
            config,
            interval=args.interval,
            store_path=args.store,
            name=args.name,
            description=args.description,
        )
    except StoreError as exc:
        # Before the command started: nothing ran, so nothing is lost by stopping here.
        print(f"wattspan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = {"run_id": result.run.id, "name": result.run.name, "exit_code": result.exit_code}
        out.update(result.summary)
        sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        print_table(summary_table(result.run, result.summary), stderr=True)
    return result.exit_code
