"""Exported forms of a run's hyperparameters and confusion matrices.

The store keeps both whole (``wattspan report`` reads them there); exporters get them as
samples so that dashboards can show them: ``ml_param`` (one per run and hyperparameter) and
``ml_confusion`` (one per run and cell of a matrix). docs/influxdb.md has the schema.
Bounded: at most :data:`MAX_PARAMS` hyperparameters per span, values cut at
:data:`MAX_VALUE_CHARS`, and matrices of at most :data:`MAX_LABELS` classes (larger ones
stay in the store only: 32 x 32 cells are already 1,024 series).
"""

from __future__ import annotations

import json
import math
from typing import Any

from wattspan.collectors.base import Sample

PARAM = "ml_param"
CONFUSION = "ml_confusion"
SOURCES = frozenset({PARAM, CONFUSION})
MAX_PARAMS = 64
MAX_VALUE_CHARS = 256
MAX_LABELS = 32


def _text(v: Any) -> str:
    if isinstance(v, str):
        text = v
    else:
        try:
            text = json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)
        except ValueError:  # a circular or otherwise unencodable value
            text = repr(v)
    return text[:MAX_VALUE_CHARS]


def param_samples(
    run_id: str | None, span_id: str, params: dict[str, Any], ts: float
) -> list[Sample]:
    """One sample per hyperparameter: tags ``run``, ``param``; ``value`` as text (JSON for
    numbers, booleans, lists: one field type whatever the run logged) and ``info`` = 1."""
    out = []
    for k in sorted(params, key=str)[:MAX_PARAMS]:
        tags = {"param": str(k)}
        if run_id:
            tags["run"] = run_id
        out.append(
            Sample(PARAM, ts, tags, {"value": _text(params[k]), "info": 1, "span_id": span_id})
        )
    return out


def confusion_samples(
    run_id: str | None, ts: float, labels: list[str], matrix: list[Any], step: int | None
) -> list[Sample]:
    """One sample per cell (tags ``run``, ``actual``, ``predicted``; fields ``value``,
    ``step``); nothing for a matrix past :data:`MAX_LABELS` classes or not square."""
    n = len(matrix)
    if not 0 < n <= MAX_LABELS or len(labels) != n:
        return []
    out = []
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != n:
            return []
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                continue
            tags = {"actual": labels[i], "predicted": labels[j]}
            if run_id:
                tags["run"] = run_id
            fields: dict[str, float | int | str | bool] = {"value": float(v)}
            if step is not None:
                fields["step"] = step
            out.append(Sample(CONFUSION, ts, tags, fields))
    return out
