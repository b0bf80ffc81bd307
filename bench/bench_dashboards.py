"""Every InfluxQL panel of the generated dashboards over 24 h of one node, in a real influxd.

Target (issue 11): over a 24 h range at Grafana's default 1,000-2,000 max data points,
every panel returns under 2,000 points and its p95 query time is under 500 ms. Baseline: the
same panels as naive raw selects (``SELECT <fields> FROM <measurement> WHERE <the panel's
WHERE>``, no ``GROUP BY time``), which is what a panel without downsampling would cost.

Data (written once, before any query, in the schema of docs/influxdb.md): ``--hours`` (24)
of one node (``host=node-a``) at 1 s: ``cpu`` total and per core (``--cores``), ``memory``,
``rapl`` (package-0, dram), ``power_model`` (cpu), ``process_tree`` (3 trees), ``gpu``
(``--gpus``); ``--spans-per-s`` (20) spans of a busy pipeline (3 services, 6 span names,
a new run tag every 2 h, 1 % errors) with the attributed fields; their one-minute rollups
``spans_1m``, ``spans_top`` and ``runs_1m``, built by the exporter's own ``SpanRollup`` and
``LineEncoder`` (one write per chunk; an agent writes one per attribution pass, re-emitting
more often, but influxd keeps the same points); ``ml`` loss and accuracy of each run
every 5 s with their ``ml_progress`` points, hyperparameters (``ml_param``) and a 10-class
confusion matrix every 10 minutes (``ml_confusion``). Lines are built from numpy arrays
(values formatted by ``orjson``, as the agent's template encoder does) and POSTed in chunks
of ``--chunk`` seconds while the next chunk is built.

Queries: every target of every ``influxdb`` dashboard from ``build_dashboards()``, with
variables set to *All* the way Grafana sends them to InfluxDB (each value regex-escaped,
joined into ``(a|b|c)``, values from the dashboards' own variable queries) and macros
expanded for a relative 24 h range: ``$timeFilter`` = ``time >= now() - 24h``,
``$__interval`` = 24 h / max data points rounded by Grafana's ``roundInterval``
(1,000 and 1,500 -> 1m; 2,000 -> 30s), or from the panel's own ``maxDataPoints`` where it
sets one, and never below the panel's minimum ``interval``, as Grafana does (time series:
1,000 -> 1m; the heatmap: 100 -> 15m). A panel's time is its targets run one after another
(``epoch=ms``, the full body read); its points are the rows of every series it returns.
"Points per series" is what ``maxDataPoints`` bounds; "points" is the panel's total, which
grows with the number of series a query groups by (cores, span names).

Raw vs rollup: every Pipelines panel that reads ``spans_1m`` or ``spans_top`` is also run
in its raw-spans form (what it was before the rollup: ``count``/``percentile()``/``sum``/
``top()`` over every span), p50/p95 side by side with the ratio.

    python bench/bench_dashboards.py [--hours 24] [--cores 8] [--spans-per-s 20] [--reps 5]
        [--max-data-points 1500 2000] [--no-baseline] [--no-raw-spans]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import orjson
from _util import grafana_interval, machine, percentile

from tests.servers import InfluxD, http
from wattspan.agent.exporters.influxdb.lineprotocol import LineEncoder
from wattspan.agent.exporters.influxdb.rollup import SpanRollup
from wattspan.collectors.base import Sample
from wattspan.dashboards import build_dashboards

DB = "wattspan"
HOST = "node-a"
MAX_POINTS = 2000
MAX_P95 = 0.5

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: Share of busy time per busy mode (idle and iowait come from the utilisation curve).
BUSY_SPLIT = {
    "user": 0.72,
    "nice": 0.01,
    "system": 0.2,
    "irq": 0.01,
    "softirq": 0.05,
    "steal": 0.01,
}
STAGES = (
    ("ingest", "load data", 0.02),
    ("ingest", "parse", 0.005),
    ("train", "forward", 0.08),
    ("train", "backward", 0.15),
    ("serve", "predict", 0.01),
    ("serve", "postprocess", 0.002),
)
RUN_SECONDS = 7200
ML_EVERY = 5


# -- data --------------------------------------------------------------------------------


def _tokens(a: np.ndarray) -> list[bytes]:
    """Each element's shortest round-trip text, as the agent's template encoder formats it."""
    return orjson.dumps(a.ravel().tolist())[1:-1].split(b",")


def _lines(tmpl: bytes, cols: list[np.ndarray], ts: np.ndarray) -> bytes:
    """``tmpl % row`` for every row of ``cols`` (one array per ``%s``) plus its timestamp."""
    toks = [_tokens(c) for c in cols] + [_tokens(ts)]
    return b"".join(tmpl % row for row in zip(*toks, strict=True))


def _fields(*names: str, ints: tuple[str, ...] = ()) -> bytes:
    return b",".join(f"{n}=%s{'i' if n in ints else ''}".encode() for n in names)


@dataclass
class Node:
    """Continuous state across chunks (counters keep growing)."""

    cores: int
    gpus: int
    rng: np.random.Generator
    cpu_seconds: dict[str, np.ndarray] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    def _acc(self, key: str, step: np.ndarray) -> np.ndarray:
        out = self.counters.get(key, 0.0) + np.cumsum(step)
        self.counters[key] = float(out[-1])
        return out

    def _util(self, t: np.ndarray, phase: float) -> np.ndarray:
        day = 2 * math.pi * (t % 86400) / 86400
        u = 0.35 + 0.25 * np.sin(day + phase) + 0.08 * self.rng.standard_normal(len(t))
        return np.clip(u, 0.0, 1.0)

    def _cpu(self, t: np.ndarray, tag: str, u: np.ndarray, total: bool) -> bytes:
        n = len(t)
        ratios: dict[str, np.ndarray] = {m: u * s for m, s in BUSY_SPLIT.items()}
        ratios["iowait"] = np.minimum(0.02 + 0.01 * self.rng.random(n), 1 - u)
        ratios["idle"] = np.maximum(1 - u - ratios["iowait"], 0.0)
        names: list[str] = []
        cols: list[np.ndarray] = []
        share = self.cores if total else 1
        for m in CPU_MODES:
            names += [f"{m}_seconds_total", f"{m}_ratio"]
            cols += [self._acc(f"{tag}/{m}", ratios[m] * share), ratios[m]]
        names.append("utilization_ratio")
        cols.append(u)
        ints: tuple[str, ...] = ()
        if total:
            load = u * self.cores
            names += ["frequency_hertz", "load1", "load5", "load15"]
            cols += [2.4e9 + 4e8 * u, load, load * 0.95, load * 0.9]
            names += ["context_switches_total", "interrupts_total"]
            cols += [
                self._acc("ctx", 4000 + 8000 * u).astype(np.int64),
                self._acc("irq", 2000 + 3000 * u).astype(np.int64),
            ]
            ints = ("context_switches_total", "interrupts_total")
        tmpl = f"cpu,cpu={tag},host={HOST} ".encode() + _fields(*names, ints=ints) + b" %s\n"
        return _lines(tmpl, cols, t)

    def chunk(self, t: np.ndarray) -> bytes:
        """Every node measurement for the seconds ``t`` (precision s)."""
        n = len(t)
        parts: list[bytes] = []
        core_u = [self._util(t, 0.3 * c) for c in range(self.cores)]
        u = np.mean(core_u, axis=0)
        parts.append(self._cpu(t, "total", u, total=True))
        parts += [self._cpu(t, str(c), core_u[c], total=False) for c in range(self.cores)]

        total = 64 * 2**30
        used = (16 + 24 * u + self.rng.random(n)) * 2**30
        cached = np.full(n, 12 * 2**30) + 2**28 * self.rng.random(n)
        mem = [np.full(n, total), used, total - used, total - used - cached, cached]
        mem += [np.full(n, 512 * 2**20), np.full(n, 8 * 2**30), np.full(n, 2**26)]
        mem_names = (
            "total_bytes", "used_bytes", "available_bytes", "free_bytes", "cached_bytes",
            "buffers_bytes", "swap_total_bytes", "swap_used_bytes",
        )  # fmt: skip
        tmpl = f"memory,host={HOST} ".encode()
        tmpl += _fields(*mem_names, "used_ratio", ints=mem_names) + b" %s\n"
        parts.append(_lines(tmpl, [c.astype(np.int64) for c in mem] + [used / total], t))

        for domain, zone, idle, span in (
            ("package-0", "intel-rapl:0", 40.0, 160.0),
            ("dram", "intel-rapl:0:2", 6.0, 10.0),
        ):
            p = idle + span * u + self.rng.random(n)
            tmpl = f"rapl,domain={domain},estimated=false,host={HOST},zone={zone} ".encode()
            tmpl += _fields("energy_joules_total", "power_watts") + b" %s\n"
            parts.append(_lines(tmpl, [self._acc(f"rapl/{domain}", p), p], t))

        p = 35 + 165 * u
        tmpl = f"power_model,domain=cpu,estimated=true,host={HOST} ".encode()
        tmpl += _fields(
            "power_watts", "utilization_ratio", "energy_joules_total", "tdp_watts",
            "idle_power_watts",
        ) + b" %s\n"  # fmt: skip
        parts.append(
            _lines(tmpl, [p, u, self._acc("pm", p), np.full(n, 200.0), np.full(n, 35.0)], t)
        )

        for i, (root, name) in enumerate(
            (("1201", "python"), ("877", "postgres"), ("1", "systemd"))
        ):
            share = u * (0.6, 0.25, 0.02)[i]
            ints = ("rss_bytes", "peak_rss_bytes", "threads", "processes")
            tmpl = f"process_tree,host={HOST},name={name},root={root} ".encode()
            tmpl += _fields(
                "cpu_user_seconds_total", "cpu_system_seconds_total", "rss_bytes",
                "peak_rss_bytes", "read_bytes_total", "write_bytes_total", "threads",
                "processes", ints=ints,
            ) + b" %s\n"  # fmt: skip
            rss = ((1 + i) * 2**30 * (1 + 0.1 * self.rng.random(n))).astype(np.int64)
            cols = [
                self._acc(f"pt/{root}/u", share * 0.8 * self.cores),
                self._acc(f"pt/{root}/s", share * 0.2 * self.cores),
                rss, rss + 2**20, self._acc(f"pt/{root}/r", 1e6 * share),
                self._acc(f"pt/{root}/w", 4e5 * share),
                np.full(n, 8 * (i + 1), dtype=np.int64), np.full(n, 3 + i, dtype=np.int64),
            ]  # fmt: skip
            parts.append(_lines(tmpl, cols, t))

        for g in range(self.gpus):
            gu = self._util(t, 1.0 + g)
            gp = 70 + 600 * gu
            tmpl = (
                f"gpu,energy_method=counter,gpu={g},host={HOST},name=H200,uuid=GPU-{g:04d} "
            ).encode()
            ints = ("memory_used_bytes", "memory_total_bytes")
            tmpl += _fields(
                "utilization_gpu_ratio", "utilization_memory_ratio", "memory_used_bytes",
                "memory_total_bytes", "power_watts", "energy_joules_total",
                "temperature_celsius", "sm_clock_hertz", ints=ints,
            ) + b" %s\n"  # fmt: skip
            cols = [
                gu, gu * 0.6, (gu * 100e9).astype(np.int64), np.full(n, 141_000_000_000),
                gp, self._acc(f"gpu/{g}", gp), 35 + 40 * gu, 1.98e9 * (0.5 + 0.5 * gu),
            ]  # fmt: skip
            parts.append(_lines(tmpl, cols, t))
        return b"".join(parts)


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> list[bytes]:
    raw = rng.bytes(n * nbytes).hex().encode()
    w = 2 * nbytes
    return [raw[i * w : (i + 1) * w] for i in range(n)]


def spans_chunk(
    rng: np.random.Generator,
    t0: int,
    seconds: int,
    per_s: int,
    first_ts: int,
    rollup: list[Sample] | None = None,
) -> bytes:
    """``per_s`` attributed spans a second ending in [t0, t0 + seconds) (precision ns)."""
    n = seconds * per_s
    end = (t0 + rng.random(n) * seconds) * 1e9
    stage = rng.integers(0, len(STAGES), n)
    base = np.array([s[2] for s in STAGES])[stage]
    dur = base * rng.lognormal(0.0, 0.4, n)
    cpu = dur * rng.uniform(0.5, 0.98, n)
    share = rng.uniform(0.05, 0.6, n)
    node = dur * rng.uniform(90, 220, n)
    proc_e = node * share
    run = ((end / 1e9 - first_ts) // RUN_SECONDS).astype(np.int64)
    err = rng.random(n) < 0.01
    trace, span, parent = _hex(rng, n, 16), _hex(rng, n, 8), _hex(rng, n, 8)
    ts = end.astype(np.int64)
    start = _tokens(end / 1e9 - dur)
    toks = [_tokens(a) for a in (dur, cpu, share, proc_e, node - proc_e, node)]
    pid = _tokens(rng.integers(1000, 1010, n))
    rss = _tokens((2**30 * rng.uniform(0.5, 2, n)).astype(np.int64))
    tsk = _tokens(ts)
    head = {
        (i, e, r): (
            f"spans,host={HOST},run=run-{r:02d},service={svc},"
            f"span_name={name.replace(' ', chr(92) + ' ')},status={'ERROR' if e else 'OK'} "
        ).encode()
        for i, (svc, name, _) in enumerate(STAGES)
        for e in (False, True)
        for r in range(int(run.max()) + 1)
    }
    tmpl = (
        b'%strace_id="%s",span_id="%s",parent_span_id="%s",duration_seconds=%s,start_time=%s,'
        b'pid=%si,cpu_seconds=%s,cpu_source="sampled",process_cpu_share=%s,'
        b"process_energy_joules=%s,other_energy_joules=%s,node_energy_total_joules=%s,"
        b"peak_rss_bytes=%si %s\n"
    )
    heads = [head[k] for k in zip(stage.tolist(), err.tolist(), run.tolist(), strict=True)]
    d, c, sh, pe, oe, ne = toks
    rows = zip(heads, trace, span, parent, d, start, pid, c, sh, pe, oe, ne, rss, tsk, strict=True)
    out = [tmpl % row for row in rows]
    if rollup is not None:
        rollup.extend(
            _span_samples(end / 1e9, dur, cpu, proc_e, node, stage, run, err, trace, span)
        )
    return b"".join(out)


def _span_samples(
    end: np.ndarray, dur: np.ndarray, cpu: np.ndarray, proc_e: np.ndarray,
    node: np.ndarray, stage: np.ndarray, run: np.ndarray, err: np.ndarray,
    trace: list[bytes], span: list[bytes],
) -> list[Sample]:  # fmt: skip
    """The same spans as the agent's exporter sees them (``span_sample``'s fields that the
    rollup reads), for :class:`SpanRollup`."""
    out = []
    cols = zip(
        end.tolist(), dur.tolist(), cpu.tolist(), proc_e.tolist(), node.tolist(),
        stage.tolist(), run.tolist(), err.tolist(), trace, span, strict=True,
    )  # fmt: skip
    for e, d, c, pe, ne, st, r, er, t, sp in cols:
        svc, name, _ = STAGES[st]
        out.append(
            Sample(
                "spans",
                e,
                {"span_name": name, "service": svc, "status": "ERROR" if er else "OK",
                 "run": f"run-{r:02d}"},
                {"trace_id": t.decode(), "span_id": sp.decode(), "duration_seconds": d,
                 "cpu_seconds": c, "process_energy_joules": pe,
                 "node_energy_total_joules": ne},
            )
        )  # fmt: skip
    return out


def ml_chunk(rng: np.random.Generator, t: np.ndarray, first_ts: int) -> bytes:
    """Loss and accuracy of the current run every ``ML_EVERY`` s (precision s)."""
    t = t[t % ML_EVERY == 0]
    if not len(t):
        return b""
    rel = t - first_ts
    run, step = rel // RUN_SECONDS, (rel % RUN_SECONDS) // ML_EVERY
    progress = step / (RUN_SECONDS / ML_EVERY)
    loss = 2.5 * np.exp(-4 * progress) + 0.05 * rng.random(len(t))
    acc = np.clip(0.97 - 0.87 * np.exp(-5 * progress) + 0.01 * rng.standard_normal(len(t)), 0, 1)
    sid, tid = _hex(rng, len(t), 8), _hex(rng, len(t), 16)
    # ml_progress as the exporter derives it: seconds and (a node at ~150 W) joules since
    # the run's first point.
    elapsed = rel % RUN_SECONDS
    energy = 150.0 * elapsed + rng.random(len(t))
    out = []
    for name, val in (("ml.loss", loss), ("ml.accuracy", acc)):
        vt, et, jt = _tokens(val), _tokens(elapsed.astype(float)), _tokens(energy)
        for k, (r, s, ts) in enumerate(zip(run.tolist(), step.tolist(), t.tolist(), strict=True)):
            out.append(
                b'ml,host=%s,name=%s,run=run-%02d value=%s,step=%di,span_id="%s",trace_id="%s" %d\n'
                % (HOST.encode(), name.encode(), r, vt[k], s, sid[k], tid[k], ts)
            )
            out.append(
                b"ml_progress,host=%s,name=%s,run=run-%02d value=%s,step=%di,elapsed_seconds=%s,"
                b"node_energy_joules=%s,energy_joules=%s %d\n"
                % (HOST.encode(), name.encode(), r, vt[k], s, et[k], jt[k], jt[k], ts)
            )
    # Each run logs its hyperparameters when it starts and a 10-class confusion matrix
    # every 10 minutes.
    for r, s_, ts in zip(run.tolist(), step.tolist(), t.tolist(), strict=True):
        if s_ == 0:
            for k, v in (("lr", "0.001"), ("batch_size", "64"), ("optimizer", "adam")):
                out.append(
                    b'ml_param,host=%s,param=%s,run=run-%02d value="%s",info=1i %d\n'
                    % (HOST.encode(), k.encode(), r, v.encode(), ts)
                )
        if s_ % 120 == 0:
            for a in range(10):
                for p in range(10):
                    n = 900 * (s_ + 1) // 1440 if a == p else rng.integers(0, 20)
                    out.append(
                        b"ml_confusion,actual=c%d,host=%s,predicted=c%d,run=run-%02d "
                        b"value=%d,step=%di %d\n" % (a, HOST.encode(), p, r, n, s_, ts)
                    )
    return b"".join(out)


def load(
    server: InfluxD, hours: float, cores: int, gpus: int, per_s: int, chunk: int
) -> dict[str, float]:
    """Write the data set; returns sizes and timings."""
    end = int(time.time())
    first = end - int(hours * 3600)
    rng = np.random.default_rng(11)
    node = Node(cores, gpus, rng)
    stats = {"lines": 0.0, "bytes": 0.0, "build_s": 0.0}
    errors: list[str] = []

    def post(body: bytes, precision: str) -> None:
        for _ in range(120):
            status, resp = server.write_lines(DB, body, precision=precision)
            # influxd refuses writes while its cache waits for a snapshot: let it catch up.
            if status == 500 and b"cache-max-memory-size" in resp:
                time.sleep(1.0)
                continue
            if status != 204:
                errors.append(f"HTTP {status} {resp[:300]!r}")
            return

    rollup = SpanRollup(generation=1)
    encoder = LineEncoder(global_tags={"host": HOST})
    stats["rollup_points"] = 0.0

    def rolled(spans: list[Sample]) -> bytes:
        """The chunk's spans_1m points, as the exporter writes them (one write per chunk)."""
        out: list[bytes] = []

        def append(points: list[Sample]) -> None:
            frames, _ = encoder.encode_frames(points, 5000)
            out.extend(body for body, _ in frames)

        stats["rollup_points"] += rollup.write(spans, append)
        return b"".join(out)

    t_start = time.monotonic()
    # One POST in flight while the next chunk is built: influxd and this script share the CPUs.
    pending: list[Future[None]] = []
    with ThreadPoolExecutor(1) as pool:
        for t0 in range(first, end, chunk):
            t1 = min(t0 + chunk, end)
            b0 = time.monotonic()
            t = np.arange(t0, t1, dtype=np.int64)
            spans: list[Sample] = []
            bodies = [
                (node.chunk(t) + ml_chunk(rng, t, first), "s"),
                (spans_chunk(rng, t0, t1 - t0, per_s, first, spans), "ns"),
            ]
            r0 = time.monotonic()
            bodies.append((rolled(spans), "ns"))
            stats["rollup_s"] = stats.get("rollup_s", 0.0) + time.monotonic() - r0
            stats["build_s"] += time.monotonic() - b0
            for body, precision in bodies:
                stats["lines"] += body.count(b"\n")
                stats["bytes"] += len(body)
                while len(pending) >= 2:
                    pending.pop(0).result()
                pending.append(pool.submit(post, body, precision))
            if errors:
                raise RuntimeError(errors[0])
        for f in pending:
            f.result()
    if errors:
        raise RuntimeError(errors[0])
    stats["load_s"] = time.monotonic() - t_start
    stats["top_points"] = float(rollup.top_points_total)
    return stats


