"""Shared panel helpers: every dashboard module builds its panels with these.

A helper returns a :class:`Sized` (a grafanalib panel plus its width and height in grid
units); :func:`layout` places sections of them on Grafana's 24-column grid, each under a row
panel, so no module computes coordinates by hand.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import attr
from grafanalib.core import (
    Annotations,
    BarGauge,
    Dashboard,
    DashboardLink,
    GridPos,
    Panel,
    Repeat,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)
from grafanalib.influxdb import InfluxDBTarget

Kind = Literal["influxdb", "prometheus"]
KINDS: tuple[Kind, ...] = ("influxdb", "prometheus")

#: Every panel and variable query goes through the dashboard's ``datasource`` variable, so
#: one dashboard works against any datasource of its type the user picks.
DS_VAR = "datasource"

GRID_WIDTH = 24

#: Suffix of every estimated (power model) series; an override draws them dashed.
ESTIMATED = " (estimated)"


def ds_ref(kind: Kind) -> dict[str, str]:
    return {"type": kind, "uid": "${" + DS_VAR + "}"}


@dataclass
class Sized:
    panel: Panel
    w: int = 12
    h: int = 8


@dataclass
class Settings:
    """Names and addresses that end up in the dashboards and the provisioning files."""

    influxdb_name: str = "wattspan InfluxDB"
    influxdb_uid: str = "wattspan-influxdb"
    influxdb_url: str = "http://localhost:8086"
    influxdb_database: str = "wattspan"
    prometheus_name: str = "wattspan Prometheus"
    prometheus_uid: str = "wattspan-prometheus"
    prometheus_url: str = "http://localhost:9090"
    #: ``job`` label of the agent's scrape job; empty: any job.
    prometheus_job: str = ""
    tags: list[str] = field(default_factory=lambda: ["wattspan"])

    def uid(self, kind: Kind) -> str:
        return self.influxdb_uid if kind == "influxdb" else self.prometheus_uid

    def name(self, kind: Kind) -> str:
        return self.influxdb_name if kind == "influxdb" else self.prometheus_name


# -- targets -----------------------------------------------------------------------------


def influx(query: str, alias: str = "", *, table: bool = False) -> InfluxDBTarget:
    """A raw InfluxQL target (Grafana's ``$timeFilter``/``$__interval`` in the text)."""
    return InfluxDBTarget(
        query=" ".join(query.split()),
        alias=alias,
        format="table" if table else "time_series",
        datasource=ds_ref("influxdb"),
    )


def prom(
    expr: str,
    legend: str = "",
    *,
    instant: bool = False,
    table: bool = False,
    heatmap: bool = False,
) -> Target:
    """``heatmap``: Grafana's ``format: heatmap``, which turns cumulative ``le`` buckets
    into counts per bucket."""
    return Target(
        expr=" ".join(expr.split()),
        legendFormat=legend,
        instant=instant,
        format="heatmap" if heatmap else ("table" if table else "time_series"),
        datasource=ds_ref("prometheus"),
    )


def _ref_ids(targets: Sequence[Any]) -> list[Any]:
    return [attr.evolve(t, refId=string.ascii_uppercase[i]) for i, t in enumerate(targets)]


def _kind_of(targets: Sequence[Any]) -> Kind:
    return "influxdb" if isinstance(targets[0], InfluxDBTarget) else "prometheus"


# -- panels ------------------------------------------------------------------------------


def _estimated_override() -> dict[str, Any]:
    return {
        "matcher": {
            "id": "byRegexp",
            "options": ".*" + ESTIMATED.replace("(", r"\(").replace(")", r"\)") + "$",
        },
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        ],
    }


