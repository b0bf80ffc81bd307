"""The process ``wattspan stream run`` measures: one query over a file, instrumented.

    python -m wattspan.engines.stream.cli_worker ysb --input ysb.parquet --result out.json

``wattspan stream run`` starts this module as the command of the embedded agent
(``wattspan.agent.runner.run_command``, the same path as ``wattspan run``), so the run's
time, CPU and energy are measured exactly as for any program, and the ``stream.query`` /
``stream.task`` spans and the latency histogram (:mod:`.instrument`) arrive at that agent.
The stream figures go to ``--result`` as one JSON object for the parent to print. A bad
input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from .datasets import DATASETS
from .errors import StreamError
from .instrument import DEFAULT_TASK_SAMPLE, run_instrumented
from .queries import QUERIES
from .query import Query
from .schema import Schema

#: The dataset (``wattspan stream generate`` name) each shipped query reads.
DATASET_OF = {
    "ysb": "ysb",
    "cm1": "cm",
    "cm2": "cm",
    "sg1": "sg",
    "sg2": "sg",
    "sg3": "sg",
    "lrb1": "lrb",
    "lrb2": "lrb",
}
ADS_SCHEMA = {"ad_id": np.dtype(np.int32), "campaign_id": np.dtype(np.int64)}
EXIT_BAD_INPUT = 2


def schema_of(query: str) -> Schema:
    """The input schema of shipped query ``query``: its dataset's."""
    return DATASETS[DATASET_OF[query]].schema


def build_query(name: str, ads: str | os.PathLike[str] | None = None) -> Query:
    """Shipped query ``name``; YSB joins the ads table at ``ads``."""
    if name not in QUERIES:
        raise StreamError(f"unknown query {name!r}; choose one of {', '.join(QUERIES)}")
    if name != "ysb":
        return QUERIES[name]()
    if ads is None:
        raise StreamError("ysb needs the ad -> campaign table (--ads FILE)")
    p = Path(ads)
    if not p.exists():
        raise StreamError(
            f"{p}: no such file (ysb's ad -> campaign table; `wattspan stream generate ysb` "
            "writes it beside the events, or give --ads FILE)"
        )
    table = io.read_table(p, ADS_SCHEMA)
    return QUERIES["ysb"](table["ad_id"], table["campaign_id"])


