"""Peak resident memory of ``wattspan agent`` under the worst legal OTLP load.

Run: ``python bench/bench_receiver_rss.py [--clients 6] [--duration 20] [--bound BYTES]``

Target: the agent stays under the deployed ``MemoryMax=256M`` (systemd unit) and the
DaemonSet's ``256Mi`` limit; the verdict uses 256 MB (decimal, the stricter reading).

The load: ``--clients`` threads, each on its own gRPC connection, send requests back to back
for ``--duration`` seconds: one ``ExportTraceServiceRequest`` just under
``otlp.max_message_bytes`` (4 MiB), of ~300k small attributes (``--attrs-per-span`` per
span, integer values). That is what costs the agent most per wire byte: a request decodes to
~20x its size (protobuf objects, attribute dicts, the store's rows). A request refused by the
in-flight bound (UNAVAILABLE) is resent after the server's RetryInfo delay, as the
OpenTelemetry SDKs do. VmRSS is read every 50 ms, the ingest's spans waiting for attribution
(``wattspan_ingest_spans_pending``) from ``/metrics`` every second.

Two agents are measured one after the other, with the same load:

* **bounded**: ``otlp.max_inflight_bytes`` at its default, or ``--bound``;
* **baseline**: ``WATTSPAN_OTLP__MAX_INFLIGHT_BYTES=2147483647``, i.e. no bound, which is how
  the receiver behaved before it had one.

With 4 MiB requests and the daemon's two receiver threads, the default bound (4 MiB, one
largest request at a time) admits one request at once; ``--bound 8388608`` shows two. What
the bound cannot reach is the memory a request costs after it is acknowledged (the store's
write, the spans waiting for attribution, which keep only the attributes attribution reads):
``--clients 1`` shows that floor.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import http_get, logged_port, machine, proc_rss_bytes, wattspan_cmd

TARGET_BYTES = 256 * 1000 * 1000  # MemoryMax=256M is 256 MiB; 256 MB is the stricter reading
MAX_MESSAGE = 4 * 1024 * 1024
MIB = 1024 * 1024
TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_OTLP = re.compile(rb"receiving OTLP/gRPC on https?://[^ ]*:(\d+)")
_METRICS = re.compile(rb"serving Prometheus metrics on https?://[^ ]*:(\d+)/metrics")
_PENDING = re.compile(r"^wattspan_ingest_spans_pending\{[^}]*\} ([0-9.e+]+)$", re.M)


def build_request(attrs_per_span: int, seed: int) -> bytes:
    """One request of ~250k integer attributes, as close under 4 MiB as whole spans allow."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "bench-receiver-rss"
    spans = rs.scope_spans.add().spans
    end = time.time_ns()
    template = trace_service_pb2.ExportTraceServiceRequest()
    one = template.resource_spans.add().scope_spans.add().spans.add()
    for k in range(attrs_per_span):
        one.attributes.add(key=f"a{k}").value.int_value = k
    span_bytes = len(one.SerializeToString()) + 40
    n = 0
    while len(req.SerializeToString()) + span_bytes < MAX_MESSAGE - 1024:
        s = spans.add()
        s.CopyFrom(one)
        s.trace_id = (seed * 1_000_003 + n + 1).to_bytes(16, "big")
        s.span_id = (seed * 1_000_003 + n + 1).to_bytes(8, "big")
        s.name = f"s{n}"
        s.start_time_unix_nano = end - 1_000_000_000
        s.end_time_unix_nano = end
        n += 1
    return req.SerializeToString()


def _retry_delay(err: grpc.RpcError) -> float | None:
    from google.rpc.error_details_pb2 import RetryInfo

    for key, value in err.trailing_metadata() or ():
        if key == "google.rpc.retryinfo-bin":
            info = RetryInfo.FromString(value)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _client(port: int, payload: bytes, stop: threading.Event, outcomes: Counter[str]) -> None:
    # A local subchannel pool: each client gets its own TCP connection, as separate
    # processes would, instead of grpc multiplexing them all onto one.
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    call = ch.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
    try:
        while not stop.is_set():
            try:
                call(payload, timeout=60)
                outcomes["OK"] += 1
            except grpc.RpcError as err:
                outcomes[err.code().name] += 1
                delay = _retry_delay(err)
                if delay:
                    stop.wait(delay)
    finally:
        ch.close()


def _pending_spans(metrics_port: int) -> int:
    """The ingest's spans waiting for attribution, from /metrics (0 if unreadable)."""
    try:
        text = http_get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2.0).decode()
    except OSError:
        return 0
    m = _PENDING.search(text)
    return int(float(m.group(1))) if m else 0


