"""The OTLP/gRPC receiver: ``TraceService``, ``MetricsService`` and ``LogsService`` ``Export``.

Why the services are registered by hand instead of with the generated
``add_*Servicer_to_server`` helpers: those register ``Request.FromString`` as the request
deserializer, and grpcio turns any deserializer exception into ``INTERNAL: Exception
deserializing request!``. OTLP clients must not retry a malformed request, and ``INTERNAL`` is
not a code that tells them so. We register the same fully-qualified method names (taken from
the generated descriptors) with a raw-bytes deserializer and parse inside the handler, where a
parse failure becomes ``INVALID_ARGUMENT``.

Status codes returned (OTLP/gRPC spec, "Failures"):

* ``OK`` - the handler returned, i.e. the agent durably accepted the records; when some items
  were dropped by validation, the response carries a ``partial_success`` with the count and a
  message (OTLP clients must not retry those).
* ``INVALID_ARGUMENT`` - the bytes are not a valid protobuf message of the request type
  (including invalid UTF-8 in a ``string`` field, which protobuf rejects). Not retryable.
* ``RESOURCE_EXHAUSTED`` - the (decompressed) message is larger than ``max_message_bytes``;
  produced by grpc itself before our code runs.
* ``UNAVAILABLE`` - the handler raised (e.g. the disk queue is full); retryable.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from wattspan.agent.logthrottle import LogThrottle
from wattspan.agent.receiver import convert
from wattspan.agent.records import LogRecord, MetricPoint, SpanRecord

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "STAT_KEYS", "OtlpHandler", "OtlpReceiver"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""grpc's own default receive limit, and the OTel Collector's."""

STAT_KEYS = (
    "requests_total",
    "requests_invalid_total",
    "requests_failed_total",
    "spans_received_total",
    "spans_rejected_total",
    "spans_accepted_total",
    "metric_points_received_total",
    "metric_points_rejected_total",
    "metric_points_skipped_total",
    "metric_points_accepted_total",
    "logs_received_total",
    "logs_rejected_total",
    "logs_accepted_total",
)
"""Keys of :meth:`OtlpReceiver.stats`, all monotonically increasing counters."""

_INVALID_LOG_INTERVAL_S = 60.0


@runtime_checkable
class OtlpHandler(Protocol):
    """Where the receiver delivers records.

    Methods are called from the receiver's worker threads, possibly concurrently, so they must
    be thread-safe. Returning means the records are durably accepted (queued on disk or
    equivalent): only then does the client get ``OK``. Raising makes the client get
    ``UNAVAILABLE`` and retry the whole request later. Lists are never empty.
    """

    def on_spans(self, spans: list[SpanRecord]) -> None: ...

    def on_metrics(self, points: list[MetricPoint]) -> None: ...

    def on_logs(self, logs: list[LogRecord]) -> None: ...


def _service_name(module: Any, service: str) -> str:
    # e.g. "opentelemetry.proto.collector.trace.v1.TraceService", from the generated code so a
    # proto package rename cannot silently break routing.
    return module.DESCRIPTOR.services_by_name[service].full_name


def _format_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"  # IPv6 literal
    return f"{host}:{port}"


