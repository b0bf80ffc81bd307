"""The process share of plain OpenTelemetry clients, which send no ``process.pid``: the
receiver finds the sending process from its end of the TCP connection.

The resolution is tested against real sockets held by real child processes (the walk of
``/proc/*/fd`` skips the agent's own process, so a client in the test process would prove
nothing), then end to end: a plain OTel SDK program against ``wattspan agent`` and under
``wattspan run``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port, wait_for
from tests.test_agent_daemon import AgentProc
from wattspan.agent.receiver.peers import PeerPids, parse_peer, proc_net_hex
from wattspan.agent.store import Store

# Connects to the port in argv[1] and reports its end of the connection; with argv[3] ==
# "fork" a forked grandchild inherits the socket, as multiprocessing's workers do. Holds the
# socket until stdin closes.
CLIENT = r"""
import json, os, socket, sys
host, port = sys.argv[2], int(sys.argv[1])
s = socket.create_connection((host, port))
info = {"pid": os.getpid(), "port": s.getsockname()[1]}
if len(sys.argv) > 3 and sys.argv[3] == "fork":
    worker = os.fork()
    if worker == 0:
        sys.stdin.read()
        os._exit(0)
    info["worker"] = worker
print(json.dumps(info), flush=True)
sys.stdin.read()
"""


class Client:
    """A child process holding the client end of a TCP connection to ``listener``."""

    def __init__(self, listener: socket.socket, *extra: str) -> None:
        host, port = listener.getsockname()[:2]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(port), host, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())
        # The accepted end stays open: the client's socket stays ESTABLISHED, as an OTLP
        # connection does while the receiver serves it.
        self.server_end, addr = listener.accept()
        host, port = addr[0], self.info["port"]
        # context.peer() of this connection, as grpc writes it.
        self.peer = f"ipv6:%5B{host}%5D:{port}" if ":" in host else f"ipv4:{host}:{port}"

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)
        self.server_end.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def test_peer_strings_as_grpc_writes_them() -> None:
    assert parse_peer("ipv4:127.0.0.1:4242") == (
        socket.AF_INET,
        socket.inet_aton("127.0.0.1"),
        4242,
    )
    v6 = socket.inet_pton(socket.AF_INET6, "::1")
    assert parse_peer("ipv6:%5B::1%5D:4242") == (socket.AF_INET6, v6, 4242)
    assert parse_peer("ipv6:[::1]:4242") == (socket.AF_INET6, v6, 4242)
    assert parse_peer("ipv6:%5Bfe80::1%25eth0%5D:1") is not None
    for junk in ("unix:", "unix:/run/x.sock", "ipv4:127.0.0.1", "ipv4:nope:1", "ipv4:1.2.3.4:0"):
        assert parse_peer(junk) is None


def test_proc_net_hex_matches_the_kernels_table(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with open("/proc/net/tcp") as f:
        locals_ = {line.split()[1] for line in f.readlines()[1:]}
    assert f"{proc_net_hex(socket.inet_aton('127.0.0.1'))}:{port:04X}" in locals_


def test_resolves_the_child_that_holds_the_client_socket(listener: socket.socket) -> None:
    client = Client(listener)
    try:
        peers = PeerPids(listener.getsockname()[1])
        assert peers.pid_of(client.peer) == client.pid
        assert peers.pid_of(client.peer) == client.pid
        assert peers.scans == 1, "a second request of the connection must hit the cache"
    finally:
        client.close()
    # The connection is gone: the cached pid must not outlive it (its port may be given to
    # another process's connection next).
    assert peers.pid_of(client.peer) is None
    assert peers.scans == 2


def test_ipv6_loopback_client() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.bind(("::1", 0))
    except OSError:
        s.close()
        pytest.skip("no ::1 on this host")
    s.listen()
    client = Client(s)
    try:
        assert client.peer.startswith("ipv6:%5B::1%5D:")
        assert PeerPids(s.getsockname()[1]).pid_of(client.peer) == client.pid
    finally:
        client.close()
        s.close()


def test_a_forked_worker_sharing_the_socket_does_not_take_it(listener: socket.socket) -> None:
    client = Client(listener, "fork")
    try:
        worker = int(client.info["worker"])
        assert os.path.exists(f"/proc/{worker}/fd")
        assert PeerPids(listener.getsockname()[1]).pid_of(client.peer) == client.pid
    finally:
        client.close()


def test_unresolvable_peers_are_remembered(listener: socket.socket) -> None:
    peers = PeerPids(listener.getsockname()[1])
    # A port no socket on this host has as its local end towards the listener: a client on
    # another host, or in another network namespace, looks like this.
    nobody = f"ipv4:127.0.0.1:{free_port()}"
    assert peers.pid_of(nobody) is None
    assert peers.pid_of(nobody) is None
    assert peers.scans == 1
    assert peers.pid_of("unix:") is None
    retrying = PeerPids(listener.getsockname()[1], negative_ttl_s=0.0)
    assert retrying.pid_of(nobody) is None
    assert retrying.pid_of(nobody) is None
    assert retrying.scans == 2


def test_an_in_process_client_gets_no_pid(listener: socket.socket) -> None:
    own = socket.create_connection(listener.getsockname())
    server_end, _ = listener.accept()
    try:
        peer = f"ipv4:127.0.0.1:{own.getsockname()[1]}"
        assert PeerPids(listener.getsockname()[1]).pid_of(peer) is None
    finally:
        own.close()
        server_end.close()


def test_the_fd_walk_is_bounded_in_time(listener: socket.socket) -> None:
    client = Client(listener)
    try:
        peers = PeerPids(listener.getsockname()[1], scan_budget_s=0.0)
        assert peers.pid_of(client.peer) is None
        assert peers.scan_timeouts == 1
    finally:
        client.close()


def test_the_cache_is_bounded(listener: socket.socket) -> None:
    peers = PeerPids(listener.getsockname()[1], max_entries=2)
    for _ in range(3):
        peers.pid_of(f"ipv4:127.0.0.1:{free_port()}")
    assert len(peers) == 2


# ---------------------------------------------------------------------------------------------
# end to end: plain OpenTelemetry SDK programs

# No process.pid anywhere: the resource is built by hand, and Resource.create (which merges
# OTEL_RESOURCE_ATTRIBUTES) is checked to add none either.
PLAIN = r"""
import json, os, sys, time
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

