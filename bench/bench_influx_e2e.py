"""End to end into a real influxd: the exporter vs a writer posting pre-encoded bytes.

Run: ``python bench/bench_influx_e2e.py [--ticks N] [--repeat R] [--batch-size B]
[--fsync POLICY]``

Target (issue 4): points/s through ``InfluxDBExporter`` >= 0.8x a writer that posts
pre-encoded bytes directly.

Both sides, in ONE run of this script, against the SAME influxd 1.x (started by
``tests/servers.py`` on a free loopback port, temporary data dir), with the same data (the
agent ticks of ``bench_influx_encode.py``: 278 points per tick), the same batch size and one
HTTP keep-alive connection each:

  direct     line protocol encoded BEFORE the clock starts, cut into batches of B lines,
             POSTed back to back to ``/write`` with urllib3. Measures what influxd + HTTP can
             take: the ceiling for any client.
  exporter   ``InfluxDBExporter.write(tick)`` for every tick, as the agent calls it (encode,
             append to the disk queue, fsync per ``--fsync``), then ``drain()``; the clock
             runs from the first write to the moment the last batch is confirmed. The
             delivery thread posts while the writer is still writing. This is the figure
             the target is about.
  delivery   the same, but all writes are done before the delivery thread starts and the
             clock covers delivery only: queue read, POST, checkpoint, without encoding
             competing for the CPU.

Every run writes into a fresh database so that both pay the same series-creation cost;
runs alternate (direct, exporter, direct, ...) and the medians are compared. Correctness is
checked after each run: ``SELECT COUNT`` must equal the number of points.

CPU seconds of influxd and of this process are read from /proc for every run: on a small
machine the exporter's encoding competes with influxd for the same cores, and the CPU figures
show when that (not the exporter's design) is the limit. ``--pin`` puts influxd on the first
CPU and this script on the last, as when the server runs on its own machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import urllib3
from _util import machine, proc_cpu_seconds
from bench_influx_encode import make_samples

from tests.servers import InfluxD
from wattspan.agent.exporters.influxdb import InfluxDBExporter, LineEncoder, parse_config
from wattspan.collectors.base import Sample

HOST = "node-17"
POINTS_PER_TICK = 278


def count_points(server: InfluxD, db: str) -> int:
    data = server.query('SELECT COUNT("user_ratio") FROM "cpu"', db=db)
    cpu = data["results"][0]["series"][0]["values"][0][1]
    data = server.query('SELECT COUNT("rss_bytes") FROM "process"', db=db)
    proc = data["results"][0]["series"][0]["values"][0][1]
    return int(cpu + proc)


def run_direct(server: InfluxD, db: str, bodies: list[bytes]) -> float:
    pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
    url = f"{server.url}/write?db={db}&precision=n"
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    t = time.perf_counter()
    for body in bodies:
        r = pool.request("POST", url, body=body, headers=headers)
        if r.status != 204:
            raise RuntimeError(f"direct write failed: {r.status} {r.data[:200]!r}")
    elapsed = time.perf_counter() - t
    pool.clear()
    return elapsed


def run_exporter(
    server: InfluxD,
    db: str,
    ticks: list[list[Sample]],
    batch_size: int,
    fsync: str,
    tmp: Path,
    *,
    prefill: bool = False,
) -> float:
    """Seconds from the first ``write`` to the last confirmed batch; with ``prefill``, all
    writes happen before the delivery thread starts and the clock covers delivery only."""
    cfg = parse_config(
        {
            "url": server.url,
            "database": db,
            "batch_size": batch_size,
            "flush_interval": 0.05,
            "fsync": int(fsync) if fsync.isdigit() else fsync,
            "queue_dir": str(tmp / f"queue-{db}"),
        },
        state_dir=tmp,
        env={},
    )
    exp = InfluxDBExporter(cfg, host=HOST, start=not prefill)
    try:
        if prefill:
            for tick in ticks:
                exp.write(tick)
            t = time.perf_counter()
            exp.start()
        else:
            t = time.perf_counter()
            for tick in ticks:
                exp.write(tick)
        if not exp.drain(600):
            raise RuntimeError(f"exporter did not drain: {exp.stats()}")
        elapsed = time.perf_counter() - t
        st = exp.stats()
        n = sum(len(x) for x in ticks)
        if st["sent_records_total"] != n:
            raise RuntimeError(f"exporter sent {st['sent_records_total']} of {n}: {st}")
    finally:
        exp.close(5)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ticks", type=int, default=720, help="agent ticks (278 points each)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--fsync", default="batch", help='"batch", "none" or milliseconds')
    ap.add_argument("--pin", action="store_true", help="influxd on CPU 0, this script on the last")
    args = ap.parse_args()

    samples = make_samples(args.ticks)
    ticks = [samples[i : i + POINTS_PER_TICK] for i in range(0, len(samples), POINTS_PER_TICK)]
    n = len(samples)
    lines: list[str] = []
    LineEncoder(global_tags={"host": HOST}).encode(samples, lines)
    bodies = [
        ("\n".join(lines[i : i + args.batch_size]) + "\n").encode()
        for i in range(0, len(lines), args.batch_size)
    ]

    # The agent runs with its set-up heap frozen and relaxed GC thresholds (tune_gc): measure
    # the exporter the way it runs there. The direct writer allocates little either way.
    from wattspan.agent.daemon import tune_gc

    tune_gc()
    kinds = ("direct", "exporter", "delivery")
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    me = os.getpid()
    with tempfile.TemporaryDirectory(prefix="wattspan-bench-") as d:
        tmp = Path(d)
        server = InfluxD(tmp / "influxd")
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(pid, {cpus[0]})
            os.sched_setaffinity(me, {cpus[-1]})
        try:
            for r in range(args.repeat):
                for kind in kinds:
                    db = f"{kind}{r}"
                    server.create_database(db)
                    c0 = (proc_cpu_seconds(pid), proc_cpu_seconds(me))
                    if kind == "direct":
                        elapsed = run_direct(server, db, bodies)
                    else:
                        elapsed = run_exporter(
                            server,
                            db,
                            ticks,
                            args.batch_size,
                            args.fsync,
                            tmp,
                            prefill=kind == "delivery",
                        )
                    c1 = (proc_cpu_seconds(pid), proc_cpu_seconds(me))
                    runs[kind].append(elapsed)
                    if kind != "delivery":  # its CPU includes the untimed writes
                        cpu[kind].append((c1[0] - c0[0], c1[1] - c0[1]))
                    assert count_points(server, db) == 264 * args.ticks, f"{kind}: points missing"
        finally:
            server.stop()

    rate = {k: n / statistics.median(v) for k, v in runs.items()}
    where = (
        "influxd on the first CPU, this script on the last"
        if args.pin
        else "influxd and this script share all CPUs"
    )
    print(f"machine: {machine()}; {where}")
    print(
        f"data: {n} points ({args.ticks} ticks x {POINTS_PER_TICK}), batches of "
        f"{args.batch_size} lines, exporter fsync={args.fsync}, {args.repeat} runs each"
    )
    print(f"{'writer':<46}{'points/s':>10}{'influxd cpu s':>15}{'client cpu s':>14}   runs (s)")
    labels = {
        "direct": "direct: pre-encoded bytes -> /write",
        "exporter": "exporter: write(tick) -> queue -> /write",
        "delivery": "exporter, delivery only (queue prefilled)",
    }
    for kind in kinds:
        if cpu[kind]:
            srv = f"{statistics.median(c[0] for c in cpu[kind]):>15.2f}"
            cli = f"{statistics.median(c[1] for c in cpu[kind]):>14.2f}"
        else:
            srv, cli = f"{'-':>15}", f"{'-':>14}"
        print(
            f"{labels[kind]:<46}{rate[kind]:>10,.0f}{srv}{cli}   "
            + " ".join(f"{x:.2f}" for x in runs[kind])
        )
    ratio = rate["exporter"] / rate["direct"]
    verdict = "met" if ratio >= 0.8 else "missed"
    print(f"ratio exporter / direct: {ratio:.2f}x (target >= 0.8x: {verdict})")
    print(f"ratio delivery only / direct: {rate['delivery'] / rate['direct']:.2f}x")
    ncpu = 2 if args.pin else len(os.sched_getaffinity(0))
    need = statistics.median(c[0] + c[1] for c in cpu["exporter"])
    print(
        f"the exporter run needs {need:.2f} CPU s in total (influxd + client): on {ncpu} CPUs "
        f">= {need / ncpu:.2f} s of wall time, measured {statistics.median(runs['exporter']):.2f} s"
    )


if __name__ == "__main__":
    main()