# -- queries -----------------------------------------------------------------------------


@dataclass
class Panel:
    dashboard: str
    title: str
    ptype: str
    queries: list[str]  # Grafana-expanded, one per target
    baseline: list[str]
    #: the same panel over the raw spans (what it read before spans_1m), if it reads the rollup
    raw_spans: list[str] = field(default_factory=list)
    #: its ``$__interval`` (its own maxDataPoints and minimum interval applied)
    interval: str = ""


#: The Stages table as it was over the raw spans: percentile() of every span in the range.
_RAW_STAGES = """SELECT count("duration_seconds") AS "count",
    percentile("duration_seconds", 50) AS "p50", percentile("duration_seconds", 95) AS "p95",
    sum("cpu_seconds") AS "CPU", sum("process_energy_joules") AS "energy",
    sum("node_energy_total_joules") AS "node energy", sum("items") AS "items",
    sum("process_energy_joules") / sum("items") AS "J/item"
    FROM "spans" WHERE {where} GROUP BY "service", "span_name" """
_ROLLUP_TO_RAW = (
    ('sum("count")', 'count("duration_seconds")'),
    ('max("p50_seconds")', 'percentile("duration_seconds", 50)'),
    ('max("p95_seconds")', 'percentile("duration_seconds", 95)'),
    ('"spans_1m"', '"spans"'),
)


