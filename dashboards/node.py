"""*Node*: where a node's CPU time, memory and energy go, and what its GPUs do.

Reads the node collectors' measurements (InfluxDB ``cpu``, ``memory``, ``rapl``,
``power_model``, ``gpu``) or metrics (``wattspan_cpu_*``, ``wattspan_memory_*``,
``wattspan_rapl_*``, ``wattspan_power_model_*``, ``wattspan_gpu_*``).
"""

from __future__ import annotations

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
    timeseries,
)

TITLE = "wattspan / Node"
MODES = ("user", "system", "iowait", "nice", "irq", "softirq", "steal")
_HOST = '"host" =~ /^$host$/'


def _influx_sections() -> list[tuple[str, list[Sized]]]:
    modes = ", ".join(f'mean("{m}_ratio") AS "{m}"' for m in MODES)
    cpu = [
        timeseries(
            "CPU by mode",
            [
                influx(
                    f"""SELECT {modes} FROM "cpu" WHERE {_HOST} AND "cpu" = 'total'
                    AND $timeFilter GROUP BY time($__interval) fill(null)"""
                )
            ],
            "percentunit",
            stack=True,
            description="Share of all cores' time per mode (node-wide, `cpu=total`).",
        ),
        timeseries(
            "CPU utilisation per core",
            [
                influx(
                    f"""SELECT mean("utilization_ratio") FROM "cpu" WHERE {_HOST}
                    AND "cpu" != 'total' AND $timeFilter
                    GROUP BY time($__interval), "cpu" fill(null)""",
                    alias="core $tag_cpu",
                )
            ],
            "percentunit",
        ),
        timeseries(
            "Load average",
            [
                influx(
                    f"""SELECT mean("load1") AS "1m", mean("load5") AS "5m",
                    mean("load15") AS "15m" FROM "cpu" WHERE {_HOST} AND "cpu" = 'total'
                    AND $timeFilter GROUP BY time($__interval) fill(null)"""
                )
            ],
            "short",
            w=8,
        ),
        timeseries(
            "CPU frequency",
            [
                influx(
                    f"""SELECT mean("frequency_hertz") AS "frequency" FROM "cpu"
                    WHERE {_HOST} AND "cpu" = 'total' AND $timeFilter
                    GROUP BY time($__interval) fill(null)"""
                )
            ],
            "hertz",
            w=8,
        ),
        stat(
            "CPU utilisation",
            [
                influx(
                    f"""SELECT mean("utilization_ratio") FROM "cpu" WHERE {_HOST}
                    AND "cpu" = 'total' AND $timeFilter"""
                )
            ],
            "percentunit",
            description="Mean over the time range.",
            w=8,
            h=8,
        ),
    ]
    memory = [
        timeseries(
            "Memory",
            [
                influx(
                    f"""SELECT mean("used_bytes") AS "used", mean("cached_bytes") AS "cached",
                    mean("buffers_bytes") AS "buffers", mean("available_bytes") AS "available",
                    mean("swap_used_bytes") AS "swap used" FROM "memory" WHERE {_HOST}
                    AND $timeFilter GROUP BY time($__interval) fill(null)"""
                )
            ],
            "bytes",
            w=18,
        ),
        stat(
            "Memory used",
            [
                influx(
                    f"""SELECT last("used_ratio") FROM "memory" WHERE {_HOST}
                    AND $timeFilter"""
                )
            ],
            "percentunit",
            w=6,
            h=8,
        ),
    ]
    power = [
        timeseries(
            "Power per domain",
            [
                influx(
                    f"""SELECT mean("power_watts") FROM "rapl" WHERE {_HOST} AND $timeFilter
                    GROUP BY time($__interval), "domain" fill(null)""",
                    alias="$tag_domain",
                ),
                influx(
                    f"""SELECT mean("power_watts") FROM "power_model" WHERE {_HOST}
                    AND $timeFilter GROUP BY time($__interval), "domain" fill(null)""",
                    alias="$tag_domain" + ESTIMATED,
                ),
            ],
            "watt",
            estimated=True,
            description="RAPL where the node has it (measured); the CPU power model "
            "(utilisation x TDP) is an estimate, drawn dashed and suffixed (estimated).",
        ),
        bargauge(
            "Energy per domain over the time range",
            [
                # Counters restart at 0 with the agent: summing the non-negative steps
                # counts the energy across restarts, where spread() would not.
                influx(
                    f"""SELECT sum("step") FROM (SELECT non_negative_difference(
                    "energy_joules_total") AS "step" FROM "rapl" WHERE {_HOST}
                    AND $timeFilter GROUP BY "domain", "zone", "host") GROUP BY "domain" """,
                    alias="$tag_domain",
                ),
                influx(
                    f"""SELECT sum("step") FROM (SELECT non_negative_difference(
                    "energy_joules_total") AS "step" FROM "power_model" WHERE {_HOST}
                    AND $timeFilter GROUP BY "domain", "host") GROUP BY "domain" """,
                    alias="$tag_domain" + ESTIMATED,
                ),
            ],
            "joule",
        ),
    ]
    gpu = _gpu_influx()
    return [("CPU", cpu), ("Memory", memory), ("Power and energy", power), ("GPU", gpu)]


