"""*Spark*: an application's stages over time, its task durations, skew, energy per stage
and job, and its executors.

InfluxDB only: the ``spans`` points of Spark's spans (``docs/spark.md``), which carry the
tags ``spark_app``, ``spark_job``, ``spark_stage``, ``spark_executor`` and ``spark_host`` and a
fixed set of their attributes as fields (``agent/span_fields.py``, ``docs/influxdb.md``). On a
cluster each node's agent writes the tasks that ran there (its own ``host`` tag), so with every
host selected a stage's or a job's task energy is the sum over the nodes ("Energy per stage",
"Energy per job": task spans grouped by ``spark_stage`` / ``spark_job``). Job and stage spans
are the driver node's: their own energy covers the tasks that ran on the driver's host (all of
them in local mode). The Prometheus span counters carry no stage or executor, so there is no
Prometheus variant.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Template

from .panels import (
    Kind,
    Settings,
    Sized,
    bargauge,
    dashboard,
    host_var,
    influx,
    influx_annotation,
    query_var,
    stat,
    table,
    timeseries,
)

TITLE = "wattspan / Spark"
KINDS: tuple[Kind, ...] = ("influxdb",)

#: Rows of the raw-span tables at most (an application's stages, its jobs).
MAX_ROWS = 500

_APP = """"host" =~ /^$host$/ AND "spark_app" =~ /^$app$/ AND $timeFilter"""


def _of(span: str) -> str:
    """The WHERE clause of one kind of Spark span (``spark.task``, ``spark.stage``...)."""
    return f""""span_name" = '{span}' AND {_APP}"""


_TASKS, _STAGES, _JOBS, _TAILS = (
    _of("spark.task"),
    _of("spark.stage"),
    _of("spark.job"),
    _of("spark.stage.tail"),
)


def _count(title: str, where: str, description: str = "") -> Sized:
    return stat(
        title,
        [influx(f'SELECT count("duration_seconds") FROM "spans" WHERE {where}')],
        "short",
        calc="sum",
        description=description,
        w=4,
    )


def _summary() -> list[Sized]:
    return [
        _count("Jobs", _JOBS),
        _count("Stages", _STAGES, "Stage attempts that ended in the range."),
        _count("Tasks", _TASKS, "Task attempts, on every selected host."),
        stat(
            "Task CPU time",
            [influx(f'SELECT sum("cpu_seconds") FROM "spans" WHERE {_TASKS}')],
            "s",
            calc="sum",
            description="Executor CPU time Spark measured for the tasks.",
            w=4,
        ),
        stat(
            "Task energy",
            [influx(f'SELECT sum("process_energy_joules") FROM "spans" WHERE {_TASKS}')],
            "joule",
            calc="sum",
            description="Each task's CPU share of its node's active energy over its "
            "interval, summed over the tasks of every selected host.",
            w=4,
        ),
        stat(
            "Skew tail time",
            [influx(f'SELECT sum("duration_seconds") FROM "spans" WHERE {_TAILS}')],
            "s",
            calc="sum",
            description="Time the stages spent in their tail, while fewer than half of "
            "their task slots were busy.",
            w=4,
        ),
    ]


def _stages() -> list[Sized]:
    columns = {
        "duration_seconds": ("duration", "s"),
        "spark_stage_name": ("name", ""),
        "spark_stage_attempt": ("attempt", ""),
        "spark_job": ("job", ""),
        "spark_stage_num_tasks": ("tasks", ""),
        "spark_stage_tasks_duration_seconds_p50": ("task p50", "s"),
        "spark_stage_tasks_duration_seconds_p95": ("task p95", "s"),
        "spark_stage_tasks_input_bytes_sum": ("input", "bytes"),
        "spark_stage_tasks_shuffle_read_bytes_sum": ("shuffle read", "bytes"),
        "spark_stage_tasks_shuffle_write_bytes_sum": ("shuffle write", "bytes"),
        "cpu_seconds": ("driver-host CPU", "s"),
        "process_energy_joules": ("driver-host energy", "joule"),
    }
    select = ", ".join(f'"{f}" AS "{name}"' for f, (name, _) in columns.items())
    return [
        timeseries(
            "Stage durations",
            [
                influx(
                    f"""SELECT max("duration_seconds") FROM "spans" WHERE {_STAGES}
                    GROUP BY time($__interval), "spark_stage" fill(none)""",
                    alias="stage $tag_spark_stage",
                )
            ],
            "s",
            bars=True,
            description="Each stage attempt's duration at the time it ended.",
            w=24,
        ),
        table(
            "Stage attempts",
            [
                influx(
                    f"""SELECT "spark_stage" AS "stage", {select} FROM "spans" WHERE {_STAGES}
                    ORDER BY time DESC LIMIT {MAX_ROWS}""",
                    table=True,
                )
            ],
            columns={name: unit for name, unit in columns.values() if unit},
            sort_by="duration",
            description="One row per stage attempt (the latest first). CPU and energy are "
            "those of its tasks on the driver's host; see Energy per stage for every node.",
            h=10,
        ),
    ]


def _tasks() -> list[Sized]:
    return [
        timeseries(
            "Task durations",
            [
                influx(
                    f"""SELECT percentile("duration_seconds", 50) AS "p50",
                    percentile("duration_seconds", 95) AS "p95", max("duration_seconds") AS "max"
                    FROM "spans" WHERE {_TASKS} GROUP BY time($__interval) fill(none)"""
                )
            ],
            "s",
            description="Of the tasks that ended in each interval.",
        ),
        timeseries(
            "Tasks per interval",
            [
                influx(
                    f"""SELECT count("duration_seconds") FROM "spans" WHERE {_TASKS}
                    GROUP BY time($__interval), "status" fill(none)""",
                    alias="$tag_status",
                )
            ],
            "short",
            bars=True,
            stack=True,
            description="Ended tasks by OpenTelemetry status (ERROR: failed or killed).",
        ),
        table(
            "Task durations per stage",
            [
                influx(
                    f"""SELECT count("duration_seconds") AS "tasks",
                    percentile("duration_seconds", 50) AS "p50",
                    percentile("duration_seconds", 95) AS "p95",
                    max("duration_seconds") AS "max", sum("spark_task_gc_time_seconds") AS "GC"
                    FROM "spans" WHERE {_TASKS} GROUP BY "spark_stage" """,
                    table=True,
                )
            ],
            columns={"p50": "s", "p95": "s", "max": "s", "GC": "s"},
            sort_by="max",
            description="Exact percentiles over the raw task spans of each stage.",
        ),
    ]


def _skew() -> list[Sized]:
    figures = {
        "spark_stage_skew_class": ("class", ""),
        "spark_stage_skew_duration_max_median": ("max/median", "none"),
        "spark_stage_skew_duration_p95_median": ("p95/median", "none"),
        "spark_stage_skew_duration_cv": ("CV", "none"),
        "spark_stage_skew_input_bytes_max_median": ("input max/median", "none"),
        "spark_stage_skew_shuffle_read_bytes_max_median": ("shuffle read max/median", "none"),
        "spark_stage_skew_tail_seconds": ("tail", "s"),
        "duration_seconds": ("duration", "s"),
    }
    select = ", ".join(f'"{f}" AS "{name}"' for f, (name, _) in figures.items())
    return [
        table(
            "Skew per stage",
            [
                influx(
                    f"""SELECT "spark_stage" AS "stage", {select} FROM "spans" WHERE {_STAGES}
                    ORDER BY time DESC LIMIT {MAX_ROWS}""",
                    table=True,
                )
            ],
            columns={name: unit for name, unit in figures.values() if unit},
            sort_by="tail",
            description="Task durations against their median, and the largest read against "
            "the median read: data skew is bytes imbalanced, computation skew durations "
            "imbalanced with bytes balanced (cost depends on content), stragglers slow tasks "
            "explained by waits, one executor, or the first wave (docs/spark.md).",
            w=16,
            h=10,
        ),
        bargauge(
            "Skew cost per stage",
            [
                influx(
                    f"""SELECT sum("duration_seconds") FROM "spans" WHERE {_TAILS}
                    GROUP BY "spark_stage" """,
                    alias="stage $tag_spark_stage",
                )
            ],
            "s",
            description="Time each stage spent in its tail (fewer than half of its slots busy).",
            w=8,
            h=10,
        ),
    ]


def _energy() -> list[Sized]:
    return [
        bargauge(
            "Energy per stage",
            [
                influx(
                    f"""SELECT sum("process_energy_joules") FROM "spans" WHERE {_TASKS}
                    GROUP BY "spark_stage" """,
                    alias="stage $tag_spark_stage",
                )
            ],
            "joule",
            description="The task energy of each stage, summed over the tasks of every "
            "selected host.",
        ),
        table(
            "Energy per job",
            [
                influx(
                    f"""SELECT count("duration_seconds") AS "tasks",
                    sum("duration_seconds") AS "task time", sum("cpu_seconds") AS "CPU",
                    sum("process_energy_joules") AS "energy" FROM "spans" WHERE {_TASKS}
                    GROUP BY "spark_job" """,
                    table=True,
                )
            ],
            columns={"task time": "s", "CPU": "s", "energy": "joule"},
            sort_by="energy",
            description="Per job: its tasks' count, time, CPU and energy, summed over the "
            "tasks of every selected host (each node's agent attributed its own tasks).",
            w=12,
        ),
        table(
            "Job spans",
            [
                influx(
                    f"""SELECT "spark_job" AS "job", "spark_job_description" AS "description",
                    "spark_job_result" AS "result", "duration_seconds" AS "duration",
                    "cpu_seconds" AS "driver-host CPU",
                    "process_energy_joules" AS "driver-host energy",
                    "node_energy_total_joules" AS "driver node energy" FROM "spans"
                    WHERE {_JOBS} ORDER BY time DESC LIMIT {MAX_ROWS}""",
                    table=True,
                )
            ],
            columns={
                "duration": "s",
                "driver-host CPU": "s",
                "driver-host energy": "joule",
                "driver node energy": "joule",
            },
            sort_by="duration",
            description="One row per job span (the driver's node): description, result, "
            "duration, the CPU and energy of its tasks on the driver's host, and that node's "
            "energy over the job.",
            w=12,
        ),
        timeseries(
            "Task power by host",
            [
                influx(
                    f"""SELECT sum("process_energy_joules") / ($__interval_ms / 1000)
                    FROM "spans" WHERE {_TASKS} GROUP BY time($__interval), "host" fill(none)""",
                    alias="$tag_host",
                )
            ],
            "watt",
            stack=True,
            description="Task energy per interval over its length, by the node the tasks "
            "ran on (charged at each task's end).",
            w=12,
        ),
    ]


def _executors() -> list[Sized]:
    return [
        table(
            "Executors",
            [
                influx(
                    f"""SELECT count("duration_seconds") AS "tasks",
                    sum("duration_seconds") AS "task time", sum("cpu_seconds") AS "CPU",
                    sum("spark_task_gc_time_seconds") AS "GC",
                    sum("spark_task_input_bytes") AS "input",
                    sum("spark_task_shuffle_read_bytes") AS "shuffle read",
                    sum("process_energy_joules") AS "energy"
                    FROM "spans" WHERE {_TASKS} GROUP BY "spark_host", "spark_executor" """,
                    table=True,
                )
            ],
            columns={
                "task time": "s",
                "CPU": "s",
                "GC": "s",
                "input": "bytes",
                "shuffle read": "bytes",
                "energy": "joule",
            },
            sort_by="task time",
            description="Per executor (and its host): tasks, their time, CPU, GC, reads and "
            "energy.",
            w=12,
        ),
        timeseries(
            "Executor CPU",
            [
                influx(
                    f"""SELECT sum("cpu_seconds") / ($__interval_ms / 1000) FROM "spans"
                    WHERE {_TASKS} GROUP BY time($__interval), "spark_executor" fill(none)""",
                    alias="executor $tag_spark_executor",
                )
            ],
            "short",
            stack=True,
            description="CPU seconds of each executor's tasks per second (cores busy), "
            "charged at each task's end.",
        ),
    ]


def _variables(settings: Settings) -> list[Template]:
    return [
        host_var("influxdb", settings),
        query_var(
            "influxdb",
            "app",
            "Application",
            """SHOW TAG VALUES FROM "spans" WITH KEY = "spark_app" WHERE "host" =~ /^$host$/""",
        ),
    ]


def build(kind: Kind, settings: Settings) -> Dashboard:
    if kind != "influxdb":
        raise ValueError("the Spark dashboard reads the InfluxDB spans measurement only")
    return dashboard(
        title=f"{TITLE} ({kind})",
        uid=f"wattspan-spark-{kind}",
        kind=kind,
        settings=settings,
        description="Spark applications: stages over time, task durations, skew, energy per "
        "stage and job, executors.",
        variables=_variables(settings),
        sections=[
            ("Summary", _summary()),
            ("Stages", _stages()),
            ("Tasks", _tasks()),
            ("Skew", _skew()),
            ("Energy", _energy()),
            ("Executors", _executors()),
        ],
        annotations=[
            influx_annotation(
                "Jobs",
                f"""SELECT "spark_job_description", "duration_seconds" FROM "spans"
                WHERE {_JOBS}""",
                tags="spark_app",
            )
        ],
    )
