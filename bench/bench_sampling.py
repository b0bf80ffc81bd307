"""Sampling cost: wattspan's CPU time per tick next to node_exporter's CPU time per scrape.

Run: ``python bench/bench_sampling.py [--ticks N] [--scrapes M] [--gap S] [--gzip]``

Target (the issue): a wattspan sampling tick with every collector on costs at most 0.5x the
CPU time Debian's ``prometheus-node-exporter`` spends answering one ``/metrics`` scrape on the
same machine.

What is measured, all in ONE run of this script, on the same machine, one after the other:

  tick         ``Scheduler.tick(force=True)`` over the collectors ``build_collectors`` makes
               from the default config (cpu with per-core, memory, process watching this
               process, rapl/nvml when present, the power model when RAPL is absent), emitting
               into a ``Pipeline`` with no sinks. CPU = ``time.process_time()`` of this
               process (single-threaded while measuring) / N.
  tick+render  the same plus ``generate_latest`` on the registry the agent's
               ``MetricsServer`` serves, i.e. what the latest samples cost to expose.
  tick+store   the same as ``tick`` with the embedded SQLite store as a sink (the daemon's
               default; one transaction per second of wall time).
  agent http   a real ``wattspan agent`` subprocess (``--interval 3600 --no-store``: it ticks
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
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    CLK_TCK,
    fmt_ms,
    free_port,
    machine,
    proc_cpu_seconds,
    verdict,
    wait_http,
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


def _get(url: str, gzip: bool) -> bytes:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


def _series(body: bytes) -> int:
    try:
        import gzip as _gz

        text = _gz.decompress(body) if body[:2] == b"\x1f\x8b" else body
    except OSError:
        text = body
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def measure_http(pid: int, url: str, scrapes: int, rounds: int, gap: float, gzip: bool) -> HttpCost:
    """CPU that process ``pid`` spends per GET of ``url``, net of its idle background CPU."""
    for _ in range(5):  # warm-up: first scrapes allocate, JIT-free but cache-cold
        body = _get(url, gzip)
    per_round = max(scrapes // rounds, 1)
    busy_cpu = idle_cpu = busy_wall = 0.0
    done = 0
    for _ in range(rounds):
        c0, w0 = proc_cpu_seconds(pid), time.perf_counter()
        for _ in range(per_round):
            body = _get(url, gzip)
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
        series=_series(body),
    )


def measure_node_exporter(
    binary: str, scrapes: int, rounds: int, gap: float, gzip: bool
) -> HttpCost:
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url)
        return measure_http(proc.pid, url, scrapes, rounds, gap, gzip)
    finally:
        proc.terminate()
        proc.wait(10)


def measure_agent_http(scrapes: int, rounds: int, gap: float, gzip: bool) -> HttpCost:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTSPAN_")}
    env["WATTSPAN_OTLP__ENABLED"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_STATE_HOME"] = tmp
        proc = subprocess.Popen(
            [
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
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_http(url)
            return measure_http(proc.pid, url, scrapes, rounds, gap, gzip)
        finally:
            proc.terminate()
            proc.wait(10)


def measure_ticks(ticks: int, gap: float, render: bool, store: bool) -> tuple[float, dict]:
    """CPU seconds per tick (optionally + a /metrics render, + the SQLite store sink)."""
    from prometheus_client import generate_latest

    from wattspan.agent.config import load_config
    from wattspan.agent.metrics import AgentCollector, MetricsServer
    from wattspan.agent.pipeline import Pipeline
    from wattspan.agent.scheduler import Scheduler
    from wattspan.collectors.registry import build_collectors

    config = load_config(None, environ={})
    collectors = build_collectors(config.sections)
    tmp = tempfile.TemporaryDirectory()
    sinks = []
    db = None
    if store:
        from wattspan.agent.store import Run, Store, StoreSink

        db = Store(Path(tmp.name) / "bench.db")
        run = Run(id="bench", name="bench", host="bench", start_ts=time.time(), kind="agent")
        db.create_run(run)
        sinks.append(StoreSink(db, run.id))
    pipeline = Pipeline(sinks)
    scheduler = Scheduler(collectors, config["agent"]["interval"], pipeline.emit)
    registry = MetricsServer(AgentCollector(pipeline, scheduler)).registry
    for _ in range(5):
        scheduler.tick(force=True)
        if render:
            body = generate_latest(registry)
    gc.collect()
    cpu = 0.0
    samples = 0
    for _ in range(ticks):
        c0 = time.process_time()
        out = scheduler.tick(force=True)
        if render:
            body = generate_latest(registry)
        cpu += time.process_time() - c0
        samples = len(out)
        if gap:
            time.sleep(gap)
    info = {
        "collectors": ", ".join(c.name for c in collectors),
        "samples": samples,
        "per_collector_wall": {
            name: st["seconds_total"] / (ticks + 5) for name, st in scheduler.stats().items()
        },
    }
    if render:
        info["body_bytes"] = len(body)
        info["series"] = _series(body)
    scheduler.close()
    pipeline.close()
    if db is not None:
        db.close()
    tmp.cleanup()
    return cpu / ticks, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ticks", type=int, default=1000, help="wattspan ticks per variant (1000)")
    ap.add_argument("--scrapes", type=int, default=300, help="HTTP scrapes per server (300)")
    ap.add_argument("--rounds", type=int, default=5, help="scrape/idle block pairs (5)")
    ap.add_argument("--gap", type=float, default=0.01, help="sleep between ticks/scrapes, s")
    ap.add_argument("--gzip", action="store_true", help="request gzip like Prometheus does")
    ap.add_argument(
        "--node-exporter",
        default=shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter",
    )
    args = ap.parse_args()

    print(f"machine: {machine()}")
    print(f"clock tick for /proc CPU times: {1e3 / CLK_TCK:.0f} ms")
    tick, info = measure_ticks(args.ticks, args.gap, render=False, store=False)
    tick_render, rinfo = measure_ticks(args.ticks, args.gap, render=True, store=False)
    tick_store, _ = measure_ticks(args.ticks, args.gap, render=False, store=True)
    print(f"wattspan collectors: {info['collectors']} ({info['samples']} samples per tick)")
    print(
        "  wall per collector per tick: "
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in info["per_collector_wall"].items())
    )
    agent = measure_agent_http(args.scrapes, args.rounds, args.gap, args.gzip)
    if not os.path.exists(args.node_exporter):
        print(f"node_exporter not found at {args.node_exporter}: no baseline, no ratio")
        return 0
    ne = measure_node_exporter(args.node_exporter, args.scrapes, args.rounds, args.gap, args.gzip)

    print()
    print(f"{'path':44} {'CPU per op':>12} {'ratio':>7}  body")
    rows = [
        ("wattspan tick (all collectors)", tick, ""),
        ("wattspan tick + generate_latest", tick_render, f"{rinfo['series']} series"),
        ("wattspan tick + SQLite store sink", tick_store, ""),
        (
            "wattspan agent: HTTP scrape (render+serve)",
            agent.per_scrape,
            f"{agent.series} series, {agent.body_bytes} B",
        ),
        ("wattspan tick + agent HTTP scrape", tick + agent.per_scrape, ""),
        (
            "node_exporter: HTTP scrape",
            ne.per_scrape,
            f"{ne.series} series, {ne.body_bytes} B",
        ),
    ]
    for name, cpu, note in rows:
        print(f"{name:44} {fmt_ms(cpu):>12} {cpu / ne.per_scrape:7.3f}x  {note}")
    print(
        f"idle background CPU: node_exporter {ne.idle_per_second * 1e3:.2f} ms/s, "
        f"wattspan agent (interval 3600) {agent.idle_per_second * 1e3:.2f} ms/s"
    )
    print()
    r_tick = tick / ne.per_scrape
    r_full = (tick + agent.per_scrape) / ne.per_scrape
    r_render = tick_render / ne.per_scrape
    print(
        f"ratio tick / node_exporter scrape:                 {r_tick:.3f}x  "
        f"(target <= {TARGET}x: {verdict(r_tick, TARGET)})"
    )
    print(
        f"ratio tick+generate_latest / node_exporter scrape: {r_render:.3f}x  "
        f"(target <= {TARGET}x: {verdict(r_render, TARGET)})"
    )
    print(
        f"ratio tick+HTTP scrape / node_exporter scrape:     {r_full:.3f}x  "
        f"(target <= {TARGET}x: {verdict(r_full, TARGET)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
