"""The agent: collectors, scheduler, pipeline, store, exporters and endpoints wired by config.

Both ``wattspan agent`` (the daemon) and ``wattspan run`` (an embedded agent for one
command) assemble an :class:`Agent`; only the options differ.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from wattspan.agent.config import Config
from wattspan.agent.metrics import AgentCollector, MetricsServer
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.scheduler import Scheduler
from wattspan.agent.sinks import Sink
from wattspan.agent.store import Run, Store, StoreSink, default_store_path
from wattspan.collectors.process import ProcessCollector
from wattspan.collectors.registry import build_collectors

log = logging.getLogger("wattspan.agent")


def build_exporters(config: Config) -> list[Sink]:
    """One sink per ``[exporters.<name>]`` table; unknown names are a config error."""
    from wattspan.agent.errors import ConfigError

    sinks: list[Sink] = []
    for name, section in config.exporters.items():
        if section.get("enabled", True) is False:
            continue
        if name == "influxdb":
            from wattspan.agent.exporters.influxdb import from_config

            sinks.append(
                from_config(
                    {k: v for k, v in section.items() if k != "enabled"},
                    state_dir=config.state_dir,
                    host=config.host,
                )
            )
        else:
            raise ConfigError(f"exporters.{name}", "unknown exporter (known: influxdb)")
    return sinks


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
    ) -> None:
        self.config = config
        self.interval = interval or config["agent"]["interval"]
        self.host = config.host
        self.collectors = build_collectors(config.sections, process_roots=process_roots)
        self.process_collector = next(
            (c for c in self.collectors if isinstance(c, ProcessCollector)), None
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
        self.pipeline = Pipeline(sinks, stale_after=max(10 * self.interval, 5.0))
        nvml_interval = config["collectors.nvml"].get("interval")
        self.scheduler = Scheduler(
            self.collectors,
            self.interval,
            self.pipeline.emit,
            intervals={"gpu": nvml_interval} if nvml_interval else None,
        )
        serve = config["metrics"]["enabled"] if serve_metrics is None else serve_metrics
        self.metrics: MetricsServer | None = None
        if serve:
            self.metrics = MetricsServer(
                AgentCollector(self.pipeline, self.scheduler, self.component_stats),
                host=config["metrics"]["listen"],
                port=config["metrics"]["port"] if metrics_port is None else metrics_port,
            )
        self._last_retention = 0.0

    def component_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sink in self.pipeline.sinks:
            try:
                kind = "store" if sink.name == "store" else "exporter"
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
            log.info("serving Prometheus metrics on http://%s:%d/metrics",
                     self.metrics.host, self.metrics.port)
        self.scheduler.start()

    def maintain(self) -> None:
        """Periodic housekeeping from the main thread: retention of old samples."""
        if self.store is None or self.run is None or self.run.kind != "agent":
            return
        now = time.time()
        if now - self._last_retention < 3600:
            return
        self._last_retention = now
        hours = self.config["store"]["retention_hours"]
        removed = self.store.delete_samples_before(now - hours * 3600)
        if removed:
            log.info("store retention: removed %d samples older than %.0f h", removed, hours)

    def stop(self, exit_code: int | None = None, summary: dict[str, Any] | None = None) -> None:
        self.scheduler.stop()
        self.pipeline.flush()
        if self.metrics is not None:
            self.metrics.stop()
        self.scheduler.close()
        self.pipeline.close(timeout=5.0)
        if self.store is not None and self.run is not None and self.run.kind == "agent":
            self.store.finish_run(self.run.id, time.time(), exit_code, summary)

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()


def hostname() -> str:
    return socket.gethostname()