def open_input(
    query: str, path: str | os.PathLike[str], batch_rows: int = io.DEFAULT_BATCH_ROWS
) -> Iterator[dict[str, np.ndarray]]:
    """The input's batches, its first one already read: a missing file, a missing column or
    another dtype fails here, before any work (``StreamError``, ``OSError``,
    ``ValueError``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    io.kind_of(p)
    batches = io.read_batches(p, schema_of(query), batch_rows)
    try:
        first = next(batches)
    except StopIteration:
        return iter(())

    def chained() -> Iterator[dict[str, np.ndarray]]:
        yield first
        yield from batches

    return chained()


def check_input(query: str, path: str | os.PathLike[str], ads: str | None) -> None:
    """What the parent checks before it starts a run (reads the first small batch)."""
    build_query(query, ads if query == "ysb" else None)
    for _ in open_input(query, path, batch_rows=1024):
        break


def worker_argv(
    args: Any, input_path: str | os.PathLike[str], ads: str | None, result: Path, **extra: Any
) -> list[str]:
    """The command line that runs this module on ``args`` (``query``, ``workers``,
    ``task_size``, ``scheduler``, ``task_spans``, ``rate``, ``gpu``: the options of
    ``wattspan stream run`` and of an experiment's stream kind); ``output`` in ``extra``
    writes the results."""
    cmd = [
        sys.executable,
        # -P: the working directory is not put first on sys.path, so a checkout's `wattspan/`
        # folder (the root package alone, without the mapped subpackages) run from its top
        # level does not shadow the installed package.
        "-P",
        "-m",
        __name__,
        args.query,
        "--input",
        os.path.abspath(input_path),
        "--workers",
        str(args.workers),
        "--task-size",
        str(args.task_size),
        "--scheduler",
        args.scheduler,
        "--task-sample",
        repr(args.task_spans),
        "--result",
        str(result),
    ]
    if ads is not None:
        cmd += ["--ads", os.path.abspath(ads)]
    if args.rate is not None:
        cmd += ["--rate", repr(args.rate)]
    if args.gpu:
        cmd.append("--gpu")
    if extra.get("output"):
        cmd += ["--output", os.path.abspath(extra["output"])]
    return cmd


def run_tags(args: Any) -> dict[str, str]:
    """The tags a stream run is stored with (``wattspan stream run`` and an experiment's
    stream kind alike, so that ``wattspan runs --tag query=ysb`` finds both)."""
    tags = {
        "engine": "stream",
        "query": args.query,
        "workers": str(args.workers),
        "scheduler": args.scheduler,
        "task_size": str(args.task_size),
    }
    if args.rate is not None:
        tags["rate"] = f"{args.rate:g}"
    return tags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m wattspan.engines.stream.cli_worker")
    ap.add_argument("query", choices=sorted(QUERIES))
    ap.add_argument("--input", required=True)
    ap.add_argument("--ads", help="ysb: the ad -> campaign table")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--task-size", type=int, default=1 << 20)
    ap.add_argument("--scheduler", default="fcfs")
    ap.add_argument("--rate", type=float)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--task-sample", type=float, default=DEFAULT_TASK_SAMPLE)
    ap.add_argument("--batch-rows", type=int, default=io.DEFAULT_BATCH_ROWS)
    ap.add_argument("--output", "-o")
    ap.add_argument("--result", help="write the stream figures here as one JSON object")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    query = build_query(args.query, args.ads)
    p = Path(args.input)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    # Read lazily, inside the query span: reading the input is part of the query's cost
    # (the parent already checked the first batch). Not so pyarrow's one-off start-up: its
    # dtype mapping (the schema check) imports pandas on first use, 0.2 s.
    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401
    batches = io.read_batches(p, schema_of(args.query), args.batch_rows)
    if args.workers > 0:
        from .malloc import keep_freed_memory

        keep_freed_memory()  # this process is the engine's alone (malloc.py says why)
    plan = query.compile()
    sink = tmp = None
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
        sink = io.open_sink(tmp, {k: v.dtype for k, v in plan.empty_result().items()})
    try:
        result = run_instrumented(
            plan,
            batches,
            workers=args.workers,
            task_size=args.task_size,
            scheduler=args.scheduler,
            gpu=args.gpu,
            rate=args.rate,
            task_sample=args.task_sample,
            on_result=(lambda wb: sink.write(wb.columns)) if sink is not None else None,
        )
        if sink is not None and tmp is not None:
            sink.close()
            os.replace(tmp, args.output)
            result.figures["output"] = str(args.output)
            result.figures["output_bytes"] = sink.bytes_written
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return result.figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The engine's info lines (the GPU worker off, and why) are for the user of this command.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("wattspan: %(message)s"))
    engine_log = logging.getLogger("wattspan.engines.stream")
    engine_log.addHandler(handler)
    engine_log.setLevel(logging.INFO)
    try:
        figures = run(args)
    except (StreamError, ValueError, OSError, ImportError) as exc:
        msg = str(exc) if not isinstance(exc, OSError) or not exc.strerror else None
        if msg is None:
            name = exc.filename or ""  # type: ignore[union-attr]
            msg = f"{name}: {exc.strerror}" if name else str(exc.strerror)
        print(f"wattspan: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.result:
        with open(args.result, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def describe(name: str) -> dict[str, Any]:
    """What ``wattspan stream queries`` lists about shipped query ``name``."""
    builder = QUERIES[name]
    q = builder(np.arange(1), np.arange(1)) if name == "ysb" else builder()
    win = q.window_spec
    assert win is not None
    if win.rows:
        window = f"ROWS {win.size} SLIDE {win.slide}"
    else:
        window = f"RANGE {win.size} SLIDE {win.slide} on {win.on}"
    steps = []
    for kind, arg in q.steps:
        if kind == "where":
            steps.append(f"where {arg}")
        elif kind == "join":
            _table, on, cols = arg
            steps.append(f"join {on} -> {', '.join(cols)}")
        elif kind == "derive":
            steps.append(", ".join(f"{k} = {v}" for k, v in arg.items()))
        else:
            steps.append(f"select {', '.join(arg[0])}")
    aggs = [f"{n} = {a.fn}({a.column or ''})" for n, a in q.aggs]
    return {
        "query": name,
        "dataset": DATASET_OF[name],
        "schema": {c: str(np.dtype(dt)) for c, dt in q.schema.items()},
        "window": window,
        "tumbling": win.tumbling,
        "steps": steps,
        "group_by": list(q.keys),
        "aggregates": aggs,
        "having": None if q.having_expr is None else str(q.having_expr),
    }
