"""Is the node quiet enough to measure on? Load average and other processes' CPU.

Over ``seconds`` the node's busy CPU time (``/proc/stat``: user, nice, system, irq, softirq,
steal) is compared with this process's own (and its children's): what is left is other
processes' CPU, in cores. With the 1-minute load average per CPU, each against its bound.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

import psutil

from wattspan.experiments.config import QuietCheck

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class QuietResult:
    load_per_cpu: float
    other_cpu: float  # cores
    problems: list[str] = field(default_factory=list)
    busiest: list[tuple[str, int, float]] = field(default_factory=list)  # name, pid, cores

    @property
    def quiet(self) -> bool:
        return not self.problems

    def message(self) -> str:
        top = ", ".join(f"{n} ({pid}) {c:.2f} cores" for n, pid, c in self.busiest)
        return "; ".join(self.problems) + (f"; busiest: {top}" if top else "")


def _node_busy() -> float:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _own_cpu() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _proc_times() -> dict[int, tuple[str, float]]:
    out = {}
    me = os.getpid()
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info.get("cpu_times")
        if t is None or p.pid == me:
            continue
        out[p.pid] = (p.info.get("name") or "?", t.user + t.system)
    return out


def check(q: QuietCheck) -> QuietResult:
    ncpu = os.cpu_count() or 1
    before = _proc_times()
    busy0, own0, t0 = _node_busy(), _own_cpu(), time.monotonic()
    time.sleep(q.seconds)
    busy1, own1, t1 = _node_busy(), _own_cpu(), time.monotonic()
    after = _proc_times()
    dt = max(t1 - t0, 1e-6)
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / dt
    load = os.getloadavg()[0] / ncpu
    problems = []
    if load > q.max_load_per_cpu:
        problems.append(
            f"load average {load * ncpu:.2f} on {ncpu} CPUs ({load:.2f} per CPU, bound "
            f"{q.max_load_per_cpu:g})"
        )
    if other > q.max_other_cpu:
        problems.append(
            f"other processes used {other:.2f} cores over {dt:.1f} s (bound {q.max_other_cpu:g})"
        )
    deltas = [
        (name, pid, (cpu - before[pid][1]) / dt)
        for pid, (name, cpu) in after.items()
        if pid in before and cpu > before[pid][1]
    ]
    deltas.sort(key=lambda d: -d[2])
    return QuietResult(load, other, problems, deltas[:3] if problems else [])
