"""HTTP transports for the two InfluxDB write APIs.

* v1 ``POST /write?db=&rp=&precision=`` (InfluxDB 1.x, and the 1.x compatibility endpoint of
  2.x/3.x): influxdb-client has no v1 write call, so this posts with urllib3 (already a
  dependency of influxdb-client) over one keep-alive connection.
* v2 ``POST /api/v2/write?org=&bucket=&precision=`` (InfluxDB 2.x/3.x, 1.8+, and
  VictoriaMetrics): influxdb-client's low-level ``WriteService``, i.e. the library's own
  request code, fed with bytes we already encoded (its batching ``WriteApi`` would re-encode,
  hold data in memory, and retry on its own: all three are the queue's job here).

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


class V1Transport:
    """``/write`` of InfluxDB 1.x (basic auth from username/password)."""

    def __init__(self, config: InfluxDBConfig) -> None:
        self._base = config.url.rstrip("/")
        query = {"db": config.database or "", "precision": V1_PRECISION[config.precision]}
        if config.retention_policy:
            query["rp"] = config.retention_policy
        self._write_url = f"{self._base}/write?{urllib.parse.urlencode(query)}"
        self._database = config.database or ""
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.username and config.password is not None:
            cred = f"{config.username}:{config.password.reveal()}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred).decode("ascii")
        # One connection: requests are strictly sequential (FIFO delivery).
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)

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
        name = self._database.replace("\\", "\\\\").replace('"', '\\"')
        q = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'})
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self._request(f"{self._base}/query", q.encode(), headers, timeout)

    def close(self) -> None:
        self._pool.clear()


class V2Transport:
    """``/api/v2/write`` through influxdb-client's ``WriteService`` (token auth)."""

    def __init__(self, config: InfluxDBConfig) -> None:
        # Imported here: importing influxdb_client costs ~0.3 s, only pay it when used.
        from influxdb_client import InfluxDBClient
        from influxdb_client.rest import ApiException
        from influxdb_client.service.write_service import WriteService

        self._api_exception = ApiException
        self._client = InfluxDBClient(
            url=config.url,
            # None means "no Authorization header" (VictoriaMetrics, auth disabled); the
            # library's annotation says str but it checks for a falsy token.
            token=config.token.reveal() if config.token is not None else None,  # type: ignore[arg-type]
            org=config.org,
            timeout=int(config.timeout * 1000),
            enable_gzip=False,  # we compress ourselves (level 1: far cheaper than its level 9)
            retries=False,  # retries are the exporter's job (queue + backoff)
            connection_pool_maxsize=1,
        )
        self._service = WriteService(self._client.api_client)
        self._org = config.org or ""
        self._bucket = config.bucket or ""
        self._precision = config.precision

    def post(self, body: bytes, *, gzipped: bool, timeout: float) -> Response:
        try:
            self._service.post_write(
                org=self._org,
                bucket=self._bucket,
                body=body,
                precision=self._precision,
                content_encoding="gzip" if gzipped else "identity",
                content_type="text/plain; charset=utf-8",
                _request_timeout=max(1, int(timeout * 1000)),  # milliseconds
            )
        except self._api_exception as e:
            if not e.status:  # influxdb-client reports TLS failures as status 0
                raise TransportError(f"{e.reason}".strip()) from e
            headers = {k.lower(): v for k, v in dict(e.headers or {}).items()}
            return Response(int(e.status), str(e.reason or ""), headers, _text(e.body))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransportError(describe_error(e)) from e
        return Response(204, "No Content")

    def create_database(self, timeout: float) -> Response:
        return Response(501, "Not Implemented", {}, "create_database is a v1 option")

    def close(self) -> None:
        self._client.close()


def make_transport(config: InfluxDBConfig) -> Transport:
    """The transport for ``config.api``."""
    return V1Transport(config) if config.api == "v1" else V2Transport(config)
