"""Line-protocol encoding: wattspan's encoder vs influxdb-client's ``Point`` on the same data.

Run: ``python bench/bench_influx_encode.py [--ticks N] [--repeat R] [--cpu C]``

Target (issue 4): >= 500k points/s on one core for our encoder, Sample batch -> the bytes
that go into the queue.

Data: what one agent tick produces on a mid-size node, repeated N ticks (each tick shares
one timestamp, as a collector pass does): 64 ``cpu`` series (5 float fields), 1 ``memory``
(6 int fields), 200 ``process`` (pid/name tags; 1 float + 2 int fields), 4 ``rapl`` (2
floats), 8 ``gpu`` (3 floats + 2 ints), 1 ``power_model`` (1 float, ``estimated`` tag).
Float values are full-precision ratios and products, as the collectors compute them (17
significant digits), not round numbers: float formatting is most of the cost.

Measured in ONE process, pinned to one CPU, same samples for every contender:

  wattspan     ``LineEncoder.encode_frames(samples, 5000)``: exactly what
               ``InfluxDBExporter.write`` does before appending the frames to its queue
               (5000 is the default ``batch_size``). Numeric samples take the template path.
  per value    the encoder's per-value path (``repr``/``str`` per value, one ``str`` per
               line), joined and encoded: the encoder as it was before templates, and what
               string-carrying samples (spans, metrics with ids) still take.
  client Point ``influxdb_client.Point(...).tag(...).field(...).time(ns)`` per sample and
               ``to_line_protocol()``, joined and encoded the same way.
  repr loop    ``repr()`` of every float plus ``str()`` of every int and nothing else: the
               floor of any encoder that formats values one by one in Python.

Beside the target, spans (``--spans N``, shaped like ``agent/ingest.py``'s ``span_sample``:
ids as string fields, 8 names, ends 10 us apart) are encoded with and without the unique
event timestamps (docs/influxdb.md, "Distinct records, distinct points"), to show what that
costs per span.

The interpreter runs with the agent's garbage-collector settings (``tune_gc()``: objects
built before the measurement frozen, thresholds relaxed), applied after the data is built,
for every contender alike: that is how the exporter runs inside the agent. ``--default-gc``
measures with the interpreter's defaults instead.

Each contender runs R times; the best run is reported (least disturbed by the machine).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _util import machine

from wattspan.agent.daemon import tune_gc
from wattspan.agent.exporters.influxdb import LineEncoder
from wattspan.agent.exporters.influxdb.lineprotocol import EncodeCounts
from wattspan.collectors.base import Sample

HOST = "node-17"


def agent_tick(rng: random.Random, ts: float) -> list[Sample]:
    """One tick of a mid-size node (see module docstring)."""
    out: list[Sample] = []
    for c in range(64):
        user, system, iowait = rng.random() * 0.6, rng.random() * 0.2, rng.random() * 0.05
        idle = 1.0 - user - system - iowait
        out.append(
            Sample(
                "cpu",
                ts,
                {"cpu": str(c)},
                {
                    "user_ratio": user,
                    "system_ratio": system,
                    "iowait_ratio": iowait,
                    "idle_ratio": idle,
                    "frequency_hertz": 2.1e9 + rng.random() * 1.4e9,
                },
            )
        )
    total = 512 * 1024**3
    used = rng.randrange(total)
    out.append(
        Sample(
            "memory",
            ts,
            {},
            {
                "total_bytes": total,
                "used_bytes": used,
                "available_bytes": total - used,
                "cached_bytes": rng.randrange(total // 4),
                "swap_used_bytes": rng.randrange(1 << 30),
                "page_faults_total": rng.randrange(1 << 40),
            },
        )
    )
    for p in range(200):
        out.append(
            Sample(
                "process",
                ts,
                {"pid": str(1000 + p), "name": f"worker-{p % 16}"},
                {
                    "cpu_seconds_total": rng.random() * 3600,
                    "rss_bytes": rng.randrange(1 << 34),
                    "threads": rng.randrange(1, 64),
                },
            )
        )
    for d in ("package-0", "package-1", "dram-0", "dram-1"):
        out.append(
            Sample(
                "rapl",
                ts,
                {"domain": d},
                {"energy_joules_total": rng.random() * 6.5e4, "power_watts": rng.random() * 280},
            )
        )
    for g in range(8):
        out.append(
            Sample(
                "gpu",
                ts,
                {"gpu": str(g), "model": "NVIDIA H100 80GB HBM3"},
                {
                    "utilization_ratio": rng.random(),
                    "power_watts": 60 + rng.random() * 640,
                    "energy_joules_total": rng.random() * 1e7,
                    "memory_used_bytes": rng.randrange(80 * 1024**3),
                    "temperature_celsius": rng.randrange(30, 90),
                },
            )
        )
    out.append(
        Sample("power_model", ts, {"estimated": "true"}, {"cpu_power_watts": rng.random() * 300})
    )
    return out


def make_samples(ticks: int, seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    out: list[Sample] = []
    for i in range(ticks):
        out.extend(agent_tick(rng, t0 + i))
    return out


BATCH_SIZE = 5000


def make_spans(n: int, seed: int = 2) -> list[Sample]:
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    out = []
    for i in range(n):
        out.append(
            Sample(
                "spans",
                t0 + i * 1e-5,
                {"span_name": f"step-{i % 8}", "service": "train", "status": "ok", "run": "r1"},
                {
                    "trace_id": f"{rng.getrandbits(128):032x}",
                    "span_id": f"{rng.getrandbits(64):016x}",
                    "duration_seconds": rng.random(),
                    "start_time": t0 + i * 1e-5 - rng.random(),
                    "pid": 4242,
                    "cpu_seconds": rng.random() * 10,
                    "node_energy_joules": rng.random() * 100,
                },
            )
        )
    return out


def run_spans(samples: list[Sample]) -> bytes:
    frames, _ = LineEncoder(global_tags={"host": HOST}).encode_frames(samples, BATCH_SIZE)
    return b"".join(body for body, _ in frames)


def run_spans_plain(samples: list[Sample]) -> bytes:
    encoder = LineEncoder(global_tags={"host": HOST}, event_sources={})
    frames, _ = encoder.encode_frames(samples, BATCH_SIZE)
    return b"".join(body for body, _ in frames)


def run_wattspan(samples: list[Sample]) -> bytes:
    frames, _ = LineEncoder(global_tags={"host": HOST}).encode_frames(samples, BATCH_SIZE)
    return b"".join(body for body, _ in frames)


def run_per_value(samples: list[Sample]) -> bytes:
    encoder = LineEncoder(global_tags={"host": HOST})
    out = []
    for i in range(0, len(samples), BATCH_SIZE):
        lines = encoder._encode_values(samples[i : i + BATCH_SIZE], EncodeCounts())
        out.append(("\n".join(lines) + "\n").encode())
    return b"".join(out)


def run_client_point(samples: list[Sample]) -> bytes:
    from influxdb_client import Point, WritePrecision

    lines = []
    for s in samples:
        p = Point(s.source).tag("host", HOST)
        for k, v in s.tags.items():
            p.tag(k, v)
        for k, v in s.fields.items():
            p.field(k, v)
        p.time(int(s.ts * 1_000_000_000), WritePrecision.NS)
        lines.append(p.to_line_protocol())
    return ("\n".join(lines) + "\n").encode()


def run_floor(samples: list[Sample]) -> int:
    n = 0
    for s in samples:
        for v in s.fields.values():
            n += len(repr(v) if type(v) is float else str(v))
    return n


def best_time(fn: Callable[[list[Sample]], object], samples: list[Sample], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn(samples)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ticks", type=int, default=400, help="agent ticks of data (278 points each)")
    ap.add_argument("--client-ticks", type=int, default=60, help="ticks for the slow client path")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    ap.add_argument("--default-gc", action="store_true", help="keep the interpreter's GC")
    ap.add_argument("--spans", type=int, default=20_000, help="spans for the event rows")
    args = ap.parse_args()

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    samples = make_samples(args.ticks)
    spans = make_spans(args.spans)
    client_samples = samples[: len(samples) * args.client_ticks // args.ticks]
    n, n_client = len(samples), len(client_samples)
    n_floats = sum(1 for s in samples for v in s.fields.values() if type(v) is float)
    n_fields = sum(len(s.fields) for s in samples)

    # Same output? Different but equivalent texts (the client sorts fields and trims ".0"):
    # compare the number of lines and of fields as a sanity check.
    ours = run_wattspan(client_samples)
    theirs = run_client_point(client_samples)
    per_value = run_per_value(client_samples)
    assert ours.count(b"\n") == theirs.count(b"\n") == per_value.count(b"\n") == n_client
    assert ours.count(b"=") == theirs.count(b"=") == per_value.count(b"=")
    if not args.default_gc:
        tune_gc()

    t_ours = best_time(run_wattspan, samples, args.repeat)
    t_per_value = best_time(run_per_value, samples, args.repeat)
    t_client = best_time(run_client_point, client_samples, max(1, args.repeat // 2))
    t_floor = best_time(run_floor, samples, args.repeat)
    t_spans = best_time(run_spans, spans, args.repeat)
    t_spans_plain = best_time(run_spans_plain, spans, args.repeat)

    rate_ours = n / t_ours
    rate_per_value = n / t_per_value
    rate_client = n_client / t_client
    rate_floor = n / t_floor
    gc_mode = "interpreter defaults" if args.default_gc else "the agent's (tune_gc)"
    print(f"machine: {machine()}; pinned to CPU {cpu}; GC: {gc_mode}")
    print(
        f"data: {n} points ({args.ticks} ticks x {n // args.ticks}), {n_fields / n:.2f} fields "
        f"per point, {n_floats / n:.2f} of them floats; {len(ours) / n_client:.0f} bytes/line"
    )
    print(f"{'contender':<34}{'points/s':>12}{'us/point':>10}")
    print(f"{'wattspan LineEncoder -> bytes':<34}{rate_ours:>12,.0f}{1e6 / rate_ours:>10.2f}")
    print(f"{'per-value path -> bytes':<34}{rate_per_value:>12,.0f}{1e6 / rate_per_value:>10.2f}")
    print(f"{'influxdb-client Point -> bytes':<34}{rate_client:>12,.0f}{1e6 / rate_client:>10.2f}")
    print(f"{'repr loop: values only':<34}{rate_floor:>12,.0f}{1e6 / rate_floor:>10.2f}")
    n_spans = len(spans)
    print(
        f"{'spans, unique event timestamps':<34}{n_spans / t_spans:>12,.0f}"
        f"{1e6 * t_spans / n_spans:>10.2f}"
    )
    print(
        f"{'spans, without them':<34}{n_spans / t_spans_plain:>12,.0f}"
        f"{1e6 * t_spans_plain / n_spans:>10.2f}"
    )
    print(f"ratio wattspan / influxdb-client: {rate_ours / rate_client:.1f}x")
    print(f"ratio wattspan / per-value path: {rate_ours / rate_per_value:.2f}x")
    print(f"ratio wattspan / repr loop: {rate_ours / rate_floor:.2f}x")
    target = 500_000
    print(
        f"target >= {target:,} points/s on one core: "
        + ("met" if rate_ours >= target else f"missed ({rate_ours / target:.0%} of it)")
    )


if __name__ == "__main__":
    main()
