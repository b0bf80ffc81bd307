"""``ml_progress``: every ``ml`` point with the time and energy its run had used by then.

What the ML dashboard's time- and energy-to-accuracy panels read: the first point of a run
whose accuracy reaches a target carries how long the run had been going and how much energy
the node had used since, so a query needs no join (InfluxQL has none).

* **Run start**: the earliest record of the run this exporter has seen: its first ``ml``
  point, or the start (``start_time``) of one of its spans, whichever is earlier. A span that
  started earlier but is exported later (spans are exported after attribution) moves the
  start back for later points. An agent restarted mid-run starts the clock again.
* **Energy**: the node's primary energy domains (the same choice as span attribution and
  ``wattspan report``'s energy-to-target: RAPL packages, else psys, else the power model)
  plus every GPU's counter, interpolated at the point's time and at the run start from the
  counters this exporter wrote (a ring of the last :data:`RING` ticks).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Sequence

from wattspan.agent.domains import primary_domains
from wattspan.collectors.base import Sample, number

MEASUREMENT = "ml_progress"
#: Ticks of node energy kept (one per sample batch carrying counters).
RING = 8192
#: Runs whose start is remembered.
MAX_RUNS = 4096


class MlProgress:
    """Derives ``ml_progress`` samples from the ``ml`` samples of a write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._domains: dict[str, float] = {}
        self._gpus: dict[str, float] = {}
        self._ring_ts: deque[float] = deque(maxlen=RING)
        self._ring_node: deque[float] = deque(maxlen=RING)
        self._ring_gpu: deque[float] = deque(maxlen=RING)
        # run -> (start, node energy at start, gpu energy at start)
        self._runs: dict[str, tuple[float, float | None, float | None]] = {}

    def derive(self, samples: Sequence[Sample]) -> list[Sample]:
        out: list[Sample] = []
        with self._lock:
            tick: float | None = None
            for s in samples:
                src = s.source
                if src in ("rapl", "power_model", "gpu"):
                    v = number(s, "energy_joules_total")
                    if v is None:
                        continue
                    if tick is not None and s.ts != tick:
                        # A batch may hold several ticks (a replay): one ring entry each.
                        self._push(tick)
                    if src == "gpu":
                        self._gpus[s.tags.get("gpu", "?")] = v
                    else:
                        self._domains[s.tags.get("domain", "?")] = v
                    tick = s.ts
                elif src == "spans":
                    run = s.tags.get("run")
                    start = number(s, "start_time")
                    if run and start is not None:
                        self._saw_run(run, start)
            if tick is not None:
                self._push(tick)
            for s in samples:
                if s.source != "ml":
                    continue
                run = s.tags.get("run")
                value = number(s, "value")
                if not run or value is None:
                    continue
                self._saw_run(run, s.ts)
                start, node0, gpu0 = self._runs[run]
                fields: dict[str, float | int | str | bool] = {
                    "value": value,
                    "elapsed_seconds": max(0.0, s.ts - start),
                }
                step = s.fields.get("step")
                if isinstance(step, int) and not isinstance(step, bool):
                    fields["step"] = step
                node, gpu = self._at(s.ts)
                total = None
                if node is not None and node0 is not None:
                    fields["node_energy_joules"] = max(0.0, node - node0)
                    total = fields["node_energy_joules"]
                if gpu is not None and gpu0 is not None:
                    fields["gpu_energy_joules"] = max(0.0, gpu - gpu0)
                    total = (total or 0.0) + fields["gpu_energy_joules"]  # type: ignore[operator]
                if total is not None:
                    fields["energy_joules"] = total
                tags = {"name": s.tags.get("name", ""), "run": run}
                out.append(Sample(MEASUREMENT, s.ts, tags, fields, ts_ns=s.ts_ns))
        return out

    def _push(self, ts: float) -> None:
        node = None
        if self._domains:
            node = sum(self._domains[d] for d in primary_domains(self._domains))
        gpu = sum(self._gpus.values()) if self._gpus else None
        if self._ring_ts and ts <= self._ring_ts[-1]:
            return
        self._ring_ts.append(ts)
        self._ring_node.append(float("nan") if node is None else node)
        self._ring_gpu.append(float("nan") if gpu is None else gpu)

    def _at(self, t: float) -> tuple[float | None, float | None]:
        """Node and GPU energy counters at ``t``, linear between ticks, clamped at the ends."""
        ts = self._ring_ts
        if not ts:
            return None, None
        i = bisect.bisect_left(ts, t)
        out: list[float | None] = []
        for ring in (self._ring_node, self._ring_gpu):
            if i == 0:
                v = ring[0]
            elif i >= len(ts):
                v = ring[-1]
            else:
                t0, t1, v0, v1 = ts[i - 1], ts[i], ring[i - 1], ring[i]
                v = v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
            out.append(None if v != v else v)  # NaN: no such counter then
        return out[0], out[1]

    def _saw_run(self, run: str, t: float) -> None:
        have = self._runs.get(run)
        if have is not None and have[0] <= t:
            return
        if have is None and len(self._runs) >= MAX_RUNS:
            del self._runs[next(iter(self._runs))]
        node, gpu = self._at(t)
        self._runs[run] = (t, node, gpu)