_TOP_BY = re.compile(r'FROM "spans_top"\s+WHERE "by" = \'\w+\' AND ')


def raw_spans(query: str) -> str | None:
    """A spans_1m or spans_top query rewritten over the raw spans (None: it has no raw
    form)."""
    if '"spans_top"' in query:
        return _TOP_BY.sub('FROM "spans" WHERE ', query)
    if '"spans_1m"' not in query or ('"le_' in query and "EXP(" not in query):
        return None  # the heatmap: the raw spans have no buckets
    if "EXP(" in query:
        m = _WHERE.search(query)
        assert m is not None
        return " ".join(_RAW_STAGES.format(where=m.group(2)).split())
    for a, b in _ROLLUP_TO_RAW:
        query = query.replace(a, b)
    return query


def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        if p.get("type") == "row":
            yield from _walk(p.get("panels", []))
        else:
            yield p


def _macros(interval_s: int) -> dict[str, str]:
    iv = f"{interval_s // 60}m" if interval_s % 60 == 0 else f"{interval_s}s"
    return {
        "$timeFilter": "time >= now() - 24h",
        "$__interval_ms": str(interval_s * 1000),
        "$__interval": iv,
        "$interval": iv,
        "$__range": "24h",
    }


def _expand(text: str, macros: dict[str, str], values: dict[str, str]) -> str:
    for k, v in sorted(macros.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(k, v)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    return text


def _series(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for r in data.get("results", []) for s in r.get("series", []) or []]


def _all_values(server: InfluxD, dash: dict[str, Any], macros: dict[str, str]) -> dict[str, str]:
    """Each query variable at *All*, formatted as Grafana sends a multi-value to InfluxQL."""
    values: dict[str, str] = {}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        data = server.query(_expand(q, macros, values), db=DB)
        found = sorted({row[1] for s in _series(data) for row in s["values"]})
        values[v["name"]] = "(" + "|".join(re.escape(x) for x in found) + ")"
    for v in dash["templating"]["list"]:
        if v["type"] == "custom":  # one value, as picked: not escaped
            values[v["name"]] = v["current"]["value"]
    return values


_WHERE = re.compile(r'FROM\s+("(?:[^"\\]|\\.)+")\s+WHERE\s+(.*?\$timeFilter)', re.S)


def naive(query: str) -> str | None:
    """The raw select of the same fields and rows: innermost FROM and WHERE, no aggregation
    (None for a query without a time filter: hyperparameters and matrices, read whole)."""
    m = _WHERE.search(query)
    if not m:
        return None
    select = query[query[: m.start()].rindex("SELECT") + 6 : m.start()]
    fields = list(dict.fromkeys(re.findall(r'\w+\(\s*"([^"]+)"', select)))
    if not fields:
        fields = re.findall(r'"([^"]+)"', select)
    cols = ", ".join(f'"{f}"' for f in fields)
    return f"SELECT {cols} FROM {m.group(1)} WHERE {m.group(2)}"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def panel_interval(panel: dict[str, Any], max_data_points: int) -> int:
    """``$__interval`` (s) of ``panel`` over 24 h as Grafana computes it: the panel's own
    ``maxDataPoints`` if it sets one (else ``max_data_points``, the panel's width), rounded,
    and never below the panel's minimum ``interval``."""
    iv = grafana_interval(24 * 3600, panel.get("maxDataPoints") or max_data_points)
    low = panel.get("interval") or ""
    m = re.fullmatch(r"(\d+)([smhd])", low)
    return max(iv, int(m.group(1)) * _UNITS[m.group(2)]) if m else iv


def panels(server: InfluxD, max_data_points: int) -> list[Panel]:
    out = []
    plain = _macros(grafana_interval(24 * 3600, max_data_points))
    for uid, d in build_dashboards(kinds=("influxdb",)).items():
        values = _all_values(server, d, plain)
        name = uid.removeprefix("wattspan-").removesuffix("-influxdb")
        items = [(p["title"], p["type"], [t["query"] for t in p.get("targets", [])],
                  _macros(panel_interval(p, max_data_points)))
                 for p in _walk(d["panels"])]  # fmt: skip
        items += [(f"annotation {a['name']}", "annotation", [a["query"]], plain)
                  for a in d["annotations"]["list"]]  # fmt: skip
        for title, ptype, qs, macros in items:
            if not qs:
                continue
            base = [naive(q) for q in qs]
            raws = [raw_spans(q) for q in qs] if ptype != "annotation" else []
            out.append(
                Panel(
                    name,
                    title,
                    ptype,
                    [_expand(q, macros, values) for q in qs],
                    [_expand(b, macros, values) for b in base if b is not None],
                    [_expand(r, macros, values) for r in raws if r is not None],
                    macros["$__interval"],
                )
            )
    return out


@dataclass
class Result:
    times: list[float]
    points: int
    max_per_series: int
    series: int
    body_bytes: int


def run_query(server: InfluxD, q: str, parse: bool) -> tuple[float, int, int, int, int]:
    """(seconds, points, max points in one series, series, body bytes) of one ``/query``."""
    body = f"q={_urlquote(q)}&db={DB}&epoch=ms".encode()
    t0 = time.perf_counter()
    status, resp = http(
        "POST",
        f"{server.url}/query",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=600,
    )
    dt = time.perf_counter() - t0
    if status != 200 or b'"error"' in resp[:2000]:
        raise RuntimeError(f"{q}: HTTP {status} {resp[:500]!r}")
    if parse:
        ss = _series(json.loads(resp))
        per = [len(s["values"]) for s in ss]
        return dt, sum(per), max(per, default=0), len(per), len(resp)
    # Raw selects return up to millions of rows: count them without building the objects.
    n_series = resp.count(b'"values":[[')
    points = resp.count(b"],[") + n_series
    return dt, points, -1, n_series, len(resp)


def _urlquote(q: str) -> str:
    import urllib.parse

    return urllib.parse.quote(q, safe="")


def measure(server: InfluxD, qs: list[str], reps: int, parse: bool) -> Result:
    times = []
    points = mx = nser = nbytes = 0
    for _ in range(reps):
        total = 0.0
        points = mx = nser = nbytes = 0
        for q in qs:
            dt, p, m, s, b = run_query(server, q, parse)
            total += dt
            points, mx, nser, nbytes = points + p, max(mx, m), nser + s, nbytes + b
        times.append(total)
    return Result(times, points, mx, nser, nbytes)


# -- main --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--cores", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--spans-per-s", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=1800, help="seconds of data per POST")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--baseline-reps", type=int, default=2)
    ap.add_argument(
        "--max-data-points", type=int, nargs="+", default=[1500, 2000],
        help="Grafana maxDataPoints to expand $__interval for (several: one pass each)",
    )  # fmt: skip
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--no-raw-spans", action="store_true",
        help="skip the spans_1m panels' raw-spans form (percentile() over every span)",
    )  # fmt: skip
    args = ap.parse_args()

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        server = InfluxD(Path(tmp) / "influxd", max_body_size=0)
        server.start()
        try:
            server.create_database(DB)
            st = load(server, args.hours, args.cores, args.gpus, args.spans_per_s, args.chunk)
            print(
                f"loaded {args.hours:g} h: {st['lines'] / 1e6:.2f} M lines, "
                f"{st['bytes'] / 2**20:.0f} MiB of line protocol in {st['load_s']:.0f} s "
                f"(building {st['build_s']:.0f} s); {args.cores} cores, {args.gpus} GPUs, "
                f"{args.spans_per_s} spans/s; spans_1m and spans_top built by the exporter's "
                f"SpanRollup in "
                f"{st['rollup_s']:.1f} s ({st['rollup_points']:,.0f} points written, "
                f"{st['top_points']:,.0f} of them spans_top seats)"
            )
            counts = {
                m: server.count(DB, m, f)
                for m, f in (
                    ("cpu", "utilization_ratio"),
                    ("spans", "duration_seconds"),
                    ("spans_1m", "count"),
                    ("spans_top", "duration_seconds"),
                    ("runs_1m", "count"),
                    ("ml", "value"),
                )
            }
            print("points stored: " + ", ".join(f"{m} {n:,}" for m, n in counts.items()))
            time.sleep(2)
            for mdp in args.max_data_points:
                report(server, mdp, args)
        finally:
            server.stop()
            du = sum(f.stat().st_size for f in (Path(tmp) / "influxd").rglob("*") if f.is_file())
            print(f"influxd data + wal on disk at the end: {du / 2**20:.0f} MiB")


