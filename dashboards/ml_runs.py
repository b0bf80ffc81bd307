"""*ML runs*: loss and accuracy of the selected runs side by side, how long and how much
energy each took to reach an accuracy, their hyperparameters and latest confusion matrix.

InfluxDB reads ``ml`` (every ``log_metric`` point, tag ``name`` ``ml.loss``/``ml.accuracy``,
``run``), ``ml_progress`` (each of those points with the run's elapsed time and energy, derived
by the exporter), ``ml_param`` and ``ml_confusion`` (docs/influxdb.md). Prometheus reads
``wattspan_ml_value{name, run}`` (the latest value of each run's metric at each scrape, so
steps between scrapes are not seen), ``wattspan_ml_param_info{run, param, value}`` and
``wattspan_ml_confusion_value{run, actual, predicted}``. It has no time- or energy-to-accuracy:
/metrics knows neither a run's start nor the energy since (a value seen at a few scrapes
only, as a short run's is, gives no usable figure from timestamps either).
"""

from __future__ import annotations

from grafanalib.core import Dashboard

from .panels import (
    Kind,
    Settings,
    Sized,
    bargauge,
    custom_var,
    dashboard,
    host_var,
    influx,
    matrix,
    prom,
    prom_selector,
    query_var,
    stat,
    table,
    timeseries,
)
from .pipelines import run_annotation

TITLE = "wattspan / ML runs"
_WHERE = '"host" =~ /^$host$/ AND "run" =~ /^$run$/ AND $timeFilter'
#: Hyperparameters and matrices are logged once, often before the range: not time-filtered.
_RUNS = '"host" =~ /^$host$/ AND "run" =~ /^$run$/'
TARGET_VAR = "acc_target"
TARGETS = ("0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "0.98", "0.99")


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


def _to_target(field: str) -> str:
    # first(): the earliest point of each run at or above the target.
    return f"""SELECT first("{field}") FROM "ml_progress" WHERE "name" = 'ml.accuracy'
        AND "value" >= ${TARGET_VAR} AND {_WHERE} GROUP BY "run" """


def _influx_sections() -> list[tuple[str, list[Sized]]]:
    curves = [_influx_curve("ml.loss", "Loss"), _influx_curve("ml.accuracy", "Accuracy")]
    best = [
        stat(
            "Best accuracy",
            [
                influx(
                    f"""SELECT max("value") FROM "ml" WHERE "name" = 'ml.accuracy' AND {_WHERE}"""
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
    target = [
        bargauge(
            "Time to accuracy",
            [influx(_to_target("elapsed_seconds"), alias="$tag_run")],
            "s",
            description=f"Per run: time from its first record to its first accuracy point "
            f"at or above ${TARGET_VAR} (ml_progress).",
        ),
        bargauge(
            "Energy to accuracy",
            [influx(_to_target("energy_joules"), alias="$tag_run")],
            "joule",
            description="Per run: node (primary domains) and GPU energy from its first record "
            f"to its first accuracy point at or above ${TARGET_VAR} (ml_progress).",
        ),
        timeseries(
            "Energy used by each run",
            [
                influx(
                    f"""SELECT last("energy_joules") FROM "ml_progress" WHERE {_WHERE}
                    GROUP BY time($__interval), "run" fill(none)""",
                    alias="$tag_run",
                )
            ],
            "joule",
            description="Node and GPU energy since the run's first record, at each logged "
            "metric point.",
            w=24,
        ),
    ]
    details = [
        matrix(
            "Hyperparameters",
            [
                influx(
                    f"""SELECT last("value") FROM "ml_param" WHERE {_RUNS}
                    GROUP BY "run", "param" """,
                    table=True,
                )
            ],
            rows="run",
            columns="param",
            value="last",
            description="One row per selected run, one column per hyperparameter (ml_param).",
            w=24,
            h=7,
        ),
        matrix(
            "Confusion matrix $run",
            [
                influx(
                    f"""SELECT last("value") FROM "ml_confusion" WHERE {_RUNS}
                    GROUP BY "actual", "predicted" """,
                    table=True,
                )
            ],
            rows="actual",
            columns="predicted",
            value="last",
            description="The latest value of each cell the run logged (ml_confusion): rows "
            "are the actual class, columns the predicted one.",
            repeat="run",
        ),
    ]
    return [
        ("Curves", curves),
        ("Runs", best),
        ("Time and energy to accuracy", target),
        ("Hyperparameters and confusion", details),
    ]


def _prom_sections(s: Settings) -> list[tuple[str, list[Sized]]]:
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
    details = [
        matrix(
            "Hyperparameters",
            [
                prom(
                    f"max by (run, param, value) (last_over_time(wattspan_ml_param_info{runs}"
                    "[$__range]))",
                    instant=True,
                    table=True,
                )
            ],
            rows="run",
            columns="param",
            value="value",
            description="One row per selected run, one column per hyperparameter.",
            w=24,
            h=7,
        ),
        matrix(
            "Confusion matrix $run",
            [
                prom(
                    f"max by (actual, predicted) (last_over_time(wattspan_ml_confusion_value"
                    f"{runs}[$__range]))",
                    instant=True,
                    table=True,
                )
            ],
            rows="actual",
            columns="predicted",
            value="Value",
            description="The latest value of each cell: rows are the actual class, columns the "
            "predicted one.",
            repeat="run",
        ),
    ]
    return [
        ("Curves", curves),
        ("Runs", best),
        ("Hyperparameters and confusion", details),
    ]


def build(kind: Kind, settings: Settings) -> Dashboard:
    if kind == "influxdb":
        run = query_var(
            kind,
            "run",
            "Run",
            'SHOW TAG VALUES FROM "ml" WITH KEY = "run" WHERE "host" =~ /^$host$/',
        )
        run_filter = 'AND "run" =~ /^$run$/'
        target = [custom_var(TARGET_VAR, "Accuracy target", TARGETS, "0.9")]
    else:
        run = query_var(
            kind, "run", "Run", f"label_values(wattspan_ml_value{prom_selector(settings)}, run)"
        )
        run_filter = 'run=~"$run"'
        target = []
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-ml-runs-{kind}",
        kind=kind,
        settings=settings,
        description="Loss and accuracy per run, time and energy to accuracy, hyperparameters, "
        "confusion matrices.",
        variables=[host_var(kind, settings), run, *target],
        sections=_influx_sections() if kind == "influxdb" else _prom_sections(settings),
        annotations=[run_annotation(kind, settings, run_filter)],
    )
