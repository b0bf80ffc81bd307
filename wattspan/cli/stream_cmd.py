"""``wattspan stream``: the bundled stream engine's commands.

``stream generate`` writes a benchmark's events; each sub-subcommand adds its parser in an
``_add_<name>`` function below and sets ``handler`` (what ``wattspan.cli.main`` calls), so
``run`` and ``queries`` slot in beside it. numpy, pyarrow and the generators are imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kKmMgGbB]?)\s*$")
DATASET_NAMES = ("ysb", "cm", "sg", "lrb")


def parse_count(text: str) -> int:
    """``50M`` -> 50,000,000; ``1k``, ``2.5M``, ``1G`` (also ``B``), plain ``1000``,
    ``1_000``. The result must be a whole number."""
    m = _COUNT.match(text.replace("_", "").replace(",", ""))
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 1000, 1k, 50M, 1G)")
    number, suffix = m.groups()
    scale = _SUFFIXES[suffix.lower()]
    if "." in number:
        whole, frac = number.split(".")
        value = int(whole or "0") * scale + int(frac) * scale // 10 ** len(frac)
        if int(frac) * scale % 10 ** len(frac):
            raise argparse.ArgumentTypeError(f"not a whole count: {text!r}")
    else:
        value = int(number) * scale
    return value


def _positive_count(text: str) -> int:
    value = parse_count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "stream",
        parents=[common],
        help="the bundled SABER-style stream engine: generate benchmark data, run queries",
        description="Windowed stream queries on columnar batches (YSB, cluster monitoring, "
        "smart grid, Linear Road).",
    )
    ssub = s.add_subparsers(dest="stream_command", metavar="SUBCOMMAND", required=True)
    _add_generate(ssub, common)
    _add_run(ssub, common)
    _add_queries(ssub, common)


def _add_generate(ssub: Any, common: argparse.ArgumentParser) -> None:
    g = ssub.add_parser(
        "generate",
        parents=[common],
        help="write a benchmark's events (seeded) to Parquet or CSV",
        description="Generate DATASET's events with a seed (same seed, same rows) and write "
        "them to FILE chunk by chunk, in bounded memory. For ysb, the ad -> campaign table "
        "goes beside FILE as STEM.ads.SUFFIX. Columns and code tables: "
        "wattspan.engines.stream.datasets.",
    )
    g.add_argument("dataset", choices=DATASET_NAMES, help="ysb, cm, sg or lrb")
    g.add_argument(
        "--events", "-n", type=parse_count, required=True, help="how many (1000, 1k, 50M)"
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (0)")
    g.add_argument(
        "--rate",
        type=_positive_count,
        help="events per second of event time (ysb 100k, cm 2k, sg 2k, lrb 1k)",
    )
    g.add_argument(
        "--chunk-rows",
        type=_positive_count,
        default=1 << 20,
        help="rows per write (and Parquet row group); bounds memory (1Mi)",
    )
    g.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="FILE.parquet (or .pq) or FILE.csv"
    )
    g.set_defaults(handler=cmd_generate)


def _fmt_bytes(n: int) -> str:
    for unit, div in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def ads_path(output: str | os.PathLike[str]) -> Path:
    """Where ``generate ysb -o FILE`` puts the ad -> campaign table: ``STEM.ads.SUFFIX``."""
    p = Path(output)
    return p.with_name(f"{p.stem}.ads{p.suffix}")


def _write_atomic(path: Path, write: Any) -> int:
    """Write through ``write(tmp_path)`` and rename, so a failed run leaves no half file."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # keeps the type
    try:
        result = write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return int(result)