@dataclass
class Result:
    label: str
    request_bytes: int
    idle_rss: int
    peak_rss: int
    outcomes: Counter[str]
    pending_spans: int
    alive: bool
    tracebacks: int
    exit_code: int | None
    log_tail: str


def measure(label: str, env_extra: dict[str, str], args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="wattspan-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATTSPAN_")}
        env.update(XDG_DATA_HOME=f"{tmp}/data", XDG_STATE_HOME=f"{tmp}/state", **env_extra)
        log = Path(tmp) / "agent.log"
        argv = [
            *wattspan_cmd(),
            "agent",
            "--metrics-port",
            "0",
            "--otlp-port",
            "0",
            "--store",
            f"{tmp}/agent.db",
        ]
        with open(log, "wb") as logf:
            proc = subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT)
        try:
            port = logged_port(log, proc, _OTLP)
            metrics_port = logged_port(log, proc, _METRICS)
            time.sleep(2.0)  # the first ticks load what the agent loads lazily
            idle_rss = proc_rss_bytes(proc.pid)[0]
            payloads = [build_request(args.attrs_per_span, k) for k in range(args.clients)]
            stop = threading.Event()
            outcomes: Counter[str] = Counter()
            threads = [
                threading.Thread(target=_client, args=(port, p, stop, outcomes), daemon=True)
                for p in payloads
            ]
            peak = pending = 0
            t0 = next_scrape = time.monotonic()
            for t in threads:
                t.start()
            while (now := time.monotonic()) - t0 < args.duration and proc.poll() is None:
                peak = max(peak, proc_rss_bytes(proc.pid)[0])
                if now >= next_scrape:
                    pending = max(pending, _pending_spans(metrics_port))
                    next_scrape = now + 1.0
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join(70)
            alive = proc.poll() is None
            hwm = proc_rss_bytes(proc.pid)[1] if alive else 0
        finally:
            proc.terminate()
            proc.wait(30)
        text = log.read_text(errors="replace")
        return Result(
            label,
            len(payloads[0]),
            idle_rss,
            max(peak, hwm),
            outcomes,
            pending,
            alive,
            text.count("Traceback"),
            None if alive else proc.returncode,
            text[-1500:],
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=6, help="concurrent clients (6)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per agent (20)")
    ap.add_argument(
        "--bound", type=int, default=0, help="otlp.max_inflight_bytes to test (the default)"
    )
    ap.add_argument("--attrs-per-span", type=int, default=2500, help="attributes per span (2500)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    sample = build_request(args.attrs_per_span, 0)
    spans = trace_service_pb2.ExportTraceServiceRequest.FromString(sample).resource_spans[0]
    n_spans = len(spans.scope_spans[0].spans)
    print(
        f"load: {args.clients} clients x {len(sample):,} B requests "
        f"({n_spans} spans x {args.attrs_per_span} attributes = "
        f"{n_spans * args.attrs_per_span:,}), {args.duration:g} s per agent"
    )
    bound_env = {}
    from wattspan.agent.config import SCHEMA

    default = SCHEMA["otlp"]["max_inflight_bytes"][1]
    bound_label = f"bounded (default max_inflight_bytes {default})"
    if args.bound:
        bound_env = {"WATTSPAN_OTLP__MAX_INFLIGHT_BYTES": str(args.bound)}
        bound_label = f"bounded (max_inflight_bytes {args.bound})"
    results = [
        measure(bound_label, bound_env, args),
        measure(
            "baseline (WATTSPAN_OTLP__MAX_INFLIGHT_BYTES=2147483647)",
            {"WATTSPAN_OTLP__MAX_INFLIGHT_BYTES": "2147483647"},
            args,
        ),
    ]
    print()
    print(f"{'agent':58} {'idle MiB':>9} {'peak MiB':>9} {'peak MB':>8} {'pending':>8}  outcomes")
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
        note = "" if r.alive else f"  (agent died, exit {r.exit_code})"
        if r.tracebacks:
            note += f"  ({r.tracebacks} tracebacks in its log)"
        print(
            f"{r.label:58} {r.idle_rss / MIB:9.1f} {r.peak_rss / MIB:9.1f} "
            f"{r.peak_rss / 1e6:8.1f} {r.pending_spans:8d}  {outcomes}{note}"
        )
    for r in results:
        if r.tracebacks or not r.alive:
            print(f"\n{r.label}: end of its log:\n{r.log_tail}")
    bounded, baseline = results
    if not bounded.alive:
        met = "not measured (the agent died)"
    else:
        met = "target met" if bounded.peak_rss <= TARGET_BYTES else "target missed"
    print()
    print(
        f"peak RSS {bounded.peak_rss / 1e6:.1f} MB bounded vs {baseline.peak_rss / 1e6:.1f} MB "
        f"baseline; target <= 256 MB: {met}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
