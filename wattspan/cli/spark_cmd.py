"""``wattspan spark import EVENTLOG`` and ``wattspan spark skew RUN``, and the skew section
of ``wattspan show RUN`` (:func:`show_section`).

Parsing lives here (``add_parser``); the engine is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sp = sub.add_parser(
        "spark",
        parents=[common],
        help="Spark applications: import an event log, report skewed stages",
        description="Spark applications as runs: application > jobs > stages > tasks.",
    )
    ssub = sp.add_subparsers(dest="spark_command", metavar="SUBCOMMAND")
    imp = ssub.add_parser(
        "import",
        help="store a finished application's event log as a run with its span tree",
        description="Read a Spark event log (an uncompressed file, or a rolling log's "
        "eventlog_v2_* directory) and store the application as a run: application, jobs, "
        "stage attempts and tasks as spans, with the task metrics and each stage's skew.",
    )
    imp.add_argument("eventlog", metavar="EVENTLOG")
    imp.add_argument("--store", metavar="PATH", help="SQLite store (default as `wattspan run`)")
    imp.add_argument("--name", help="run name (default: the application's name)")
    imp.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sk = ssub.add_parser(
        "skew",
        help="which stages of a run are skewed, why, and what their tail cost",
        description="Per stage attempt: its skew class (data skew, computation skew, "
        "stragglers or none), why, and the time and energy of its tail (while fewer than "
        "half of its task slots were busy). Rules: docs/spark.md.",
    )
    sk.add_argument("run", help="run id, id prefix, name, or 'latest'")
    sk.add_argument("--store", metavar="PATH")
    sk.add_argument("--all", action="store_true", help="every stage, not only the skewed ones")
    sk.add_argument("--json", action="store_true", help="JSON lines, one per stage attempt")
    sp.set_defaults(handler=cmd_spark, spark_parser=sp)


def cmd_spark(args: argparse.Namespace) -> int:
    if args.spark_command == "import":
        return _import(args)
    if args.spark_command == "skew":
        return _skew(args)
    args.spark_parser.print_help()
    return 2


def _import(args: argparse.Namespace) -> int:
    from wattspan.agent.store import Store, StoreError, default_store_path
    from wattspan.engines.spark.eventlog import EventLogError
    from wattspan.engines.spark.importer import import_event_log

    try:
        store = Store(args.store or default_store_path())
    except StoreError as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        return 2
    try:
        got = import_event_log(args.eventlog, store, name=args.name)
    except EventLogError as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wattspan: {args.eventlog}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    out = {
        "run_id": got.run.id,
        "name": got.run.name,
        "spans": got.spans,
        "tasks": got.tasks,
        "bad_lines": got.parser.bad_lines,
    }
    if args.json:
        sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    else:
        print(
            f"imported {got.run.name} ({got.run.id[:8]}): {got.spans} spans, {got.tasks} tasks"
            + (
                f", {got.parser.bad_lines} unreadable line(s) skipped"
                if got.parser.bad_lines
                else ""
            )
        )
    return 0


def _fmt(v: float | None, unit: str, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f} {unit}"


def _skew(args: argparse.Namespace) -> int:
    from wattspan.analysis.spark import stage_skews
    from wattspan.cli.store_cmds import open_store

    store = open_store(args.store)
    if store is None:
        return 1
    try:
        run = store.resolve_run(args.run)
    except KeyError as exc:
        print(f"wattspan: {exc.args[0]}", file=sys.stderr)
        return 1
    stages = stage_skews(store, run)
    if not stages:
        print(f"wattspan: run {run.name} ({run.id[:8]}) has no Spark stages", file=sys.stderr)
        return 1
    shown = stages if args.all else [s for s in stages if s.kind != "none"]
    if args.json:
        for s in shown:
            row = {
                "stage_id": s.stage_id,
                "attempt": s.attempt,
                "job_id": s.job_id,
                "name": s.name,
                "class": s.kind,
                "reason": s.reason,
                "duration_seconds": s.duration_seconds,
                "tail_seconds": s.tail_seconds,
                "tail_node_energy_joules": s.tail_node_joules,
                "tail_active_energy_joules": s.tail_active_joules,
                "tail_process_energy_joules": s.tail_process_joules,
                **{k: v for k, v in s.figures.items() if k != "tail_seconds"},
            }
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"Spark stages of {run.name} ({run.id[:8]}): {len(shown)} of {len(stages)} shown",
        show_header=True,
        header_style="bold",
    )
    for col in ("stage", "class", "tasks max/med", "tail", "tail energy", "why"):
        t.add_column(col, justify="left" if col in ("stage", "class", "why") else "right")
    for s in shown:
        t.add_row(*_cells(s), s.reason)
    # Off a terminal (a pipe, a file), wide enough that the reasons stay on one line each.
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    if not shown:
        print("no skewed stages (--all lists every stage)")
    return 0


def _cells(s: Any) -> tuple[str, str, str, str, str]:
    """stage, class, tasks max/median, tail (of the stage's time), tail energy."""
    energy = _fmt(s.tail_node_joules, "J")
    if s.tail_process_joules is not None:
        energy += f" (tasks {_fmt(s.tail_process_joules, 'J')})"
    return (
        f"{s.stage_id}.{s.attempt} {s.name}"[:60],
        s.kind.replace("_", " "),
        _fmt(s.figures.get("duration_max_median"), "x"),
        f"{_fmt(s.tail_seconds, 's', 3)} of {_fmt(s.duration_seconds, 's', 3)}",
        energy,
    )


#: skewed stages ``show`` lists at most (the costliest tails); ``spark skew`` lists all
SHOW_LIMIT = 10


def show_section(store: Any, run: Any, spans: Any) -> list[Any]:
    """What ``wattspan show`` adds for a run with Spark stage spans: its skewed stages (class,
    max/median task duration, tail time and energy), or one line saying none is; nothing for
    a run without Spark stages."""
    if not any(s.name == "spark.stage" for s in spans):
        return []  # before importing the Spark engine's modules: most runs are not Spark's
    from wattspan.analysis.spark import skewed, stage_skews

    stages = stage_skews(store, run, spans)
    if not stages:
        return []
    from rich.table import Table
    from rich.text import Text

    bad = skewed(stages)
    if not bad:
        return [Text(f"Spark skew: none of {len(stages)} stage attempt(s) skewed", style="bold")]
    t = Table(
        title=f"Spark skew: {len(bad)} of {len(stages)} stage attempt(s) skewed",
        show_header=True,
        header_style="bold",
    )
    for col in ("stage", "class", "tasks max/med", "tail", "tail energy"):
        t.add_column(col, justify="left" if col in ("stage", "class") else "right")
    for s in bad[:SHOW_LIMIT]:
        t.add_row(*_cells(s))
    out: list[Any] = [t]
    more = len(bad) - SHOW_LIMIT
    hint = f"{more} more; " if more > 0 else ""
    out.append(Text(f"{hint}why, per stage: wattspan spark skew {run.id[:8]}", style="dim"))
    return out
