"""Opening the embedded store for a command, and ``runs``, which lists what it holds."""

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