assert "process.pid" not in Resource.create({}).attributes
provider = TracerProvider(resource=Resource({"service.name": "plain"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
tracer = provider.get_tracer("plain")

def burn(seconds):
    t0 = time.process_time()
    x = 0
    while time.process_time() < t0 + seconds:
        x += 1
    return time.process_time() - t0

if sys.argv[1] == "wait":
    # The agent learns of this process from its first span and watches it from its next
    # sample on: announce, then wait until the test has seen it watched.
    with tracer.start_as_current_span("hello"):
        pass
    provider.force_flush()
    print(json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.readline()
else:
    print(json.dumps({"pid": os.getpid()}), flush=True)
with tracer.start_as_current_span("burn"):
    cpu = burn(float(sys.argv[2]))
# Alive and idle a little longer: the agent samples the process after the span's end too,
# so the end of the span is interpolated between samples rather than clamped to the last.
time.sleep(0.3)
provider.shutdown()
print(json.dumps({"burn_cpu": cpu}), flush=True)
"""


def _plain_env(endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    return env


def _assert_sampled_share(span_resources: dict[str, object], burn_cpu: float) -> None:
    r = span_resources
    assert r["cpu_source"] == "sampled"
    cpu = r["cpu_seconds"]
    assert isinstance(cpu, float)
    # Sampled every 0.1 s and interpolated: each edge of the burn blurs by up to an interval.
    assert 0.5 * burn_cpu < cpu < 1.2 * burn_cpu + 0.1
    share = r["process_cpu_share"]
    assert isinstance(share, float) and 0.0 < share <= 1.0


def test_plain_sdk_client_of_the_agent_gets_a_process_share(tmp_path: Path) -> None:
    otlp = free_port()
    agent = AgentProc(tmp_path, "--otlp-port", str(otlp), "--interval", "0.1")
    client = None
    try:
        agent.wait_ready()
        client = subprocess.Popen(
            [sys.executable, "-c", PLAIN, "wait", "1.0"],
            env=_plain_env(f"http://127.0.0.1:{otlp}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdin is not None
        pid = json.loads(client.stdout.readline())["pid"]
        wait_for(lambda: f'root="{pid}"' in agent.metrics(), 30, "the client's tree watched")
        client.stdin.write("go\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        burn_cpu = json.loads(out.strip().splitlines()[-1])["burn_cpu"]

        def attributed() -> bool:
            return any(s.name == "burn" and s.resources for s in Store(agent.store).spans())

        wait_for(attributed, 30, "the burn span attributed")
        metrics = agent.metrics()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        assert agent.stop() == 0
    spans = {s.name: s for s in Store(agent.store).spans()}
    assert spans["hello"].pid == pid and spans["burn"].pid == pid
    assert spans["burn"].service == "plain"
    _assert_sampled_share(spans["burn"].resources, burn_cpu)
    assert 'wattspan_receiver_peer_pids_resolved_total{receiver="otlp"} 2.0' in metrics
    assert 'wattspan_receiver_peer_pids_unresolved_total{receiver="otlp"} 0.0' in metrics


def test_plain_sdk_client_under_wattspan_run_gets_a_process_share(store_path: Path) -> None:
    # wattspan run watches its child from the start, so even the program's first span, sent
    # as it exits, has samples under it.
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "wattspan",
            "run",
            "--interval",
            "0.1",
            "--store",
            str(store_path),
            "--",
            sys.executable,
            "-c",
            PLAIN,
            "go",
            "1.0",
        ],
        env=_plain_env(None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    pid = lines[0]["pid"]
    burn_cpu = lines[-1]["burn_cpu"]
    (span,) = [s for s in Store(store_path).spans() if s.name == "burn"]
    assert span.pid == pid
    _assert_sampled_share(span.resources, burn_cpu)


def test_the_plain_program_really_sends_no_pid(tmp_path: Path) -> None:
    # The premise of the tests above: without the receiver's help this client's spans have
    # no pid. A receiver that does not resolve peers stores it with none.
    from wattspan.agent.receiver import OtlpReceiver
    from wattspan.agent.records import LogRecord, MetricPoint, Rejection, SpanRecord

    got: list[SpanRecord] = []

    class Keep:
        def on_spans(self, spans: list[SpanRecord]) -> Rejection | None:
            got.extend(spans)
            return None

        def on_metrics(self, points: list[MetricPoint]) -> Rejection | None:
            return None

        def on_logs(self, logs: list[LogRecord]) -> Rejection | None:
            return None

    with OtlpReceiver(Keep(), port=0, peer_pids=False) as r:
        p = subprocess.run(
            [sys.executable, "-c", PLAIN, "go", "0.01"],
            env=_plain_env(f"http://127.0.0.1:{r.port}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        stats = r.stats()
    assert [s.name for s in got] == ["burn"]
    assert got[0].pid is None and "process.pid" not in got[0].resource_attributes
    assert stats["peer_pids_resolved_total"] == 0
