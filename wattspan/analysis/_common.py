"""Helpers every analysis module shares."""

from __future__ import annotations

import math
from typing import Literal

from wattspan.agent.store import Run, Store

Mode = Literal["max", "min", "auto"]


def finite(v: float | None) -> bool:
    """False for None and NaN: the values a metric curve skips."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def as_run(store: Store, ref: str | Run) -> Run:
    """A run given as itself or as anything :meth:`Store.resolve_run` accepts."""
    return ref if isinstance(ref, Run) else store.resolve_run(ref)
