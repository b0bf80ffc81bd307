"""*ML runs*: loss and accuracy of the selected runs side by side.

Reads the ``ml`` measurement (InfluxDB: every ``log_metric`` point, tag ``name``
``ml.loss``/``ml.accuracy``, ``run``) or ``wattspan_ml_value{name, run}`` (Prometheus: the
latest value of each run's metric at each scrape, so steps between scrapes are not seen).
"""

from __future__ import annotations

from grafanalib.core import Dashboard

from .panels import (
    Kind,
    Settings,
    Sized,
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

TITLE = "wattspan / ML runs"
_WHERE = '"host" =~ /^$host$/ AND "run" =~ /^$run$/ AND $timeFilter'


def _influx_curve(metric: str, title: str) -> Sized:
    return timeseries(
        title,
        [
            influx(
                f"""SELECT mean("value") FROM "ml" WHERE "name" = '{metric}' AND {_WHERE}
                GROUP BY time($__interval), "run" fill(none)""",
                alias="$tag_run",
            )
        ],
        "short" if metric == "ml.loss" else "percentunit",
    )


def _sections(kind: Kind, s: Settings) -> list[tuple[str, list[Sized]]]:
    if kind == "influxdb":
        curves = [_influx_curve("ml.loss", "Loss"), _influx_curve("ml.accuracy", "Accuracy")]
        best = [
            stat(
                "Best accuracy",
                [
                    influx(
                        f"""SELECT max("value") FROM "ml"
                        WHERE "name" = 'ml.accuracy' AND {_WHERE}"""
                    )
                ],
                "percentunit",
                calc="max",
                w=6,
                h=8,
            ),
            table(
                "Latest per run",
                [
                    influx(
                        f"""SELECT last("value") AS "value", last("step") AS "step" FROM "ml"
                        WHERE "name" =~ /^ml\\.(loss|accuracy)$/ AND {_WHERE}
                        GROUP BY "run", "name" """,
                        table=True,
                    )
                ],
                w=18,
                h=8,
            ),
        ]
        return [("Curves", curves), ("Runs", best)]
    loss = prom_selector(s, 'name="ml.loss", run=~"$run"')
    acc = prom_selector(s, 'name="ml.accuracy", run=~"$run"')
    runs = prom_selector(s, 'run=~"$run"')
    curves = [
        timeseries("Loss", [prom(f"wattspan_ml_value{loss}", "{{run}}")], "short"),
        timeseries("Accuracy", [prom(f"wattspan_ml_value{acc}", "{{run}}")], "percentunit"),
    ]
    best = [
        stat(
            "Best accuracy",
            [prom(f"max(max_over_time(wattspan_ml_value{acc}[$__range]))", instant=True)],
            "percentunit",
            w=6,
            h=8,
        ),
        table(
            "Latest per run",
            # A finished run leaves /metrics: its last values over the range, not "now".
            [prom(f"last_over_time(wattspan_ml_value{runs}[$__range])", instant=True, table=True)],
            w=18,
            h=8,
        ),
    ]
    return [("Curves", curves), ("Runs", best)]


def build(kind: Kind, settings: Settings) -> Dashboard:
    if kind == "influxdb":
        run = query_var(
            kind,
            "run",
            "Run",
            'SHOW TAG VALUES FROM "ml" WITH KEY = "run" WHERE "host" =~ /^$host$/',
        )
    else:
        run = query_var(
            kind, "run", "Run", f"label_values(wattspan_ml_value{prom_selector(settings)}, run)"
        )
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-ml-runs-{kind}",
        kind=kind,
        settings=settings,
        description="Loss and accuracy per run.",
        variables=[host_var(kind, settings), run],
        sections=_sections(kind, settings),
    )
