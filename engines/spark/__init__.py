"""wattspan.engines.spark: Spark jobs, stages and tasks as spans with their energy.

No jar: Spark's own event log is tailed (``tail``), parsed (``eventlog``), turned into spans
(``spans``, with skew from ``skew``) and sent to each node's agent (``sender``). Entry points:
``wattspan run -- spark-submit ...`` (``launch``), :func:`instrument` for a
``SparkSession.builder`` (``session``), and :func:`import_event_log` (``wattspan spark
import``). Importing this package loads none of it (nor pyspark): names resolve on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `wattspan run` imports this package before its command starts
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SkewRules",
    "balanced_repartition",
    "import_event_log",
    "instrument",
    "plan_balanced",
    "read_event_log",
]

_WHERE = {
    "instrument": "wattspan.engines.spark.session",
    "read_event_log": "wattspan.engines.spark.eventlog",
    "import_event_log": "wattspan.engines.spark.importer",
    "SkewRules": "wattspan.engines.spark.skew",
    "balanced_repartition": "wattspan.engines.spark.partition",
    "plan_balanced": "wattspan.engines.spark.partition",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(where), name)
