"""Prometheus exposition of the latest samples and the agent's own health.

Names follow the Prometheus conventions: ``wattspan_<source>_<field>``, base units in the
field names (``_seconds``, ``_bytes``, ``_joules``, ``_watts``, ``_ratio``), and fields that
end in ``_total`` are cumulative counters (``wattspan_rapl_energy_joules_total``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wattspan import __version__
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.scheduler import Scheduler
from wattspan.collectors.base import Sample

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


def _families(samples: list[Sample]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for s in samples:
        labels = {_BAD.sub("_", k): v for k, v in s.tags.items()}
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
    ) -> None:
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.pipeline.latest())
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


class MetricsServer:
    """``/metrics`` over HTTP, on 127.0.0.1 unless configured otherwise."""

    def __init__(self, collector: AgentCollector, host: str = "127.0.0.1", port: int = 9879):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.port, addr=self.host, registry=self.registry
        )
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
