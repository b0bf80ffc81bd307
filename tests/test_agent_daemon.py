"""``wattspan agent`` as a process: Prometheus scrape, systemd notify, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port, http_get, require_binary, wait_for
from tests.prometheus_server import PrometheusServer
from wattspan.agent.store import Store


class AgentProc:
    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.store = tmp / "agent.db"
        self.log = tmp / "agent.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wattspan",
                "agent",
                "--metrics-port",
                str(self.port),
                "--otlp-port",
                "0",
                "--interval",
                "0.2",
                "--store",
                str(self.store),
                *extra,
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def metrics(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        return body.decode()

    def wait_ready(self) -> None:
        wait_for(lambda: "wattspan_cpu_user_seconds_total" in self.metrics(), 60, "agent /metrics")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path)
    try:
        a.wait_ready()
        yield a
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


@pytest.mark.server
def test_prometheus_scrapes_the_agent(agent: AgentProc, tmp_path: Path) -> None:
    (tmp_path / "prom").mkdir()
    prom = PrometheusServer(tmp_path / "prom", [f"127.0.0.1:{agent.port}"])
    try:
        wait_for(lambda: prom.query("up")[0]["value"][1] == "1", 60, "target up")
        wait_for(lambda: len(prom.query("wattspan_cpu_user_seconds_total")) > 0, 60, "series")
        ncpu = os.cpu_count() or 1
        series = prom.query("wattspan_cpu_user_seconds_total")
        assert {s["metric"]["cpu"] for s in series} == {"total"} | {str(i) for i in range(ncpu)}
        # A counter: Prometheus computes a rate from two scrapes without resets.
        wait_for(
            lambda: len(prom.query("rate(wattspan_cpu_user_seconds_total[5s])")) > 0, 60, "rate"
        )
        mem = prom.query("wattspan_memory_total_bytes")
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
        assert float(mem[0]["value"][1]) == total
        energy = prom.query('wattspan_power_model_energy_joules_total{estimated="true"}')
        assert energy and float(energy[0]["value"][1]) >= 0
        ticks = prom.query("wattspan_scheduler_ticks_total")
        assert float(ticks[0]["value"][1]) > 0
        assert prom.query("wattspan_process_tree_rss_bytes")
    finally:
        prom.stop()


@pytest.mark.server
def test_promtool_accepts_the_exposition(agent: AgentProc) -> None:
    text = agent.metrics()
    p = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "" and p.stderr.strip() == ""  # not even a lint warning
    assert "# TYPE wattspan_power_model_energy_joules_total counter" in text


def test_sigterm_flushes_and_exits_0(agent: AgentProc) -> None:
    time.sleep(0.5)
    assert agent.stop() == 0
    store = Store(agent.store)
    run = store.runs(kind="agent")[0]
    assert run.end_ts is not None and run.exit_code == 0
    samples = store.samples(run.id, source="cpu")
    assert samples and samples[-1].ts <= run.end_ts
    log = agent.log.read_text()
    assert "agent started" in log and "Traceback" not in log
    # Its last line says what it took in (nothing was sent to it here).
    last = log.strip().splitlines()[-1]
    assert re.search(r"stopped in \d+\.\d\d s: received 0 spans \(0 rejected\)", last), last


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.split(":")[1], 16) == port:
                    out.append(local.split(":")[0])
    return out


def test_listens_on_loopback_only(agent: AgentProc) -> None:
    assert _listening(agent.port) == ["0100007F"]  # 127.0.0.1, and nothing else


def test_notifies_systemd_when_ready(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    a = AgentProc(
        tmp_path, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": ""}
    )
    try:
        msgs = [sock.recv(4096).decode()]
        assert "READY=1" in msgs[0]
        # Ready means serving: the endpoint answers at once.
        assert "wattspan_build_info" in a.metrics()
        msgs.append(sock.recv(4096).decode())
        assert msgs[1] == "WATCHDOG=1"
        assert a.stop() == 0
        rest = []
        sock.settimeout(5)
        while "STOPPING=1" not in rest:
            rest.append(sock.recv(4096).decode())
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
        sock.close()


def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "wattspan",
            "agent",
            "--metrics-port",
            str(port),
            "--otlp-port",
            "0",
            "--store",
            str(tmp_path / "a.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    busy.close()
    assert p.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def _limit_open_files() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_idle_otlp_connections_cannot_starve_metrics(tmp_path: Path) -> None:
    """300 idle OTLP connections against an agent allowed 256 open files: /metrics (the
    liveness probe) keeps answering, the excess is closed at once, the rest after
    otlp.max_connection_idle_seconds, and OTLP works again afterwards."""
    import grpc

    from tests.test_receiver import TRACE_METHOD, good_trace_request, raw_call

    port = free_port()
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wattspan",
            "agent",
            "--metrics-port",
            str(port),
            "--otlp-port",
            "0",
            "--store",
            str(tmp_path / "a.db"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "WATTSPAN_OTLP__MAX_CONNECTION_IDLE_SECONDS": "1.5"},
        preexec_fn=_limit_open_files,
    )
    conns: list[socket.socket] = []
    try:
        wait_for(lambda: "receiving OTLP/gRPC on" in log.read_text(), 60, "agent started")
        otlp_port = int(
            log.read_text().split("receiving OTLP/gRPC on ", 1)[1].split()[0].rsplit(":", 1)[1]
        )
        # 256 open files minus what the rest of the agent keeps in reserve.
        assert "at most 128 OTLP connections are accepted" in log.read_text()
        for _ in range(300):
            c = socket.create_connection(("127.0.0.1", otlp_port), timeout=5)
            c.sendall(_H2_PREFACE)  # a finished handshake, then silence
            conns.append(c)
        for _ in range(3):
            t0 = time.monotonic()
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200 and b"wattspan_build_info" in body
            assert time.monotonic() - t0 < 3
        deadline = time.monotonic() + 15
        for c in conns:
            c.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while c.recv(65536):  # SETTINGS, GOAWAY...
                    pass
            except TimeoutError:
                raise AssertionError("an idle OTLP connection was not closed") from None
            except OSError:
                pass  # reset: closed too
        ch = grpc.insecure_channel(f"127.0.0.1:{otlp_port}")
        raw_call(ch, TRACE_METHOD, good_trace_request("after-the-flood"))
        ch.close()
        assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        for c in conns:
            c.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "Too many open files" not in text
