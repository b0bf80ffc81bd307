"""Server and proxy error answers are summarised, never reflected (docs/influxdb.md).

A proxy in front of InfluxDB that echoes the request (headers included) in its error body
used to put the exporter's token into ``last_error``: a label on the unauthenticated
``/metrics``, ``wattspan status``, the logs and the dead-letter file. The server here is
such a proxy: stdlib ``http.server`` on a free loopback port, echoing every request header
in its body, its reason phrase and an ``X-Influxdb-Error`` header.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wattspan.agent.exporters.influxdb import InfluxDBExporter, parse_config
from wattspan.agent.exporters.influxdb.exporter import _error_text, _summary
from wattspan.agent.exporters.influxdb.transport import Response
from wattspan.agent.exporters.prometheus import AgentCollector, MetricsServer
from wattspan.agent.pipeline import Pipeline
from wattspan.collectors.base import Sample

#: (status, how the echo is wrapped), answered in this order; the last one repeats.
SCRIPT = [
    (500, "text"),  # plain text dump of the request
    (503, "json-v2"),  # {"code": ..., "message": <dump>}
    (502, "html"),  # a proxy's error page
    (429, "header"),  # the dump in X-Influxdb-Error, the body empty
    (400, "json-v1"),  # {"error": <dump>}: rejected, dead-lettered
]


class EchoServer:
    """Answers every POST per :data:`SCRIPT`, echoing the request line and headers."""

    def __init__(self) -> None:
        self.seen: list[str] = []  # the header dumps it echoed (proof they held the secret)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                dump = f"{self.requestline}\r\n{self.headers.as_string()}"
                outer.seen.append(dump)
                status, wrap = SCRIPT[min(len(outer.seen), len(SCRIPT)) - 1]
                one_line = " | ".join(line for line in dump.splitlines() if line)
                if wrap == "json-v1":
                    body = json.dumps({"error": dump})
                elif wrap == "json-v2":
                    body = json.dumps({"code": "internal error", "message": dump})
                elif wrap == "html":
                    body = f"<html><body><pre>{dump}</pre></body></html>"
                elif wrap == "header":
                    body = ""
                else:
                    body = dump
                raw = body.encode()
                # The reason phrase echoes the headers too: a proxy's phrase is its own text.
                self.send_response(status, one_line)
                if wrap == "header":
                    self.send_header("X-Influxdb-Error", one_line)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def _metrics_text(exporter: InfluxDBExporter) -> str:
    """``/metrics`` as the agent serves it, fetched over HTTP."""
    collector = AgentCollector(Pipeline([exporter]), stats=lambda: {"influxdb": exporter.stats()})
    server = MetricsServer(collector, host="127.0.0.1", port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            return r.read().decode()
    finally:
        server.stop()


def _run_script(exporter: InfluxDBExporter, server: EchoServer) -> None:
    exporter.write([Sample("m", 1_700_000_000.0, {"k": "v"}, {"x": 1.0})])
    deadline = time.monotonic() + 60  # bounds a hang only
    while exporter.stats()["dead_lettered_records_total"] < 1:
        assert time.monotonic() < deadline, exporter.stats()
        time.sleep(0.02)
    assert len(server.seen) == len(SCRIPT)


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_echoed_credentials_appear_nowhere(api, echo_server, tmp_path, caplog):
    token = "tok-" + secrets.token_urlsafe(48)
    password = "pw-" + secrets.token_hex(6)
    section: dict[str, object] = {
        "url": echo_server.url,
        "api": api,
        "queue_dir": str(tmp_path / "q"),
        "retry_initial_interval": 0.01,
        "retry_max_interval": 0.02,
        "flush_interval": 0.01,
    }
    if api == "v2":
        section |= {"bucket": "b", "org": "o", "token": token}
        forms = [token]
    else:
        section |= {"database": "d", "username": "agent", "password": password}
        forms = [password, base64.b64encode(f"agent:{password}".encode()).decode()]
    config = parse_config(section, state_dir=tmp_path, env={})

    caplog.set_level(logging.DEBUG)  # every logger, the HTTP libraries' too
    exp = InfluxDBExporter(config, host="n1")
    try:
        _run_script(exp, echo_server)
        stats = exp.stats()
        metrics = _metrics_text(exp)
        dead = Path(exp.dead_letter_path).read_text()
    finally:
        exp.close(0)

    # The secret really went out in a header and really came back in every answer...
    assert all(any(f in dump for f in forms) for dump in echo_server.seen)
    # ...and is nowhere the operator (or anyone reading /metrics) looks.
    logs = "\n".join(r.getMessage() + (r.exc_text or "") + str(r.args) for r in caplog.records)
    for where, text in [
        ("stats", str(stats)),
        ("/metrics", metrics),
        ("logs", logs),
        ("dead letters", dead),
    ]:
        for f in forms:
            assert f not in text, f"credential in {where}"
        for header in ("Authorization", "User-Agent", "Content-Length", "Host:"):
            assert header not in text.replace("<", ""), f"{header!r} in {where}"
    assert caplog.records  # the failures were logged

    # What is left is a bounded summary: status and the standard reason phrase.
    last = stats["last_error"]
    assert isinstance(last, str) and last.startswith("HTTP 400 Bad Request")
    assert len(last) <= 250
    entry = json.loads(dead.splitlines()[0])
    assert entry["status"] == 400 and entry["reason"] == last
    assert 'wattspan_exporter_last_error_info{exporter="influxdb",value="HTTP 400' in metrics


def test_plain_influxdb_errors_keep_their_message():
    """Sanitising must not cost the operator InfluxDB's own reasons, only their length."""
    msg = (
        'partial write: field type conflict: input field "f" on measurement "m" is type '
        "string, already exists as type float dropped=1"
    )
    r = Response(400, "Bad Request", {}, json.dumps({"error": msg}))
    assert _summary(r, _error_text(r), None) == f"HTTP 400 Bad Request: {msg}"
    long = "unable to parse 'm " + ",".join(f"f{i}=1.5" for i in range(100)) + "': bad"
    summary = _summary(Response(400, "Bad Request"), long, None)
    assert summary.startswith("HTTP 400 Bad Request: unable to parse 'm f0=1.5,f1=1.5")
    assert summary.endswith("...") and len(summary) <= 250
    # Long opaque runs (what tokens look like) go even without a known secret.
    opaque = "denied for " + secrets.token_urlsafe(60)
    assert _summary(Response(403), opaque, None) == "HTTP 403 Forbidden: denied for [redacted]"
