"""Bearer tokens and TLS on both listeners: OTLP/gRPC and ``/metrics``; ``wattspan status``.

Real servers throughout: an in-process ``OtlpReceiver`` and ``MetricsServer`` on free
loopback ports, the OpenTelemetry SDK's OTLP exporter and raw grpc as clients, urllib for
HTTP(S), and a ``wattspan agent`` subprocess for the CLI and the wiring from config.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

from tests.procs import free_port, wait_for
from tests.test_receiver import (
    TRACE_METHOD,
    Collector,
    _export_one,
    _make_cert,
    good_trace_request,
    raw_call,
    status_of,
)
from wattspan.agent.errors import ConfigError
from wattspan.agent.exporters.prometheus import AgentCollector, MetricsServer
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.receiver import OtlpReceiver
from wattspan.agent.receiver.security import is_loopback, load_bearer_token

TOKEN = "s3cr3t-t0ken_for.tests~42"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")  # as `echo TOKEN > file` writes it: the newline is not part
    return p


@pytest.fixture
def collector() -> Collector:
    return Collector()


def _code_of(exc: BaseException) -> grpc.StatusCode:
    return exc.code()  # type: ignore[attr-defined,no-any-return]


# --- token sources ---------------------------------------------------------------------------


def test_token_from_file_or_env(token_file: Path) -> None:
    assert load_bearer_token("otlp", token_file, None) == TOKEN.encode()
    assert load_bearer_token("otlp", None, "MY_TOKEN", {"MY_TOKEN": TOKEN}) == TOKEN.encode()
    assert load_bearer_token("otlp", None, None) is None


@pytest.mark.parametrize(
    ("file_text", "env", "key", "says"),
    [
        (None, {}, "otlp.bearer_token_env", "MY_TOKEN is not set"),
        (None, {"MY_TOKEN": ""}, "otlp.bearer_token_env", "MY_TOKEN is not set or is empty"),
        ("\n  \n", None, "otlp.bearer_token_file", "holds no token"),
        (TOKEN + " extra", None, "otlp.bearer_token_file", "characters other than"),
        (TOKEN + "\u00e9", None, "otlp.bearer_token_file", "characters other than"),
    ],
)
def test_bad_tokens_are_config_errors_that_never_show_the_token(
    tmp_path: Path, file_text: str | None, env: dict[str, str] | None, key: str, says: str
) -> None:
    path = None
    if file_text is not None:
        path = tmp_path / "token"
        path.write_text(file_text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_bearer_token("otlp", path, "MY_TOKEN" if env is not None else None, env or {})
    assert info.value.key == key
    assert says in str(info.value)
    assert TOKEN not in str(info.value)


def test_token_file_missing_or_both_sources(tmp_path: Path, token_file: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_bearer_token("metrics", tmp_path / "nope", None)
    assert info.value.key == "metrics.bearer_token_file"
    with pytest.raises(ConfigError, match="not both") as info:
        load_bearer_token("metrics", token_file, "X", {"X": TOKEN})
    assert info.value.key == "metrics.bearer_token_file"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    assert not is_loopback("192.0.2.1")


# --- OTLP ------------------------------------------------------------------------------------


@pytest.fixture
def auth_receiver(collector: Collector, token_file: Path) -> Iterator[OtlpReceiver]:
    with OtlpReceiver(collector, port=0, bearer_token_file=token_file) as r:
        yield r


def test_sdk_exporter_sends_the_token_from_otel_headers(
    auth_receiver: OtlpReceiver, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variable users set: URL-encoded, as the OTel spec says for OTEL_EXPORTER_OTLP_HEADERS.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{TOKEN}")
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{auth_receiver.port}", insecure=True)
    assert _export_one(exporter, "with-token")
    assert [s.name for s in collector.spans] == ["with-token"]


def test_sdk_exporter_with_a_wrong_token_fails_at_once(
    auth_receiver: OtlpReceiver, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{auth_receiver.port}",
        insecure=True,
        headers={"authorization": "Bearer not-the-token"},
        timeout=10,
    )
    t0 = time.monotonic()
    assert not _export_one(exporter, "wrong")
    assert time.monotonic() - t0 < 3  # UNAUTHENTICATED is not retried
    assert collector.calls == 0
    assert auth_receiver.stats()["requests_unauthenticated_total"] == 1
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", TOKEN),),
        (("authorization", f"Bearer {TOKEN}x"),),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")),
    ],
    ids=["none", "wrong", "basic", "no-scheme", "longer", "two-headers"],
)
def test_raw_calls_without_the_token_are_unauthenticated(
    auth_receiver: OtlpReceiver, collector: Collector, metadata: tuple[tuple[str, str], ...]
) -> None:
    ch = grpc.insecure_channel(f"127.0.0.1:{auth_receiver.port}")
    code, details = status_of(
        lambda: raw_call(ch, TRACE_METHOD, good_trace_request(), metadata=metadata)
    )
    # Even a method that does not exist says nothing but this.
    code2, _ = status_of(lambda: raw_call(ch, "/no.Such/Method", b"", metadata=metadata))
    ch.close()
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
    assert code2 == grpc.StatusCode.UNAUTHENTICATED
    assert collector.calls == 0


def test_raw_call_with_the_token_any_scheme_case(
    auth_receiver: OtlpReceiver, collector: Collector
) -> None:
    ch = grpc.insecure_channel(f"127.0.0.1:{auth_receiver.port}")
    for scheme in ("Bearer", "bearer", "BEARER"):
        raw_call(
            ch,
            TRACE_METHOD,
            good_trace_request(scheme),
            metadata=(("authorization", f"{scheme} {TOKEN}"),),
        )
    ch.close()
    assert [s.name for s in collector.spans] == ["Bearer", "bearer", "BEARER"]


def test_token_over_tls(tmp_path: Path, collector: Collector, token_file: Path) -> None:
    cert, key, _, _ = _make_cert(tmp_path, "server", ca=True)
    with OtlpReceiver(
        collector, port=0, tls_cert_file=cert, tls_key_file=key, bearer_token_file=token_file
    ) as r:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        good = OTLPSpanExporter(
            endpoint=f"https://localhost:{r.port}",
            credentials=creds,
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert _export_one(good, "tls+token")
        no_token = OTLPSpanExporter(
            endpoint=f"https://localhost:{r.port}", credentials=creds, timeout=5
        )
        assert not _export_one(no_token, "tls-only")
    assert [s.name for s in collector.spans] == ["tls+token"]


def test_network_listener_without_auth_warns_once(
    collector: Collector, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wattspan.agent.receiver")
    with OtlpReceiver(collector, host="0.0.0.0", port=0):
        pass
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "without TLS or a bearer token" in warned[0].getMessage()
    caplog.clear()
    with OtlpReceiver(collector, host="0.0.0.0", port=0, bearer_token_file=token_file):
        pass
    with OtlpReceiver(collector, host="127.0.0.1", port=0):
        pass
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


# --- TLS file errors -------------------------------------------------------------------------


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    cert, key, _, server_key = _make_cert(tmp_path, "server", ca=True)
    _, other_key, _, _ = _make_cert(tmp_path, "other", ca=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
    )
    not_pem = tmp_path / "not.pem"
    not_pem.write_bytes(b"\x00\x01binary")
    from cryptography.hazmat.primitives import serialization

    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return {
        "encrypted": encrypted,
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "garbage": garbage,
        "not_pem": not_pem,
        "missing": tmp_path / "missing.pem",
    }


TLS_CASES = [
    (("cert", None, None), "tls_key_file", "needed with"),
    ((None, "key", None), "tls_cert_file", "needed with"),
    ((None, None, "cert"), "tls_client_ca_file", "needs"),
    (("garbage", "key", None), "tls_cert_file", "is not a PEM certificate"),
    (("not_pem", "key", None), "tls_cert_file", "is not a PEM file"),
    (("missing", "key", None), "tls_cert_file", "cannot read"),
    (("cert", "garbage", None), "tls_key_file", "is not an unencrypted PEM private key"),
    (("cert", "other_key", None), "tls_key_file", "matching"),
    # OpenSSL would prompt for the passphrase on the terminal: a daemon would hang.
    (("cert", "encrypted", None), "tls_key_file", "is encrypted"),
    (("cert", "key", "garbage"), "tls_client_ca_file", "is not a PEM CA certificate"),
    (("cert", "key", "key"), "tls_client_ca_file", "is not a PEM CA certificate"),
]


@pytest.mark.parametrize(("files", "key", "says"), TLS_CASES)
@pytest.mark.parametrize("section", ["otlp", "metrics"])
def test_tls_file_problems_name_the_key(
    pem: dict[str, Path],
    collector: Collector,
    section: str,
    files: tuple[str | None, str | None, str | None],
    key: str,
    says: str,
) -> None:
    cert, tls_key, ca = (pem[f] if f else None for f in files)
    with pytest.raises(ConfigError) as info:
        if section == "otlp":
            OtlpReceiver(
                collector, port=0, tls_cert_file=cert, tls_key_file=tls_key, tls_client_ca_file=ca
            )
        else:
            MetricsServer(
                AgentCollector(Pipeline()),
                port=0,
                tls_cert_file=cert,
                tls_key_file=tls_key,
                tls_client_ca_file=ca,
            )
    assert info.value.key == f"{section}.{key}"
    assert says in info.value.message


def _agent_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wattspan",
        "agent",
        "--metrics-port",
        "0",
        "--otlp-port",
        "0",
        "--store",
        str(tmp_path / "a.db"),
        *extra,
    ]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATTSPAN_", "OTEL_"))}
    env.update(extra)
    return env


def test_agent_with_a_bad_tls_file_exits_2_with_one_line(
    pem: dict[str, Path], tmp_path: Path
) -> None:
    p = subprocess.run(
        _agent_argv(tmp_path),
        env=_clean_env(
            WATTSPAN_OTLP__TLS_CERT_FILE=str(pem["garbage"]),
            WATTSPAN_OTLP__TLS_KEY_FILE=str(pem["key"]),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("wattspan INFO")]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"wattspan: config error: otlp.tls_cert_file: {pem['garbage']} is not a PEM certificate"
    )
    assert "cannot bind" not in p.stderr and "Traceback" not in p.stderr


# --- /metrics --------------------------------------------------------------------------------


def _get(
    url: str, token: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    try:
        with urllib.request.build_opener(*handlers).open(
            urllib.request.Request(url, headers=headers), timeout=5
        ) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def metrics(token_file: Path) -> Iterator[MetricsServer]:
    m = MetricsServer(AgentCollector(Pipeline()), port=0, bearer_token_file=token_file)
    m.start()
    yield m
    m.stop()


def test_metrics_needs_the_token(metrics: MetricsServer) -> None:
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    for token in (None, "wrong"):
        status, headers, body = _get(url, token)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert body == b"missing or wrong bearer token\n"
    status, _, body = _get(url, TOKEN)
    assert status == 200 and b"wattspan_build_info" in body


def test_healthz_needs_no_token_and_tells_nothing(metrics: MetricsServer) -> None:
    status, _, body = _get(f"http://127.0.0.1:{metrics.port}/healthz")
    assert (status, body) == (200, b"ok\n")


def test_metrics_over_tls_and_a_silent_client_blocks_nobody(
    tmp_path: Path, token_file: Path
) -> None:
    cert, key, _, _ = _make_cert(tmp_path, "server", ca=True)
    m = MetricsServer(
        AgentCollector(Pipeline()),
        port=0,
        tls_cert_file=cert,
        tls_key_file=key,
        bearer_token_file=token_file,
    )
    m.start()
    try:
        assert m.url == f"https://127.0.0.1:{m.port}/metrics"
        ctx = ssl.create_default_context(cafile=str(cert))
        # Connects and never starts the handshake: with the handshake in the accept loop
        # (prometheus_client's server) every scrape after this one would hang.
        silent = socket.create_connection(("127.0.0.1", m.port))
        t0 = time.monotonic()
        status, _, body = _get(m.url, TOKEN, ctx)
        assert status == 200 and b"wattspan_build_info" in body
        assert time.monotonic() - t0 < 2
        assert _get(m.url, None, ctx)[0] == 401
        # Plain HTTP to the TLS port gets no metrics.
        with pytest.raises((OSError, http.client.HTTPException)):
            _get(f"http://127.0.0.1:{m.port}/metrics", TOKEN)
        silent.close()
    finally:
        m.stop()


def test_metrics_mutual_tls(tmp_path: Path) -> None:
    ca, _, ca_cert, ca_key = _make_cert(tmp_path, "ca", ca=True)
    srv_cert, srv_key, _, _ = _make_cert(tmp_path, "server", issuer=(ca_cert, ca_key))
    cli_cert, cli_key, _, _ = _make_cert(tmp_path, "client", issuer=(ca_cert, ca_key))
    m = MetricsServer(
        AgentCollector(Pipeline()),
        port=0,
        tls_cert_file=srv_cert,
        tls_key_file=srv_key,
        tls_client_ca_file=ca,
    )
    m.start()
    try:
        with_cert = ssl.create_default_context(cafile=str(ca))
        with_cert.load_cert_chain(cli_cert, cli_key)
        assert _get(m.url, context=with_cert)[0] == 200
        without = ssl.create_default_context(cafile=str(ca))
        with pytest.raises(OSError):  # URLError or SSLError, depending on when it fails
            _get(m.url, context=without)
    finally:
        m.stop()


def _scrape_ok(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def test_metrics_connections_are_bounded_in_number_and_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wattspan.agent.exporters import prometheus

    monkeypatch.setattr(prometheus, "MAX_HTTP_CONNECTIONS", 4)
    monkeypatch.setattr(prometheus, "HTTP_TIMEOUT_S", 1.5)
    m = MetricsServer(AgentCollector(Pipeline()), port=0)
    m.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", m.port)) for _ in range(4)]
        # Four clients that connect and say nothing take every slot: the next is closed.
        wait_for(lambda: not _scrape_ok(m.url), 1.0, "a scrape refused while the slots are busy")
        assert m.refused_connections >= 1
        # ...for HTTP_TIMEOUT_S only: then they are dropped and scrapes are served again.
        wait_for(lambda: _scrape_ok(m.url), 5, "a scrape after the idle ones timed out")
        for s in idle:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the server
            s.close()
    finally:
        m.stop()


def test_metrics_network_listener_without_auth_warns(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wattspan.agent.exporters.prometheus")
    for kwargs in ({}, {"bearer_token_file": token_file}):
        m = MetricsServer(AgentCollector(Pipeline()), host="0.0.0.0", port=0, **kwargs)  # type: ignore[arg-type]
        m.start()
        m.stop()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "without TLS or a bearer token" in warned[0]


# --- the agent and `wattspan status` ---------------------------------------------------------


class Agent:
    """A ``wattspan agent`` subprocess; its ports are read from its log."""

    def __init__(self, tmp: Path, config: Path, env: dict[str, str]) -> None:
        self.log_path = tmp / "agent.log"
        self.proc = subprocess.Popen(
            _agent_argv(tmp, "--config", str(config), "--interval", "0.5"),
            env=_clean_env(**env),
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.metrics_port = self._port("serving Prometheus metrics on ", "/metrics")
        self.otlp_port = self._port("receiving OTLP/gRPC on ", "\n")

    def _port(self, before: str, after: str) -> int:
        found: list[int] = []

        def look() -> bool:
            text = self.log_path.read_text()
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {text}")
            if before not in text:
                return False
            found.append(int(text.split(before, 1)[1].split(after, 1)[0].rsplit(":", 1)[1]))
            return True

        wait_for(look, 60, before)
        return found[0]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log_path.read_text()


def _status(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", "status", "--config", str(config), *args],
        env=_clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def secured_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Path, Path]]:
    """One agent for the status tests: OTLP token from a file, /metrics over TLS with a token
    from an environment variable."""
    tmp = tmp_path_factory.mktemp("secured")
    cert, key, _, _ = _make_cert(tmp, "server", ca=True)
    (tmp / "otlp-token").write_text(TOKEN + "\n")
    config = tmp / "wattspan.toml"
    config.write_text(
        f"""[otlp]