def _gpu_influx() -> list[Sized]:
    def q(field: str, title: str, unit: str) -> Sized:
        return timeseries(
            title,
            [
                influx(
                    f"""SELECT mean("{field}") FROM "gpu" WHERE {_HOST} AND $timeFilter
                    GROUP BY time($__interval), "gpu" fill(null)""",
                    alias="GPU $tag_gpu",
                )
            ],
            unit,
            w=8,
        )

    return [
        q("utilization_gpu_ratio", "GPU utilisation", "percentunit"),
        q("memory_used_bytes", "GPU memory used", "bytes"),
        q("power_watts", "GPU power", "watt"),
        q("temperature_celsius", "GPU temperature", "celsius"),
        q("sm_clock_hertz", "GPU SM clock", "hertz"),
        bargauge(
            "GPU energy over the time range",
            [
                influx(
                    f"""SELECT sum("step") FROM (SELECT non_negative_difference(
                    "energy_joules_total") AS "step" FROM "gpu" WHERE {_HOST}
                    AND $timeFilter GROUP BY "gpu", "host") GROUP BY "gpu" """,
                    alias="GPU $tag_gpu",
                )
            ],
            "joule",
            w=8,
        ),
    ]


def _prom_sections(s: Settings) -> list[tuple[str, list[Sized]]]:
    total = prom_selector(s, 'cpu="total"')
    sel = prom_selector(s)
    cores = prom_selector(s, 'cpu!="total"')
    cpu = [
        timeseries(
            "CPU by mode",
            [prom(f"wattspan_cpu_{m}_ratio{total}", m) for m in MODES],
            "percentunit",
            stack=True,
            description="Share of all cores' time per mode (node-wide, `cpu=total`).",
        ),
        timeseries(
            "CPU utilisation per core",
            [prom(f"wattspan_cpu_utilization_ratio{cores}", "core {{cpu}}")],
            "percentunit",
        ),
        timeseries(
            "Load average",
            [prom(f"wattspan_cpu_load{n}{sel}", f"{n}m") for n in (1, 5, 15)],
            "short",
            w=8,
        ),
        timeseries(
            "CPU frequency", [prom(f"wattspan_cpu_frequency_hertz{sel}", "frequency")], "hertz", w=8
        ),
        stat(
            "CPU utilisation",
            [prom(f"avg_over_time(wattspan_cpu_utilization_ratio{total}[$__range])")],
            "percentunit",
            description="Mean over the time range.",
            w=8,
            h=8,
        ),
    ]
    mem_fields = ("used", "cached", "buffers", "available", "swap_used")
    memory = [
        timeseries(
            "Memory",
            [prom(f"wattspan_memory_{f}_bytes{sel}", f.replace("_", " ")) for f in mem_fields],
            "bytes",
            w=18,
        ),
        stat("Memory used", [prom(f"wattspan_memory_used_ratio{sel}")], "percentunit", w=6, h=8),
    ]
    power = [
        timeseries(
            "Power per domain",
            [
                prom(f"wattspan_rapl_power_watts{sel}", "{{domain}}"),
                prom(f"wattspan_power_model_power_watts{sel}", "{{domain}}" + ESTIMATED),
            ],
            "watt",
            estimated=True,
            description="RAPL where the node has it (measured); the CPU power model "
            "(utilisation x TDP) is an estimate, drawn dashed and suffixed (estimated).",
        ),
        bargauge(
            "Energy per domain over the time range",
            [
                prom(
                    f"sum by (domain) (increase(wattspan_rapl_energy_joules_total{sel}[$__range]))",
                    "{{domain}}",
                    instant=True,
                ),
                prom(
                    "sum by (domain) (increase("
                    f"wattspan_power_model_energy_joules_total{sel}[$__range]))",
                    "{{domain}}" + ESTIMATED,
                    instant=True,
                ),
            ],
            "joule",
        ),
    ]

    def g(metric: str, title: str, unit: str) -> Sized:
        return timeseries(title, [prom(f"wattspan_gpu_{metric}{sel}", "GPU {{gpu}}")], unit, w=8)

    gpu = [
        g("utilization_gpu_ratio", "GPU utilisation", "percentunit"),
        g("memory_used_bytes", "GPU memory used", "bytes"),
        g("power_watts", "GPU power", "watt"),
        g("temperature_celsius", "GPU temperature", "celsius"),
        g("sm_clock_hertz", "GPU SM clock", "hertz"),
        bargauge(
            "GPU energy over the time range",
            [
                prom(
                    f"sum by (gpu) (increase(wattspan_gpu_energy_joules_total{sel}[$__range]))",
                    "GPU {{gpu}}",
                    instant=True,
                )
            ],
            "joule",
            w=8,
        ),
    ]
    return [("CPU", cpu), ("Memory", memory), ("Power and energy", power), ("GPU", gpu)]


def build(kind: Kind, settings: Settings) -> Dashboard:
    sections = _influx_sections() if kind == "influxdb" else _prom_sections(settings)
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-node-{kind}",
        kind=kind,
        settings=settings,
        description="CPU by mode and core, memory, RAPL and power-model power and energy, GPUs.",
        variables=[host_var(kind, settings)],
        sections=sections,
    )
