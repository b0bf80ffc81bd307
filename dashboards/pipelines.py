"""*Pipelines*: per service and span name, how often a stage ran, how long it took, how
many items it processed, and what CPU time and energy the agent attributed to it.

InfluxDB: the exporter's rollups of the attributed spans (docs/influxdb.md): ``spans_1m``
(per minute and stage), ``spans_top`` (its slowest and costliest spans, with their ids) and
``runs_1m`` (per minute and run), so that no panel reads every span. Prometheus: the span
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

from wattspan.agent.exporters.influxdb.rollup import (
    BOUNDS,
    BUCKET_FIELDS,
    MAX_RELATIVE_ERROR,
    MEASUREMENT,
    RANKINGS,
    RUNS_MEASUREMENT,
    TOP_K,
    TOP_MEASUREMENT,
    influxql_quantile,
)

from .panels import (
    Kind,
    Settings,
    Sized,
    bargauge,
    dashboard,
    heatmap,
    host_var,
    influx,
    influx_annotation,
    prom,
    prom_annotation,
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

#: The rollup's points are minutes: nothing finer to show.
_MINUTE = "1m"
_ROLLUP = f'"{MEASUREMENT}"'
#: Rows of the top-spans tables: what spans_top keeps per minute, so the top-N is exact.
TOP_N = TOP_K
_RANKING_OF = {field: by for by, field in RANKINGS}
#: Columns of the heatmap over any range: cells several pixels wide on a full-width panel,
#: and a query that sums 25 fields per column stays cheap (bench/bench_dashboards.py).
HEATMAP_POINTS = 100
#: Every 4th bound of the rollup's histogram (octaves) for the heatmap: 25 series.
_HEATMAP_FIELDS = BUCKET_FIELDS[::4]


def _per_name(title: str, select: str, unit: str, **kw: object) -> Sized:
    return timeseries(
        title,
        [
            influx(
                f"""SELECT {select} FROM {_ROLLUP} WHERE {_WHERE}
                GROUP BY time($__interval), "service", "span_name" fill(none)""",
                alias="$tag_service / $tag_span_name",
            )
        ],
        unit,
        interval=_MINUTE,
        **kw,  # type: ignore[arg-type]
    )


def _stages_query() -> str:
    """One row per stage: sums over the range in a subquery, quantiles from its sums."""
    sums = ", ".join(
        [
            'sum("count") AS "count"',
            'sum("cpu_seconds") AS "cpu"',
            'sum("process_energy_joules") AS "energy"',
            'sum("node_energy_total_joules") AS "node"',
            'sum("items") AS "items"',
            *(f'sum("{f}") AS "{f}"' for f in BUCKET_FIELDS),
        ]
    )
    p50, p95 = influxql_quantile(0.5), influxql_quantile(0.95)
    return f"""SELECT "count", {p50} AS "p50", {p95} AS "p95",
        "cpu" AS "CPU", "energy", "node" AS "node energy", "items", "energy" / "items" AS "J/item"
        FROM (SELECT {sums} FROM {_ROLLUP} WHERE {_WHERE} GROUP BY "service", "span_name")
        GROUP BY "service", "span_name" """


def _heatmap_query() -> str:
    """Spans per octave of duration and interval: differences of the cumulative buckets."""
    inner = ", ".join(f'sum("{f}") AS "{f}"' for f in _HEATMAP_FIELDS)
    cols = []
    for i, f in enumerate(_HEATMAP_FIELDS):
        bound = format(BOUNDS[BUCKET_FIELDS.index(f)], "g")
        expr = f'"{f}"' if i == 0 else f'"{f}" - "{_HEATMAP_FIELDS[i - 1]}"'
        cols.append(f'{expr} AS "{bound}"')
    return f"""SELECT {", ".join(cols)} FROM (SELECT {inner} FROM {_ROLLUP} WHERE {_WHERE}
        GROUP BY time($__interval) fill(none))"""


_SPAN_COLUMNS = {
    "duration_seconds": ("duration", "s"),
    "process_energy_joules": ("energy", "joule"),
    "cpu_seconds": ("CPU", "s"),
}


def _top_spans(title: str, field: str, description: str) -> Sized:
    """``top()`` over spans_top's seats of one ranking: the top-K of every minute and stage
    (K = TOP_N), a superset of the range's top-N, with their trace ids."""
    name = _SPAN_COLUMNS[field][0]
    others = ", ".join(f'"{f}" AS "{n}"' for f, (n, _) in _SPAN_COLUMNS.items() if f != field)
    return table(
        title,
        [
            influx(
                f"""SELECT top("{field}", {TOP_N}) AS "{name}", {others}, "service",
                "span_name", "run", "trace_id", "span_id" FROM "{TOP_MEASUREMENT}"
                WHERE "by" = '{_RANKING_OF[field]}' AND {_WHERE}""",
                table=True,
            )
        ],
        columns={n: u for n, u in _SPAN_COLUMNS.values()},
        sort_by=name,
        description=description,
        w=12,
        h=10,
    )


