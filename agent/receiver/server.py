"""The OTLP/gRPC receiver: ``TraceService``, ``MetricsService`` and ``LogsService`` ``Export``.

Why the services are registered by hand instead of with the generated
``add_*Servicer_to_server`` helpers: those register ``Request.FromString`` as the request
deserializer, and grpcio turns any deserializer exception into ``INTERNAL: Exception
deserializing request!``. OTLP clients must not retry a malformed request, and ``INTERNAL`` is
not a code that tells them so. We register the same fully-qualified method names (taken from
the generated descriptors) with a raw-bytes deserializer and parse inside the handler, where a
parse failure becomes ``INVALID_ARGUMENT``, and where the request's size is known before any
parsing (the in-flight bound below).

Status codes returned (OTLP/gRPC spec, "Failures" and "OTLP/gRPC Throttling"):

* ``OK`` - the handler returned, i.e. the agent durably accepted the records; when some items
  were dropped, by the receiver's validation or by the handler (its :class:`Rejection`), the
  response carries a ``partial_success`` with the count and a message (OTLP clients must not
  retry those).
* ``INVALID_ARGUMENT`` - the bytes are not a valid protobuf message of the request type
  (including invalid UTF-8 in a ``string`` field, which protobuf rejects), or the handler
  raised :class:`InvalidRequest`. Not retryable.
* ``UNAUTHENTICATED`` - a bearer token is configured and the request's ``authorization``
  metadata is not ``Bearer <token>``. Not retryable.
* ``RESOURCE_EXHAUSTED`` - the (decompressed) message is larger than ``max_message_bytes``;
  produced by grpc itself before our code runs. Not retryable (no ``RetryInfo``): the same
  request can never fit.
* ``UNAVAILABLE`` - retryable: the handler raised (e.g. the store failed); or the agent is at
  one of its bounds, i.e. the handler raised :class:`Backpressure` (too many spans waiting for
  attribution) or the wire bytes of the requests being decoded and handled at once would pass
  ``max_inflight_bytes``. Those two carry a ``RetryInfo`` (about a second, jittered). The spec
  names ``UNAVAILABLE`` as the code for back-pressure, always retryable, while
  ``RESOURCE_EXHAUSTED`` is retryable only with ``RetryInfo``, and clients differ in whether
  they honour that exception, so a bound that a retry will pass answers ``UNAVAILABLE``.

Connections are bounded too: at most ``max_connections`` (grpc core's
``grpc.max_allowed_incoming_connections``; more are closed as they are accepted, and the cap
is lowered to fit ``RLIMIT_NOFILE``), ``max_concurrent_streams`` RPCs each, a handshake
within :data:`HANDSHAKE_TIMEOUT_S`, and a connection without RPCs for
``max_connection_idle_seconds`` is closed (GOAWAY). Keepalive pings every
``keepalive_time_seconds`` find peers that went away without closing.

Spans and metric points that arrive without ``process.pid`` (plain OpenTelemetry SDKs do not
set it) get the pid of the local process at the other end of the connection, found once per
connection (:mod:`wattspan.agent.receiver.peers`), before the handler sees them; the
handler cannot tell a pid the client sent from one found so. ``peer_pids_resolved_total``
and ``peer_pids_unresolved_total`` count the records that were given one and those for
which none was found (a remote client, another network namespace...).
"""

from __future__ import annotations

import logging
import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, Protocol, runtime_checkable

import grpc
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from wattspan.agent.errors import Backpressure, InvalidRequest
from wattspan.agent.logthrottle import LogThrottle
from wattspan.agent.receiver import convert, security
from wattspan.agent.receiver.peers import PeerPids
from wattspan.agent.records import LogRecord, MetricPoint, Rejection, SpanRecord

