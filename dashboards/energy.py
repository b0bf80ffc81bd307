"""*Energy by process*: which processes on a node draw its power and use its energy.

Reads the agent's node-wide per-process accounting, source ``process_energy`` (InfluxDB
measurement ``process_energy``, metrics ``wattspan_process_energy_*``; tags ``pid``,
``name``): each tick's active energy charged to every process by its share of the node's
busy CPU time, the top ``collectors.node_processes.top_n`` by energy named and the rest
summed as ``pid="other"`` (other processes and the kernel). Node power comes from the
primary energy domains (RAPL packages measured, or the power model estimated), idle power
from the figure the agent exports (the power model's ``idle_power_watts``).

Two rules of ``agent/process_energy.py`` shape the queries:

* a tick's ``power_watts`` add up to the node's active power and every tick has an
  ``other`` point (InfluxDB: the sum of an interval's points over its count of ``other``
  points is the mean active power); a process leaving the top N gets a last 0 (Prometheus:
  the sum of every series' latest sample at an instant is the active power there). Energy
  over the range is that active power integrated at the dashboard's interval;
* a process's ``joules_total`` also counts what it used while out of the top N (which
  ``other`` counted too): right for one process, double-counting when summed over series,
  so it is read per process only.
"""

from __future__ import annotations

from typing import Any

import attr
from grafanalib.core import Dashboard

from .panels import (
    ESTIMATED,
    Kind,
    Settings,
    Sized,
    bargauge,
    dashboard,
    host_var,
    influx,
    prom,
    prom_selector,
    stat,
    table,
    timeseries,
)

TITLE = "wattspan / Energy by process"
_HOST = '"host" =~ /^$host$/'
#: RAPL's primary domains: the packages (their subzones and dram overlap or are not CPU).
_PACKAGES_INFLUX = '"domain" =~ /^package-[0-9]+$/'
_PACKAGES_PROM = 'domain=~"package-[0-9]+"'
_J_PER_KWH = 3_600_000
#: What ``pid="other"`` stands for, in legends that would otherwise read "other (other)".
OTHER_LABEL = "other (rest of the active power)"
TOP = 15


def _show_other(s: Sized) -> Sized:
    """Names the ``other`` series for what it is and draws it grey, so it is not read as a
    process called "other"."""
    rename = {
        "id": "renameByRegex",
        "options": {"regex": r"other \(other\)$", "renamePattern": OTHER_LABEL},
    }
    escaped = OTHER_LABEL.replace("(", r"\(").replace(")", r"\)")
    grey = {
        "matcher": {"id": "byRegexp", "options": f".*{escaped}$"},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#8e8e8e"}}],
    }
    panel = s.panel
    changes: dict[str, Any] = {"transformations": [*panel.transformations, rename]}
    if hasattr(panel, "overrides"):  # grafanalib's BarGauge has none
        changes["overrides"] = [*panel.overrides, grey]
    return Sized(
        attr.evolve(panel, **changes),
        s.w,
        s.h,
    )


def _table_columns(s: Sized, rename: dict[str, str]) -> Sized:
    """One row per process from the targets' frames, the time column dropped."""
    steps: list[dict[str, Any]] = []
    if rename:
        steps.append({"id": "merge", "options": {}})
    steps.append(
        {
            "id": "organize",
            "options": {"excludeByName": {"Time": True}, "renameByName": rename},
        }
    )
    return Sized(attr.evolve(s.panel, transformations=steps), s.w, s.h)


_TABLE_UNITS = {
    "energy": "joule",
    "mean power in top N": "watt",
    "peak power": "watt",
    "CPU share in top N": "percentunit",
}
_TABLE_DESCRIPTION = (
    "Energy: the process's own counter over the range, which includes what it used while "
    "out of the top N (also counted under other), so the column does not add up to the "
    "node's active energy. Power and CPU share: over the samples where it was in the top N."
)
_POWER_DESCRIPTION = (
    "Each process's mean power over the interval's samples while it was in the top N, and "
    "other. Stacked they make the active power, exactly where the top N held still."
)
_ENERGY_DESCRIPTION = (
    "Active energy charged to processes (top N and other): each interval's summed process "
    "power times the interval. Idle power is not in it."
)

