"""A run's summary: the figures of the run table, from the run's samples.

:class:`RunSummary` folds samples in as they are produced, in constant memory per series, so
``wattspan run`` has its table from what it measured even if the store failed during the run;
:func:`summarize` applies the same fold to stored samples, so ``wattspan show`` can recompute
the table and a reader can check it by hand against the rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wattspan.agent.domains import primary_domains
from wattspan.collectors.base import Sample
from wattspan.collectors.base import number as _num
from wattspan.collectors.cpu import busy_seconds

_CPU = ("cpu_user_seconds_total", "cpu_system_seconds_total")
# A process's CPU seconds come in clock ticks (USER_HZ: 10 ms), so over one 0.1 s sampling
# interval a share is +-10 % (a one-thread loop read 88 % then 112.5 %). The CPU peak is the
# highest average over this long (+-2 %), or over the whole sampled run where it is shorter.
PEAK_WINDOW_S = 1.0


#: Latest values a counter keeps to find where the command ended among them: the samples
#: taken after the end (while a short command's agent was still starting) are a handful.
_RECENT = 64


@dataclass(slots=True)
class _Counter:
    """First and latest (ts, value) of a cumulative field, and how many values it had."""

    first: tuple[float, float] = (0.0, 0.0)
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_RECENT))
    n: int = 0

    def add(self, ts: float, v: float | None) -> None:
        if v is None:
            return
        if not self.n:
            self.first = (ts, v)
        self.recent.append((ts, v))
        self.n += 1

    def delta(self, end: float | None = None) -> tuple[float, float] | None:
        """(increase, seconds covered) from the first value to the first one at or after
        ``end`` (default: the latest); None where that covers no time.

        A command that ends before its agent is up (``wattspan run -- true``: 8 ms against
        the agent's 200 ms start) has its counters read at its exit (agent/runner.py); the
        samples after that count the agent's own start, not the command."""
        if self.n < 2:
            return None
        last = self.recent[-1]
        if end is not None:
            last = next((p for p in self.recent if p[0] >= end), last)
        if last[0] <= self.first[0]:
            return None
        return last[1] - self.first[1], last[0] - self.first[0]


@dataclass(slots=True)
class _Mean:
    total: float = 0.0
    n: int = 0

    def add(self, v: float | None) -> None:
        if v is not None:
            self.total += v
            self.n += 1

    def value(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass(slots=True)
class _Energy:
    counter: _Counter = field(default_factory=_Counter)
    estimated: bool = False


@dataclass(slots=True)
class _Gpu:
    name: str = ""
    energy_method: str = ""
    energy: _Counter = field(default_factory=_Counter)
    util: _Mean = field(default_factory=_Mean)
    mem_peak: float | None = None
    mem_total: float | None = None


class RunSummary:
    """Streaming summary of one run's samples (also a pipeline sink: ``name = "summary"``)."""

    name = "summary"

    def __init__(self) -> None:
        self._final: Sample | None = None  # last ``run`` sample (wait4), else last tree
        self._have_run = False
        self._outlived: list[Sample] = []
        self._last_tree: Sample | None = None
        # Tree samples (ts, CPU seconds, alive) from the latest one at least PEAK_WINDOW_S
        # before the newest: a few intervals' worth.
        self._tree_win: deque[tuple[float, float, bool]] = deque()
        self._cpu_peak: float | None = None
        self._span_cpu: float | None = None  # over the whole run, while shorter than a window
        self._peak_rss: float | None = None
        self._util = _Mean()
        self._busy = _Counter()  # the node's busy CPU seconds, every core (/proc/stat)
        self._energy: dict[tuple[str, str], _Energy] = {}
        self._gpus: dict[str, _Gpu] = {}

    # -- the Sink protocol -----------------------------------------------------------------
    def write(self, samples: Sequence[Sample]) -> None:
        self.add(samples)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass

    def stats(self) -> dict[str, float | int | str]:
        return {}

    # -- folding ---------------------------------------------------------------------------
    def add(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            src = s.source
            if src == "process_tree":
                self._tree(s)
            elif src == "run":
                self._final, self._have_run = s, True
                self._rss(_num(s, "peak_rss_bytes"))  # wait4's: peaks between samples
            elif src == "run_outlived":
                self._outlived.append(s)
            elif src == "process":
                self._rss(_num(s, "peak_rss_bytes"))
            elif src == "cpu":
                if s.tags.get("cpu") == "total":
                    self._util.add(_num(s, "utilization_ratio"))
                    self._busy.add(s.ts, busy_seconds(s))
            elif src in ("rapl", "power_model"):
                e = self._energy.get((src, s.tags.get("domain", "?")))
                if e is None:
                    e = self._energy[(src, s.tags.get("domain", "?"))] = _Energy(
                        estimated=s.tags.get("estimated") == "true"
                    )
                e.counter.add(s.ts, _num(s, "energy_joules_total"))
            elif src == "gpu":
                self._gpu(s)

    def _rss(self, v: float | None) -> None:
        # 0 is a tree with no process seen yet, not a peak.
        if v is not None and v > 0 and (self._peak_rss is None or v > self._peak_rss):
            self._peak_rss = v

    def _tree(self, s: Sample) -> None:
        # The tree's peak is the larger of the sampled sum over its processes and the
        # kernel's high-water mark (VmHWM) of its largest process, which catches peaks
        # between samples.
        self._rss(_num(s, "peak_rss_bytes"))
        cpu = sum(_num(s, k) or 0.0 for k in _CPU)
        # An interval with no process of the tree alive at either end (a command that ended
        # before the first sample) saw nothing run: it says nothing of the peak.
        procs = _num(s, "processes")
        alive = procs is None or procs > 0  # a sample without the count: taken as alive
        win = self._tree_win
        win.append((s.ts, cpu, alive))
        while len(win) > 2 and win[1][0] <= s.ts - PEAK_WINDOW_S:
            win.popleft()
        t0, c0, alive0 = win[0]
        dt = s.ts - t0
        if len(win) > 1 and dt > 0 and (alive or alive0):
            pct = 100.0 * max(cpu - c0, 0.0) / dt
            if dt >= PEAK_WINDOW_S:
                self._cpu_peak = pct if self._cpu_peak is None else max(self._cpu_peak, pct)
            else:  # no whole window yet: win[0] is the first sample, this the run so far
                self._span_cpu = pct
        self._last_tree = s
        if not self._have_run:
            self._final = s

    def _gpu(self, s: Sample) -> None:
        key = s.tags.get("gpu", "?")
        g = self._gpus.get(key)
        if g is None:
            g = self._gpus[key] = _Gpu(
                name=s.tags.get("name", ""), energy_method=s.tags.get("energy_method", "")
            )
        g.energy.add(s.ts, _num(s, "energy_joules_total"))
        g.util.add(_num(s, "utilization_gpu_ratio"))
        mem = _num(s, "memory_used_bytes")
        if mem is not None and (g.mem_peak is None or mem > g.mem_peak):
            g.mem_peak = mem
        g.mem_total = _num(s, "memory_total_bytes")

    # -- the figures -----------------------------------------------------------------------
    def _cpu_parts(self, final: Sample, total: float) -> dict[str, Any]:
        """Where the CPU seconds came from (``cpu_source``, the README lists the values)."""
        if not self._have_run:
            # A run still going (or one whose end was never recorded): the sampled tree.
            return {"cpu_source": "samples"}
        if final.fields.get("subreaper") is not True:
            # wait4 of the command alone: no orphaned descendant is in it. Also every run
            # stored before wattspan became a subreaper.
            return {"cpu_source": "wait4-child-only", "cpu_seconds_reaped": total}
        child = _num(final, "child_cpu_seconds_total") or 0.0
        orphans = _num(final, "orphans_cpu_seconds_total") or 0.0
        left = int(_num(final, "outlived_processes") or 0)
        return {
            "cpu_source": "wait4+proc" if left else "wait4",
            "cpu_seconds_reaped": child + orphans,
            "cpu_seconds_orphans": orphans,
            "orphans_reaped": int(_num(final, "orphans_reaped") or 0),
            "cpu_seconds_outlived": _num(final, "outlived_cpu_seconds_total") or 0.0,
            "outlived_processes": left,
            "outlived": [
                {
                    "pid": int(s.tags.get("pid", "0")),
                    "name": s.tags.get("name", ""),
                    "cpu_seconds": sum(_num(s, k) or 0.0 for k in _CPU),
                    "exited": s.fields.get("exited") is True,
                }
                for s in self._outlived
            ],
        }

    def result(
        self,
        start: float,
        end: float,
        idle_watts: float | None = None,
        idle_method: str | None = None,
    ) -> dict[str, Any]:
        """Figures for the run table. Units: seconds, bytes, joules, watts, percent (of one
        core for CPU %, so 200 means two cores busy).

        With ``idle_watts`` the node's energy is split as a span's is (README, "How
        attribution works"): idle, and the active rest shared by CPU time between the run's
        process tree and everything else on the node (:meth:`_shares`)."""
        out: dict[str, Any] = {"wall_seconds": end - start}
        final = self._final
        if final is not None:
            user = _num(final, "cpu_user_seconds_total") or 0.0
            system = _num(final, "cpu_system_seconds_total") or 0.0
            out["cpu_user_seconds"] = user
            out["cpu_system_seconds"] = system
            out["cpu_seconds"] = user + system
            wall = out["wall_seconds"]
            out["cpu_percent_avg"] = 100.0 * (user + system) / wall if wall > 0 else None
            out.update(self._cpu_parts(final, user + system))
        if self._peak_rss is not None:
            out["peak_rss_bytes"] = int(self._peak_rss)
        peak = self._cpu_peak if self._cpu_peak is not None else self._span_cpu
        if peak is not None:
            # The samples start tens of ms into the run and see the tree only at ticks, while
            # the average is wait4's over the whole run: no window can peak below it.
            avg = out.get("cpu_percent_avg")
            out["cpu_percent_peak"] = max(peak, avg) if avg is not None else peak
        if self._last_tree is not None:
            for key in ("read_bytes_total", "write_bytes_total"):
                v = _num(self._last_tree, key)
                if v is not None:
                    out[key.replace("_total", "")] = int(v)
        if self._util.n:
            out["node_cpu_utilization_avg"] = self._util.value()

        energy: list[dict[str, Any]] = []
        for source in ("rapl", "power_model"):
            for (src, domain), e in sorted(self._energy.items()):
                if src != source:
                    continue
                d = e.counter.delta(end)
                if d is None:
                    continue
                joules, secs = d
                energy.append(
                    {
                        "domain": domain,
                        "joules": joules,
                        # The counters' window: from the spawn (collectors/head.py) to the
                        # first reading at or after the command's end: its exit, or the
                        # final sample a few ms past it.
                        "seconds": secs,
                        "watts_avg": joules / secs if secs > 0 else None,
                        "estimated": e.estimated,
                        "source": source,
                    }
                )
        out["energy"] = energy

        gpus: list[dict[str, Any]] = []
        for gpu, g in sorted(self._gpus.items()):
            row: dict[str, Any] = {"gpu": gpu, "name": g.name}
            d = g.energy.delta(end)
            if d is not None:
                row["joules"] = d[0]
                row["watts_avg"] = d[0] / d[1] if d[1] > 0 else None
            row["energy_method"] = g.energy_method
            row["utilization_avg"] = g.util.value()
            row["memory_used_peak_bytes"] = int(g.mem_peak) if g.mem_peak is not None else None
            row["memory_total_bytes"] = int(g.mem_total) if g.mem_total is not None else None
            gpus.append(row)
        out["gpus"] = gpus
        self._shares(out, end, idle_watts, idle_method)
        return out

    def _shares(
        self, out: dict[str, Any], end: float, idle_watts: float | None, idle_method: str | None
    ) -> None:
        """Node energy of the primary domains, and its split into idle, the run's process
        share and other processes: ``s = min(c / C, 1)`` with ``c`` the tree's CPU seconds
        and ``C`` the node's busy CPU seconds over the sampled interval, ``process = s *
        active``. On a shared node this is the run's own figure; node energy is not."""
        energy = {e["domain"]: e for e in out["energy"]}
        primary = primary_domains(energy)
        if not primary:
            return
        node = sum(energy[d]["joules"] for d in primary)
        out["node_energy_joules"] = node
        out["energy_estimated"] = any(energy[d]["estimated"] for d in primary)
        if idle_watts is None:
            return
        counted = self._energy.get((energy[primary[0]]["source"], primary[0]))
        d = counted.counter.delta(end) if counted is not None else None
        secs = d[1] if d is not None else out["wall_seconds"]
        idle = min(max(idle_watts, 0.0) * secs, node)
        active = max(node - idle, 0.0)
        out["idle_power_watts"] = idle_watts
        if idle_method is not None:
            out["idle_method"] = idle_method
        out["idle_energy_joules"] = idle
        out["active_energy_joules"] = active
        busy = self._busy.delta(end)
        cpu = out.get("cpu_seconds")
        if busy is None or cpu is None:
            return
        node_busy = busy[0]
        share = min(cpu / node_busy, 1.0) if node_busy > 0 else 0.0
        out["node_busy_cpu_seconds"] = node_busy
        out["process_cpu_share"] = share
        out["process_energy_joules"] = share * active
        out["other_energy_joules"] = (1.0 - share) * active


def summarize(
    samples: Iterable[Sample],
    start: float,
    end: float,
    idle_watts: float | None = None,
    idle_method: str | None = None,
) -> dict[str, Any]:
    """The run table's figures from a run's samples in time order (see :class:`RunSummary`)."""
    acc = RunSummary()
    acc.add(samples)
    return acc.result(start, end, idle_watts, idle_method)