def unit_override(name: str, unit: str) -> dict[str, Any]:
    """A column/series named ``name`` shown in ``unit`` (tables mixing units)."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "unit", "value": unit}],
    }


MAX_DATA_POINTS = 1000


def timeseries(
    title: str,
    targets: Sequence[Any],
    unit: str,
    *,
    description: str = "",
    stack: bool = False,
    bars: bool = False,
    estimated: bool = False,
    w: int = 12,
    h: int = 8,
    interval: str | None = None,
) -> Sized:
    """``interval``: the panel's minimum ``$__interval`` (``1m`` for the one-minute
    rollups, which have nothing finer to show)."""
    overrides = [_estimated_override()] if estimated else []
    panel = TimeSeries(
        title=title,
        description=description or None,
        dataSource=ds_ref(_kind_of(targets)),
        targets=_ref_ids(targets),
        unit=unit,
        fillOpacity=40 if stack else 10,
        stacking={"mode": "normal", "group": "A"} if stack else {"mode": "none", "group": "A"},
        drawStyle="bars" if bars else "line",
        showPoints="never" if not bars else "auto",
        spanNulls=True,
        overrides=overrides,
        legendDisplayMode="table" if len(targets) > 1 or estimated else "list",
        legendCalcs=["mean", "max", "lastNotNull"],
        tooltipMode="multi",
        # Grafana rounds $__interval down by up to 1.75x: 1,000 keeps every series under
        # 2,000 points at any range (bench/bench_dashboards.py), where the panel's width in
        # pixels (the default) gave 2,881 over 24 h.
        maxDataPoints=MAX_DATA_POINTS,
        interval=interval,
    )
    return Sized(panel, w, h)


def _common(title: str, targets: Sequence[Any], description: str) -> dict[str, Any]:
    """What every single-value and table panel shares: one base threshold step in plain
    form (grafanalib's ``Threshold`` writes the old graph panel's keys, ``op`` and ``yaxis``)
    and no ``maxDataPoints`` (they reduce to one value or row per series anyway)."""
    return {
        "title": title,
        "description": description or None,
        "dataSource": ds_ref(_kind_of(targets)),
        "targets": _ref_ids(targets),
        "thresholds": [{"color": "green", "value": None}],
        "maxDataPoints": None,
    }


def stat(
    title: str,
    targets: Sequence[Any],
    unit: str,
    *,
    calc: str = "lastNotNull",
    description: str = "",
    w: int = 6,
    h: int = 4,
) -> Sized:
    panel = Stat(
        **_common(title, targets, description),
        format=unit,
        reduceCalc=calc,
        graphMode="none",
        noValue="no data",
        color={"mode": "thresholds"},
    )
    return Sized(panel, w, h)


def table(
    title: str,
    targets: Sequence[Any],
    unit: str = "short",
    *,
    columns: dict[str, str] | None = None,
    sort_by: str | None = None,
    description: str = "",
    w: int = 24,
    h: int = 9,
) -> Sized:
    """``columns`` maps a column name to its unit where it differs from ``unit``."""
    from grafanalib.core import TableSortByField

    panel = Table(
        **_common(title, targets, description),
        unit=unit,
        filterable=True,
        overrides=[unit_override(k, v) for k, v in (columns or {}).items()],
        sortBy=[TableSortByField(displayName=sort_by, desc=True)] if sort_by else [],
    )
    return Sized(panel, w, h)


def bargauge(
    title: str,
    targets: Sequence[Any],
    unit: str,
    *,
    calc: str = "lastNotNull",
    description: str = "",
    w: int = 12,
    h: int = 8,
) -> Sized:
    panel = BarGauge(
        **_common(title, targets, description),
        format=unit,
        calc=calc,
        displayMode="gradient",
        min=None,
        max=None,
    )
    return Sized(panel, w, h)


@attr.s
class Heatmap(Panel):
    """Grafana's heatmap panel (7.x's ``heatmap`` with the 9+ options): buckets the data
    already has (``calculate: false``), one series per upper bound."""

    unit: str = attr.ib(default="short")
    yUnit: str = attr.ib(default="s")
    scheme: str = attr.ib(default="Oranges")

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "type": "heatmap",
                "fieldConfig": {
                    "defaults": {
                        "unit": self.unit,
                        "custom": {
                            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                            "scaleDistribution": {"type": "linear"},
                        },
                    },
                    "overrides": [],
                },
                "options": {
                    "calculate": False,
                    "cellGap": 1,
                    "color": {
                        "mode": "scheme",
                        "scheme": self.scheme,
                        "scale": "exponential",
                        "exponent": 0.5,
                        "steps": 64,
                        "reverse": False,
                        "fill": "dark-orange",
                    },
                    "filterValues": {"le": 1e-9},
                    "legend": {"show": True},
                    "rowsFrame": {"layout": "le"},
                    "showValue": "never",
                    "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
                    "yAxis": {"axisPlacement": "left", "reverse": False, "unit": self.yUnit},
                },
            }
        )


def heatmap(
    title: str,
    targets: Sequence[Any],
    *,
    description: str = "",
    interval: str | None = None,
    max_data_points: int = MAX_DATA_POINTS,
    w: int = 24,
    h: int = 9,
) -> Sized:
    """Span counts per duration bucket over time (the Y axis in seconds)."""
    panel = Heatmap(
        title=title,
        description=description or None,
        dataSource=ds_ref(_kind_of(targets)),
        targets=_ref_ids(targets),
        maxDataPoints=max_data_points,
        interval=interval,
    )
    return Sized(panel, w, h)


def matrix(
    title: str,
    targets: Sequence[Any],
    *,
    rows: str,
    columns: str,
    value: str,
    unit: str = "short",
    description: str = "",
    repeat: str | None = None,
    w: int = 12,
    h: int = 9,
) -> Sized:
    """A table with one row per value of ``rows`` and a column per value of ``columns``
    (Grafana's *grouping to matrix* of the long form the queries return)."""
    s = table(title, targets, unit, description=description, w=w, h=h)
    extra: dict[str, Any] = {
        "transformations": [
            {
                "id": "groupingToMatrix",
                "options": {"columnField": columns, "rowField": rows, "valueField": value},
            }
        ]
    }
    if repeat:
        extra["repeat"] = Repeat(direction="h", variable=repeat, maxPerRow=2)
    s.panel = attr.evolve(s.panel, **extra)
    return s


def layout(sections: Iterable[tuple[str, Sequence[Sized]]]) -> list[Panel]:
    """Row panels and their panels, placed left to right, wrapping at 24 columns."""
    out: list[Panel] = []
    y = 0
    for title, panels in sections:
        out.append(RowPanel(title=title, gridPos=GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        y += 1
        x = 0
        row_h = 0
        for s in panels:
            if s.w > GRID_WIDTH:
                raise ValueError(f"panel {s.panel.title!r} is wider than the grid")
            if x + s.w > GRID_WIDTH:
                x, y, row_h = 0, y + row_h, 0
            out.append(attr.evolve(s.panel, gridPos=GridPos(h=s.h, w=s.w, x=x, y=y)))
            x += s.w
            row_h = max(row_h, s.h)
        y += row_h
    return out


# -- variables ---------------------------------------------------------------------------


def datasource_var(kind: Kind, settings: Settings) -> Template:
    return Template(
        name=DS_VAR,
        label="Data source",
        query=kind,
        type="datasource",
        default=settings.uid(kind),
        refresh=1,
    )


def query_var(kind: Kind, name: str, label: str, query: str, *, multi: bool = True) -> Template:
    """A variable filled by a tag/label query (``SHOW TAG VALUES`` / ``label_values``)."""
    t = Template(
        name=name,
        label=label,
        query=" ".join(query.split()),
        dataSource=ds_ref(kind),
        includeAll=multi,
        multi=multi,
        refresh=2,  # on time range change: new runs/spans appear without a reload
        sort=1,
    )
    if kind == "prometheus":
        # Grafana's Prometheus datasource reads a structured variable query.
        lv = query.strip()
        t = attr.evolve(
            t, query={"query": lv, "refId": "PrometheusVariableQueryEditor-VariableQuery"}
        )
    if multi and kind == "prometheus":
        t = attr.evolve(t, allValue=".*")
    return t


def custom_var(name: str, label: str, values: Sequence[str], default: str) -> Template:
    """A variable the user picks from fixed values (no query)."""
    return Template(name=name, label=label, query=",".join(values), type="custom", default=default)


def influx_annotation(name: str, query: str, *, tags: str, color: str = "purple") -> dict[str, Any]:
    """An annotation query: one event per row, ``tags`` the tag column shown on it."""
    q = " ".join(query.split())
    return {
        "name": name,
        "datasource": ds_ref("influxdb"),
        "enable": True,
        "iconColor": color,
        "query": q,
        "tagsColumn": tags,
        "target": {"query": q, "rawQuery": True, "refId": "Anno"},
    }


def prom_annotation(
    name: str, expr: str, *, title: str, tags: str, color: str = "purple"
) -> dict[str, Any]:
    """An annotation query: a region wherever a series of ``expr`` exists."""
    e = " ".join(expr.split())
    return {
        "name": name,
        "datasource": ds_ref("prometheus"),
        "enable": True,
        "iconColor": color,
        "expr": e,
        "step": "60s",
        "titleFormat": title,
        "tagKeys": tags,
        "useValueForTime": False,
        "target": {"expr": e, "refId": "Anno"},
    }


def prom_selector(settings: Settings, extra: str = "") -> str:
    """The label matchers every PromQL query of a node dashboard starts with."""
    parts = ['instance=~"$host"']
    if settings.prometheus_job:
        parts.insert(0, f'job="{settings.prometheus_job}"')
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def host_var(kind: Kind, settings: Settings) -> Template:
    if kind == "influxdb":
        return query_var(kind, "host", "Host", 'SHOW TAG VALUES FROM "cpu" WITH KEY = "host"')
    job = f'{{job="{settings.prometheus_job}"}}' if settings.prometheus_job else ""
    return query_var(kind, "host", "Host", f"label_values(wattspan_build_info{job}, instance)")


def dashboard(
    *,
    title: str,
    uid: str,
    kind: Kind,
    settings: Settings,
    description: str,
    variables: Sequence[Template],
    sections: Iterable[tuple[str, Sequence[Sized]]],
    annotations: Sequence[dict[str, Any]] = (),
) -> Dashboard:
    return Dashboard(
        annotations=Annotations(list=list(annotations)),
        title=title,
        uid=uid,
        description=description,
        tags=[*settings.tags, kind],
        timezone="browser",
        graphTooltip=1,
        refresh="30s",
        time=Time("now-1h", "now"),
        templating=Templating([datasource_var(kind, settings), *variables]),
        links=[
            DashboardLink(
                title="wattspan",
                type="dashboards",
                tags=[*settings.tags, kind],
                asDropdown=True,
                keepTime=True,
                includeVars=True,
            )
        ],
        panels=layout(sections),
    ).auto_panel_ids()