_IDLE_DESCRIPTION = (
    "Node: the primary energy domains. Active: the summed process power (top N and other), "
    "what attribution charges to processes. Idle: the power model's idle figure, which is "
    "what the agent charges as idle when the model runs; with RAPL the agent exports no "
    "idle figure and the gap between node and active is the idle power it charged."
)


def _influx_sections() -> list[tuple[str, list[Sized]]]:
    where = f"{_HOST} AND $timeFilter"
    per_series = '"pid", "name", "host"'
    # Each tick's points sum to the active power and every tick has one `other` point:
    # all points' sum over the count of `other` points is the mean active power over the
    # interval's ticks. (Summing per-series means instead over-counts a process that
    # entered or left the top N within the interval.)
    # The count is made a float: InfluxDB 1.x drops an integer field of the second of two
    # subqueries whose first has the same column as a float (the quotient came back null).
    active = f"""SELECT sum("p") / sum("n") AS "active" FROM
        (SELECT sum("power_watts") AS "p" FROM "process_energy" WHERE {where}
        GROUP BY time($__interval), "host" fill(none)),
        (SELECT count("power_watts") * 1.0 AS "n" FROM "process_energy" WHERE {where}
        AND "pid" = 'other' GROUP BY time($__interval), "host" fill(none))
        WHERE $timeFilter GROUP BY time($__interval), "host" fill(none)"""
    energy = f'SELECT sum("active") * $__interval_ms / 1000 FROM ({active})'
    rapl_energy = f"""SELECT sum("step") FROM (SELECT non_negative_difference(
        "energy_joules_total") AS "step" FROM "rapl" WHERE {_HOST} AND {_PACKAGES_INFLUX}
        AND $timeFilter GROUP BY "domain", "zone", "host")"""
    model_energy = f"""SELECT sum("step") FROM (SELECT non_negative_difference(
        "energy_joules_total") AS "step" FROM "power_model" WHERE {where}
        GROUP BY "domain", "host")"""
    summary = [
        stat("Process energy", [influx(energy)], "joule", description=_ENERGY_DESCRIPTION),
        stat(
            "Process energy (kWh)",
            [
                influx(
                    f'SELECT sum("active") * $__interval_ms / 1000 / {_J_PER_KWH} FROM ({active})'
                )
            ],
            "kwatth",
            description=_ENERGY_DESCRIPTION,
        ),
        stat(
            "Mean active power",
            [
                influx(
                    f"""SELECT mean("a") FROM (SELECT sum("active") AS "a" FROM ({active})
                    WHERE $timeFilter GROUP BY time($__interval))"""
                )
            ],
            "watt",
            description="Summed process power (top N and other) averaged over the range.",
        ),
        stat(
            "Node energy",
            [influx(rapl_energy, alias="RAPL"), influx(model_energy, alias="model" + ESTIMATED)],
            "joule",
            description="The primary domains' energy over the range (RAPL packages, or the "
            "power model, estimated): active plus idle.",
        ),
    ]
    energy_by_process = f"""SELECT sum("step") FROM (SELECT non_negative_difference(
        "joules_total") AS "step" FROM "process_energy" WHERE {where} GROUP BY {per_series})
        GROUP BY {per_series}"""
    top = [
        _show_other(
            bargauge(
                "Energy by process",
                [influx(energy_by_process, alias="$tag_host: $tag_name ($tag_pid)")],
                "joule",
                description="Each process's energy over the range (its own counter). "
                + "Processes that were never in the top N are in other.",
                h=10,
            )
        ),
        _table_columns(
            table(
                "Top processes",
                [
                    influx(
                        f"""SELECT sum("step") AS "energy", mean("power") AS
                        "mean power in top N", max("power") AS "peak power",
                        mean("share") AS "CPU share in top N"
                        FROM (SELECT non_negative_difference("joules_total") AS "step"
                        FROM "process_energy" WHERE {where} GROUP BY {per_series}),
                        (SELECT "power_watts" AS "power", "cpu_share_ratio" AS "share"
                        FROM "process_energy" WHERE {where} GROUP BY {per_series})
                        GROUP BY {per_series}""",
                        table=True,
                    )
                ],
                columns=_TABLE_UNITS,
                sort_by="energy",
                description=_TABLE_DESCRIPTION,
                w=12,
                h=10,
            ),
            {},
        ),
        _show_other(
            timeseries(
                "Power by process",
                [
                    influx(
                        f"""SELECT mean("power_watts") FROM "process_energy" WHERE {where}
                        GROUP BY time($__interval), {per_series} fill(none)""",
                        alias="$tag_host: $tag_name ($tag_pid)",
                    )
                ],
                "watt",
                stack=True,
                description=_POWER_DESCRIPTION,
            )
        ),
        _show_other(
            timeseries(
                "CPU share by process",
                [
                    influx(
                        f"""SELECT mean("cpu_share_ratio") FROM "process_energy"
                        WHERE {where} GROUP BY time($__interval), {per_series} fill(none)""",
                        alias="$tag_host: $tag_name ($tag_pid)",
                    )
                ],
                "percentunit",
                stack=True,
                description="Share of the node's busy CPU time: what the energy is split by.",
            )
        ),
    ]
    idle_active = [
        timeseries(
            "Node, active and idle power",
            [
                influx(
                    f"""SELECT sum("p") FROM (SELECT mean("power_watts") AS "p" FROM "rapl"
                    WHERE {_HOST} AND {_PACKAGES_INFLUX} AND $timeFilter
                    GROUP BY time($__interval), "domain", "zone", "host")
                    WHERE $timeFilter GROUP BY time($__interval), "host" fill(none)""",
                    alias="node $tag_host",
                ),
                influx(
                    f"""SELECT mean("power_watts") FROM "power_model" WHERE {where}
                    GROUP BY time($__interval), "host" fill(none)""",
                    alias="node $tag_host" + ESTIMATED,
                ),
                influx(
                    f'SELECT "active" FROM ({active}) GROUP BY "host"', alias="active $tag_host"
                ),
                influx(
                    f"""SELECT mean("idle_power_watts") FROM "power_model" WHERE {where}
                    GROUP BY time($__interval), "host" fill(none)""",
                    alias="idle $tag_host" + ESTIMATED,
                ),
            ],
            "watt",
            estimated=True,
            description=_IDLE_DESCRIPTION,
            w=24,
        ),
    ]
    return [("Energy over the time range", summary), ("Processes", top),
            ("Idle and active", idle_active)]  # fmt: skip