__all__ = [
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FD_RESERVE",
    "HANDSHAKE_TIMEOUT_S",
    "STAT_KEYS",
    "OtlpHandler",
    "OtlpReceiver",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""grpc's own default receive limit, and the OTel Collector's."""

DEFAULT_MAX_INFLIGHT_BYTES = 8 * 1024 * 1024
"""``otlp.max_inflight_bytes``' default (see :class:`OtlpReceiver`)."""

HANDSHAKE_TIMEOUT_S = 10.0
"""A connection must finish its TLS and HTTP/2 handshake within this (grpc's default is
120 s, long enough for a connect-and-wait client to hold a descriptor for two minutes)."""

_KEEPALIVE_TIMEOUT_S = 20.0

FD_RESERVE = 128
"""Open files kept for everything but OTLP connections (the store and its journal,
``/metrics`` connections, the exporters' queue segments, /proc reads, grpc's own epoll and
wakeup descriptors): ``max_connections`` is lowered to ``RLIMIT_NOFILE - FD_RESERVE``."""

# Clients' own keepalive pings are allowed this often (grpc's default, 5 min, answers faster
# pings with GOAWAY "too_many_pings").
_MIN_CLIENT_PING_INTERVAL_S = 10.0

STAT_KEYS = (
    "requests_total",
    "requests_invalid_total",
    "requests_failed_total",
    "requests_refused_total",
    "requests_unauthenticated_total",
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
    "peer_pids_resolved_total",
    "peer_pids_unresolved_total",
    "inflight_bytes",
)
"""Keys of :meth:`OtlpReceiver.stats`: monotonically increasing counters (``*_total``) and
the gauge ``inflight_bytes``."""

_INVALID_LOG_INTERVAL_S = 60.0


@runtime_checkable
class OtlpHandler(Protocol):
    """Where the receiver delivers records.

    Methods are called from the receiver's worker threads, possibly concurrently, so they must
    be thread-safe. Lists are never empty. What a method does tells the client:

    * returns ``None``: every record is durably accepted (queued on disk or equivalent); only
      then does the client get ``OK``.
    * returns a :class:`~wattspan.agent.records.Rejection`: the rest is durably accepted,
      ``count`` records were dropped for the ``reasons`` given. The client gets ``OK`` with a
      ``partial_success`` (and does not retry the dropped ones). ``count`` may be 0 with
      reasons: a warning only. For metrics, ``count`` is in the :class:`MetricPoint` records
      given (a histogram point is two of them).
    * raises :class:`~wattspan.agent.errors.Backpressure`: nothing was kept, the agent is at a
      bound; the client gets ``UNAVAILABLE`` with the message and a ``RetryInfo``.
    * raises :class:`~wattspan.agent.errors.InvalidRequest`: nothing was kept and retrying
      cannot help; the client gets ``INVALID_ARGUMENT`` with the message.
    * raises anything else: nothing was kept (the handler must make sure of it); the client
      gets ``UNAVAILABLE`` and retries the whole request later.
    """

    def on_spans(self, spans: list[SpanRecord]) -> Rejection | None: ...

    def on_metrics(self, points: list[MetricPoint]) -> Rejection | None: ...

    def on_logs(self, logs: list[LogRecord]) -> Rejection | None: ...


def _service_name(module: Any, service: str) -> str:
    # e.g. "opentelemetry.proto.collector.trace.v1.TraceService", from the generated code so a
    # proto package rename cannot silently break routing.
    return module.DESCRIPTOR.services_by_name[service].full_name


def _format_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"  # IPv6 literal
    return f"{host}:{port}"


def _fd_capped(max_connections: int) -> int:
    """``max_connections`` lowered so that OTLP connections alone cannot use every
    descriptor the process may open (then /metrics, the liveness probe, could not accept)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = max(8, int(soft) - FD_RESERVE)
    if max_connections <= room:
        return max_connections
    log.warning(
        "otlp.max_connections = %d does not fit the open-files limit (%d): at most %d OTLP "
        "connections are accepted; raise the limit (LimitNOFILE=, ulimit -n) for more",
        max_connections,
        soft,
        room,
    )
    return room


class _InflightBytes:
    """Wire bytes of the requests being decoded and handled now.

    A request is admitted when it fits under the limit with the others, or when nothing else
    is in flight: one request larger than the bound (but within ``max_message_bytes``) is
    still served, alone.
    """

    __slots__ = ("_lock", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> int | None:
        """Admit ``n`` bytes (returns None), or return the bytes in flight that refuse them."""
        with self._lock:
            if self.used and self.used + n > self.limit:
                return self.used
            self.used += n
            return None

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n


class _Failures:
    """A handler's failures for one signal, logged once when they start (or change kind)
    and once when they stop, with what happened in between. Guarded by the receiver's
    stats lock."""

    __slots__ = ("kind", "records", "requests", "since")

    def __init__(self) -> None:
        self.kind: str | None = None
        self.requests = 0
        self.records = 0
        self.since = 0.0


def _retry_metadata(message: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a ``RetryInfo`` of about a second.

    Jittered (0.5 to 1.5 s) because the OTel SDKs sleep exactly the delay given: clients
    refused together would otherwise all come back together. Sent both as the
    ``google.rpc.Status`` details that grpc's status helpers (Go, Java, the Collector) read
    and as the ``google.rpc.retryinfo-bin`` entry the Python SDK reads.
    """
    delay = Duration()
    delay.FromNanoseconds(int(random.uniform(0.5, 1.5) * 1e9))
    info = RetryInfo(retry_delay=delay)
    detail = AnyProto()
    detail.Pack(info)
    status = Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )


