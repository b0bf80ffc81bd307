"""*Agent*: is the agent itself healthy? Sampling ticks, collector errors, what the OTLP
receiver accepted and rejected, what waits for attribution, and what each exporter queued,
sent, retried, dropped and dead-lettered.

The agent's self-metrics exist on ``/metrics`` only (``wattspan_scheduler_*``,
``wattspan_collector_*``, ``wattspan_receiver_*``, ``wattspan_ingest_*``,
``wattspan_exporter_*``, ``wattspan_store_*``); the InfluxDB exporter does not write them,
so there is no InfluxDB variant.
"""

from __future__ import annotations

from grafanalib.core import Dashboard

from .panels import (
    Kind,
    Settings,
    Sized,
    dashboard,
    host_var,
    prom,
    prom_selector,
    stat,
    timeseries,
)

TITLE = "wattspan / Agent"
KINDS: tuple[Kind, ...] = ("prometheus",)
_RI = "[$__rate_interval]"


def build(kind: Kind, settings: Settings) -> Dashboard:
    if kind != "prometheus":
        raise ValueError("the Agent dashboard reads the agent's /metrics (Prometheus) only")
    sel = prom_selector(settings)

    def rate(metric: str, legend: str) -> object:
        return prom(f"sum by (instance) (rate({metric}{sel}{_RI}))", legend)

    def by(label: str, metric: str, legend: str, fn: str = "rate") -> object:
        return prom(f"sum by (instance, {label}) ({fn}({metric}{sel}{_RI}))", legend)

    health: list[Sized] = [
        stat("Ticks/s", [rate("wattspan_scheduler_ticks_total", "{{instance}}")], "ops"),
        stat(
            "Missed ticks (range)",
            [
                prom(
                    f"sum(increase(wattspan_scheduler_missed_ticks_total{sel}[$__range]))",
                    instant=True,
                )
            ],
            "short",
        ),
        stat(
            "Spans pending attribution", [prom(f"sum(wattspan_ingest_spans_pending{sel})")], "short"
        ),
        stat("Exporter queue", [prom(f"sum(wattspan_exporter_queue_bytes{sel})")], "bytes"),
    ]
    sampling = [
        timeseries(
            "Scheduler ticks",
            [
                rate("wattspan_scheduler_ticks_total", "ticks {{instance}}"),
                rate("wattspan_scheduler_missed_ticks_total", "missed {{instance}}"),
            ],
            "ops",
            w=8,
        ),
        timeseries(
            "Collector errors",
            [by("collector", "wattspan_collector_errors_total", "{{collector}}", "increase")],
            "short",
            w=8,
        ),
        timeseries(
            "Collector time",
            [by("collector", "wattspan_collector_duration_seconds_total", "{{collector}}")],
            "percentunit",
            description="Seconds spent sampling per second of wall time.",
            w=8,
        ),
    ]
    receiving = [
        timeseries(
            "Receiver accepted",
            [
                rate("wattspan_receiver_spans_accepted_total", "spans"),
                rate("wattspan_receiver_metric_points_accepted_total", "metric points"),
                rate("wattspan_receiver_logs_accepted_total", "logs"),
            ],
            "ops",
            w=8,
        ),
        timeseries(
            "Receiver rejected and refused",
            [
                rate("wattspan_receiver_spans_rejected_total", "spans rejected"),
                rate("wattspan_receiver_metric_points_rejected_total", "points rejected"),
                rate("wattspan_receiver_requests_refused_total", "requests refused"),
                rate("wattspan_receiver_requests_unauthenticated_total", "unauthenticated"),
            ],
            "ops",
            w=8,
        ),
        timeseries(
            "Ingest pending",
            [prom(f"sum by (instance) (wattspan_ingest_spans_pending{sel})", "{{instance}}")],
            "short",
            w=8,
        ),
    ]
    exporting = [
        timeseries(
            "Exporter records",
            [
                by("exporter", "wattspan_exporter_sent_records_total", "sent {{exporter}}"),
                by("exporter", "wattspan_exporter_retries_total", "retried {{exporter}}"),
                by("exporter", "wattspan_exporter_dropped_records_total", "dropped {{exporter}}"),
                by(
                    "exporter",
                    "wattspan_exporter_dead_lettered_records_total",
                    "dead-lettered {{exporter}}",
                ),
            ],
            "ops",
            w=8,
        ),
        timeseries(
            "Exporter queued",
            [
                prom(
                    f"sum by (instance, exporter) (wattspan_exporter_queued_records{sel})",
                    "{{exporter}}",
                )
            ],
            "short",
            w=8,
        ),
        timeseries(
            "Exporter queue and store size",
            [
                prom(
                    f"sum by (instance, exporter) (wattspan_exporter_queue_bytes{sel})",
                    "queue {{exporter}}",
                ),
                prom(f"sum by (instance) (wattspan_store_used_bytes{sel})", "store"),
            ],
            "bytes",
            w=8,
        ),
    ]
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-agent-{kind}",
        kind=kind,
        settings=settings,
        description="The agent's own health: sampling, receiving, ingest, exporting.",
        variables=[host_var(kind, settings)],
        sections=[
            ("Health", health),
            ("Sampling", sampling),
            ("Receiving and ingest", receiving),
            ("Exporting", exporting),
        ],
    )