def _prom_sections(s: Settings) -> list[tuple[str, list[Sized]]]:
    sel = prom_selector(s)
    power = f"wattspan_process_energy_power_watts{sel}"
    active = f"sum({power})"
    series = "instance, name, pid"
    legend = "{{instance}}: {{name}} ({{pid}})"
    summary = [
        stat(
            "Process energy",
            [
                prom(
                    f"sum_over_time({active}[$__range:$__interval]) * $__interval_ms / 1000",
                    instant=True,
                )
            ],
            "joule",
            description=_ENERGY_DESCRIPTION,
        ),
        stat(
            "Process energy (kWh)",
            [
                prom(
                    f"sum_over_time({active}[$__range:$__interval]) * $__interval_ms / 1000"
                    f" / {_J_PER_KWH}",
                    instant=True,
                )
            ],
            "kwatth",
            description=_ENERGY_DESCRIPTION,
        ),
        stat(
            "Mean active power",
            [prom(f"avg_over_time({active}[$__range:$__interval])", instant=True)],
            "watt",
            description="Summed process power (top N and other) averaged over the range.",
        ),
        stat(
            "Node energy",
            [
                prom(
                    "sum(increase(wattspan_rapl_energy_joules_total"
                    f"{prom_selector(s, _PACKAGES_PROM)}[$__range]))",
                    "RAPL",
                    instant=True,
                ),
                prom(
                    f"sum(increase(wattspan_power_model_energy_joules_total{sel}[$__range]))",
                    "model" + ESTIMATED,
                    instant=True,
                ),
            ],
            "joule",
            description="The primary domains' energy over the range (RAPL packages, or the "
            "power model, estimated): active plus idle.",
        ),
    ]

    def per_process(expr: str) -> Any:
        return prom(expr, instant=True, table=True)

    top = [
        _show_other(
            bargauge(
                f"Energy by process (top {TOP})",
                [
                    prom(
                        f"topk({TOP}, sum by ({series}) (increase("
                        f"wattspan_process_energy_joules_total{sel}[$__range])))",
                        legend,
                        instant=True,
                    )
                ],
                "joule",
                description="Each process's energy over the range (its own counter). "
                + "Processes that were never in the top N are in other.",
                h=10,
            )
        ),
        _table_columns(
            table(
                "Top processes",
                [
                    per_process(
                        f"sum by ({series}) (increase("
                        f"wattspan_process_energy_joules_total{sel}[$__range]))"
                    ),
                    per_process(f"avg by ({series}) (avg_over_time({power}[$__range]))"),
                    per_process(f"max by ({series}) (max_over_time({power}[$__range]))"),
                    per_process(
                        f"avg by ({series}) (avg_over_time("
                        f"wattspan_process_energy_cpu_share_ratio{sel}[$__range]))"
                    ),
                ],
                columns=_TABLE_UNITS,
                sort_by="energy",
                description=_TABLE_DESCRIPTION,
                w=12,
                h=10,
            ),
            {
                "Value #A": "energy",
                "Value #B": "mean power in top N",
                "Value #C": "peak power",
                "Value #D": "CPU share in top N",
            },
        ),
        _show_other(
            timeseries(
                "Power by process",
                [prom(f"sum by ({series}) ({power})", legend)],
                "watt",
                stack=True,
                description=_POWER_DESCRIPTION,
            )
        ),
        _show_other(
            timeseries(
                "CPU share by process",
                [
                    prom(
                        f"sum by ({series}) (wattspan_process_energy_cpu_share_ratio{sel})",
                        legend,
                    )
                ],
                "percentunit",
                stack=True,
                description="Share of the node's busy CPU time: what the energy is split by.",
            )
        ),
    ]
    idle_active = [
        timeseries(
            "Node, active and idle power",
            [
                prom(
                    "sum by (instance) (wattspan_rapl_power_watts"
                    f"{prom_selector(s, _PACKAGES_PROM)})",
                    "node {{instance}}",
                ),
                prom(
                    f"sum by (instance) (wattspan_power_model_power_watts{sel})",
                    "node {{instance}}" + ESTIMATED,
                ),
                prom(f"sum by (instance) ({power})", "active {{instance}}"),
                prom(
                    f"sum by (instance) (wattspan_power_model_idle_power_watts{sel})",
                    "idle {{instance}}" + ESTIMATED,
                ),
            ],
            "watt",
            estimated=True,
            description=_IDLE_DESCRIPTION,
            w=24,
        ),
    ]
    return [("Energy over the time range", summary), ("Processes", top),
            ("Idle and active", idle_active)]  # fmt: skip


def build(kind: Kind, settings: Settings) -> Dashboard:
    sections = _influx_sections() if kind == "influxdb" else _prom_sections(settings)
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-energy-{kind}",
        kind=kind,
        settings=settings,
        description="Top processes by power and energy (node-wide accounting, the rest as "
        "other), energy over the range in J and kWh, node vs active vs idle power.",
        variables=[host_var(kind, settings)],
        sections=sections,
    )
