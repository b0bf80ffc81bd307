"""The Spark integration's costs: conversion rate and instrumentation overhead.

Run: ``python bench/bench_spark.py [--rounds R] [--tasks N] [--rows M]``

1. **Instrumentation overhead** on a multi-stage job (a range, a group-by, a join and a
   sort: four stages with shuffles), in one process: sessions alternate between
   *plain* (``spark.eventLog.enabled=false``) and *instrumented*
   (``wattspan.engines.spark.instrument``: event log written and tailed, spans built and
   sent over OTLP/gRPC to a receiver in another process), ``--rounds`` of each; each session
   runs the job once to warm up, then twice timed (the faster counts); a first, untimed
   session warms the JVM up. Reported: median wall time of the timed
   jobs, ratio instrumented/plain. Target: at most 1.03x.
2. **Task events converted per second** on one core: the instrumented run's own event log,
   its ``TaskEnd`` lines replicated to ``--tasks`` (fresh task ids, inside the real stage,
   job and application events), read by the parser, built into spans with their stage
   statistics and skew, and batched by the monitor's sender (``SpanSender``: its per-span
   bookkeeping, and the time-based flush checked every 1,000 lines, more often than the
   tailer's polls would) into OTLP requests of up to 512 spans, encoded and serialised (not
   sent). CPU time of this process. Target: at least 10,000 task events/s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import machine, verdict

RECEIVER = r"""
import sys, threading
from wattspan.agent.receiver import OtlpReceiver
class Null:
    n = 0
    def on_spans(self, spans): Null.n += len(spans)
    def on_metrics(self, points): pass
    def on_logs(self, logs): pass
r = OtlpReceiver(Null(), port=0); r.start()
print(r.port, flush=True)
sys.stdin.read()
print(Null.n, flush=True)
"""


def _job(spark: object, rows: int) -> float:
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    df = spark.range(0, rows, 1, 8)  # type: ignore[attr-defined]
    agg = df.groupBy((F.col("id") % 1000).alias("k")).agg(F.sum("id").alias("s"))
    joined = df.select((F.col("id") % 1000).alias("k"), "id").join(agg, "k")
    joined.orderBy("s").select(F.sum("id")).collect()
    return time.perf_counter() - t0


def _session(events: Path | None, endpoint: str) -> tuple[object, object]:
    from pyspark.sql import SparkSession

    from wattspan.engines.spark.session import instrument

    b = SparkSession.builder.master("local[2]").appName("bench-spark")
    for k, v in {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.enabled": "false",
    }.items():
        b = b.config(k, v)
    handle = None
    if events is None:
        b = b.config("spark.eventLog.enabled", "false")
    else:
        b = instrument(b, event_log_dir=events, endpoint=endpoint, poll_s=0.25)
        handle = b._wattspan
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, handle


def overhead(rounds: int, rows: int, work: Path) -> tuple[dict[str, list[float]], Path, int]:
    rec = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert rec.stdout is not None and rec.stdin is not None
    endpoint = f"http://127.0.0.1:{int(rec.stdout.readline())}"
    walls: dict[str, list[float]] = {"plain": [], "instrumented": []}
    last_log = work
    # The JVM's first session pays class loading and JIT for all that follow: not timed.
    spark, _ = _session(None, endpoint)
    _job(spark, rows)
    spark.stop()  # type: ignore[attr-defined]
    for r in range(rounds):
        order = ["plain", "instrumented"] if r % 2 == 0 else ["instrumented", "plain"]
        for mode in order:
            events = work / f"events-{r}" if mode == "instrumented" else None
            spark, handle = _session(events, endpoint)
            _job(spark, rows)  # warm-up
            walls[mode].append(min(_job(spark, rows) for _ in range(2)))
            spark.stop()  # type: ignore[attr-defined]
            if handle is not None:
                handle.stop(wait_s=30)  # type: ignore[attr-defined]
                assert handle.monitor.dropped == 0  # type: ignore[attr-defined]
                assert events is not None
                last_log = next(p for p in events.iterdir() if not p.name.startswith("."))
    rec.stdin.close()
    received = int(rec.stdout.readline())
    rec.wait(10)
    return walls, last_log, received


def conversion(log: Path, tasks: int) -> tuple[int, float, float]:
    from wattspan.engines.spark.eventlog import EventLogParser
    from wattspan.engines.spark.sender import EndpointRouter, SpanSender
    from wattspan.engines.spark.spans import SpanBuilder, encode
    from wattspan.engines.spark.tail import log_files

    lines: list[bytes] = []
    for f in log_files(log):
        lines.extend(f.read_bytes().splitlines())
    ends = [
        i for i, line in enumerate(lines) if line.startswith(b'{"Event":"SparkListenerTaskEnd"')
    ]
    template = [lines[i] for i in ends]
    # Replicate inside the last stage that had task ends: before its StageCompleted line.
    at = ends[-1] + 1
    task_id = re.compile(rb'"Task ID":\d+')
    copies = [
        task_id.sub(b'"Task ID":%d' % (10_000_000 + i), template[i % len(template)])
        for i in range(tasks)
    ]
    feed = lines[:at] + copies + lines[at:]

    class Encoding(SpanSender):
        """The sender with its export replaced by encoding and serialising the request."""

        requests = 0

        def _send(self, ep: str, spans: list[Any]) -> bool:
            encode(spans, self.resource).SerializeToString()
            Encoding.requests += 1
            return True

    sender = Encoding({"service.name": "bench"}, EndpointRouter("http://127.0.0.1:1", env={}))
    builder = SpanBuilder(sender.add)
    parser = EventLogParser(builder)
    c0, w0 = time.process_time(), time.perf_counter()
    for i, line in enumerate(feed):
        parser.feed(line)
        if i % 1000 == 0:
            sender.flush_due()
    parser.close()
    sender.flush()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert Encoding.requests >= builder.counts["task"] / 512
    return builder.counts["task"], cpu, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--rows", type=int, default=3_000_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        walls, log, received = overhead(args.rounds, args.rows, Path(tmp))
        plain = statistics.median(walls["plain"])
        inst = statistics.median(walls["instrumented"])
        ratio = inst / plain
        print("\n1. instrumentation overhead (multi-stage job, local[2])")
        print(f"   plain        wall s: {', '.join(f'{w:.3f}' for w in walls['plain'])}")
        print(f"   instrumented wall s: {', '.join(f'{w:.3f}' for w in walls['instrumented'])}")
        print(f"   median {inst:.3f} s vs {plain:.3f} s: {ratio:.3f}x (target <= 1.03x: ", end="")
        print(f"{verdict(ratio, 1.03)}); spans received by the agent: {received}")
        n, cpu, wall = conversion(log, args.tasks)
        rate = n / cpu
        print(
            "\n2. task events converted (parse, spans, stage stats, sender, OTLP encode), one core"
        )
        print(f"   {n} task events in {cpu:.2f} s CPU ({wall:.2f} s wall): {rate:,.0f} tasks/s")
        print(f"   ({1e6 / rate:.1f} µs a task; target >= 10,000/s: {verdict(10_000 / rate, 1.0)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
