"""The agent: collectors, scheduler, pipeline, store, exporters and endpoints wired by config.

Both ``wattspan agent`` (the daemon) and ``wattspan run`` (an embedded agent for one
command) assemble an :class:`Agent`; only the options differ.
"""

from __future__ import annotations

import gc
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wattspan.agent import endpoints
from wattspan.agent.calibration import Calibration
from wattspan.agent.config import Config
from wattspan.agent.exporters.sqlite import StoreSink
from wattspan.agent.ingest import IngestLimits, TelemetryIngest
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.receiver import OtlpReceiver
from wattspan.agent.scheduler import Scheduler
from wattspan.agent.sinks import Sink
from wattspan.agent.store import Run, Store, default_store_path
from wattspan.collectors.node_processes import NodeProcessCollector
from wattspan.collectors.process import ProcessCollector
from wattspan.collectors.registry import build_collectors

if TYPE_CHECKING:
    from wattspan.agent.exporters.prometheus import MetricsServer
    from wattspan.agent.exporters.span_metrics import SpanMetricsSink
    from wattspan.collectors.base import Collector

log = logging.getLogger("wattspan.agent")


def build_exporters(config: Config) -> list[Sink]:
    """One sink per enabled ``[exporters.<name>]`` table; unknown names are a config error."""
    from wattspan.agent import exporters

    return exporters.build_all(config.exporters, state_dir=config.state_dir, host=config.host)


