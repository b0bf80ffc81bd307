"""``wattspan stream run`` and ``wattspan stream queries``.

``stream run`` checks the input here (one line and exit 2 for a missing file or a wrong
schema), then runs ``python -m wattspan.engines.stream.cli_worker`` as the command of the
embedded agent, exactly as ``wattspan run -- python -m ...`` would: the run's wall time,
CPU seconds and energy are measured the same way, and the worker's spans and latency
metrics arrive at that agent and are stored with the run. The worker hands its stream
figures back in a JSON file; events per joule come from the attribution of its
``stream.query`` span, read back from the store once the run ended (else from the run
summary's process energy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

QUERY_SPAN = "stream.query"  # engines/stream/instrument.py SPAN_QUERY (not imported: numpy)


def _fail(msg: str) -> int:
    print(f"wattspan: {msg}", file=sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """The ads path (ysb), or an exit code after one line on stderr."""
    from wattspan.engines.stream import io
    from wattspan.engines.stream.cli_worker import check_input
    from wattspan.engines.stream.errors import StreamError
    from wattspan.engines.stream.queries import QUERIES

    if args.query not in QUERIES:
        return None, _fail(f"unknown query {args.query!r}; choose one of {', '.join(QUERIES)}")
    ads = args.ads if args.query == "ysb" else None  # stream_cmd fills in the default
    try:
        if args.output:
            io.kind_of(args.output)
            if Path(args.output).is_dir():
                return None, _fail(f"{args.output} is a directory")
        check_input(args.query, args.input, ads)
    except (StreamError, ValueError, ImportError) as exc:
        return None, _fail(str(exc))
    except OSError as exc:
        where = exc.filename or args.input
        return None, _fail(f"{where}: {exc.strerror}" if exc.strerror else str(exc))
    return ads, None


def _worker_cmd(args: argparse.Namespace, ads: str | None, result: Path) -> list[str]:
    from wattspan.engines.stream.cli_worker import worker_argv

    return worker_argv(args, args.input, ads, result, output=args.output)


def _query_energy(store_path: str | None, config: Any, run_id: str) -> dict[str, Any] | None:
    """The attribution of the run's ``stream.query`` span, if the store holds it."""
    from wattspan.agent.store import Store, StoreError, default_store_path

    if not config["store"]["enabled"]:
        return None
    path = store_path or config["store"]["path"] or default_store_path()
    try:
        store = Store(Path(os.path.expanduser(str(path))))
    except (StoreError, OSError):
        return None
    try:
        spans = [s for s in store.spans(run_id) if s.name == QUERY_SPAN]
    finally:
        store.close()
    if not spans:
        return None
    res = dict(spans[-1].resources or {})
    res["span_id"] = spans[-1].span_id
    res["duration_seconds"] = spans[-1].duration
    return res


def events_per_joule(
    events: int, query: dict[str, Any] | None, summary: dict[str, Any]
) -> dict[str, Any]:
    """Events per joule of the query: its span's attributed process energy, else the whole
    run's (the summary's ``process_energy_joules``), else the node's energy."""
    for source, block, key in (
        ("query span, process share", query, "process_energy_joules"),
        ("run, process share", summary, "process_energy_joules"),
        ("run, node energy", summary, "node_energy_joules"),
    ):
        joules = (block or {}).get(key)
        if isinstance(joules, int | float) and joules > 0:
            return {
                "events_per_joule": events / joules,
                "joules": joules,
                "basis": source,
                "estimated": bool((block or {}).get("energy_estimated", False)),
            }
    return {"events_per_joule": None, "joules": None, "basis": "no energy measured"}


