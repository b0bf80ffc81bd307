"""Span attributes that the exported ``spans`` points carry (``docs/influxdb.md``).

Most span attributes stay in the store: the points of the ``spans`` measurement carry the
span's identity, duration and attributed resources. The exceptions are the few attributes a
dashboard must group or filter by, chosen by name here so the set is bounded and documented:
Spark's (``docs/spark.md``), for the Spark dashboard.

* tags: attributes naming a bounded set within a run: an application, its jobs, its stages,
  its executors and their hosts (``spark_job`` adds no series: a stage belongs to one job);
* fields: per-task and per-stage figures the dashboard shows (names: the attribute's with
  ``.`` replaced by ``_``).

Only spans that name an application (``spark.app.id``) are looked at; values that are not
strings, finite numbers or booleans are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["FIELDS", "KEYS", "MARKER", "TAGS", "exported"]

#: the attribute a span must have for any of the others to be exported
MARKER = "spark.app.id"

#: attribute -> tag
TAGS: dict[str, str] = {
    "spark.app.id": "spark_app",
    # On job, stage and task spans: per-job sums across nodes group by it.
    "spark.job.id": "spark_job",
    "spark.stage.id": "spark_stage",
    "spark.executor.id": "spark_executor",
    "spark.executor.host": "spark_host",
}

_FIELD_ATTRS = (
    # jobs
    "spark.job.description",
    "spark.job.result",
    "spark.job.tasks.count",
    # stage attempts
    "spark.stage.attempt",
    "spark.stage.name",
    "spark.stage.status",
    "spark.stage.num_tasks",
    "spark.stage.tasks.count",
    "spark.stage.tasks.failed",
    "spark.stage.tasks.duration_seconds.p50",
    "spark.stage.tasks.duration_seconds.p95",
    "spark.stage.tasks.input_bytes.sum",
    "spark.stage.tasks.shuffle_read_bytes.sum",
    "spark.stage.tasks.shuffle_write_bytes.sum",
    "spark.stage.tasks.memory_bytes_spilled.sum",
    "spark.stage.skew.class",
    "spark.stage.skew.tail_seconds",
    "spark.stage.skew.duration_max_median",
    "spark.stage.skew.duration_p95_median",
    "spark.stage.skew.duration_cv",
    "spark.stage.skew.input_bytes_max_median",
    "spark.stage.skew.shuffle_read_bytes_max_median",
    # tasks
    "spark.task.id",
    "spark.task.status",
    "spark.task.locality",
    "spark.task.run_time_seconds",
    "spark.task.gc_time_seconds",
    "spark.task.input_bytes",
    "spark.task.shuffle_read_bytes",
    "spark.task.shuffle_write_bytes",
    # applications
    "spark.app.name",
)

#: attribute -> field
FIELDS: dict[str, str] = {k: k.replace(".", "_") for k in _FIELD_ATTRS}

#: every attribute kept for the export (the ingest keeps these until a span is attributed)
KEYS: frozenset[str] = frozenset(TAGS) | frozenset(FIELDS)


def exported(
    attributes: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, float | int | str | bool]]:
    """The (tags, fields) a span's attributes add to its ``spans`` point."""
    tags: dict[str, str] = {}
    fields: dict[str, float | int | str | bool] = {}
    if MARKER not in attributes:
        return tags, fields
    for k, v in attributes.items():
        tag = TAGS.get(k)
        if tag is not None:
            if isinstance(v, str | int) and not isinstance(v, bool):
                tags[tag] = str(v)
            continue
        field = FIELDS.get(k)
        if field is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if isinstance(v, str | int | float | bool):
            fields[field] = v
    return tags, fields
