"""Commands that read the embedded store: ``runs``, ``show``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from wattspan.agent.store import Store, default_store_path


def open_store(path: str | None) -> Store | None:
    p = path or default_store_path()
    from pathlib import Path

    if not Path(p).exists():
        print(
            f"wattspan: no store at {p} (run something with `wattspan run` first)", file=sys.stderr
        )
        return None
    return Store(p)


def cmd_runs(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    if store is None:
        return 1
    runs = store.runs(limit=args.limit, kind=args.kind)
    if args.json:
        for r in runs:
            sys.stdout.write(json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n")
    else:
        from wattspan.cli.tables import print_table, runs_table

        print_table(runs_table(runs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    if store is None:
        return 1
    try:
        run = store.resolve_run(args.run)
    except KeyError as exc:
        print(f"wattspan: {exc.args[0]}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(dataclasses.asdict(run), sort_keys=True) + "\n")
        return 0
    from rich.console import Console

    from wattspan.cli.analysis_cmds import show_details
    from wattspan.cli.tables import print_table, summary_table

    print_table(summary_table(run, run.summary or {}))
    console = Console()
    for renderable in show_details(store, run):
        console.print(renderable)
    return 0
