"""*Pipelines*: per service and span name, how often a stage ran, how long it took, how
many items it processed, and what CPU time and energy the agent attributed to it.

InfluxDB: the attributed ``spans`` measurement, one point per span. Prometheus: the span
counters of ``/metrics`` (``agent/exporters/span_metrics.py``): ``increase`` over the range
for totals, ``rate`` for the curves (joules per second are watts), ``histogram_quantile``
over ``wattspan_span_duration_seconds`` for p50/p95, so quantiles are interpolated within
its buckets rather than exact. A series first appears with the spans it already counted, and
``increase`` cannot see what a series held at its first scrape: the first spans of a new
span name after an agent start are missing from the Prometheus variant's figures.
"""

from __future__ import annotations

import attr
from grafanalib.core import Dashboard, Template

from .panels import (
    Kind,
    Settings,
    Sized,
    bargauge,
    dashboard,
    host_var,
    influx,
    prom,
    prom_selector,
    query_var,
    stat,
    table,
    timeseries,
)

TITLE = "wattspan / Pipelines"
KINDS: tuple[Kind, ...] = ("influxdb", "prometheus")

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


def _influx_sections() -> list[tuple[str, list[Sized]]]:
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
                    sum("node_energy_total_joules") AS "node energy", sum("items") AS "items",
                    sum("process_energy_joules") / sum("items") AS "J/item"
                    FROM "spans" WHERE {_WHERE} GROUP BY "service", "span_name" """,
                    table=True,
                )
            ],
            columns=_STAGE_UNITS,
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
        _per_name("Items per interval", 'sum("items")', "short", bars=True),
        _per_name(
            "Energy per item",
            'sum("process_energy_joules") / sum("items")',
            "joule",
            description="Process-share energy of the interval's spans over their items.",
        ),
    ]
    return [("Summary", summary), ("Stages", stages), ("Over time", over_time)]


_STAGE_UNITS = {
    "p50": "s",
    "p95": "s",
    "CPU": "s",
    "energy": "joule",
    "node energy": "joule",
    "J/item": "joule",
}

_BY = "service, span_name"
_LEGEND = "{{service}} / {{span_name}}"


def _prom_sections(settings: Settings) -> list[tuple[str, list[Sized]]]:
    sel = prom_selector(settings, 'service=~"$service", span_name=~"$span_name"')

    def total(metric: str, by: str = "") -> str:
        grouping = f" by ({by})" if by else ""
        return f"sum{grouping} (increase({metric}{sel}[$__range]))"

    def per_second(metric: str) -> str:
        return f"sum by ({_BY}) (rate({metric}{sel}[$__rate_interval]))"

    def quantile(q: float, window: str) -> str:
        return (
            f"histogram_quantile({q}, sum by ({_BY}, le) "
            f"(increase(wattspan_span_duration_seconds_bucket{sel}[{window}])))"
        )

    spans, cpu = "wattspan_spans_total", "wattspan_span_cpu_seconds_total"
    proc, node = (
        "wattspan_span_process_energy_joules_total",
        "wattspan_span_node_energy_joules_total",
    )
    items = "wattspan_span_items_total"
    summary = [
        stat("Spans", [prom(total(spans), instant=True)], "short"),
        stat("CPU time", [prom(total(cpu), instant=True)], "s"),
        stat(
            "Energy (process share)",
            [prom(total(proc), instant=True)],
            "joule",
            description="Energy attributed to the spans' own processes.",
        ),
        stat(
            "Energy (node)",
            [prom(total(node), instant=True)],
            "joule",
            description="Node energy over the spans' lifetimes (overlapping spans count twice).",
        ),
    ]
    columns = {
        "count": total(spans, _BY),
        "p50": quantile(0.5, "$__range"),
        "p95": quantile(0.95, "$__range"),
        "CPU": total(cpu, _BY),
        "energy": total(proc, _BY),
        "node energy": total(node, _BY),
        "items": total(items, _BY),
        # Stages that count no items have no J/item (not an infinite one).
        "J/item": f"{total(proc, _BY)} / ({total(items, _BY)} > 0)",
    }
    stage_table = table(
        "Stages",
        [prom(e, instant=True, table=True) for e in columns.values()],
        columns=_STAGE_UNITS,
        sort_by="energy",
        description="One row per service and span name over the time range; p50/p95 are "
        "interpolated within the duration histogram's buckets.",
    )
    # One instant query per column: Grafana joins them on the labels, one row per stage.
    refs = [f"Value #{chr(ord('A') + i)}" for i in range(len(columns))]
    stage_table.panel = attr.evolve(
        stage_table.panel,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": dict(zip(refs, columns, strict=True)),
                },
            },
        ],
    )
    stages = [
        stage_table,
        bargauge(
            "Energy per stage", [prom(total(proc, _BY), _LEGEND, instant=True)], "joule", w=24
        ),
    ]

    def curve(title: str, expr: str, unit: str, **kw: object) -> Sized:
        return timeseries(title, [prom(expr, _LEGEND)], unit, **kw)  # type: ignore[arg-type]

    over_time = [
        curve("Spans per second", per_second(spans), "ops"),
        curve("Duration p50", quantile(0.5, "$__rate_interval"), "s"),
        curve("Duration p95", quantile(0.95, "$__rate_interval"), "s"),
        curve(
            "CPU (cores)",
            per_second(cpu),
            "short",
            description="CPU seconds of the spans' processes per second.",
        ),
        curve("Power (process share)", per_second(proc), "watt"),
        curve("Power (node)", per_second(node), "watt"),
        curve("Items per second", per_second(items), "short"),
        curve(
            "Energy per item",
            f"{per_second(proc)} / ({per_second(items)} > 0)",
            "joule",
            description="Process-share energy over the items the spans counted.",
        ),
    ]
    return [("Summary", summary), ("Stages", stages), ("Over time", over_time)]


def _variables(kind: Kind, settings: Settings) -> list[Template]:
    if kind == "influxdb":
        service = 'SHOW TAG VALUES FROM "spans" WITH KEY = "service" WHERE "host" =~ /^$host$/'
        span_name = (
            'SHOW TAG VALUES FROM "spans" WITH KEY = "span_name" WHERE "host" =~ /^$host$/'
            ' AND "service" =~ /^$service$/'
        )
    else:
        of_service = prom_selector(settings, 'service=~"$service"')
        service = f"label_values(wattspan_spans_total{prom_selector(settings)}, service)"
        span_name = f"label_values(wattspan_spans_total{of_service}, span_name)"
    return [
        host_var(kind, settings),
        query_var(kind, "service", "Service", service),
        query_var(kind, "span_name", "Span name", span_name),
    ]


def build(kind: Kind, settings: Settings) -> Dashboard:
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-pipelines-{kind}",
        kind=kind,
        settings=settings,
        description="Per service and span name: count, p50/p95 duration, CPU seconds, energy, "
        "items.",
        variables=_variables(kind, settings),
        sections=_influx_sections() if kind == "influxdb" else _prom_sections(settings),
    )
