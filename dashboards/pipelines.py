"""*Pipelines*: per service and span name, how often a stage ran, how long it took, and
what CPU time and energy the agent attributed to it.

Reads the attributed ``spans`` measurement of InfluxDB only: ``/metrics`` has no
span-derived counters yet (its ``wattspan_spans_*`` gauges hold the latest span of a
series, not a count or a sum), so there is no Prometheus variant.
"""

from __future__ import annotations

from grafanalib.core import Dashboard

from .panels import (
    Kind,
    Settings,
    bargauge,
    dashboard,
    host_var,
    influx,
    query_var,
    stat,
    table,
    timeseries,
)

TITLE = "wattspan / Pipelines"
KINDS: tuple[Kind, ...] = ("influxdb",)

_WHERE = """"host" =~ /^$host$/ AND "service" =~ /^$service$/ AND "span_name" =~ /^$span_name$/
AND $timeFilter"""


def _per_name(title: str, select: str, unit: str, **kw: object) -> object:
    return timeseries(
        title,
        [
            influx(
                f"""SELECT {select} FROM "spans" WHERE {_WHERE}
                GROUP BY time($__interval), "service", "span_name" fill(none)""",
                alias="$tag_service / $tag_span_name",
            )
        ],
        unit,
        **kw,  # type: ignore[arg-type]
    )


def build(kind: Kind, settings: Settings) -> Dashboard:
    if kind != "influxdb":
        raise ValueError("the Pipelines dashboard reads InfluxDB's spans measurement only")
    summary = [
        stat(
            "Spans",
            [influx(f'SELECT count("duration_seconds") FROM "spans" WHERE {_WHERE}')],
            "short",
            calc="sum",
        ),
        stat(
            "CPU time",
            [influx(f'SELECT sum("cpu_seconds") FROM "spans" WHERE {_WHERE}')],
            "s",
            calc="sum",
        ),
        stat(
            "Energy (process share)",
            [influx(f'SELECT sum("process_energy_joules") FROM "spans" WHERE {_WHERE}')],
            "joule",
            calc="sum",
            description="Energy attributed to the spans' own processes.",
        ),
        stat(
            "Energy (node)",
            [influx(f'SELECT sum("node_energy_total_joules") FROM "spans" WHERE {_WHERE}')],
            "joule",
            calc="sum",
            description="Node energy over the spans' lifetimes (overlapping spans count twice).",
        ),
    ]
    stages = [
        table(
            "Stages",
            [
                influx(
                    f"""SELECT count("duration_seconds") AS "count",
                    percentile("duration_seconds", 50) AS "p50",
                    percentile("duration_seconds", 95) AS "p95",
                    sum("cpu_seconds") AS "CPU", sum("process_energy_joules") AS "energy",
                    sum("node_energy_total_joules") AS "node energy"
                    FROM "spans" WHERE {_WHERE} GROUP BY "service", "span_name" """,
                    table=True,
                )
            ],
            columns={"p50": "s", "p95": "s", "CPU": "s", "energy": "joule", "node energy": "joule"},
            sort_by="energy",
            description="One row per service and span name over the time range.",
        ),
        bargauge(
            "Energy per stage",
            [
                influx(
                    f"""SELECT sum("process_energy_joules") FROM "spans" WHERE {_WHERE}
                    GROUP BY "service", "span_name" """,
                    alias="$tag_service / $tag_span_name",
                )
            ],
            "joule",
            w=24,
        ),
    ]
    over_time = [
        _per_name("Spans per interval", 'count("duration_seconds")', "short", bars=True),
        _per_name("Duration p50", 'percentile("duration_seconds", 50)', "s"),
        _per_name("Duration p95", 'percentile("duration_seconds", 95)', "s"),
        _per_name("CPU seconds", 'sum("cpu_seconds")', "s"),
        _per_name("Energy (process share)", 'sum("process_energy_joules")', "joule"),
        _per_name("Energy (node)", 'sum("node_energy_total_joules")', "joule"),
    ]
    variables = [
        host_var(kind, settings),
        query_var(
            kind,
            "service",
            "Service",
            'SHOW TAG VALUES FROM "spans" WITH KEY = "service" WHERE "host" =~ /^$host$/',
        ),
        query_var(
            kind,
            "span_name",
            "Span name",
            'SHOW TAG VALUES FROM "spans" WITH KEY = "span_name" WHERE "host" =~ /^$host$/'
            ' AND "service" =~ /^$service$/',
        ),
    ]
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-pipelines-{kind}",
        kind=kind,
        settings=settings,
        description="Per service and span name: count, p50/p95 duration, CPU seconds, energy.",
        variables=variables,
        sections=[("Summary", summary), ("Stages", stages), ("Over time", over_time)],
    )