def cmd_generate(args: argparse.Namespace) -> int:
    from wattspan.engines.stream import io
    from wattspan.engines.stream.datasets import generator

    out = Path(args.output)
    try:
        io.kind_of(out)
        io.require_pyarrow()
        params: dict[str, Any] = {} if args.rate is None else {"rate": args.rate}
        gen = generator(args.dataset, seed=args.seed, **params)
    except (ValueError, ImportError) as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        return 2
    if out.is_dir():
        print(f"wattspan: {out} is a directory", file=sys.stderr)
        return 2
    meta = {
        "wattspan.dataset": gen.name,
        "wattspan.seed": str(gen.seed),
        "wattspan.rate": str(gen.rate),
        "wattspan.start": str(gen.start),
        "wattspan.events": str(args.events),
    }
    t0 = time.perf_counter()

    def write_events(tmp: Path) -> int:
        with io.open_sink(tmp, gen.schema, meta) as sink:
            for batch in gen.batches(args.events, chunk_rows=args.chunk_rows):
                sink.write(batch)
        return sink.bytes_written

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        size = _write_atomic(out, write_events)
        extra = ""
        if gen.name == "ysb":
            side = ads_path(out)
            ads = gen.ads  # type: ignore[attr-defined]
            side_size = _write_atomic(side, lambda tmp: io.write_table(tmp, ads))
            extra = (
                f"; ad -> campaign table ({len(ads['ad_id'])} rows): {side} ({side_size:,} bytes)"
            )
    except OSError as exc:
        print(f"wattspan: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    per = size / args.events if args.events else 0.0
    unit = gen.schema.unit
    print(
        f"wrote {args.events:,} {gen.name} rows (seed {gen.seed}, {gen.rate:,} events/s of "
        f"event time, {unit}) to {out}: {size:,} bytes ({_fmt_bytes(size)}, {per:.1f} B/row) "
        f"in {dt:.1f} s{extra}"
    )
    return 0


SCHEDULERS = ("fcfs", "static", "hls")


def parse_size(text: str) -> int:
    """Bytes: ``1M`` (or ``1MiB``) = 1,048,576, ``64k`` = 65,536, plain ``4096``."""
    from wattspan.engines.stream.units import size_bytes  # numpy: only when asked

    try:
        return size_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    try:
        value = float(parse_count(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a rate in events/s: {text!r} (e.g. 100k)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the rate must be positive: {text!r}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"workers must be >= 0 (0: inline), got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _add_run(ssub: Any, common: argparse.ArgumentParser) -> None:
    from wattspan.cli import _interval
    from wattspan.cli.run_parser import STORE_HELP

    r = ssub.add_parser(
        "run",
        parents=[common],
        help="run a shipped query over a file, measured and stored as a wattspan run",
        description="Run QUERY over FILE under the embedded agent `wattspan run` uses: the "
        "query is stored as a run with a stream.query span, spans for a sample of its tasks "
        "and the window-latency histogram (`show`, `compare` and `report` read it). Prints "
        "the run table (stderr), then events/s, events/s per core, window latency p50/p99, "
        "the CPU/GPU task split and events per joule. `wattspan stream queries` lists the "
        "queries; docs/stream.md says what each figure means.",
    )
    r.add_argument("query", help="ysb, cm1, cm2, sg1, sg2, sg3, lrb1 or lrb2")
    r.add_argument(
        "--input",
        "-i",
        required=True,
        metavar="FILE",
        help="events: .parquet (or a directory "
        "of them) or .csv, as `wattspan stream generate` writes them",
    )
    r.add_argument(
        "--ads",
        metavar="FILE",
        help="ysb: the ad -> campaign table (default: STEM.ads.SUFFIX "
        "beside --input, where `generate ysb` puts it)",
    )
    r.add_argument(
        "--workers", "-w", type=_workers, default=2, help="CPU worker threads (2; 0: inline)"
    )
    r.add_argument(
        "--task-size", type=parse_size, default=1 << 20, metavar="BYTES",
        help="input bytes per task (1M; 64k, 16M...)",
    )  # fmt: skip
    r.add_argument("--scheduler", choices=SCHEDULERS, default="fcfs", help="(fcfs)")
    r.add_argument(
        "--gpu", action="store_true", help="add the GPU worker (CuPy; off with one line if none)"
    )
    r.add_argument(
        "--rate", type=_rate, metavar="EVENTS_PER_S",
        help="replay the input at this many events/s (latency is then event-time latency)",
    )  # fmt: skip
    r.add_argument(
        "--task-spans", type=_fraction, default=0.01, metavar="FRACTION",
        help="share of tasks sent as stream.task spans (0.01; 1 = all, 0 = none)",
    )  # fmt: skip
    r.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write the window results to OUT.csv or OUT.parquet",
    )
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    r.add_argument("--store", metavar="PATH", help=STORE_HELP)
    r.add_argument("--name", help="run name (default: stream-QUERY)")
    r.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", type=_tag,
                   help="a tag stored with the run (repeatable)")  # fmt: skip
    r.add_argument("--interval", type=_interval, default=0.1, help="sampling interval, s (0.1)")
    r.add_argument("--config", metavar="FILE", help="agent TOML config (collectors, carbon)")
    r.set_defaults(handler=_cmd_run)


def _tag(text: str) -> tuple[str, str]:
    from wattspan.cli.run_parser import tag

    return tag(text)


def _add_queries(ssub: Any, common: argparse.ArgumentParser) -> None:
    q = ssub.add_parser(
        "queries",
        parents=[common],
        help="list the shipped queries: input schema, operators, window",
        description="The queries `wattspan stream run` knows, as LightSaber's benchmark "
        "applications define them.",
    )
    q.add_argument("--json", action="store_true", help="one JSON object per query")
    q.set_defaults(handler=_cmd_queries)


def _cmd_run(args: argparse.Namespace) -> int:
    from wattspan.cli.stream_run import cmd_run

    if args.query == "ysb" and not args.ads:
        args.ads = str(ads_path(args.input))
    return cmd_run(args)


def _cmd_queries(args: argparse.Namespace) -> int:
    from wattspan.cli.stream_run import cmd_queries

    return cmd_queries(args)