def _influx_sections() -> list[tuple[str, list[Sized]]]:
    summary = [
        stat(
            "Spans",
            [influx(f'SELECT sum("count") FROM {_ROLLUP} WHERE {_WHERE}')],
            "short",
            calc="sum",
        ),
        stat(
            "CPU time",
            [influx(f'SELECT sum("cpu_seconds") FROM {_ROLLUP} WHERE {_WHERE}')],
            "s",
            calc="sum",
        ),
        stat(
            "Energy (process share)",
            [influx(f'SELECT sum("process_energy_joules") FROM {_ROLLUP} WHERE {_WHERE}')],
            "joule",
            calc="sum",
            description="Energy attributed to the spans' own processes.",
        ),
        stat(
            "Energy (node)",
            [influx(f'SELECT sum("node_energy_total_joules") FROM {_ROLLUP} WHERE {_WHERE}')],
            "joule",
            calc="sum",
            description="Node energy over the spans' lifetimes (overlapping spans count twice).",
        ),
    ]
    stages = [
        table(
            "Stages",
            [influx(_stages_query(), table=True)],
            columns=_STAGE_UNITS,
            sort_by="energy",
            description="One row per service and span name over the time range, from the "
            "one-minute rollup spans_1m. p50/p95 come from its log-spaced duration histogram: "
            f"within {MAX_RELATIVE_ERROR:.1%} of the exact value for durations between "
            f"{BOUNDS[0] * 1e6:.0f} us and {BOUNDS[-1] / 60:.0f} min.",
        ),
        bargauge(
            "Energy per stage",
            [
                influx(
                    f"""SELECT sum("process_energy_joules") FROM {_ROLLUP} WHERE {_WHERE}
                    GROUP BY "service", "span_name" """,
                    alias="$tag_service / $tag_span_name",
                )
            ],
            "joule",
            w=24,
        ),
    ]
    per_minute = (
        "Per minute and stage from spans_1m's histogram (within "
        f"{MAX_RELATIVE_ERROR:.1%}); an interval longer than a minute shows its highest minute."
    )
    over_time = [
        _per_name("Spans per interval", 'sum("count")', "short", bars=True),
        _per_name("Duration p50", 'max("p50_seconds")', "s", description=per_minute),
        _per_name("Duration p95", 'max("p95_seconds")', "s", description=per_minute),
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
        heatmap(
            "Span durations",
            [influx(_heatmap_query(), alias="$col")],
            # 25 sums per interval and series are the cost: about HEATMAP_POINTS columns at
            # any range (15 min over a day), never finer than the rollup's minute.
            interval=_MINUTE,
            max_data_points=HEATMAP_POINTS,
            description="Spans of the selected stages per interval and octave of duration "
            "(the bucket's upper bound), from spans_1m's histogram.",
        ),
    ]
    spans = [
        _top_spans(
            "Slowest spans",
            "duration_seconds",
            f"The {TOP_N} longest spans of the range, with their trace ids (spans_top: the "
            f"{TOP_N} longest of every minute and stage; exact for whole minutes).",
        ),
        _top_spans(
            "Costliest spans",
            "process_energy_joules",
            f"The {TOP_N} spans with the most process-share energy, with their trace ids "
            f"(spans_top: the {TOP_N} costliest of every minute and stage).",
        ),
    ]
    return [
        ("Summary", summary),
        ("Stages", stages),
        ("Over time", over_time),
        ("Spans", spans),
    ]


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
        heatmap(
            "Span durations",
            [
                prom(
                    "sum by (le) (increase(wattspan_span_duration_seconds_bucket"
                    f"{sel}[$__rate_interval]))",
                    "{{le}}",
                    heatmap=True,
                )
            ],
            description="Spans of the selected stages per interval and bucket of the "
            "duration histogram (upper bound).",
        ),
    ]
    return [("Summary", summary), ("Stages", stages), ("Over time", over_time)]


def _variables(kind: Kind, settings: Settings) -> list[Template]:
    if kind == "influxdb":
        service = f'SHOW TAG VALUES FROM {_ROLLUP} WITH KEY = "service" WHERE "host" =~ /^$host$/'
        span_name = (
            f'SHOW TAG VALUES FROM {_ROLLUP} WITH KEY = "span_name" '
            'WHERE "host" =~ /^$host$/ AND "service" =~ /^$service$/'
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
        annotations=[run_annotation(kind, settings)],
    )


def run_annotation(kind: Kind, settings: Settings, run_filter: str = "") -> dict[str, object]:
    """Runs on the time axis. InfluxDB: the first minute of each run with spans in the
    range (``runs_1m``). Prometheus, whose span counters carry no run: the stretch in
    which a run's ``wattspan_ml_value`` series exist (runs that log metrics)."""
    if kind == "influxdb":
        return influx_annotation(
            "Runs",
            f"""SELECT first("count") AS "spans" FROM "{RUNS_MEASUREMENT}"
            WHERE "host" =~ /^$host$/ {run_filter} AND $timeFilter GROUP BY "run" """,
            tags="run",
        )
    sel = prom_selector(settings, run_filter)
    return prom_annotation(
        "Runs", f"count by (run) (wattspan_ml_value{sel})", title="run {{run}}", tags="run"
    )
