"""HTTP transports for the two InfluxDB write APIs.

* v1 ``POST /write?db=&rp=&precision=`` (InfluxDB 1.x, and the 1.x compatibility endpoint of
  2.x/3.x), HTTP basic auth.
* v2 ``POST /api/v2/write?org=&bucket=&precision=`` (InfluxDB 2.x/3.x, 1.8+, and
  VictoriaMetrics), ``Authorization: Token``.

Both post bytes we already encoded with urllib3 over one keep-alive connection (requests
are strictly sequential). influxdb-client is not used for v2 any more: its batching
``WriteApi`` would re-encode, hold data in memory and retry on its own (the queue's jobs
here), and even its low-level ``WriteService`` logs an error answer's raw body through the
root logger (``Cannot parse error response to JSON: ...``), which put whatever a proxy
echoed, the token included, into the agent's debug log.

Both return a :class:`Response` for every HTTP answer and raise :class:`TransportError` only
for network-level failures, so that the exporter classifies outcomes in one place. Neither
puts credentials into URLs (they go into the ``Authorization`` header), so URLs and error
messages are safe to log.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import urllib3

from wattspan.agent.exporters.influxdb.config import InfluxDBConfig

#: 1.x spells microseconds and nanoseconds "u" and "n" ("us" is silently taken as ns by 1.6).
V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_MAX_BODY_TEXT = 4096


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer. ``headers`` keys are lower-case; ``body`` is truncated text."""

    status: int
    reason: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class TransportError(Exception):
    """The request did not get an HTTP answer (refused, reset, timeout, DNS, TLS)."""


class Transport(Protocol):
    """What the exporter needs from a write API."""

    def post(self, body: bytes, *, gzipped: bool, timeout: float) -> Response:
        """POST line protocol (``timeout`` in seconds); raise TransportError without answer."""
        ...

    def create_database(self, timeout: float) -> Response:
        """v1 only: ``CREATE DATABASE`` (idempotent). v2 returns a 501 Response."""
        ...

    def close(self) -> None: ...


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of the most specific cause, e.g. ``ConnectionRefusedError: [Errno
    111] Connection refused`` rather than urllib3's wrapper around it."""
    best = exc
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__module__ == "builtins" and isinstance(e, OSError | TimeoutError):
            best = e
            break
        stack.extend([e.__cause__, e.__context__])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    text = str(best) or repr(best)
    return f"{type(best).__name__}: {text}"


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data[:_MAX_BODY_TEXT].decode("utf-8", "replace")
    return data[:_MAX_BODY_TEXT].strip()


class _Urllib3Transport:
    """One keep-alive connection to the server; subclasses say where and how to post."""

    def __init__(self, config: InfluxDBConfig) -> None:
        self._base = config.url.rstrip("/")
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        # One connection: requests are strictly sequential (FIFO delivery).
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        self._write_url = ""

    def _request(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Response:
        try:
            r = self._pool.request(
                "POST",
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,
                redirect=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransportError(describe_error(e)) from e
        return Response(
            status=r.status,
            reason=r.reason or "",
            headers={k.lower(): v for k, v in r.headers.items()},
            body=_text(r.data),
        )

    def post(self, body: bytes, *, gzipped: bool, timeout: float) -> Response:
        headers = self._headers
        if gzipped:
            headers = {**headers, "Content-Encoding": "gzip"}
        return self._request(self._write_url, body, headers, timeout)

    def create_database(self, timeout: float) -> Response:
        return Response(501, "Not Implemented", {}, "create_database is a v1 option")

    def close(self) -> None:
        self._pool.clear()


class V1Transport(_Urllib3Transport):
    """``/write`` of InfluxDB 1.x (basic auth from username/password)."""

    def __init__(self, config: InfluxDBConfig) -> None:
        super().__init__(config)
        query = {"db": config.database or "", "precision": V1_PRECISION[config.precision]}
        if config.retention_policy:
            query["rp"] = config.retention_policy
        self._write_url = f"{self._base}/write?{urllib.parse.urlencode(query)}"
        self._database = config.database or ""
        if config.username and config.password is not None:
            cred = f"{config.username}:{config.password.reveal()}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred).decode("ascii")

    def create_database(self, timeout: float) -> Response:
        name = self._database.replace("\\", "\\\\").replace('"', '\\"')
        q = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'})
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self._request(f"{self._base}/query", q.encode(), headers, timeout)


class V2Transport(_Urllib3Transport):
    """``/api/v2/write`` (token auth; no ``Authorization`` header without a token, for
    VictoriaMetrics or a server with auth disabled)."""

    def __init__(self, config: InfluxDBConfig) -> None:
        super().__init__(config)
        query = {"bucket": config.bucket or "", "precision": config.precision}
        if config.org:
            query = {"org": config.org, **query}
        self._write_url = f"{self._base}/api/v2/write?{urllib.parse.urlencode(query)}"
        if config.token is not None:
            self._headers["Authorization"] = "Token " + config.token.reveal()


def make_transport(config: InfluxDBConfig) -> Transport:
    """The transport for ``config.api``."""
    return V1Transport(config) if config.api == "v1" else V2Transport(config)
