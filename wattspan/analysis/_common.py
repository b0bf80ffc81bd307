"""Helpers every analysis module shares."""

from __future__ import annotations

import math
import time
from typing import Literal

from wattspan.agent.store import Run, Store
from wattspan.collectors.base import Sample

Mode = Literal["max", "min", "auto"]


def finite(v: float | None) -> bool:
    """False for None and NaN: the values a metric curve skips."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def as_run(store: Store, ref: str | Run) -> Run:
    """A run given as itself or as anything :meth:`Store.resolve_run` accepts."""
    return ref if isinstance(ref, Run) else store.resolve_run(ref)


def run_samples(store: Store, run: Run, source: str | None = None) -> list[Sample]:
    """The samples that describe ``run``, in time order.

    A ``program`` run (a process that sent spans to a daemon agent) has no samples of its
    own: the agent sampled the node for its session. Its samples are the session's over the
    program's lifetime on its host, with process samples narrowed to the program's tree.
    """
    if run.kind != "program":
        return store.samples(run.id, source=source)
    sessions = [r.id for r in store.runs(kind="agent") if r.host == run.host]
    if not sessions:
        return []
    pid = str((run.summary or {}).get("pid", ""))
    end = run.end_ts if run.end_ts is not None else time.time()
    return [
        s
        for s in store.samples(sessions, source=source, start=run.start_ts, end=end + 2.0)
        if s.source not in ("process", "process_tree") or s.tags.get("root") == pid
    ]
