"""Real servers for tests: start on free loopback ports with temporary data dirs, tear down.

Plain functions and classes (no pytest here) so that fixtures, benchmarks and ad-hoc
scripts can all use them. Every server:

* binds to 127.0.0.1 only, on a free port chosen at start (kept across ``restart``/
  ``stop``+``start`` so a client configured with its URL reconnects to the same address);
* keeps its data under the directory given to the constructor (kept across restarts);
* is waited for until its health endpoint answers, and killed on ``stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Self

INFLUXD = os.environ.get("WATTSPAN_TEST_INFLUXD", "influxd")
VICTORIA_METRICS = os.environ.get("WATTSPAN_TEST_VICTORIA_METRICS", "victoria-metrics")


def which(binary: str) -> str | None:
    """Absolute path of ``binary`` (or None): fixtures skip when a server is not installed."""
    return shutil.which(binary)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request with the stdlib; returns (status, body) for any status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until_up(
    url: str, *, ok: tuple[int, ...], timeout: float, proc: subprocess.Popen[bytes]
) -> None:
    """Poll ``url`` until it answers with a status in ``ok``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            status, _ = http("GET", url, timeout=1.0)
            if status in ok:
                return
            last = status
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout:g}s (last: {last})")


class _Server:
    """Process management shared by the servers below."""

    name = "server"
    health_path = "/"
    health_ok: tuple[int, ...] = (200,)

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        """Start (again) on the same port and data dir; return once healthy."""
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the test run does not hit it first
            )
        finally:
            log.close()
        try:
            wait_until_up(
                self.url + self.health_path, ok=self.health_ok, timeout=timeout, proc=self.proc
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; wait for the exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL (a crash, not a shutdown)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's output, for assertion messages."""
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InfluxD(_Server):
    """InfluxDB 1.x (``influxd run -config``): HTTP and RPC on free loopback ports, no
    UDP/Graphite/collectd/OpenTSDB listeners, no reporting, no self-monitoring database.

    ``max_body_size`` (bytes) sets ``[http] max-body-size`` (413 above it; 0 = unlimited).
    """

    name = "influxd"
    health_path = "/ping"
    health_ok = (204,)

    def __init__(
        self, base_dir: str | os.PathLike[str], *, max_body_size: int = 25_000_000
    ) -> None:
        super().__init__(base_dir)
        self.rpc_port = free_port()
        self.max_body_size = max_body_size
        self.config_path = self.base_dir / "influxd.conf"

    def write_config(self) -> None:
        d = self.base_dir
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false
  index-version = "inmem"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = {self.max_body_size}

[logging]
  level = "warn"

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""
        )

    def command(self) -> list[str]:
        self.write_config()
        return [INFLUXD, "run", "-config", str(self.config_path)]

    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        """Run InfluxQL; returns the decoded JSON (raises on an ``error`` in it)."""
        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        status, body = http(
            "POST",
            f"{self.url}/query",
            body=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        data = json.loads(body or b"{}")
        if status != 200 or "error" in data or any("error" in r for r in data.get("results", [])):
            raise RuntimeError(f"InfluxQL {q!r} failed: HTTP {status} {body[:500]!r}")
        return data

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def write_lines(self, db: str, body: bytes, *, precision: str = "n") -> tuple[int, bytes]:
        """POST line protocol to /write as-is; returns (status, body)."""
        q = urllib.parse.urlencode({"db": db, "precision": precision})
        return http("POST", f"{self.url}/write?{q}", body=body)

    def rows(self, db: str, measurement: str) -> list[dict[str, Any]]:
        """``SELECT * FROM measurement`` as dicts (column -> value, ``time`` in ns).

        Tags and fields are both columns; absent ones are ``None``.
        """
        ident = measurement.replace("\\", "\\\\").replace('"', '\\"')
        data = self.query(f'SELECT * FROM "{ident}"', db=db)
        out: list[dict[str, Any]] = []
        for result in data.get("results", []):
            for series in result.get("series", []) or []:
                cols = series["columns"]
                out.extend(dict(zip(cols, values, strict=True)) for values in series["values"])
        return out

    def count(self, db: str, measurement: str, field: str) -> int:
        """Number of points with ``field`` set (0 if the measurement does not exist)."""
        data = self.query(f'SELECT COUNT("{field}") FROM "{measurement}"', db=db)
        for result in data.get("results", []):
            for series in result.get("series", []) or []:
                return int(series["values"][0][1])
        return 0


class VictoriaMetrics(_Server):
    """Single-node VictoriaMetrics; accepts InfluxDB line protocol on ``/write`` and
    ``/api/v2/write`` (metric name ``<measurement>_<field>``, tags become labels)."""

    name = "victoria-metrics"
    health_path = "/health"
    health_ok = (200,)

    def command(self) -> list[str]:
        return [
            VICTORIA_METRICS,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.base_dir / 'data'}",
            "-retentionPeriod=100y",  # test timestamps may be far in the past
            "-search.disableCache",
            "-loggerLevel=ERROR",
        ]

    def force_flush(self) -> None:
        """Make everything ingested so far visible to queries."""
        http("GET", f"{self.url}/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """``/api/v1/export`` for a series selector: [{metric: {...}, values, timestamps}]."""
        self.force_flush()
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, body = http("GET", f"{self.url}/api/v1/export?{q}")
        if status != 200:
            raise RuntimeError(f"export failed: HTTP {status} {body[:500]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]