def report(server: InfluxD, mdp: int, args: argparse.Namespace) -> None:
    interval = grafana_interval(24 * 3600, mdp)
    macros = _macros(interval)
    ps = panels(server, mdp)
    own = sorted({f"{p.title} {p.interval}" for p in ps if p.interval != macros["$__interval"]})
    print(
        f"\nmaxDataPoints {mdp}: $__interval = {macros['$__interval']} "
        f"({24 * 3600 // interval} buckets per series; panels with their own maxDataPoints or "
        f"minimum interval: {', '.join(own) or 'none'}); {len(ps)} panels, "
        f"{sum(len(p.queries) for p in ps)} targets, {args.reps} reps "
        f"(baseline {args.baseline_reps})"
    )
    # Warm-up: the first query of a series loads its index and TSM blocks.
    for p in ps:
        measure(server, p.queries, 1, True)
    cache: dict[tuple[str, ...], Result] = {}
    head = (
        f"{'dashboard / panel':<44}{'type':>11}{'p50 ms':>9}{'p95 ms':>9}{'points':>8}"
        f"{'max/ser':>8}{'series':>7}  {'raw points':>10}{'raw p50 ms':>11}{'x time':>8}"
        f"{'x pts':>11}  ok"
    )
    print(head)
    worst_p95, worst_pts, worst_ser = 0.0, 0, 0
    missed: list[str] = []
    fanout: list[str] = []
    for p in ps:
        r = measure(server, p.queries, args.reps, True)
        p50, p95 = percentile(r.times, 50), percentile(r.times, 95)
        raw = ""
        if not args.no_baseline and p.baseline:
            key = tuple(p.baseline)
            if key not in cache:
                cache[key] = measure(server, p.baseline, args.baseline_reps, False)
            b = cache[key]
            bt = percentile(b.times, 50)
            raw = (
                f"{b.points:>10,}{bt * 1e3:>11.0f}{bt / p50 if p50 else math.inf:>8.1f}"
                f"{b.points / r.points if r.points else math.inf:>11,.0f}"
            )
        reasons = []
        if r.max_per_series >= MAX_POINTS:
            reasons.append(f"{r.max_per_series:,} points in one series")
        if p95 >= MAX_P95:
            reasons.append(f"p95 {p95 * 1e3:.0f} ms")
        if reasons:
            missed.append(f"{p.dashboard} / {p.title}: {', '.join(reasons)}")
        if r.points >= MAX_POINTS:
            fanout.append(f"{p.dashboard} / {p.title}: {r.points:,} in {r.series} series")
        worst_p95, worst_pts = max(worst_p95, p95), max(worst_pts, r.points)
        worst_ser = max(worst_ser, r.max_per_series)
        name = f"{p.dashboard} / {p.title}"[:43]
        verdict = "MISS" if reasons else ("ok, >2k total" if r.points >= MAX_POINTS else "ok")
        print(
            f"{name:<44}{p.ptype:>11}{p50 * 1e3:>9.1f}{p95 * 1e3:>9.1f}{r.points:>8,}"
            f"{r.max_per_series:>8,}{r.series:>7}  {raw}  {verdict}"
        )
    print(
        f"worst p95 {worst_p95 * 1e3:.0f} ms (target < {MAX_P95 * 1e3:.0f}), most points in a "
        f"panel {worst_pts:,}, in one series {worst_ser:,} (target < {MAX_POINTS:,})"
    )
    if missed:
        print("target missed (per series, p95):\n  " + "\n  ".join(missed))
    else:
        print("target met (points per series, as maxDataPoints bounds them; p95)")
    if fanout:
        # maxDataPoints bounds each series; a panel's total grows with its GROUP BY tags.
        print("over 2,000 points per panel in total (series fan-out):\n  " + "\n  ".join(fanout))
    rolled = [p for p in ps if p.raw_spans]
    if rolled and not args.no_raw_spans:
        print(
            f"\nspans_1m vs the same panels over the raw spans ({args.baseline_reps} reps of the "
            "raw form)"
        )
        print(
            f"{'panel':<44}{'rollup p50':>11}{'p95 ms':>9}{'points':>8}"
            f"{'raw p50':>10}{'p95 ms':>9}{'points':>8}{'x time':>8}"
        )
        for p in rolled:
            r = measure(server, p.queries, args.reps, True)
            b = measure(server, p.raw_spans, args.baseline_reps, True)
            p50, bp50 = percentile(r.times, 50), percentile(b.times, 50)
            print(
                f"{(p.dashboard + ' / ' + p.title)[:43]:<44}{p50 * 1e3:>11.1f}"
                f"{percentile(r.times, 95) * 1e3:>9.1f}{r.points:>8,}{bp50 * 1e3:>10.1f}"
                f"{percentile(b.times, 95) * 1e3:>9.1f}{b.points:>8,}{bp50 / p50:>8.1f}"
            )


if __name__ == "__main__":
    main()