class Agent:
    """An assembled agent. ``start`` begins sampling and serving; ``stop`` flushes."""

    def __init__(
        self,
        config: Config,
        *,
        interval: float | None = None,
        store_path: str | Path | None = None,
        process_roots: list[int] | None = None,
        run: Run | None = None,
        serve_metrics: bool | None = None,
        metrics_port: int | None = None,
        exporters: list[Sink] | None = None,
        otlp: bool | None = None,
        otlp_port: int | None = None,
        collectors: list[Collector] | None = None,
    ) -> None:
        self.config = config
        self.interval = interval or config["agent"]["interval"]
        self.host = config.host
        # ``wattspan run`` builds its collectors (and takes their first sample) before the
        # rest of the agent, while the command already runs (agent/runner.py).
        self.collectors = (
            build_collectors(config.sections, process_roots=process_roots)
            if collectors is None
            else collectors
        )
        self.process_collector = next(
            (c for c in self.collectors if isinstance(c, ProcessCollector)), None
        )
        self.node_processes = next(
            (c for c in self.collectors if isinstance(c, NodeProcessCollector)), None
        )
        self.store: Store | None = None
        sinks: list[Sink] = []
        self.run = run
        if config["store"]["enabled"]:
            path = store_path or config["store"]["path"] or default_store_path()
            self.store = Store(path)
            if self.run is None:
                self.run = Run(
                    id=str(uuid.uuid4()),
                    name=f"agent@{self.host}",
                    host=self.host,
                    start_ts=time.time(),
                    kind="agent",
                )
            self.store.create_run(self.run)
            sinks.append(StoreSink(self.store, self.run.id))
        sinks.extend(build_exporters(config) if exporters is None else exporters)
        serve = config["metrics"]["enabled"] if serve_metrics is None else serve_metrics
        self.span_metrics: SpanMetricsSink | None = None
        if serve and config["metrics"]["max_span_series"] > 0:
            # Only with /metrics, which is all that reads them: a span sample is built per
            # span for the sinks that want spans, and without it an agent need not.
            from wattspan.agent.exporters.span_metrics import SpanMetricsSink

            # Fed by the ingest with each pass's rows, not through the pipeline: as a sink
            # it would make every span build an exported sample that nothing else wants.
            self.span_metrics = SpanMetricsSink(int(config["metrics"]["max_span_series"]))
        self.pipeline = Pipeline(
            sinks, stale_after=max(10 * self.interval, 5.0), keep_latest=bool(serve)
        )
        store_sink = next((s for s in sinks if isinstance(s, StoreSink)), None)
        # Without the store, acknowledged spans still need a disk to wait on until they
        # are in the exporters' queues: a spool in the state directory (agent/ingest.py).
        self.spool: Store | None = None
        if self.store is None:
            self.spool = Store(config.state_dir / "spool.db")
        self.ingest = TelemetryIngest(
            store=self.store if self.spool is None else self.spool,
            spool=self.spool is not None,
            pipeline=self.pipeline,
            run_id=self.run.id if self.run else None,
            interval=self.interval,
            process_collector=self.process_collector,
            node_processes=self.node_processes,
            flush_samples=store_sink.flush if store_sink is not None else None,
            limits=IngestLimits.from_config(config["otlp"]),
            calibration=Calibration.load(config.state_dir, config.host),
            host=self.host,
            program_runs=self.run is not None and self.run.kind == "agent",
            span_observer=None if self.span_metrics is None else self.span_metrics.observe,
        )
        # First in line: attribution sees each tick's samples before exporters are called.
        self.pipeline.add_sink(self.ingest, first=True)
        top_n = config.sections.get("collectors.node_processes", {}).get("top_n", 0)
        if self.node_processes is not None and top_n > 0:
            # Last in line: the process_energy samples it emits reach every other sink after
            # the tick's own samples did.
            from wattspan.agent.process_energy import ProcessEnergySink

            calibration = self.ingest.calibration
            own_run = self.run.id if self.run else None
            self.pipeline.add_sink(
                ProcessEnergySink(
                    self.node_processes,
                    self.pipeline,
                    top_n=top_n,
                    idle=lambda: e.watts if (e := self.ingest.idle_of(own_run)) else None,
                    calibration_watts=calibration.idle_watts if calibration else None,
                )
            )
        self.receiver: OtlpReceiver | None = None
        if config["otlp"]["enabled"] if otlp is None else otlp:
            o = config["otlp"]
            self.receiver = OtlpReceiver(
                self.ingest,
                host=o["listen"],
                port=o["port"] if otlp_port is None else otlp_port,
                max_message_bytes=int(o["max_message_bytes"]),
                tls_cert_file=o["tls_cert_file"] or None,
                tls_key_file=o["tls_key_file"] or None,
                tls_client_ca_file=o["tls_client_ca_file"] or None,
                # Handlers hold the GIL: more threads than this only add contention.
                max_workers=2,
                bearer_token_file=o["bearer_token_file"] or None,
                bearer_token_env=o["bearer_token_env"] or None,
                max_inflight_bytes=int(o["max_inflight_bytes"]),
                max_connections=int(o["max_connections"]),
                max_concurrent_streams=int(o["max_concurrent_streams"]),
                max_connection_idle_seconds=float(o["max_connection_idle_seconds"]),
                keepalive_time_seconds=float(o["keepalive_time_seconds"]),
            )
        # A collector's own ``interval`` (``[collectors.nvml]`` has one) lives in the section
        # named after it; the scheduler looks intervals up by collector name.
        intervals = {
            c.name: sec["interval"]
            for c in self.collectors
            if (sec := config.sections.get(f"collectors.{c.name}", {})).get("interval")
        }
        self.scheduler = Scheduler(self.collectors, self.interval, self.pipeline.emit, intervals)
        self.metrics: MetricsServer | None = None
        if serve:
            # Imported only when serving: ``wattspan run`` never loads prometheus_client.
            from wattspan.agent.carbon import from_config as carbon_from_config
            from wattspan.agent.exporters.prometheus import AgentCollector, MetricsServer

            self.metrics = MetricsServer(
                AgentCollector(
                    self.pipeline,
                    self.scheduler,
                    self.component_stats,
                    self.span_metrics,
                    carbon=carbon_from_config(config["carbon"]),
                ),
                host=config["metrics"]["listen"],
                port=config["metrics"]["port"] if metrics_port is None else metrics_port,
                tls_cert_file=config["metrics"]["tls_cert_file"] or None,
                tls_key_file=config["metrics"]["tls_key_file"] or None,
                tls_client_ca_file=config["metrics"]["tls_client_ca_file"] or None,
                bearer_token_file=config["metrics"]["bearer_token_file"] or None,
                bearer_token_env=config["metrics"]["bearer_token_env"] or None,
            )
        self._last_retention = 0.0
        self._receiver_started = False

    @property
    def otlp_endpoint(self) -> str | None:
        """``http://host:port`` of the running receiver, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        if self.receiver is None:
            return None
        host = self.config["otlp"]["listen"]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if self.config["otlp"]["tls_cert_file"] else "http"
        return f"{scheme}://{host}:{self.receiver.port}"

    def component_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.receiver is not None:
            out["receiver:otlp"] = dict(self.receiver.stats())
        for sink in self.pipeline.sinks:
            try:
                kind = sink.name if sink.name in ("store", "ingest") else "exporter"
                out[f"{kind}:{sink.name}"] = dict(sink.stats())
            except Exception as exc:  # a broken stats() must not break /metrics
                log.debug("stats of %s: %s", sink.name, exc)
        return out

    def start(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as exc:
                raise OSError(
                    f"cannot serve metrics on {self.metrics.host}:{self.metrics.port}: {exc}"
                ) from exc
            log.info("serving Prometheus metrics on %s", self.metrics.url)
        self.start_receiver()
        self.ingest.start()
        self.scheduler.start()
        if self.metrics is not None:
            endpoints.record(
                self.config.state_dir,
                endpoints.source_of(self.config.source),
                self.metrics.url,
                self.otlp_endpoint,
            )

    def start_receiver(self) -> None:
        """Starts the OTLP receiver (idempotent: ``wattspan run`` starts it before the child)."""
        if self.receiver is None or self._receiver_started:
            return
        try:
            self.receiver.start()
        except (OSError, RuntimeError) as exc:
            raise OSError(
                f"cannot serve OTLP on {self.config['otlp']['listen']}:"
                f"{self.config['otlp']['port']}: {exc}"
            ) from exc
        self._receiver_started = True
        log.info("receiving OTLP/gRPC on %s", self.otlp_endpoint)

    def maintain(self) -> None:
        """Periodic housekeeping from the main thread: the store's retention and size bound.

        Hourly; every minute while the store is over ``store.max_bytes`` (an hour of spans
        can be GBs); at once when the last pass ran out of its time budget. Each pass is
        bounded to a few seconds because the same loop pings systemd's watchdog.
        """
        store = self.store
        if store is None or self.run is None or self.run.kind != "agent":
            return
        now = time.time()
        hours = self.config["store"]["retention_hours"]
        max_bytes = self.config["store"]["max_bytes"]
        since = now - self._last_retention
        due = (
            since >= 3600
            or store.retention_incomplete
            or (since >= 60 and max_bytes > 0 and store.used_bytes() > max_bytes)
        )
        if not due:
            return
        self._last_retention = now
        try:
            result = store.apply_retention(hours, max_bytes, now=now, budget=2.0)
        except Exception as exc:  # a full disk fails deletes too (the WAL): try again later
            log.warning("store retention failed: %s: %s", type(exc).__name__, exc)
            return
        if result.deleted_rows:
            log.info(
                "store retention (%.0f h, max_bytes %d): deleted %s; %d bytes in use%s",
                hours,
                max_bytes,
                ", ".join(f"{n} {t}" for t, n in result.deleted.items() if n),
                result.used_bytes,
                "" if result.complete else "; continuing",
            )

    def stop(
        self,
        exit_code: int | None = None,
        summary: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Stop within ``timeout`` s in all (None: ``agent.shutdown_timeout_seconds``).

        Requests in flight finish first (what was acknowledged is stored), then pending spans
        are attributed and every sink is flushed and closed in the time that is left. What an
        exporter could not deliver by then stays in its disk queue for the next start.
        """
        budget = self.config["agent"]["shutdown_timeout_seconds"] if timeout is None else timeout
        deadline = time.monotonic() + budget

        def left(share: float = 1.0) -> float:
            return max(0.0, (deadline - time.monotonic()) * share)

        if self.receiver is not None and self._receiver_started:
            self.receiver.stop(grace=min(5.0, left(0.25)))
            self._receiver_started = False
        self.scheduler.stop()
        # Half of what is left to deliver, the rest to close (which retries once more and
        # persists queue state); neither step may take the other's share.
        self.pipeline.flush(timeout=left(0.5))
        if self.metrics is not None:
            self.metrics.stop()
            endpoints.forget(self.config.state_dir)
        self.scheduler.close()
        self.pipeline.close(timeout=left())
        if self.store is not None and self.run is not None and self.run.kind == "agent":
            self.store.finish_run(self.run.id, time.time(), exit_code, summary)

    def close_store(self) -> None:
        for store in (self.store, self.spool):
            if store is not None:
                store.close()


def hostname() -> str:
    return socket.gethostname()


def tune_gc() -> None:
    """Call once the agent is set up: the cyclic garbage collector then skips everything
    built so far (modules, config, caches) and runs less often.

    The agent allocates many short-lived acyclic objects per request (records, dicts) that
    reference counting frees at once; with the default thresholds the collector kept
    rescanning the heap and cost about a fifth of the span ingest path.
    """
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
