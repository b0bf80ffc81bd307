"""Opening the embedded store for a command, and ``runs``, which lists what it holds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from wattspan.agent.store import Run, Store, StoreError, default_store_path

#: Exit code for a store that is there but cannot be opened: like a usage error, the
#: ``--store`` path (or ``$WATTSPAN_STORE``) is what needs fixing.
EXIT_BAD_STORE = 2


def open_store(path: str | None) -> Store | None:
    """The store at ``path`` (default: :func:`default_store_path`), or None after saying on
    stderr that there is none (the caller exits 1). A path that is there but is no usable
    store is reported as ``wattspan: store PATH: CAUSE`` and exits 2 (``SystemExit``)."""
    p = Path(path) if path else default_store_path()
    try:
        os.stat(p)
    except FileNotFoundError:
        print(
            f"wattspan: no store at {p} (run something with `wattspan run` first)", file=sys.stderr
        )
        return None
    except OSError:
        pass  # under a file, not searchable...: Store says which, without creating anything
    try:
        return Store(p)
    except StoreError as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_STORE) from None


def has_tags(run: Run, tags: list[tuple[str, str]]) -> bool:
    stored = (run.summary or {}).get("tags") or {}
    return all(stored.get(k) == v for k, v in tags)


def cmd_runs(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    if store is None:
        return 1
    limit = args.limit or None
    if args.tag:
        runs = [r for r in store.runs(kind=args.kind) if has_tags(r, args.tag)][:limit]
    else:
        runs = store.runs(limit=limit, kind=args.kind)
    if args.json:
        for r in runs:
            sys.stdout.write(json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n")
    else:
        from wattspan.cli.tables import print_table, runs_table

        print_table(runs_table(runs))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Deletes the runs named; all are resolved first, so a typo deletes nothing."""
    store = open_store(args.store)
    if store is None:
        return 1
    from wattspan.cli.resolve import resolve_runs

    runs = resolve_runs(store, args.runs)
    if isinstance(runs, int):
        return runs
    for r in {r.id: r for r in runs}.values():
        n = store.delete_run(r.id)
        print(f"deleted {r.id[:8]} {r.name} ({n} rows)", file=sys.stderr)
    return 0