class OtlpReceiver:
    """An OTLP/gRPC server delivering converted records to ``handler``.

    Args:
        handler: receives the records (see :class:`OtlpHandler`).
        host: interface to bind; ``"0.0.0.0"`` or ``"::"`` for all.
        port: TCP port; 0 picks a free one (read it from :attr:`port` after :meth:`start`).
        max_message_bytes: largest accepted request, after decompression, in bytes.
        tls_cert_file, tls_key_file: PEM server certificate chain and private key; both or
            neither. With them the server speaks TLS only.
        tls_client_ca_file: PEM CA bundle; when given, clients must present a certificate
            signed by it (mutual TLS).
        max_workers: threads running the handler; bounds concurrent handler calls.

    gzip-compressed requests are accepted (grpc decompresses them). The server cannot be
    restarted after :meth:`stop`; create a new one.
    """

    def __init__(
        self,
        handler: OtlpHandler,
        host: str = "127.0.0.1",
        port: int = 4317,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_client_ca_file: str | os.PathLike[str] | None = None,
        max_workers: int = 4,
    ) -> None:
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if tls_client_ca_file is not None and tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if max_workers <= 0:
            raise ValueError(f"max_workers must be positive, got {max_workers}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._handler = handler
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._tls = (tls_cert_file, tls_key_file, tls_client_ca_file)
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._invalid_log = LogThrottle(_INVALID_LOG_INTERVAL_S)

    # ----------------------------------------------------------------------------------------
    # lifecycle

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the configured one."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as a client would dial it."""
        return _format_address(self._host, self._port)

    def start(self) -> None:
        """Bind and start serving. Raises ``OSError`` if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("OtlpReceiver already started")
        self._executor = ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="wattspan-otlp"
        )
        server = grpc.server(
            self._executor,
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                # grpc enables SO_REUSEPORT by default on Linux: a second agent would then
                # "bind" the same port and steal half the connections instead of failing.
                ("grpc.so_reuseport", 0),
            ],
        )
        server.add_generic_rpc_handlers(self._generic_handlers())
        address = _format_address(self._host, self._port)
        try:
            if self._tls[0] is not None:
                bound = server.add_secure_port(address, self._server_credentials())
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio >= 1.5x raises instead of returning 0
            bound = 0
            cause: BaseException | None = exc
        else:
            cause = None
        if not bound:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise OSError(f"OTLP receiver cannot bind {address}") from cause
        self._port = bound
        server.start()
        self._server = server
        log.info("OTLP/gRPC receiver listening on %s", self.address)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs; wait up to ``grace`` seconds for running ones, then cancel them.

        Returns once the server has fully stopped. Safe to call twice.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace).wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace=1.0)

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters named in :data:`STAT_KEYS`.

        ``*_received_total`` counts items in well-formed requests; ``*_rejected_total`` those
        dropped by validation (reported to the client as partial success);
        ``*_accepted_total`` those the handler accepted. Items of requests whose handler
        raised are received but neither rejected nor accepted (the client retries them).
        ``metric_points_*`` count OTLP data points, before histograms are flattened.
        """
        with self._stats_lock:
            return dict(self._stats)

    # ----------------------------------------------------------------------------------------
    # internals

    def _server_credentials(self) -> grpc.ServerCredentials:
        cert_file, key_file, ca_file = self._tls
        with open(cert_file, "rb") as f:  # type: ignore[arg-type]
            cert = f.read()
        with open(key_file, "rb") as f:  # type: ignore[arg-type]
            key = f.read()
        root: bytes | None = None
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                root = f.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=root, require_client_auth=root is not None
        )

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for key, n in increments.items():
                self._stats[key] += n

    def _generic_handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        def service(
            module: Any,
            name: str,
            request_type: Any,
            response_type: Any,
            export: Callable[[Any, Any], Any],
        ) -> grpc.GenericRpcHandler:
            method = grpc.unary_unary_rpc_method_handler(
                self._wrap(request_type, export, name),
                request_deserializer=None,  # raw bytes: we parse, see module docstring
                response_serializer=response_type.SerializeToString,
            )
            return grpc.method_handlers_generic_handler(
                _service_name(module, name), {"Export": method}
            )

        return (
            service(
                trace_service_pb2,
                "TraceService",
                trace_service_pb2.ExportTraceServiceRequest,
                trace_service_pb2.ExportTraceServiceResponse,
                self._export_traces,
            ),
            service(
                metrics_service_pb2,
                "MetricsService",
                metrics_service_pb2.ExportMetricsServiceRequest,
                metrics_service_pb2.ExportMetricsServiceResponse,
                self._export_metrics,
            ),
            service(
                logs_service_pb2,
                "LogsService",
                logs_service_pb2.ExportLogsServiceRequest,
                logs_service_pb2.ExportLogsServiceResponse,
                self._export_logs,
            ),
        )

    def _wrap(
        self, request_type: Any, export: Callable[[Any, Any], Any], service: str
    ) -> Callable[[bytes, grpc.ServicerContext], Any]:
        def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
            self._count(requests_total=1)
            try:
                request = request_type.FromString(raw)
            except Exception as exc:  # DecodeError, or RecursionError on absurd nesting
                self._count(requests_invalid_total=1)
                self._log_invalid(service, context, exc)
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"cannot parse {request_type.DESCRIPTOR.full_name}: {exc}",
                )
            return export(request, context)

        return handle

    def _log_invalid(self, service: str, context: grpc.ServicerContext, exc: Exception) -> None:
        # A broken client retrying in a loop must not flood the agent's log: one line a minute.
        with self._stats_lock:
            n = self._invalid_log.hit()
        if not n:
            return
        suppressed = n - 1
        log.warning(
            "OTLP %s: malformed request from %s rejected with INVALID_ARGUMENT: %s%s",
            service,
            context.peer(),
            exc,
            f" ({suppressed} more since the last report)" if suppressed else "",
        )

    def _deliver(
        self,
        signal: str,
        deliver: Callable[[list[Any]], None],
        records: list[Any],
        context: grpc.ServicerContext,
    ) -> None:
        """Call the handler (unless there is nothing to deliver); UNAVAILABLE if it raises."""
        if not records:
            return
        try:
            deliver(records)
        except Exception as exc:
            self._count(requests_failed_total=1)
            log.warning(
                "OTLP %s: handler failed on %d records, client told to retry: %s: %s",
                signal,
                len(records),
                type(exc).__name__,
                exc,
            )
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"wattspan agent could not store the {signal} ({type(exc).__name__}: {exc}); "
                "retry later",
            )

    def _export_traces(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        records, rejected, reasons = convert.spans_from_request(request)
        self._count(spans_received_total=len(records) + rejected, spans_rejected_total=rejected)
        self._deliver("spans", self._handler.on_spans, records, context)
        self._count(spans_accepted_total=len(records))
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = convert.format_reasons(reasons)
        return response

    def _export_metrics(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        points, rejected, reasons, skipped = convert.metrics_from_request(request)
        total = convert.metric_point_count(request)
        self._count(
            metric_points_received_total=total,
            metric_points_rejected_total=rejected,
            metric_points_skipped_total=skipped,
        )
        self._deliver("metric points", self._handler.on_metrics, points, context)
        self._count(metric_points_accepted_total=total - rejected - skipped)
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        if rejected:
            response.partial_success.rejected_data_points = rejected
            response.partial_success.error_message = convert.format_reasons(reasons)
        return response

    def _export_logs(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        records, rejected, reasons = convert.logs_from_request(request)
        self._count(logs_received_total=len(records) + rejected, logs_rejected_total=rejected)
        self._deliver("logs", self._handler.on_logs, records, context)
        self._count(logs_accepted_total=len(records))
        response = logs_service_pb2.ExportLogsServiceResponse()
        if rejected:
            response.partial_success.rejected_log_records = rejected
            response.partial_success.error_message = convert.format_reasons(reasons)
        return response
