"""The Spark stages of a stored run with their skew and the energy of their tails.

What ``wattspan spark skew RUN`` lists and ``wattspan show RUN`` summarises: each stage
attempt's skew as its span stored it (``spark.stage.skew.*``, ``docs/spark.md``), and its
tail's energy: the agent's attribution of the ``spark.stage.tail`` span when it had samples,
else (an imported event log) the node energy the run's own samples give for the tail's
interval, else None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wattspan.agent.store import Run, Store
from wattspan.analysis.targets import energy_between
from wattspan.engines.spark.skew import StoredSkew, stored_skews

__all__ = ["StoredSkew", "skewed", "stage_skews"]

STAGE_SPAN = "spark.stage"


def stage_skews(store: Store, run: Run, spans: Sequence[Any] | None = None) -> list[StoredSkew]:
    """Every Spark stage attempt of ``run`` in start order (empty for a run without any);
    ``spans``: the run's stored spans, when the caller has them already."""
    rows = store.spans(run.id) if spans is None else spans
    if not any(s.name == STAGE_SPAN for s in rows):
        return []
    stages = stored_skews(rows)
    for s in stages:
        if s.tail_node_joules is None and s.tail_start is not None and s.tail_end is not None:
            s.tail_node_joules = energy_between(store, run, s.tail_start, s.tail_end).node_joules
    return stages


def skewed(stages: Sequence[StoredSkew]) -> list[StoredSkew]:
    """The stages classified as skewed (any class but ``none``), the costliest tail first."""
    return sorted(
        (s for s in stages if s.kind != "none"), key=lambda s: (-s.tail_seconds, s.stage_id)
    )
