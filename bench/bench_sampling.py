"""Sampling cost: wattspan's CPU time per tick next to node_exporter's CPU time per scrape.

Run: ``python bench/bench_sampling.py [--ticks N] [--scrapes M] [--gap S] [--gzip]``

Target (the issue): a wattspan sampling tick with every collector on costs at most 0.5x the
CPU time Debian's ``prometheus-node-exporter`` spends answering one ``/metrics`` scrape on the
same machine.

What is measured, all in ONE run of this script, on the same machine, one after the other:

  collectors tick  ``Scheduler.tick(force=True)`` over the collectors ``build_collectors``
               makes from the default config (cpu with per-core, memory, process watching this
               process, node_processes reading every process on the node, rapl/nvml when
               present, the power model when RAPL is absent), emitting
               into a ``Pipeline`` with no sinks. CPU = ``time.process_time()`` of this
               process (no other thread runs while measuring) / N.
  agent tick   the daemon's real tick: an ``Agent`` from the default config (store sink in a
               temporary SQLite file, span-ingest sample ring), receiver and HTTP not started.
  agent tick + generate_latest  the same plus rendering the registry the agent's
               ``MetricsServer`` serves: what exposing the latest samples costs.
  HTTP scrape  a real ``wattspan agent`` subprocess (``--interval 3600 --no-store``: it ticks
               once at start, then only serves) scraped over HTTP exactly like node_exporter
               and measured the same way from /proc: render + HTTP serving per scrape.
  node_exporter  ``prometheus-node-exporter --web.listen-address=127.0.0.1:PORT`` (its default
               collectors), scraped M times; CPU = utime+stime of its process from
               /proc/PID/stat before/after, minus the CPU it burns when idle over the same wall
               time (idle blocks alternate with scrape blocks), / M.

``--gap`` sleeps between consecutive ticks and between consecutive scrapes alike, so neither
side runs back-to-back with hot caches more than the other. ``--gzip`` asks both HTTP servers
for gzip, as Prometheus does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    CLK_TCK,
    count_series,
    fmt_ms,
    free_port,
    http_get,
    machine,
    proc_cpu_seconds,
    running,
    verdict,
    wattspan_cmd,
)

TARGET = 0.5


@dataclass
class HttpCost:
    per_scrape: float  # CPU seconds per scrape, idle subtracted
    idle_per_second: float  # CPU seconds per wall second when not scraped
    wall_per_scrape: float
    body_bytes: int
    series: int


def measure_http(pid: int, url: str, scrapes: int, rounds: int, gap: float, gzip: bool) -> HttpCost:
    """CPU that process ``pid`` spends per GET of ``url``, net of its idle background CPU."""
    for _ in range(5):  # warm-up: first scrapes allocate, JIT-free but cache-cold
        body = http_get(url, gzip=gzip)
    per_round = max(scrapes // rounds, 1)
    busy_cpu = idle_cpu = busy_wall = 0.0
    done = 0
    for _ in range(rounds):
        c0, w0 = proc_cpu_seconds(pid), time.perf_counter()
        for _ in range(per_round):
            body = http_get(url, gzip=gzip)
            if gap:
                time.sleep(gap)
        w1 = time.perf_counter()
        c1 = proc_cpu_seconds(pid)
        busy_cpu += c1 - c0
        busy_wall += w1 - w0
        done += per_round
        # Idle block of the same wall length: the process's background CPU (Go runtime,
        # timers, the agent's own sampling thread) with no scrapes.
        i0 = proc_cpu_seconds(pid)
        time.sleep(w1 - w0)
        idle_cpu += proc_cpu_seconds(pid) - i0
    return HttpCost(
        per_scrape=max(busy_cpu - idle_cpu, 0.0) / done,
        idle_per_second=idle_cpu / busy_wall if busy_wall else 0.0,
        wall_per_scrape=busy_wall / done,
        body_bytes=len(body),
        series=count_series(body),
    )


def measure_node_exporter(
    binary: str, scrapes: int, rounds: int, gap: float, gzip: bool
) -> HttpCost:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with running([binary, f"--web.listen-address=127.0.0.1:{port}"], url) as proc:
        return measure_http(proc.pid, url, scrapes, rounds, gap, gzip)


def measure_agent_http(scrapes: int, rounds: int, gap: float, gzip: bool) -> HttpCost:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTSPAN_")}
    env["WATTSPAN_OTLP__ENABLED"] = "false"
    argv = [
        *wattspan_cmd(),
        "--log-level",
        "warning",
        "agent",
        "--interval",
        "3600",
        "--metrics-port",
        str(port),
        "--otlp-port",
        "0",
        "--no-store",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_STATE_HOME"] = tmp
        with running(argv, url, env) as proc:
            return measure_http(proc.pid, url, scrapes, rounds, gap, gzip)


def _agent_path(tmp: str, render: bool):  # -> (scheduler, registry | None, closer)
    """The daemon's own tick: an ``Agent`` with its store sink, span ingest ring and
    exporters as configured by default, its OTLP receiver and HTTP server not started."""
    from wattspan.agent.config import load_config
    from wattspan.agent.daemon import Agent

    config = load_config(None, environ={})
    config["otlp"]["enabled"] = False
    agent = Agent(config, store_path=Path(tmp) / "bench.db", serve_metrics=render)
    registry = agent.metrics.registry if agent.metrics is not None else None

    def close() -> None:
        agent.stop(exit_code=0)
        agent.close_store()

    return agent.scheduler, registry, close


def _collectors_path():  # -> (scheduler, None, closer)
    """Sampling alone: the collectors ``build_collectors`` makes from the default config,
    emitting into a ``Pipeline`` without sinks."""
    from wattspan.agent.config import load_config
    from wattspan.agent.pipeline import Pipeline
    from wattspan.agent.scheduler import Scheduler
    from wattspan.collectors.registry import build_collectors

    config = load_config(None, environ={})
    pipeline = Pipeline([])
    scheduler = Scheduler(build_collectors(config.sections), 1.0, pipeline.emit)
    return scheduler, None, scheduler.close


def measure_ticks(ticks: int, gap: float, path: str) -> tuple[float, dict]:
    """CPU seconds per tick of ``path``: ``collectors``, ``agent`` or ``agent+render``."""
    from prometheus_client import generate_latest

    with tempfile.TemporaryDirectory(prefix="wattspan-bench-") as tmp:
        if path == "collectors":
            scheduler, registry, close = _collectors_path()
        else:
            scheduler, registry, close = _agent_path(tmp, render=path == "agent+render")
        body = b""
        for _ in range(5):
            scheduler.tick(force=True)
            if registry is not None:
                body = generate_latest(registry)
        gc.collect()
        cpu = 0.0
        samples = 0
        for _ in range(ticks):
            c0 = time.process_time()
            out = scheduler.tick(force=True)
            if registry is not None:
                body = generate_latest(registry)
            cpu += time.process_time() - c0
            samples = len(out)
            if gap:
                time.sleep(gap)
        info = {
            "collectors": ", ".join(c.name for c in scheduler.collectors),
            "samples": samples,
            "per_collector_wall": {
                name: st["seconds_total"] / (ticks + 5) for name, st in scheduler.stats().items()
            },
            "series": count_series(body) if body else 0,
            "body_bytes": len(body),
        }
        close()
    return cpu / ticks, info


@contextlib.contextmanager
def extra_processes(n: int) -> Iterator[None]:
    """``n`` sleeping children of this script, to show how each side scales with the number
    of processes on the node. The ticks are measured in a worker subprocess (a sibling of
    these), so they are not in the tree its process collector watches."""
    procs = [
        subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def ticks_in_worker(ticks: int, gap: float, path: str) -> tuple[float, dict]:
    """Runs :func:`measure_ticks` in a fresh interpreter: its process collector then
    watches that interpreter only, as the daemon watches itself."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", path, "--ticks", str(ticks), "--gap", str(gap)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {path} failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["cpu_per_tick"]), result["info"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ticks", type=int, default=1000, help="wattspan ticks per variant (1000)")
    ap.add_argument("--scrapes", type=int, default=300, help="HTTP scrapes per server (300)")
    ap.add_argument("--rounds", type=int, default=5, help="scrape/idle block pairs (5)")
    ap.add_argument("--gap", type=float, default=0.01, help="sleep between ticks/scrapes, s")
    ap.add_argument("--gzip", action="store_true", help="request gzip like Prometheus does")
    ap.add_argument(
        "--extra-procs",
        type=int,
        default=0,
        help="start this many idle processes first (shows scaling with the process count)",
    )
    ap.add_argument(
        "--node-exporter",
        default=shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter",
    )
    ap.add_argument(
        "--worker", choices=["collectors", "agent", "agent+render"], help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.worker:
        cpu, info = measure_ticks(args.ticks, args.gap, args.worker)
        print(json.dumps({"cpu_per_tick": cpu, "info": info}))
        return 0

    print(f"machine: {machine()}")
    with extra_processes(args.extra_procs):
        nprocs = sum(1 for d in os.listdir("/proc") if d.isdigit())
        print(f"processes on the node: {nprocs}; /proc CPU time resolution {1e3 / CLK_TCK:.0f} ms")
        tick, info = ticks_in_worker(args.ticks, args.gap, "collectors")
        atick, _ = ticks_in_worker(args.ticks, args.gap, "agent")
        arender, rinfo = ticks_in_worker(args.ticks, args.gap, "agent+render")
        print(f"wattspan collectors: {info['collectors']} ({info['samples']} samples per tick)")
        print(
            "  wall per collector per tick: "
            + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in info["per_collector_wall"].items())
        )
        agent = measure_agent_http(args.scrapes, args.rounds, args.gap, args.gzip)
        if not os.path.exists(args.node_exporter):
            print(f"node_exporter not found at {args.node_exporter}: no baseline, no ratio")
            return 0
        ne = measure_node_exporter(
            args.node_exporter, args.scrapes, args.rounds, args.gap, args.gzip
        )

    print()
    print(f"{'path':46} {'CPU per op':>12} {'ratio':>7}  body")
    rows = [
        ("collectors tick (sampling only)", tick, ""),
        ("agent tick (+ store sink, span ingest ring)", atick, ""),
        (
            "agent tick + generate_latest",
            arender,
            f"{rinfo['series']} series, {rinfo['body_bytes']} B",
        ),
        ("  of which generate_latest", arender - atick, ""),
        (
            "agent process: HTTP scrape (render+serve)",
            agent.per_scrape,
            f"{agent.series} series, {agent.body_bytes} B",
        ),
        ("agent tick + HTTP scrape", atick + agent.per_scrape, ""),
        (
            "node_exporter: HTTP scrape",
            ne.per_scrape,
            f"{ne.series} series, {ne.body_bytes} B",
        ),
    ]
    for name, cpu, note in rows:
        print(f"{name:46} {fmt_ms(cpu):>12} {cpu / ne.per_scrape:7.3f}x  {note}")
    print(
        f"idle background CPU: node_exporter {ne.idle_per_second * 1e3:.2f} ms/s, "
        f"wattspan agent (interval 3600, no OTLP) {agent.idle_per_second * 1e3:.2f} ms/s"
    )
    print()
    for label, value in (
        ("collectors tick / node_exporter scrape", tick),
        ("agent tick / node_exporter scrape", atick),
        ("agent tick+generate_latest / node_exporter scrape", arender),
        ("agent tick+HTTP scrape / node_exporter scrape", atick + agent.per_scrape),
    ):
        r = value / ne.per_scrape
        print(f"ratio {label:50} {r:6.3f}x  (target <= {TARGET}x: {verdict(r, TARGET)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
