"""Node-wide energy per process (what Scaphandre and Kepler show), with bounded cardinality.

A sink of the tick's samples: from the node's busy CPU time (``cpu``, ``cpu="total"``) and
its primary energy domains (``rapl`` / ``power_model``) over the tick's interval, and the
CPU time each process used in that interval (:class:`NodeProcessCollector`'s ``usage``),
it charges each process ``s = c / C`` of the interval's active energy, the model of
attribution (README, "How attribution works"). It emits, through the pipeline, source
``process_energy`` samples for the ``top_n`` processes by energy (tags ``pid``, ``name``)
and one with ``pid="other"``, ``name="other"`` for the rest of the active energy (other
processes and the kernel), so that per tick ``sum(power_watts) == active power``:

* ``power_watts``: mean power over the interval (a gauge; sums to the active power);
* ``joules_total``: the process's energy since the agent first saw it (a counter per
  process; for ``other``, the energy of every interval's rest). A process that leaves the
  top N keeps counting here; when it comes back its counter carries what it used while
  out of view, which ``other`` also counted: sum ``power_watts`` (or ``rate`` of one
  series), not counters across series.
* ``cpu_share_ratio``: ``s`` over the interval.

A process that drops out of the top N gets one last sample with ``power_watts`` 0, so the
latest sample of every series (what /metrics shows, for a few seconds after the last one)
still sums to the active power. A process idle for a while is read every few ticks only
(:mod:`wattspan.collectors.node_processes`): CPU time it used in between is charged to the
interval in which it was read.

Idle power, first of: the power model's own figure; ``idle()`` (the daemon passes the one
its own run's spans were charged); a calibration; the lowest interval power of the last
``window`` seconds (the last resort of agent/idle.py, kept incrementally here: no numpy).
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Sequence

from wattspan.agent.domains import primary_domains
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.sinks import StatValue
from wattspan.collectors.base import Sample, number
from wattspan.collectors.cpu import busy_seconds
from wattspan.collectors.node_processes import NodeProcessCollector

log = logging.getLogger("wattspan.process_energy")

_ENERGY_SOURCES = frozenset({"rapl", "power_model"})


class _Only:
    """``SKIP_SOURCES`` of a sink that reads a few sources only: everything else is
    skipped, so ``Pipeline.wants`` is not made true by this sink."""

    def __init__(self, keep: frozenset[str]) -> None:
        self.keep = keep

    def __contains__(self, source: object) -> bool:
        return source not in self.keep


class ProcessEnergySink:
    """Computes and emits ``process_energy`` samples once per tick (module doc)."""

    name = "process_energy"
    SKIP_SOURCES = _Only(frozenset({"cpu", *_ENERGY_SOURCES}))

    def __init__(
        self,
        collector: NodeProcessCollector,
        pipeline: Pipeline,
        top_n: int = 10,
        idle: Callable[[], float | None] | None = None,
        calibration_watts: float | None = None,
        window: float = 300.0,
    ) -> None:
        self.collector = collector
        self.pipeline = pipeline
        self.top_n = top_n
        self.idle = idle
        self.calibration_watts = calibration_watts
        self.window = window
        self._busy: tuple[float, float] | None = None
        self._energy: dict[str, tuple[float, float]] = {}
        self._model_idle: float | None = None
        # (time, interval power): increasing power from the front, for the sliding minimum.
        self._min: deque[tuple[float, float]] = deque()
        self._joules: dict[tuple[int, int], float] = {}
        self._other_joules = 0.0
        self._pruned = 0.0
        # Last tick's top N: one that drops out gets a last sample with power 0, so that the
        # latest samples (/metrics shows each for a few seconds) still sum to active power.
        self._shown: dict[tuple[int, int], tuple[int, str]] = {}
        self.intervals = 0
        #: the last interval's figures, for tests and the curious: (t0, t1, active J)
        self.last: tuple[float, float, float] | None = None

    def write(self, samples: Sequence[Sample]) -> None:
        busy_now: tuple[float, float] | None = None
        energy_now: dict[str, tuple[float, float]] = {}
        for s in samples:
            src = s.source
            if src == "cpu":
                if s.tags.get("cpu") == "total":
                    busy_now = (s.ts, busy_seconds(s))
            elif src in _ENERGY_SOURCES:
                e = number(s, "energy_joules_total")
                if e is not None:
                    energy_now[s.tags.get("domain", "?")] = (s.ts, e)
                if src == "power_model":
                    idle = number(s, "idle_power_watts")
                    if idle is not None:
                        self._model_idle = idle
        if busy_now is None:
            return
        busy_prev, self._busy = self._busy, busy_now
        energy_prev = self._energy
        self._energy = {**energy_prev, **energy_now}
        if busy_prev is None:
            return
        out = self._interval(busy_prev, busy_now, energy_prev, energy_now)
        if out:
            self.pipeline.emit(out)

    def _idle_watts(self, t: float, power: float) -> float:
        q = self._min
        while q and q[-1][1] >= power:
            q.pop()
        q.append((t, power))
        while q[0][0] < t - self.window:
            q.popleft()
        for figure in (
            self._model_idle,
            self.idle() if self.idle is not None else None,
            self.calibration_watts,
        ):
            if figure is not None:
                return figure
        return q[0][1]

    def _interval(
        self,
        busy_prev: tuple[float, float],
        busy_now: tuple[float, float],
        energy_prev: dict[str, tuple[float, float]],
        energy_now: dict[str, tuple[float, float]],
    ) -> list[Sample]:
        t0, t1 = busy_prev[0], busy_now[0]
        dt = t1 - t0
        usage = self.collector.usage()
        # The collector must have sampled at the same two instants as the cpu collector (a
        # tick of the same scheduler call); a failed or skipped tick on either side leaves
        # the interval out rather than dividing one interval's CPU by another's.
        if dt <= 0 or usage is None or usage[0] != t0 or usage[1] != t1:
            return []
        domains = [d for d in primary_domains(energy_now) if d in energy_prev]
        if not domains or any(energy_prev[d][0] != t0 for d in domains):
            return []
        node = sum(max(energy_now[d][1] - energy_prev[d][1], 0.0) for d in domains)
        idle = self._idle_watts(t1, node / dt) * dt
        active = max(node - idle, 0.0)
        node_busy = busy_now[1] - busy_prev[1]
        procs = usage[2]
        total_cpu = sum(u.cpu_seconds for u in procs)
        # Process time and /proc/stat are counted apart, a tick may fall either side: never
        # hand out more than the interval's busy time.
        denom = max(node_busy, total_cpu)
        joules = self._joules
        charged: list[tuple[float, float, int, str, tuple[int, int]]] = []
        for u in procs:
            share = u.cpu_seconds / denom if denom > 0 else 0.0
            e = share * active
            key = (u.pid, u.start)
            joules[key] = joules.get(key, 0.0) + e
            charged.append((e, share, u.pid, u.name, key))
        top = heapq.nlargest(self.top_n, charged, key=lambda c: c[0])
        rest = active - sum(c[0] for c in top)
        self._other_joules += max(rest, 0.0)
        self.intervals += 1
        self.last = (t0, t1, active)
        out = [
            Sample(
                "process_energy",
                t1,
                {"pid": str(pid), "name": name},
                {"joules_total": joules[key], "power_watts": e / dt, "cpu_share_ratio": share},
            )
            for e, share, pid, name, key in top
        ]
        shown = {key: (pid, name) for _, _, pid, name, key in top}
        for key, (pid, name) in self._shown.items():
            if key not in shown:
                out.append(
                    Sample(
                        "process_energy",
                        t1,
                        {"pid": str(pid), "name": name},
                        {
                            "joules_total": joules.get(key, 0.0),
                            "power_watts": 0.0,
                            "cpu_share_ratio": 0.0,
                        },
                    )
                )
        self._shown = shown
        out.append(
            Sample(
                "process_energy",
                t1,
                {"pid": "other", "name": "other"},
                {
                    "joules_total": self._other_joules,
                    "power_watts": max(rest, 0.0) / dt,
                    "cpu_share_ratio": max(1.0 - sum(c[1] for c in top), 0.0),
                },
            )
        )
        if t1 - self._pruned >= 60.0:
            self._pruned = t1
            alive = self.collector.alive
            for key in [k for k in joules if not alive(*k)]:
                del joules[key]
        return out

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass

    def stats(self) -> dict[str, StatValue]:
        return {}