bearer_token_file = "{tmp / "otlp-token"}"

[metrics]
tls_cert_file = "{cert}"
tls_key_file = "{key}"
bearer_token_env = "WATTSPAN_TEST_METRICS_TOKEN"
"""
    )
    agent = Agent(tmp, config, {"WATTSPAN_TEST_METRICS_TOKEN": "metrics-" + TOKEN})
    try:
        yield agent, config, tmp
    finally:
        log = agent.stop()
        assert "Traceback" not in log
        assert TOKEN not in log  # the tokens are never logged


def test_status_sends_the_token_over_tls(secured_agent: tuple[Agent, Path, Path]) -> None:
    agent, config, _ = secured_agent
    # A span through the real SDK with the OTLP token, so the counters have something.
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{agent.otlp_port}",
        insecure=True,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert _export_one(exporter, "through-the-agent")
    p = _status(
        config,
        "--metrics-port",
        str(agent.metrics_port),
        "--json",
        env={"WATTSPAN_TEST_METRICS_TOKEN": "metrics-" + TOKEN},
    )
    assert p.returncode == 0, p.stderr
    status: dict[str, Any] = json.loads(p.stdout)
    assert status["receiver:otlp"]["spans_accepted_total"] == 1
    assert status["receiver:otlp"]["requests_unauthenticated_total"] == 0


def test_status_without_the_token_says_so(secured_agent: tuple[Agent, Path, Path]) -> None:
    agent, config, tmp = secured_agent
    # Same TLS settings, no token.
    other = tmp / "no-token.toml"
    other.write_text(
        config.read_text().replace('bearer_token_env = "WATTSPAN_TEST_METRICS_TOKEN"\n', "")
    )
    p = _status(other, "--metrics-port", str(agent.metrics_port))
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "missing or wrong bearer token" in p.stderr
    assert "Traceback" not in p.stderr


def test_status_with_a_token_variable_unset_is_a_config_error(
    secured_agent: tuple[Agent, Path, Path],
) -> None:
    agent, config, _ = secured_agent
    p = _status(config, "--metrics-port", str(agent.metrics_port))
    assert p.returncode == 2
    assert p.stderr.strip() == (
        "wattspan: config error: metrics.bearer_token_env: environment variable "
        "WATTSPAN_TEST_METRICS_TOKEN is not set or is empty"
    )


def test_status_at_the_otlp_port_is_one_line(
    secured_agent: tuple[Agent, Path, Path], tmp_path: Path
) -> None:
    agent, _, _ = secured_agent
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    p = _status(plain, "--metrics-port", str(agent.otlp_port))
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert f"no wattspan agent at http://127.0.0.1:{agent.otlp_port}/metrics" in p.stderr


@pytest.mark.parametrize(
    "reply",
    [
        b"\x00\xff garbage \x17\x03" * 50,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\xff\xfe\x00\x01",
        b"",
    ],
    ids=["binary", "not-utf8-body", "closes"],
)
def test_status_at_a_garbage_port_is_one_line(tmp_path: Path, reply: bytes) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        srv.settimeout(30)
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    p = _status(plain, "--metrics-port", str(port))
    srv.close()
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("wattspan: no wattspan agent at") or p.stderr.startswith(
        "wattspan: no agent answering at"
    )


def test_status_of_a_free_port_is_one_line(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    p = _status(plain, "--metrics-port", str(free_port()))
    assert p.returncode == 1
    assert p.stderr.startswith("wattspan: no agent answering at") and p.stderr.count("\n") == 1


def test_status_finds_an_agent_on_a_port_the_kernel_picked(tmp_path: Path) -> None:
    """With ``metrics.port = 0`` the config cannot say where /metrics is: the agent records
    what it bound in its state dir, and ``status`` with the same config reads it there."""
    state = tmp_path / "state"
    config = tmp_path / "w.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\n[metrics]\nport = 0\n')
    record = state / "agent.json"
    agent = Agent(tmp_path, config, {})
    try:
        wait_for(record.exists, 10, "the agent's endpoints record")
        assert record.stat().st_mode & 0o777 == 0o600
        rec = json.loads(record.read_text())
        assert rec["pid"] == agent.proc.pid and rec["config"] == str(config.resolve())
        assert rec["metrics_url"].endswith(f":{agent.metrics_port}/metrics")
        assert rec["otlp_endpoint"].endswith(f":{agent.otlp_port}")
        p = _status(config, "--json")
        assert p.returncode == 0, p.stderr
        assert "receiver:otlp" in json.loads(p.stdout)
        # Another config is another agent's: this record is not its answer.
        other = tmp_path / "other.toml"
        other.write_text(config.read_text())
        q = _status(other)
        assert q.returncode == 1 and "metrics.port is 0" in q.stderr, q.stderr
    finally:
        log = agent.stop()
    assert "Traceback" not in log
    assert not record.exists()  # removed as the agent stopped
    # A record left by an agent that died (its pid is gone) is not believed either.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    rec["pid"] = int(dead.stdout)
    record.write_text(json.dumps(rec))
    p = _status(config)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("wattspan: metrics.port is 0") and "--metrics-port" in p.stderr