class _BearerAuth(grpc.ServerInterceptor):
    """Refuses, before the message is parsed, any call without ``authorization: Bearer
    <token>``: it gets ``UNAUTHENTICATED``, for every method name, known or not."""

    def __init__(self, token: bytes, refused: Callable[[grpc.ServicerContext], None]) -> None:
        self._token = token

        def deny(request: bytes, context: grpc.ServicerContext) -> NoReturn:
            refused(context)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, security.UNAUTHENTICATED_MESSAGE)

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        if security.metadata_bearer_matches(metadata, self._token):
            return continuation(handler_call_details)
        return self._deny


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
        bearer_token, bearer_token_file, bearer_token_env: at most one: the token itself,
            a file holding it, or the name of an environment variable holding it. With one,
            every call must carry ``authorization: Bearer <token>`` metadata.
        max_inflight_bytes: bound on the wire bytes (after decompression) of the requests
            being parsed and handled at once. A request decodes to about 20 times its size,
            so this bounds the receiver's memory; past it requests get ``UNAVAILABLE``
            (retryable) without being parsed. A single request larger than this is admitted
            when no other is in flight.
        max_connections: open connections accepted at once (lowered to fit the process's
            open-files limit).
        max_concurrent_streams: RPCs at once on one connection.
        max_connection_idle_seconds: a connection without RPCs for this long is closed.
        keepalive_time_seconds: the server pings each connection this often; one that does not
            answer within 20 s is closed.
        peer_pids: give spans and metric points without ``process.pid`` the pid of the
            local process that sent them, when it can be found (module docstring).

    TLS files and the token are read and checked here: a problem raises
    :class:`~wattspan.agent.errors.ConfigError` naming the ``otlp.*`` key. gzip-compressed
    requests are accepted (grpc decompresses them). The server cannot be restarted after
    :meth:`stop`; create a new one.
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
        *,
        bearer_token: str | None = None,
        bearer_token_file: str | os.PathLike[str] | None = None,
        bearer_token_env: str | None = None,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        max_connections: int = 256,
        max_concurrent_streams: int = 16,
        max_connection_idle_seconds: float = 300.0,
        keepalive_time_seconds: float = 60.0,
        peer_pids: bool = True,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if max_workers <= 0:
            raise ValueError(f"max_workers must be positive, got {max_workers}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        for name, value in (
            ("max_inflight_bytes", max_inflight_bytes),
            ("max_connections", max_connections),
            ("max_concurrent_streams", max_concurrent_streams),
            ("max_connection_idle_seconds", max_connection_idle_seconds),
            ("keepalive_time_seconds", keepalive_time_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        # Checked with Python's ssl first: grpc only says "cannot bind" for any bad file.
        security.server_ssl_context("otlp", tls_cert_file, tls_key_file, tls_client_ca_file)
        if bearer_token is not None and (bearer_token_file or bearer_token_env):
            raise ValueError("give bearer_token or bearer_token_file/_env, not both")
        if bearer_token is not None:
            self._token: bytes | None = bearer_token.encode()
            if not bearer_token:
                raise ValueError("bearer_token is empty")
        else:
            self._token = security.load_bearer_token("otlp", bearer_token_file, bearer_token_env)
        self._handler = handler
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._tls = (tls_cert_file, tls_key_file, tls_client_ca_file)
        self._max_workers = max_workers
        self._inflight = _InflightBytes(max_inflight_bytes)
        self._max_connections = max_connections
        self._max_concurrent_streams = max_concurrent_streams
        self._idle_ms = int(max_connection_idle_seconds * 1000)
        self._keepalive_ms = int(keepalive_time_seconds * 1000)
        self._resolve_peer_pids = peer_pids
        # Made in start(): the client sockets are found by the port actually bound.
        self._peers: PeerPids | None = None
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._invalid_log = LogThrottle(_INVALID_LOG_INTERVAL_S)
        self._refused_log = LogThrottle(_INVALID_LOG_INTERVAL_S)
        self._unauth_log = LogThrottle(_INVALID_LOG_INTERVAL_S)
        self._peer_log = LogThrottle(_INVALID_LOG_INTERVAL_S)
        self._failures = {s: _Failures() for s in ("spans", "metric points", "logs")}

    # ----------------------------------------------------------------------------------------
    # lifecycle

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the configured one."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as a client would dial it (IPv6 literals in brackets)."""
        return _format_address(self._host, self._port)

    def _options(self) -> list[tuple[str, int]]:
        keepalive_timeout_ms = int(min(_KEEPALIVE_TIMEOUT_S * 1000, self._keepalive_ms))
        return [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            # grpc enables SO_REUSEPORT by default on Linux: a second agent would then
            # "bind" the same port and steal half the connections instead of failing.
            ("grpc.so_reuseport", 0),
            ("grpc.max_allowed_incoming_connections", _fd_capped(self._max_connections)),
            ("grpc.max_concurrent_streams", self._max_concurrent_streams),
            ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT_S * 1000)),
            ("grpc.max_connection_idle_ms", self._idle_ms),
            ("grpc.keepalive_time_ms", self._keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
            # Ping connections without calls too: a peer that vanished (no FIN) is found
            # within a keepalive period instead of holding its descriptor until idle timeout.
            ("grpc.keepalive_permit_without_calls", 1),
            # 0: no limit on our pings between data frames (the default 2 would stop the
            # pings above on an idle connection after two).
            ("grpc.http2.max_pings_without_data", 0),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(_MIN_CLIENT_PING_INTERVAL_S * 1000),
            ),
        ]

    def start(self) -> None:
        """Bind and start serving. Raises ``OSError`` if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("OtlpReceiver already started")
        self._executor = ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="wattspan-otlp"
        )
        interceptors = [] if self._token is None else [_BearerAuth(self._token, self._log_unauth)]
        server = grpc.server(self._executor, options=self._options(), interceptors=interceptors)
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
        if self._resolve_peer_pids:
            self._peers = PeerPids(bound)
        server.start()
        self._server = server
        tls = "TLS" if self._tls[0] is not None else "plaintext"
        if self._tls[2] is not None:
            tls = "mutual TLS"
        auth = "bearer token" if self._token is not None else "no authentication"
        log.info("OTLP/gRPC receiver listening on %s (%s, %s)", self.address, tls, auth)
        if not security.is_loopback(self._host) and self._tls[0] is None and self._token is None:
            log.warning(
                "OTLP receiver on %s is reachable from the network without TLS or a bearer "
                "token: anyone who can connect can send data; set otlp.bearer_token_file "
                "(or otlp.bearer_token_env) and otlp.tls_cert_file/otlp.tls_key_file",
                self.address,
            )

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs; wait up to ``grace`` seconds for running ones, then cancel them.

        Returns once the server has fully stopped, or at once when it never received a
        request. Safe to call twice.
        """
        server, self._server = self._server, None
        if server is None:
            return
        stopped = server.stop(grace)
        with self._stats_lock:
            idle = self._stats["requests_total"] == 0
        # No request ever reached a handler, so none can be in flight: nothing acknowledged
        # depends on grpc's own teardown, which takes milliseconds on its first shutdown
        # (added to every `wattspan run` of a program that sends no spans). A request grpc
        # took just before the stop but had not handed over yet is cancelled, unacknowledged.
        if not idle:
            stopped.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace=1.0)

    def stats(self) -> dict[str, int]:
        """A snapshot of the values named in :data:`STAT_KEYS`.

        ``*_received_total`` counts items in well-formed requests; ``*_rejected_total`` those
        dropped, by validation or by the handler (reported to the client as partial success),
        and every item of a request the handler found invalid; ``*_accepted_total`` those the
        handler kept. Items of requests whose handler raised otherwise are received but
        neither rejected nor accepted (the client retries them). ``metric_points_*`` count
        OTLP data points, before histograms are flattened. ``requests_refused_total`` counts
        requests answered ``UNAVAILABLE`` because of a bound (in-flight bytes, the handler's
        back-pressure), ``requests_failed_total`` those whose handler failed otherwise.
        ``requests_unauthenticated_total`` counts calls refused for their token, which no
        other counter sees. ``peer_pids_resolved_total`` counts spans and metric points
        without ``process.pid`` given the pid of the process at the other end of their
        connection, ``peer_pids_unresolved_total`` those left without one.
        ``inflight_bytes`` is the wire size of the requests being handled now.
        """
        with self._stats_lock:
            out = dict(self._stats)
        out["inflight_bytes"] = self._inflight.used
        return out

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
            size = len(raw)
            busy = self._inflight.try_acquire(size)
            if busy is not None:
                self._refuse_inflight(service, context, size, busy)
            try:
                # Passed straight on, not kept in a local here: the export function drops
                # the parsed message (~7x the wire size) once it is converted, before the
                # handler runs, and nothing else holds it.
                return export(self._parse(request_type, service, raw, context), context)
            finally:
                self._inflight.release(size)

        return handle

    def _parse(
        self, request_type: Any, service: str, raw: bytes, context: grpc.ServicerContext
    ) -> Any:
        try:
            return request_type.FromString(raw)
        except Exception as exc:  # DecodeError, or RecursionError on absurd nesting
            exc.__traceback__ = None
            self._count(requests_invalid_total=1)
            self._log_invalid(service, context, exc)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"cannot parse {request_type.DESCRIPTOR.full_name}: {exc}",
            )

    def _refuse_inflight(
        self, service: str, context: grpc.ServicerContext, size: int, busy: int
    ) -> NoReturn:
        limit = self._inflight.limit
        with self._stats_lock:
            self._stats["requests_refused_total"] += 1
            n = self._refused_log.hit()
        if n:
            log.warning(
                "OTLP %s: %d request(s) told to retry: the requests being handled already "
                "hold %d bytes (otlp.max_inflight_bytes = %d)",
                service,
                n,
                busy,
                limit,
            )
        message = (
            f"wattspan agent is busy: {busy} bytes of requests in flight, this one is {size} "
            f"(otlp.max_inflight_bytes = {limit}); retry later"
        )
        context.set_trailing_metadata(_retry_metadata(message))
        context.abort(grpc.StatusCode.UNAVAILABLE, message)

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

    def _log_unauth(self, context: grpc.ServicerContext) -> None:
        with self._stats_lock:
            self._stats["requests_unauthenticated_total"] += 1
            n = self._unauth_log.hit()
        if n:
            suppressed = n - 1
            log.warning(
                "OTLP request from %s rejected with UNAUTHENTICATED: %s%s",
                context.peer(),
                security.UNAUTHENTICATED_MESSAGE,
                f" ({suppressed} more since the last report)" if suppressed else "",
            )

    def _failed(self, signal: str, kind: str, n_records: int, exc: Exception) -> None:
        """Counts a failed handler call; logs only when failing starts or changes kind."""
        with self._stats_lock:
            f = self._failures[signal]
            changed = f.kind != kind
            if f.kind is None:
                f.since = time.monotonic()
            f.kind = kind
            f.requests += 1
            f.records += n_records
        if not changed:
            return
        if kind == "backpressure":
            log.warning(
                "OTLP %s: refusing requests, clients told to retry later: %s "
                "(logged again when it stops)",
                signal,
                exc,
            )
        else:
            log.warning(
                "OTLP %s: the agent cannot store what it receives, clients told to retry: "
                "%s: %s (logged again when it recovers)",
                signal,
                type(exc).__name__,
                exc,
            )

    def _succeeded(self, signal: str) -> None:
        f = self._failures[signal]
        if f.kind is None:  # unlocked fast path: the usual case
            return
        with self._stats_lock:
            if f.kind is None:
                return
            requests, records, since = f.requests, f.records, f.since
            f.kind, f.requests, f.records = None, 0, 0
        log.warning(
            "OTLP %s: accepting again after %.1f s; meanwhile %d request(s) with %d %s were "
            "told to retry",
            signal,
            time.monotonic() - since,
            requests,
            records,
            signal,
        )

    def _fill_pids(
        self, records: list[SpanRecord] | list[MetricPoint], context: grpc.ServicerContext
    ) -> None:
        """Gives records without a pid the pid of the process that sent them, if found."""
        peers = self._peers
        if peers is None:
            return
        for r in records:
            if r.pid is None:
                break
        else:
            return  # the usual case for wattspan's own API: no lookup at all
        try:
            pid = peers.pid_of(context.peer())
        except Exception as exc:
            # A pid is a bonus: a failure to find one must never cost the client its request.
            pid = None
            with self._stats_lock:
                report = self._peer_log.hit()
            if report:
                log.warning(
                    "cannot find the process of OTLP peers: %s: %s", type(exc).__name__, exc
                )
        n = 0
        for r in records:
            if r.pid is None:
                r.pid = pid
                n += 1
        if pid is None:
            self._count(peer_pids_unresolved_total=n)
        else:
            self._count(peer_pids_resolved_total=n)

    def _deliver(
        self,
        signal: str,
        deliver: Callable[[list[Any]], Rejection | None],
        records: list[Any],
        context: grpc.ServicerContext,
        rejected_key: str,
        items: int,
    ) -> Rejection:
        """Call the handler (unless there is nothing to deliver) and return what it refused,
        its count clamped to ``items`` (the request's items it was given, in the unit of
        ``rejected_key``); abort the call with the status its exception calls for (module
        docstring)."""
        if not records:
            return Rejection()
        try:
            result = deliver(records)
        except Exception as exc:
            # The traceback holds this call's frames: its context, the request's bytes and
            # records. A handler that keeps its exception (a last_error attribute, one
            # instance raised again) would keep each failed call's HTTP/2 stream open, and
            # after max_concurrent_streams failures the connection refuses every new call.
            exc.__traceback__ = None
            self._abort_for(signal, exc, len(records), context, rejected_key, items)
        self._succeeded(signal)
        if not isinstance(result, Rejection):
            return Rejection()
        if not 0 <= result.count <= items:
            return Rejection(max(0, min(result.count, items)), result.reasons)
        return result

    def _abort_for(
        self,
        signal: str,
        exc: Exception,
        n_records: int,
        context: grpc.ServicerContext,
        rejected_key: str,
        items: int,
    ) -> NoReturn:
        """Counts, logs and aborts the call as the handler's exception says."""
        if isinstance(exc, Backpressure):
            self._count(requests_refused_total=1)
            self._failed(signal, "backpressure", n_records, exc)
            message = str(exc) or "wattspan agent is at a bound; retry later"
            context.set_trailing_metadata(_retry_metadata(message))
            context.abort(grpc.StatusCode.UNAVAILABLE, message)
        if isinstance(exc, InvalidRequest):
            # The handler works; this request is the problem, and all of it is dropped.
            self._succeeded(signal)
            self._count(requests_invalid_total=1, **{rejected_key: items})
            self._log_invalid(signal, context, exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc) or f"invalid {signal}")
        self._count(requests_failed_total=1)
        self._failed(signal, "error", n_records, exc)
        context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"wattspan agent could not store the {signal} ({type(exc).__name__}: {exc}); "
            "retry later",
        )

    def _export_traces(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        records, rejected, reasons = convert.spans_from_request(request)
        del request
        self._count(spans_received_total=len(records) + rejected, spans_rejected_total=rejected)
        self._fill_pids(records, context)
        refused = self._deliver(
            "spans", self._handler.on_spans, records, context, "spans_rejected_total", len(records)
        )
        self._count(
            spans_rejected_total=refused.count, spans_accepted_total=len(records) - refused.count
        )
        response = trace_service_pb2.ExportTraceServiceResponse()
        message = _message(reasons, refused)
        if rejected + refused.count or message:
            response.partial_success.rejected_spans = rejected + refused.count
            response.partial_success.error_message = message
        return response

    def _export_metrics(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        points, rejected, reasons, skipped = convert.metrics_from_request(request)
        total = convert.metric_point_count(request)
        del request
        self._count(
            metric_points_received_total=total,
            metric_points_rejected_total=rejected,
            metric_points_skipped_total=skipped,
        )
        kept = total - rejected - skipped
        self._fill_pids(points, context)
        refused = self._deliver(
            "metric points",
            self._handler.on_metrics,
            points,
            context,
            "metric_points_rejected_total",
            kept,
        )
        self._count(
            metric_points_rejected_total=refused.count,
            metric_points_accepted_total=kept - refused.count,
        )
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        message = _message(reasons, refused)
        if rejected + refused.count or message:
            response.partial_success.rejected_data_points = rejected + refused.count
            response.partial_success.error_message = message
        return response

    def _export_logs(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        records, rejected, reasons = convert.logs_from_request(request)
        del request
        self._count(logs_received_total=len(records) + rejected, logs_rejected_total=rejected)
        refused = self._deliver(
            "logs", self._handler.on_logs, records, context, "logs_rejected_total", len(records)
        )
        self._count(
            logs_rejected_total=refused.count, logs_accepted_total=len(records) - refused.count
        )
        response = logs_service_pb2.ExportLogsServiceResponse()
        message = _message(reasons, refused)
        if rejected + refused.count or message:
            response.partial_success.rejected_log_records = rejected + refused.count
            response.partial_success.error_message = message
        return response


def _message(reasons: Counter[str], refused: Rejection) -> str:
    """The receiver's validation reasons and the handler's, in one partial-success message."""
    if not refused.reasons:
        return convert.format_reasons(reasons) if reasons else ""
    merged = Counter(reasons)
    merged.update(refused.reasons)
    return convert.format_reasons(merged)