def cmd_run(args: argparse.Namespace) -> int:
    ads, code = _check(args)
    if code is not None:
        return code
    from wattspan.agent.config import load_config
    from wattspan.agent.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    from wattspan.agent.carbon import CarbonError, resolve

    c = config["carbon"]
    try:
        carbon = resolve(c["intensity_g_per_kwh"], c["country"] or None, c["pue"])
    except CarbonError as exc:
        return _fail(str(exc))
    from wattspan.agent.runner import run_command
    from wattspan.agent.store import StoreError

    tmp = Path(tempfile.mkdtemp(prefix="wattspan-stream-"))
    result_file = tmp / "figures.json"
    from wattspan.engines.stream.cli_worker import run_tags

    tags = run_tags(args)
    tags.update(dict(args.tag))
    try:
        try:
            result = run_command(
                _worker_cmd(args, ads, result_file),
                config,
                interval=args.interval,
                store_path=args.store,
                name=args.name or f"stream-{args.query}",
                description=f"wattspan stream run {args.query} --input {args.input}",
                carbon=carbon,
                tags=tags,
                # The worker prints nothing on stdout; stderr keeps its error line.
                child_stdout=sys.stderr,
            )
        except StoreError as exc:
            return _fail(str(exc))
        figures: dict[str, Any] = {}
        if result_file.exists():
            figures = json.loads(result_file.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if result.exit_code != 0 or not figures:
        # The worker said why on stderr (a bad input found past the first batch: exit 2).
        return result.exit_code or 1
    query = _query_energy(args.store, config, result.run.id)
    figures["energy"] = events_per_joule(figures["events"], query, result.summary)
    if query is not None:
        figures["query_span"] = {
            k: query.get(k)
            for k in (
                "span_id",
                "duration_seconds",
                "cpu_seconds",
                "cpu_source",
                "process_cpu_share",
                "process_energy_joules",
                "node_energy_total_joules",
                "energy_estimated",
                "throughput_items_per_second",
            )
            if k in query
        }
    if args.json:
        out: dict[str, Any] = {
            "run_id": result.run.id,
            "name": result.run.name,
            "exit_code": result.exit_code,
            "summary": result.summary,
            "stream": figures,
        }
        sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
        return 0
    from wattspan.cli.tables import print_summary

    print_summary(result.run, result.summary)
    sys.stdout.write(render(figures))
    sys.stdout.flush()
    return 0


def _si(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.2f} "


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f} ms"


def render(f: dict[str, Any]) -> str:
    """The stream figures under the run table, one per line."""
    lat = f["latency_seconds"]
    kind = "event time" if f["latency_kind"] == "event_time" else "processing"
    tasks = f["tasks"]
    n_tasks = sum(tasks.values()) or 1
    split = ", ".join(
        f"{k} {v} ({100 * v / n_tasks:.0f} %, {f['task_seconds'].get(k, 0.0):.2f} s)"
        for k, v in sorted(tasks.items())
    )
    if "gpu" not in tasks:
        split += ", gpu 0"
    e = f["energy"]
    epj = e["events_per_joule"]
    energy = (
        f"{_si(epj)}events/J ({e['joules']:.2f} J, {e['basis']}"
        f"{', estimated' if e.get('estimated') else ''})"
        if epj is not None
        else e["basis"]
    )
    lines = [
        f"stream query {f['query']}: {f['events']:,} events, {f['windows']:,} windows, "
        f"{f['result_rows']:,} result rows in {f['wall_seconds']:.2f} s "
        f"({f['workers']} worker(s), {f['task_size_bytes']:,} B tasks, {f['scheduler']})",
        f"  events/s            {_si(f['events_per_second'])}events/s",
        f"  events/s per core   {_si(f['events_per_second_per_core'])}events/s "
        f"({f['cpu_cores']} CPU core(s))",
        f"  window latency      p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])} "
        f"({kind}, {lat['windows']:,} windows)",
        f"  tasks (CPU/GPU)     {split}",
        f"  events per joule    {energy}",
    ]
    if f.get("rate") is not None:
        lines.append(
            f"  replay rate         target {_si(f['rate'])}events/s, achieved "
            f"{_si(f.get('input_rate_achieved') or 0.0)}events/s"
        )
    if f.get("output"):
        lines.append(f"  results             {f['output']} ({f.get('output_bytes', 0):,} bytes)")
    return "\n".join(lines) + "\n"


def cmd_queries(args: argparse.Namespace) -> int:
    from wattspan.engines.stream.cli_worker import describe
    from wattspan.engines.stream.queries import QUERIES

    rows = [describe(name) for name in QUERIES]
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        return 0
    out = []
    for r in rows:
        ops = "; ".join(r["steps"]) or "-"
        having = f" having {r['having']}" if r["having"] else ""
        keys = ", ".join(r["group_by"]) or "-"
        out.append(
            f"{r['query']:<5} {r['window']}\n"
            f"      input {r['dataset']}: "
            + ", ".join(f"{c} {t}" for c, t in r["schema"].items())
            + f"\n      {ops}; group by {keys}; {', '.join(r['aggregates'])}{having}"
        )
    sys.stdout.write("\n".join(out) + "\n")
    return 0
