"""Prometheus exposition of the latest samples and the agent's own health.

Names follow the Prometheus conventions: ``wattspan_<source>_<field>``, base units in the
field names (``_seconds``, ``_bytes``, ``_joules``, ``_watts``, ``_ratio``), and fields that
end in ``_total`` are cumulative counters (``wattspan_rapl_energy_joules_total``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from wattspan import __version__
from wattspan.agent.carbon import Intensity
from wattspan.agent.domains import primary_domains
from wattspan.agent.exporters.span_metrics import BUCKETS, MAX_OVERFLOW_SERVICES, SpanMetricsSink
from wattspan.agent.logthrottle import LogThrottle
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.receiver import security
from wattspan.agent.scheduler import Scheduler
from wattspan.collectors.base import Sample

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
"""Answers ``200 ok`` without a token (and without metrics): what probes that cannot carry
a secret (Kubernetes' ``httpGet``) check. It is served by the same threads as ``/metrics``."""

MAX_HTTP_CONNECTIONS = 16
"""Connections served at once; more are closed on accept. Each costs a thread, and the unit
allows the whole agent ``TasksMax=64``; scrapers and probes need a few."""

HTTP_TIMEOUT_S = 10.0
"""A connection must finish its TLS handshake and send its request within this, each
socket read and write too: a client that connects and waits holds a slot only this long."""

_BAD = re.compile(r"[^a-zA-Z0-9_]")

HELP = {
    "rapl_energy_joules_total": "Energy measured by RAPL since the agent started, per domain.",
    "rapl_power_watts": "Mean RAPL power over the last sampling interval.",
    "power_model_energy_joules_total": "Estimated CPU energy (utilisation x TDP model).",
    "power_model_power_watts": "Estimated CPU power (utilisation x TDP model).",
    "gpu_energy_joules_total": "GPU energy since the agent started (NVML counter or integral).",
    "gpu_power_watts": "GPU power draw reported by NVML.",
    "cpu_utilization_ratio": "Busy share of CPU time over the last interval (0..1).",
    "memory_used_bytes": "Memory in use (psutil's definition).",
    "process_tree_cpu_user_seconds_total": "User CPU seconds of a monitored process tree.",
}


def metric_name(source: str, field: str) -> str:
    return "wattspan_" + _BAD.sub("_", f"{source}_{field}")


def _label(key: str) -> str:
    """A valid Prometheus label name for a tag key (an OTLP attribute key may be anything):
    ``[a-zA-Z_][a-zA-Z0-9_]*``, and never ``__``-prefixed, which Prometheus reserves."""
    name = _BAD.sub("_", key)
    if not name or name[0].isdigit() or name.startswith("__"):
        name = "attr_" + name.lstrip("_")
    return name


#: Series of client-sent metrics (sources ``ml`` and ``metrics``, whose labels are the
#: senders' attributes) exposed per scrape; the rest are counted, not shown, so one client
#: cannot make the liveness probe's answer unbounded.
MAX_CLIENT_SERIES = 2000
_CLIENT_SOURCES = frozenset({"ml", "metrics", "ml_param", "ml_confusion"})


def _families(samples: list[Sample]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    client_series = dropped = 0
    for s in samples:
        if s.source == "spans":
            # The latest span of a series says nothing a dashboard can use; the span
            # counters (_span_families) are what /metrics has of spans.
            continue
        if s.source in _CLIENT_SOURCES:
            client_series += 1
            if client_series > MAX_CLIENT_SERIES:
                dropped += 1
                continue
        labels = {_label(k): v for k, v in s.tags.items()}
        if s.source == "ml_param":
            # A hyperparameter's value is text: a label of wattspan_ml_param_info (= 1).
            labels["value"] = str(s.fields.get("value", ""))
        keys = sorted(labels)
        for fname, value in s.fields.items():
            if isinstance(value, str):
                continue
            full = metric_name(s.source, fname)
            fam = families.get(full + repr(keys))
            if fam is None:
                doc = HELP.get(f"{s.source}_{fname}", f"wattspan {s.source} {fname}")
                if full.endswith("_total"):
                    fam = CounterMetricFamily(full[: -len("_total")], doc, labels=keys)
                else:
                    fam = GaugeMetricFamily(full, doc, labels=keys)
                families[full + repr(keys)] = fam
            fam.add_metric([labels[k] for k in keys], float(value))  # type: ignore[attr-defined]
    over = GaugeMetricFamily(
        "wattspan_exposition_client_series_dropped",
        f"Client metric series (ml, metrics) left out of this scrape past {MAX_CLIENT_SERIES}.",
    )
    over.add_metric([], float(dropped))
    families["wattspan_exposition_client_series_dropped"] = over
    # Families that share a name but not a label set are merged: the exposition format
    # requires one HELP/TYPE block per name.
    merged: dict[str, Metric] = {}
    for fam in families.values():
        if fam.name in merged:
            merged[fam.name].samples.extend(fam.samples)
        else:
            merged[fam.name] = fam
    yield from merged.values()


class AgentCollector(Collector):
    """A prometheus_client collector that renders the pipeline's latest samples."""

    def __init__(
        self,
        pipeline: Pipeline,
        scheduler: Scheduler | None = None,
        stats: Callable[[], dict[str, dict[str, Any]]] | None = None,
        span_metrics: SpanMetricsSink | None = None,
        carbon: Intensity | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.stats = stats
        self.span_metrics = span_metrics
        self.carbon = carbon

    def collect(self) -> Iterator[Metric]:
        latest = self.pipeline.latest()
        yield from _families(latest)
        if self.carbon is not None:
            yield from _carbon_families(latest, self.carbon)
        info = GaugeMetricFamily("wattspan_build_info", "wattspan version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        sch = self.scheduler
        if sch is not None:
            yield CounterMetricFamily(
                "wattspan_scheduler_ticks", "Sampling ticks run.", value=sch.ticks
            )
            yield CounterMetricFamily(
                "wattspan_scheduler_missed_ticks",
                "Ticks skipped because sampling fell behind.",
                value=sch.missed_ticks,
            )
            yield CounterMetricFamily(
                "wattspan_scheduler_cpu_seconds",
                "CPU time the sampling thread spent.",
                value=sch.cpu_seconds,
            )
            errors = CounterMetricFamily(
                "wattspan_collector_errors", "Failed samples per collector.", labels=["collector"]
            )
            spent = CounterMetricFamily(
                "wattspan_collector_duration_seconds",
                "Wall time spent sampling per collector.",
                labels=["collector"],
            )
            for name, st in sch.stats().items():
                errors.add_metric([name], st["errors_total"])
                spent.add_metric([name], st["seconds_total"])
            yield errors
            yield spent
        sink_err = CounterMetricFamily(
            "wattspan_sink_errors", "Failed writes per sink.", labels=["sink"]
        )
        for name, n in self.pipeline.sink_errors.items():
            sink_err.add_metric([name], n)
        yield sink_err
        if self.stats is not None:
            yield from _component_families(self.stats())
        if self.span_metrics is not None:
            yield from _span_families(self.span_metrics)


def _carbon_families(samples: list[Sample], carbon: Intensity) -> Iterator[Metric]:
    """CO2e of the energy counters since the agent started, at the configured intensity:
    the primary CPU-side domains (which add up to the node, sub-domains would count twice)
    and each GPU, with the intensity beside them so no figure goes unlabelled."""
    info = GaugeMetricFamily(
        "wattspan_carbon_intensity_grams_per_kwh",
        "Carbon intensity the CO2e figures use (g CO2e per kWh); PUE applied on top.",
        labels=["source", "country"],
    )
    info.add_metric([carbon.source, carbon.country], carbon.g_per_kwh)
    yield info
    yield GaugeMetricFamily(
        "wattspan_carbon_pue", "Power usage effectiveness applied to energy.", value=carbon.pue
    )
    co2 = CounterMetricFamily(
        "wattspan_co2e_grams",
        "CO2e of the energy counted since the agent started (wattspan_*_energy_joules_total "
        "x PUE x intensity).",
        labels=["source", "domain", "estimated"],
    )
    cpu = {
        s.tags.get("domain", ""): s
        for s in samples
        if s.source in ("rapl", "power_model") and "energy_joules_total" in s.fields
    }
    for domain in primary_domains(cpu):
        s = cpu[domain]
        grams = carbon.grams(float(s.fields["energy_joules_total"]))  # type: ignore[arg-type]
        co2.add_metric([s.source, domain, s.tags.get("estimated", "false")], grams or 0.0)
    for s in samples:
        if s.source == "gpu" and "energy_joules_total" in s.fields:
            grams = carbon.grams(float(s.fields["energy_joules_total"]))  # type: ignore[arg-type]
            co2.add_metric(["gpu", "gpu" + s.tags.get("gpu", "?"), "false"], grams or 0.0)
    yield co2


_SPAN_LABELS = ["service", "span_name"]
_LE = [*(format(b, "g") for b in BUCKETS), "+Inf"]


def _span_families(sink: SpanMetricsSink) -> Iterator[Metric]:
    """The span counters of :class:`SpanMetricsSink`, per ``service`` and ``span_name``.

    The duration total is the histogram's ``_sum`` (and the span count its ``_count``): a
    counter ``wattspan_span_duration_seconds_total`` beside the histogram would be a second
    family named ``wattspan_span_duration_seconds`` in the OpenMetrics format Prometheus
    asks for, and the scrape would fail.
    """
    counters = {
        "spans": CounterMetricFamily("wattspan_spans", "Attributed spans.", labels=_SPAN_LABELS),
        "cpu_seconds": CounterMetricFamily(
            "wattspan_span_cpu_seconds",
            "CPU seconds of the spans' processes during the spans.",
            labels=_SPAN_LABELS,
        ),
        "process_energy_joules": CounterMetricFamily(
            "wattspan_span_process_energy_joules",
            "Energy attributed to the spans' processes (their CPU share of active energy).",
            labels=_SPAN_LABELS,
        ),
        "node_energy_joules": CounterMetricFamily(
            "wattspan_span_node_energy_joules",
            "Node energy over the spans' lifetimes (overlapping spans count it twice).",
            labels=_SPAN_LABELS,
        ),
        "items": CounterMetricFamily(
            "wattspan_span_items", "Items the spans reported processing.", labels=_SPAN_LABELS
        ),
    }
    duration = HistogramMetricFamily(
        "wattspan_span_duration_seconds",
        "Span durations (end - start); _sum is the seconds, _count the spans.",
        labels=_SPAN_LABELS,
    )
    for s in sink.snapshot():
        labels = [s.service, s.span_name]
        counters["spans"].add_metric(labels, s.spans)
        counters["cpu_seconds"].add_metric(labels, s.cpu_seconds)
        counters["process_energy_joules"].add_metric(labels, s.process_energy_joules)
        counters["node_energy_joules"].add_metric(labels, s.node_energy_joules)
        counters["items"].add_metric(labels, s.items)
        duration.add_metric(labels, list(zip(_LE, s.buckets, strict=True)), s.duration_seconds)
    yield from counters.values()
    yield duration
    yield CounterMetricFamily(
        "wattspan_span_overflow_spans",
        f'Spans counted under span_name="other" because metrics.max_span_series '
        f"({sink.max_series}) service/span name series existed (past "
        f'{MAX_OVERFLOW_SERVICES} such services, under service="other" too).',
        value=sink.overflow_spans,
    )
    yield GaugeMetricFamily(
        "wattspan_span_series",
        "Service/span name series of the span counters, overflow series included.",
        value=sink.series,
    )


def _component_families(stats: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """``{component: {key: value}}`` as ``wattspan_exporter_<key>{exporter=component}``."""
    fams: dict[str, Metric] = {}
    for comp, values in stats.items():
        kind, _, name = comp.partition(":")
        if not name:
            kind, name = "exporter", comp
        for key, value in values.items():
            if isinstance(value, str):
                full = f"wattspan_{kind}_{_BAD.sub('_', key)}_info"
                fam = fams.setdefault(
                    full, GaugeMetricFamily(full, f"{kind} {key}", labels=[kind, "value"])
                )
                fam.add_metric([name, value], 1.0)  # type: ignore[attr-defined]
                continue
            full = f"wattspan_{kind}_{_BAD.sub('_', key)}"
            if full not in fams:
                if full.endswith("_total"):
                    fams[full] = CounterMetricFamily(full[:-6], f"{kind} {key}", labels=[kind])
                else:
                    fams[full] = GaugeMetricFamily(full, f"{kind} {key}", labels=[kind])
            fams[full].add_metric([name], float(value))  # type: ignore[attr-defined]
    yield from fams.values()


class _Handler(WSGIRequestHandler):
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.timeout_s  # StreamRequestHandler.setup applies it
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (a scrape every few seconds would fill the journal)."""


class _HTTPServer(ThreadingMixIn, WSGIServer):
    """Thread per connection, at most :data:`MAX_HTTP_CONNECTIONS`, each bounded in time, TLS
    handshakes done in the connection's thread (prometheus_client's server does them in its
    accept loop, where one client that connects and says nothing stops every scrape)."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        ctx: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        self.address_family = family
        self._ssl = ctx
        self.timeout_s = timeout
        self._slots = threading.BoundedSemaphore(MAX_HTTP_CONNECTIONS)
        self._slots_lock = threading.Lock()
        self._errors_log = LogThrottle(60.0)
        self.refused = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the FQDN of the bound address (a DNS query at
        # start that can hang on a node without DNS); WSGI only uses it for SERVER_NAME.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "wattspan"
        self.server_port = self.server_address[1]
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception as exc:  # no thread to be had (TasksMax=): this client goes away
            self._slots.release()
            self.shutdown_request(request)
            with self._slots_lock:
                n = self._errors_log.hit()
            if n:
                log.warning("/metrics: %d connection(s) dropped: %s", n, exc)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr for any client's mistake.
        log.debug("/metrics connection from %s failed", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.timeout_s)
            if self._ssl is not None:
                request = self._ssl.wrap_socket(request, server_side=True)
            self.finish_request(request, client_address)
        except Exception as exc:
            # Scanners, plaintext clients on a TLS port, timeouts: not the agent's errors.
            log.debug(
                "/metrics connection from %s: %s: %s", client_address, type(exc).__name__, exc
            )
        finally:
            self.shutdown_request(request)
            self._slots.release()


def _bind_family(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _guarded(app: Callable[..., Iterable[bytes]], token: bytes | None) -> Callable[..., Any]:
    """``app`` behind ``Authorization: Bearer <token>`` (when a token is set), plus the
    unauthenticated :data:`HEALTH_PATH`."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if token is not None and not security.bearer_matches(
            environ.get("HTTP_AUTHORIZATION"), token
        ):
            body = (security.UNAUTHENTICATED_MESSAGE + "\n").encode()
            start_response(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", 'Bearer realm="wattspan"'),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        return app(environ, start_response)

    return guarded


class MetricsServer:
    """``/metrics`` over HTTP or HTTPS, on 127.0.0.1 unless configured otherwise.

    Args:
        collector: what ``/metrics`` renders.
        host, port: where to listen; port 0 picks a free one (read :attr:`port` after
            :meth:`start`).
        tls_cert_file, tls_key_file: PEM certificate chain and key: serve HTTPS only.
        tls_client_ca_file: PEM CA bundle: clients must present a certificate it signed.
        bearer_token_file, bearer_token_env: at most one: a file holding the token, or the
            name of an environment variable holding it. With one, ``/metrics`` answers
            ``401`` (``WWW-Authenticate: Bearer``) unless the request carries
            ``Authorization: Bearer <token>``. :data:`HEALTH_PATH` needs none.

    Files and token are read and checked here; a problem raises
    :class:`~wattspan.agent.errors.ConfigError` naming the ``metrics.*`` key.
    """

    def __init__(
        self,
        collector: AgentCollector,
        host: str = "127.0.0.1",
        port: int = 9879,
        *,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_client_ca_file: str | os.PathLike[str] | None = None,
        bearer_token_file: str | os.PathLike[str] | None = None,
        bearer_token_env: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host = host
        self.port = port
        self._ssl = security.server_ssl_context(
            "metrics", tls_cert_file, tls_key_file, tls_client_ca_file
        )
        self._token = security.load_bearer_token("metrics", bearer_token_file, bearer_token_env)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http(s)://host:port/metrics`` (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._ssl else 'http'}://{host}:{self.port}/metrics"

    @property
    def refused_connections(self) -> int:
        """Connections closed on accept because :data:`MAX_HTTP_CONNECTIONS` were busy."""
        return self._server.refused if self._server is not None else 0

    def start(self) -> None:
        """Bind and serve from a daemon thread. Raises ``OSError`` if it cannot bind."""
        family, address = _bind_family(self.host, self.port)
        server = _HTTPServer(address, family, self._ssl, HTTP_TIMEOUT_S)
        server.set_app(_guarded(make_wsgi_app(self.registry), self._token))
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="wattspan-metrics", daemon=True
        )
        self._thread.start()
        if not security.is_loopback(self.host) and self._ssl is None and self._token is None:
            log.warning(
                "/metrics on %s is reachable from the network without TLS or a bearer token: "
                "anyone who can connect can read it; set metrics.bearer_token_file (or "
                "metrics.bearer_token_env) and metrics.tls_cert_file/metrics.tls_key_file",
                self.url,
            )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
