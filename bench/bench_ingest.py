"""Receiver ingest: spans per second through receive, attribution and store.

A second process replays pre-encoded OTLP ``ExportTraceServiceRequest`` messages (512 spans
each, attributes like an instrumented pipeline's) as fast as the agent accepts them. The
agent is a real ``wattspan agent`` process with its default collectors and the embedded
store. We report:

* wall throughput: spans acknowledged per second, and spans attributed per second;
* spans per agent core: spans / CPU seconds the agent process used (the issue's target,
  >= 50k spans/s per core), measured from /proc/PID/stat;
* the same replay against a bare grpc server that only parses the request (the floor set
  by grpcio + protobuf on this machine), as a peer ratio.

Usage: python bench/bench_ingest.py [--requests 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import free_port, http_get, proc_cpu_seconds, wait_http

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def encode_requests(n_requests: int, spans_per_request: int, pid: int) -> list[bytes]:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    def kv(k: str, v: object) -> common_pb2.KeyValue:
        if isinstance(v, int):
            return common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(int_value=v))
        return common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=str(v)))

    out = []
    now = time.time_ns()
    for r in range(n_requests):
        spans = []
        for i in range(spans_per_request):
            start = now - 2_000_000_000 + i * 1000
            spans.append(
                trace_pb2.Span(
                    trace_id=(r + 1).to_bytes(16, "big"),
                    span_id=(r * spans_per_request + i + 1).to_bytes(8, "big"),
                    parent_span_id=(r * spans_per_request + 1).to_bytes(8, "big") if i else b"",
                    name=f"stage-{i % 8}",
                    kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
                    start_time_unix_nano=start,
                    end_time_unix_nano=start + 500_000,
                    attributes=[
                        kv("wattspan.items", 100),
                        kv("stage.index", i),
                        kv("pipeline", "bench"),
                    ],
                )
            )
        req = trace_service_pb2.ExportTraceServiceRequest(
            resource_spans=[
                trace_pb2.ResourceSpans(
                    resource=resource_pb2.Resource(
                        attributes=[kv("service.name", "bench"), kv("process.pid", pid)]
                    ),
                    scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
                )
            ]
        )
        out.append(req.SerializeToString())
    return out


def replay(target: str, payloads: list[bytes], concurrency: int) -> float:
    """Sends every payload; returns the wall seconds until the last was acknowledged."""
    import grpc

    channel = grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    call = channel.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
    grpc.channel_ready_future(channel).result(timeout=30)
    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda p: call(p, timeout=120), payloads))
    return time.perf_counter() - t0


def client_main(args: argparse.Namespace) -> None:
    payloads = encode_requests(args.requests, args.spans, os.getpid())
    print(json.dumps({"wall": replay(args.target, payloads, args.concurrency)}), flush=True)


def run_client(target: str, args: argparse.Namespace) -> float:
    p = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            "--target",
            target,
            "--requests",
            str(args.requests),
            "--spans",
            str(args.spans),
            "--concurrency",
            str(args.concurrency),
        ],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"replay client failed:\n{p.stderr[-3000:]}")
    return float(json.loads(p.stdout.strip().splitlines()[-1])["wall"])


def metric(port: int, name: str) -> float:
    for line in http_get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def bench_agent(args: argparse.Namespace) -> dict[str, float]:
    total = args.requests * args.spans
    with tempfile.TemporaryDirectory() as tmp:
        otlp, mport = free_port(), free_port()
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wattspan",
                "agent",
                "--otlp-port",
                str(otlp),
                "--metrics-port",
                str(mport),
                "--store",
                f"{tmp}/s.db",
                "--log-level",
                "warning",
            ],
            env={**os.environ, "XDG_STATE_HOME": tmp},
        )
        try:
            wait_http(f"http://127.0.0.1:{mport}/metrics", timeout=60)
            cpu0 = proc_cpu_seconds(agent.pid)
            t0 = time.perf_counter()
            wall = run_client(f"127.0.0.1:{otlp}", args)
            acked = time.perf_counter() - t0
            # Poll gently: every scrape renders the exposition, CPU the agent is charged for.
            while metric(mport, "wattspan_ingest_spans_attributed_total") < total:
                time.sleep(0.25)
            attributed = time.perf_counter() - t0
            cpu = proc_cpu_seconds(agent.pid) - cpu0
        finally:
            agent.terminate()
            agent.wait(60)
    return {
        "spans": total,
        "client_wall_s": wall,
        "acked_wall_s": acked,
        "attributed_wall_s": attributed,
        "agent_cpu_s": cpu,
    }


def bench_bare(args: argparse.Namespace) -> dict[str, float]:
    """A grpc server that parses each request and answers: the floor for any receiver."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    def handle(raw: bytes, ctx: object) -> bytes:
        trace_service_pb2.ExportTraceServiceRequest.FromString(raw)
        return b""

    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(handle)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cpu0 = time.process_time()
    wall = run_client(f"127.0.0.1:{port}", args)
    cpu = time.process_time() - cpu0
    server.stop(1)
    return {"spans": args.requests * args.spans, "client_wall_s": wall, "server_cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return
    bare = bench_bare(args)
    agent = bench_agent(args)
    n = agent["spans"]
    per_core = n / agent["agent_cpu_s"]
    bare_per_core = n / bare["server_cpu_s"]
    print(
        f"spans: {n} in {args.requests} requests of {args.spans}, concurrency "
        f"{args.concurrency}, {os.cpu_count()} cores"
    )
    print(
        f"bare grpc+protobuf parse : {n / bare['client_wall_s']:>10,.0f} spans/s wall, "
        f"{bare_per_core:>10,.0f} spans/s per core"
    )
    print(f"wattspan agent acked     : {n / agent['acked_wall_s']:>10,.0f} spans/s wall")
    print(
        f"wattspan agent attributed: {n / agent['attributed_wall_s']:>10,.0f} spans/s wall, "
        f"{per_core:>10,.0f} spans/s per agent core "
        f"({agent['agent_cpu_s']:.2f} CPU s)"
    )
    print(f"ratio agent/bare per core: {per_core / bare_per_core:.3f}")
    verdict = "target met" if per_core >= 50_000 else "target missed"
    print(f"target >= 50,000 spans/s per agent core: {verdict}")


if __name__ == "__main__":
    main()
