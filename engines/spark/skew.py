"""Skew of a stage attempt: which kind, why, and what its tail cost.

Statistics over the succeeded tasks of a stage attempt (their columns in
:class:`~wattspan.engines.spark.eventlog.StageAttempt`):

* task duration (launch to finish): max/median, p95/median, coefficient of variation;
* max/median of input bytes and records and of shuffle-read bytes and records
  (a median of 0 counts as 1, so an imbalance against empty tasks stays finite).

Classification (:class:`SkewRules` holds the thresholds; ``docs/spark.md`` says where they
come from):

1. **durations imbalanced**: the slowest task took at least ``duration_factor`` (1.5, the
   default ``spark.speculation.multiplier``) times the median and at least
   ``min_excess_seconds`` longer. Otherwise ``none``: whatever the bytes, nothing waited.
2. **data skew**: durations imbalanced and some read (input or shuffle, bytes or records)
   at least ``data_factor`` (5, AQE's ``skewedPartitionFactor``) times the median, by at
   least ``min_bytes`` / ``min_records`` (AQE's 256 MB absolute floor is for deciding to split
   a partition; a report wants the smaller floor and gets its relevance from step 1).
3. **stragglers**: durations imbalanced, reads balanced, and the slow tasks' extra time went
   to waiting rather than work (GC, shuffle fetch wait, scheduling and deserialisation
   account for at least ``straggler_wait_share`` of it), or the slow tasks all ran on one
   executor while the stage used several (a slow node), or they are all in the stage's
   first wave of a stage with more tasks than slots (start-up: JIT, Python workers).
4. **computation skew** otherwise: durations imbalanced while the reads are balanced, the
   cost depends on the records' content, not their number (SkewReduce's case).

**Skew cost**: the stage's tail, from the last moment more than the tail threshold of its
task slots were busy to its last task's end. The threshold is "fewer than half of the slots
busy" (``ceil(slots/2) - 1``, at least 1: with 2 or 3 slots, one task left running). Slots
are the executors' cores over ``spark.task.cpus`` when the stage was submitted, at most
its number of tasks. Its energy is what the agent attributes to the stage's tail span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wattspan.engines.spark.eventlog import StageAttempt

__all__ = ["CLASSES", "SkewResult", "SkewRules", "analyse", "tail_window"]

#: the classes, as ``spark.stage.skew.class`` carries them
CLASSES = ("none", "data_skew", "computation_skew", "stragglers")


@dataclass(frozen=True, slots=True)
class SkewRules:
    duration_factor: float = 1.5
    min_excess_seconds: float = 0.5
    data_factor: float = 5.0
    min_bytes: float = 1024.0 * 1024.0
    min_records: float = 10_000.0
    straggler_wait_share: float = 0.5
    min_tasks: int = 2


@dataclass(slots=True)
class SkewResult:
    kind: str = "none"
    reason: str = ""
    tasks: int = 0
    slots: int = 1
    figures: dict[str, float] = field(default_factory=dict)
    tail_start_ms: float | None = None
    tail_end_ms: float | None = None
    #: CPU seconds the stage's tasks used inside the tail (each task's CPU time spread over
    #: its interval)
    tail_cpu_seconds: float = 0.0

    @property
    def tail_seconds(self) -> float:
        if self.tail_start_ms is None or self.tail_end_ms is None:
            return 0.0
        return max(self.tail_end_ms - self.tail_start_ms, 0.0) / 1e3

    def attributes(self, prefix: str = "spark.stage.skew.") -> dict[str, Any]:
        out: dict[str, Any] = {
            prefix + "class": self.kind,
            prefix + "reason": self.reason,
            prefix + "slots": self.slots,
            prefix + "tail_seconds": self.tail_seconds,
        }
        for k, v in self.figures.items():
            out[prefix + k] = v
        return out


def _ratio(mx: float, med: float) -> float:
    return mx / (med if med > 0 else 1.0)


def tail_window(launch: np.ndarray, finish: np.ndarray, slots: int) -> tuple[float, float] | None:
    """The stage's tail [start, end] in the times' unit: from the last moment more than
    the threshold of ``slots`` (at most the number of tasks) were busy to the last finish."""
    n = len(launch)
    if n == 0:
        return None
    eff = max(1, min(slots, n))
    threshold = max(1, math.ceil(eff / 2) - 1)
    times = np.concatenate((launch, finish))
    steps = np.concatenate((np.ones(n), -np.ones(n)))
    # At equal times ends go first: a task that ends as another starts frees its slot.
    order = np.lexsort((steps, times))
    busy = np.cumsum(steps[order])
    t = times[order]
    end = float(finish.max())
    over = np.flatnonzero(busy > threshold)
    if len(over) == 0:
        return (float(t[0]), end) if eff > threshold else None
    last = int(over[-1])
    # The step after the last "over" moment brings the count down to the threshold.
    start = float(t[last + 1]) if last + 1 < len(t) else end
    return (start, end)


def analyse(stage: StageAttempt, rules: SkewRules | None = None) -> SkewResult:
    """Skew figures, class and tail of a stage attempt (its succeeded tasks)."""
    rules = rules or SkewRules()
    cols = stage.columns
    d = np.frombuffer(cols["duration_seconds"], dtype=float) if cols["duration_seconds"] else None
    n = 0 if d is None else len(d)
    res = SkewResult(tasks=n, slots=max(1, min(stage.slots, max(n, 1))))
    if d is None or n < rules.min_tasks:
        res.reason = f"{n} succeeded task(s): too few to compare"
        return res

    def col(name: str) -> np.ndarray:
        return np.frombuffer(cols[name], dtype=float)

    med = float(np.median(d))
    mx = float(d.max())
    mean = float(d.mean())
    f = res.figures
    f["duration_max_median"] = _ratio(mx, med)
    f["duration_p95_median"] = _ratio(float(np.percentile(d, 95)), med)
    f["duration_cv"] = float(d.std() / mean) if mean > 0 else 0.0
    reads = {}
    for name in ("input_bytes", "input_records", "shuffle_read_bytes", "shuffle_read_records"):
        c = col(name)
        cmed, cmax = float(np.median(c)), float(c.max())
        f[f"{name}_max_median"] = _ratio(cmax, cmed)
        reads[name] = (cmax, cmed)

    launch, finish = col("launch_ms"), col("finish_ms")
    window = tail_window(launch, finish, stage.slots)
    if window is not None:
        res.tail_start_ms, res.tail_end_ms = window
        cpu = col("cpu_time_seconds")
        span = np.maximum(finish - launch, 1e-9)
        overlap = np.clip(np.minimum(finish, window[1]) - np.maximum(launch, window[0]), 0, None)
        res.tail_cpu_seconds = float((cpu * overlap / span).sum())

    excess = mx - med
    if f["duration_max_median"] < rules.duration_factor or excess < rules.min_excess_seconds:
        res.reason = (
            f"durations balanced: slowest task {mx:.3g} s against a median of {med:.3g} s "
            f"(needs {rules.duration_factor:g}x and {rules.min_excess_seconds:g} s more)"
        )
        return res
    slow = d >= rules.duration_factor * med
    skewed = []
    for name, (cmax, cmed) in reads.items():
        floor = rules.min_records if name.endswith("records") else rules.min_bytes
        if _ratio(cmax, cmed) >= rules.data_factor and cmax - cmed >= floor:
            skewed.append(f"{name} {_ratio(cmax, cmed):.3g}x the median")
    head = f"slowest task {mx:.3g} s, {f['duration_max_median']:.3g}x the median {med:.3g} s"
    if skewed:
        res.kind = "data_skew"
        res.reason = f"{head}; the largest read: " + ", ".join(skewed)
        return res
    waits = col("gc_time_seconds") + col("shuffle_fetch_wait_seconds")
    waits = waits + col("scheduler_delay_seconds") + col("deserialize_time_seconds")
    wait_excess = float(np.clip(waits[slow] - float(np.median(waits)), 0, None).sum())
    time_excess = float((d[slow] - med).sum())
    execs = stage.executors
    slow_execs = {execs[i] for i in np.flatnonzero(slow).tolist()}
    # Launch order: the first wave fills the slots; later waves reuse warm executors.
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(launch, kind="stable")] = np.arange(n)
    first_wave = n > res.slots and bool((rank[slow] < res.slots).all())
    if time_excess > 0 and wait_excess >= rules.straggler_wait_share * time_excess:
        res.kind = "stragglers"
        res.reason = (
            f"{head}; reads balanced, and {wait_excess / time_excess:.0%} of the slow tasks' "
            "extra time was GC, fetch wait, scheduling or deserialisation"
        )
    elif len(slow_execs) == 1 and len(set(execs)) > 1:
        res.kind = "stragglers"
        res.reason = (
            f"{head}; reads balanced, and every slow task ran on executor {next(iter(slow_execs))}"
        )
    elif first_wave:
        res.kind = "stragglers"
        res.reason = (
            f"{head}; reads balanced, and the slow tasks are the first wave of the stage "
            "(start-up: JIT, class loading, Python workers), later waves ran at the median"
        )
    else:
        res.kind = "computation_skew"
        res.reason = (
            f"{head}; reads balanced (at most {max(_ratio(a, b) for a, b in reads.values()):.3g}x "
            "the median): the cost depends on the records' content"
        )
    return res


@dataclass(slots=True)
class StoredSkew:
    """A stage attempt's skew as stored on its span, and its tail's energy when the agent
    attributed the tail span (``spark.stage.tail``)."""

    stage_id: int
    attempt: int
    name: str
    kind: str
    reason: str
    duration_seconds: float
    tail_seconds: float
    tail_start: float | None
    tail_end: float | None
    figures: dict[str, float]
    tail_node_joules: float | None = None
    tail_active_joules: float | None = None
    tail_process_joules: float | None = None
    job_id: int | None = None


def stored_skews(spans: Any) -> list[StoredSkew]:
    """Every stage attempt among stored ``spans`` (``SpanRow``), in start order."""
    prefix = "spark.stage.skew."
    tails = {}
    for s in spans:
        if s.name == "spark.stage.tail":
            tails[s.parent_span_id] = s
    out = []
    for s in spans:
        if s.name != "spark.stage":
            continue
        a = s.attributes
        figures = {
            k[len(prefix) :]: float(v)
            for k, v in a.items()
            if k.startswith(prefix) and isinstance(v, int | float) and not isinstance(v, bool)
        }
        tail = tails.get(s.span_id)
        r = tail.resources if tail is not None else {}
        job = a.get("spark.job.id")
        out.append(
            StoredSkew(
                int(a.get("spark.stage.id", -1)),
                int(a.get("spark.stage.attempt", 0)),
                str(a.get("spark.stage.name", "")),
                str(a.get(prefix + "class", "none")),
                str(a.get(prefix + "reason", "")),
                s.end_ts - s.start_ts,
                float(a.get(prefix + "tail_seconds", 0.0) or 0.0),
                tail.start_ts if tail is not None else None,
                tail.end_ts if tail is not None else None,
                figures,
                r.get("node_energy_total_joules"),
                r.get("active_energy_joules"),
                r.get("process_energy_joules"),
                int(job) if isinstance(job, int) else None,
            )
        )
    return out
