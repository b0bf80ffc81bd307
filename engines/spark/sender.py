"""Spans to the agents: a task's to the agent of the node it ran on, the rest to the driver's.

The endpoint of an executor's node comes from a template with ``HOST`` in it
(``WATTSPAN_SPARK_ENDPOINT_TEMPLATE``, default ``HOST:4317``; a template without a scheme
takes the driver endpoint's). The driver's endpoint is the OpenTelemetry one
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``, else
``http://localhost:4317``), which ``wattspan run`` sets. Tasks of the ``driver`` executor
(local mode), and, unless a template is set, tasks of executors on the driver's own host,
go to the driver's endpoint.

Transport: the OpenTelemetry SDK's OTLP/gRPC exporter, so TLS, client certificates,
headers (the bearer token ``wattspan run`` hands over), compression and retries follow the
same ``OTEL_EXPORTER_OTLP_*`` variables as :mod:`wattspan.instrument`. Requests are built
here (:func:`~wattspan.engines.spark.spans.encode`) rather than from SDK span objects,
which cost several times more per span.

Spans wait per endpoint in batches of ``batch`` (512) and are sent when a batch is full, when
the oldest of them has waited ``flush_s`` (1 s; ``WATTSPAN_SPARK_FLUSH_S``) at the next
:meth:`SpanSender.flush_due` (the tailer calls it after each poll), or on
:meth:`SpanSender.flush`, from the caller's thread. The time limit is what gets a short
application's task spans to the agent while their executor still runs, so the agent can
find the executor's JVM (agent/executors.py) and watch it. A slow agent slows the tailer,
and the event log on disk is the buffer, so memory stays at one batch per endpoint. An
endpoint that fails has its batch dropped and counted (``dropped``), with one warning per
endpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from wattspan.engines.spark.spans import SpanOut, encode

__all__ = [
    "DEFAULT_FLUSH_S",
    "DEFAULT_TEMPLATE",
    "FLUSH_ENV",
    "TEMPLATE_ENV",
    "EndpointRouter",
    "SpanSender",
    "flush_interval",
]

log = logging.getLogger("wattspan.spark")

TEMPLATE_ENV = "WATTSPAN_SPARK_ENDPOINT_TEMPLATE"
DEFAULT_TEMPLATE = "HOST:4317"
FLUSH_ENV = "WATTSPAN_SPARK_FLUSH_S"
#: seconds a span waits at most for its batch to fill (then the next poll sends it)
DEFAULT_FLUSH_S = 1.0
# Endpoints (nodes) a sender keeps a channel to at once.
_MAX_ENDPOINTS = 1024


def flush_interval(value: float | None = None, env: Mapping[str, str] | None = None) -> float:
    """``value``, else ``WATTSPAN_SPARK_FLUSH_S``, else :data:`DEFAULT_FLUSH_S`; 0 sends
    what each poll read at once. A value that is not a number >= 0 is one clear error."""
    if value is None:
        e = os.environ if env is None else env
        text = e.get(FLUSH_ENV, "").strip()
        if not text:
            return DEFAULT_FLUSH_S
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{FLUSH_ENV}={text!r} is not a number of seconds") from None
        where = f"{FLUSH_ENV}={text!r}"
    else:
        where = f"flush_s={value!r}"
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{where} must be a finite number of seconds >= 0")
    return float(value)


def driver_endpoint(env: Mapping[str, str] | None = None) -> str:
    e = os.environ if env is None else env
    return (
        e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or e.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "http://localhost:4317"
    )


class EndpointRouter:
    """Where a span goes: :meth:`endpoint` of its ``host`` (None: the driver's)."""

    def __init__(
        self,
        driver: str | None = None,
        template: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        e = os.environ if env is None else env
        self.driver = driver or driver_endpoint(e)
        given = template or e.get(TEMPLATE_ENV) or ""
        self.explicit = bool(given)
        tpl = given or DEFAULT_TEMPLATE
        if "HOST" not in tpl:
            raise ValueError(f"{TEMPLATE_ENV}={tpl!r} must contain HOST (e.g. HOST:4317)")
        if "://" not in tpl:
            scheme = urlparse(self.driver).scheme if "://" in self.driver else "http"
            tpl = f"{scheme}://{tpl}"
        self.template = tpl
        self.driver_hosts: set[str] = set()

    def endpoint(self, host: str | None) -> str:
        if not host or (not self.explicit and host in self.driver_hosts):
            return self.driver
        return self.template.replace("HOST", host)


def _exporter_class() -> Any:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class _RequestExporter(OTLPSpanExporter):  # type: ignore[misc]
        """The SDK exporter (channel, credentials, headers, retries) fed ready requests."""

        def _translate_data(self, data: Any) -> Any:
            return data

        def _count_data(self, data: Any) -> int:
            return sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)

    return _RequestExporter


class SpanSender:
    """Batches :class:`SpanOut` per endpoint and exports them with ``resource``."""

    def __init__(
        self,
        resource: dict[str, Any],
        router: EndpointRouter | None = None,
        *,
        batch: int = 512,
        flush_s: float = DEFAULT_FLUSH_S,
        timeout_s: float = 10.0,
        driver_headers: str | None = None,
    ) -> None:
        self.resource = dict(resource)
        self.router = router or EndpointRouter()
        self.batch = batch
        self.flush_s = flush_s
        self.timeout_s = timeout_s
        # OTLP headers (``k=v,...``) for the driver's agent only: ``wattspan run`` hands its
        # embedded agent's token over this way, not through this process's environment.
        self.driver_headers = driver_headers
        self._pending: dict[str, list[SpanOut]] = {}
        # Endpoint -> monotonic time its oldest pending span was added.
        self._since: dict[str, float] = {}
        self._exporters: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self.sent: dict[str, int] = {}
        self.dropped = 0
        self.used: set[str] = set()

    def __call__(self, span: SpanOut) -> None:
        self.add(span)

    def add(self, span: SpanOut) -> None:
        ep = self.router.endpoint(span.host)
        full = None
        with self._lock:
            q = self._pending.get(ep)
            if q is None:
                q = self._pending[ep] = []
            if not q:
                # The clock is read once a batch, not once a span (conversion cost).
                self._since[ep] = time.monotonic()
            q.append(span)
            if len(q) >= self.batch:
                full, self._pending[ep] = q, []
        if full:
            self._send(ep, full)

    def endpoints(self) -> set[str]:
        """Every endpoint spans went (or were meant) to so far."""
        with self._lock:
            return self.used | set(self._pending)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for ep, spans in pending.items():
            if spans:
                self._send(ep, spans)

    def flush_due(self, now: float | None = None) -> int:
        """Sends the batches whose oldest span has waited ``flush_s`` or more; returns the
        number of spans sent (or dropped)."""
        t = time.monotonic() if now is None else now
        due: list[tuple[str, list[SpanOut]]] = []
        with self._lock:
            for ep, q in self._pending.items():
                if q and t - self._since.get(ep, t) >= self.flush_s:
                    due.append((ep, q))
                    self._pending[ep] = []
        for ep, spans in due:
            self._send(ep, spans)
        return sum(len(s) for _, s in due)

    def send_to(self, endpoint: str, spans: list[SpanOut]) -> bool:
        """Sends ``spans`` to one endpoint now; True when the agent took them."""
        return self._send(endpoint, spans)

    def _exporter(self, ep: str) -> Any:
        ex = self._exporters.get(ep)
        if ex is None:
            if len(self._exporters) >= _MAX_ENDPOINTS:
                old = next(iter(self._exporters))
                self._exporters.pop(old).shutdown()
            headers = self.driver_headers if ep == self.router.driver else None
            ex = self._exporters[ep] = _exporter_class()(
                endpoint=ep, timeout=self.timeout_s, headers=headers
            )
        return ex

    def _send(self, ep: str, spans: list[SpanOut]) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.used.add(ep)
        req = encode(spans, self.resource)
        try:
            ok = self._exporter(ep)._export(req) == SpanExportResult.SUCCESS
        except Exception as exc:  # an exporter that cannot even be built (bad TLS file...)
            log.debug("export to %s failed: %s", ep, exc)
            ok = False
        if ok:
            self.sent[ep] = self.sent.get(ep, 0) + len(spans)
            return True
        self.dropped += len(spans)
        if ep not in self._warned:
            self._warned.add(ep)
            log.warning(
                "wattspan: could not send %d Spark span(s) to the agent at %s; "
                "spans for it are dropped while it fails (this warning is shown once)",
                len(spans),
                ep,
            )
        return False

    def close(self) -> None:
        self.flush()
        for ex in self._exporters.values():
            with contextlib.suppress(Exception):  # exit path: nothing to do with it
                ex.shutdown()
        self._exporters.clear()
