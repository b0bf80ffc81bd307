"""Every process on the node: a short CPU history per process, kept inside the collector.

The agent starts watching a process tree only when its first spans arrive, which is often
after they ended. This collector reads ``/proc/PID/stat`` of every (user-space) process once
a tick and keeps each process's cumulative CPU time (``utime + stime``) for ``window``
seconds, so that attribution can answer for a process it never watched. It emits no sample
per process: at about a kilobyte per sample and tick that would cost more than the history.

Storage is columnar and sparse: per process two ``array`` columns, the vertices of its
cumulative CPU time as a piecewise-linear function (Unix time, clock ticks), added only when
the figure moved. A sleeping process costs one vertex; a busy one one per tick of the window.
A process whose figure did not move is read less often (every 2, 4, 8, then 16 ticks), since most
processes sleep; one that moved is read every tick again. ``max_processes`` bounds the count,
live and recently exited together, and so the reads per tick; the time bound drops vertices
older than ``window`` (keeping the one the first segment starts from).

A pid that is reused is told apart by the process's start time (field 22 of ``stat``): the
old process's history stays under its own record until it ages out.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass

from wattspan.collectors.base import Sample

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PF_KTHREAD = 0x00200000
# Points are trimmed every this many ticks: per tick, the check would cost a loop over
# every process for a few bytes.
_TRIM_EVERY = 16
# The most ticks between two reads of a process whose CPU time did not move.
_MAX_GAP = 16


def _boot_time() -> float:
    """Unix time of boot, to the microsecond: ``/proc/stat``'s ``btime`` is whole seconds,
    too coarse to place a process's start (10 ms ticks) between two samples."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class _Proc:
    """One process (pid and start time): the vertices of its cumulative CPU time."""

    __slots__ = ("born", "comm", "gap", "name", "pid", "seen", "start", "times", "vals")

    def __init__(self, pid: int, start: int, comm: bytes, now: float, value: int) -> None:
        self.pid = pid
        #: start time, clock ticks since boot (``stat`` field 22)
        self.start = start
        self.comm = comm
        self.name = comm.decode("utf-8", "replace")
        #: vertices of the piecewise-linear cumulative CPU time: Unix s, clock ticks
        self.times = array("d", [now])
        self.vals = array("q", [value])
        #: time of the last read (the figure held from the last vertex until then)
        self.seen = now
        #: ticks between reads
        self.gap = 1
        #: True while the history still starts at the first sighting of a process born in
        #: the interval before it: CPU time was 0 at its start, a known point.
        self.born = False


@dataclass(frozen=True, slots=True)
class Usage:
    """A process's CPU time over the collector's latest interval."""

    pid: int
    start: int
    name: str
    cpu_seconds: float


class NodeProcessCollector:
    """Keeps a CPU history of every process on the node (kernel threads excluded: their
    time is the kernel's, "other" in attribution).

    ``sample`` returns one ``node_processes`` sample: ``processes`` (tracked now, live and
    recently exited), ``untracked_total`` (processes past ``max_processes``, never read).
    The history is read through :meth:`cpu_seconds`, :meth:`series` and :meth:`usage`.
    """

    name = "node_processes"

    def __init__(
        self, max_processes: int = 4096, window: float = 300.0, proc: str = "/proc"
    ) -> None:
        self.max_processes = max_processes
        self.window = window
        self.proc = proc
        self.untracked_total = 0
        self._boot = _boot_time()
        self._tick = -1
        self._now: float | None = None
        self._live: dict[int, _Proc] = {}
        # Exited (or replaced, on pid reuse) processes, kept for spans that arrive late;
        # ``_gone_order`` is their exit order, for eviction by age and by count.
        self._gone: dict[int, list[_Proc]] = {}
        self._gone_order: deque[_Proc] = deque()
        self._kthreads: set[int] = set()
        self._untracked: set[int] = set()
        #: tick -> processes to read then
        self._wheel: dict[int, list[_Proc]] = {}
        self._usage: list[tuple[_Proc, int]] = []
        self._prev_ts: float | None = None
        # Attribution reads from its own thread while the scheduler's samples write.
        self._lock = threading.Lock()

    # -- sampling -----------------------------------------------------------------------
    @property
    def tracked(self) -> int:
        return len(self._live) + len(self._gone_order)

    def _read(self, pid: int) -> bytes | None:
        try:
            fd = os.open(f"{self.proc}/{pid}/stat", os.O_RDONLY)
        except OSError:
            return None
        try:
            return os.read(fd, 1024)
        except OSError:
            return None
        finally:
            os.close(fd)

    def sample(self, now: float) -> list[Sample]:
        with self._lock:
            return self._sample(now)

    def _sample(self, now: float) -> list[Sample]:
        tick = self._tick = self._tick + 1
        try:
            names = os.listdir(self.proc)
        except OSError:
            names = []
        live = self._live
        kthreads = self._kthreads
        untracked = self._untracked
        prev_ts, self._now = self._now, now
        # A process born after this start time (clock ticks since boot) started within the
        # last interval: its CPU time was 0 then, so its whole usage belongs to the interval.
        born_after = None if prev_ts is None else (prev_ts - self._boot) * CLK_TCK
        usage: list[tuple[_Proc, int]] = []
        pids = {int(n) for n in names if n.isdigit()}
        for pid in [pid for pid in live if pid not in pids]:
            self._retire(live[pid])
        # A pid of an exited kernel thread may come back as a user process.
        kthreads &= pids
        untracked &= pids
        # Processes due this tick (a timing wheel: only they are visited), then new pids.
        due: list[_Proc | int] = [p for p in self._wheel.pop(tick, ()) if live.get(p.pid) is p]
        due.extend(pids - live.keys() - kthreads - untracked)
        wheel = self._wheel
        for item in due:
            if isinstance(item, int):
                pid, p = item, None
            else:
                pid, p = item.pid, item
            data = self._read(pid)
            if data is None:
                if p is not None:
                    self._retire(p)
                continue
            # The command name may hold spaces and parentheses: fields start after the last
            # ')'; index 0 is field 3 (state) of proc(5).
            close = data.rfind(b")")
            f = data[close + 2 :].split(b" ", 20)
            try:
                flags, utime, stime, start = int(f[6]), int(f[11]), int(f[12]), int(f[19])
            except (IndexError, ValueError):
                continue
            if flags & _PF_KTHREAD:
                kthreads.add(pid)
                continue
            value = utime + stime
            if p is not None and p.start != start:
                self._retire(p)
                p = None
            if p is None:
                if self.tracked >= self.max_processes and not self._evict_one():
                    untracked.add(pid)
                    self.untracked_total += 1
                    continue
                comm = data[data.find(b"(") + 1 : close]
                p = live[pid] = _Proc(pid, start, comm, now, value)
                if born_after is not None and start >= born_after:
                    p.born = True
                    if value:
                        usage.append((p, value))
                wheel.setdefault(tick + 1, []).append(p)
                continue
            last = p.vals[-1]
            if value != last:
                if value > last:
                    usage.append((p, value - last))
                # The figure held until the last read: that is a vertex too, unless it is
                # the last one already (a process busy on consecutive ticks).
                if p.seen > p.times[-1]:
                    p.times.append(p.seen)
                    p.vals.append(last)
                p.times.append(now)
                p.vals.append(value)
                p.gap = 1
                comm = data[data.find(b"(") + 1 : close]
                if comm != p.comm:  # an exec changed the name
                    p.comm, p.name = comm, comm.decode("utf-8", "replace")
            elif p.gap < _MAX_GAP:
                # Most processes on a node sleep and a read costs ~7 us of kernel time: one
                # whose figure did not move is read every 2, 4, 8, then 16 ticks. Exits are
                # seen at once all the same, in the listing.
                p.gap *= 2
            p.seen = now
            wheel.setdefault(tick + p.gap, []).append(p)
        self._usage = usage
        self._prev_ts = prev_ts
        if tick % _TRIM_EVERY == 0:
            self._trim(now - self.window)
        return [
            Sample(
                "node_processes",
                now,
                {},
                {"processes": self.tracked, "untracked_total": self.untracked_total},
            )
        ]

    def _retire(self, p: _Proc) -> None:
        """Moves a process that exited (or whose pid was reused) to the exited ones."""
        if self._live.get(p.pid) is p:
            del self._live[p.pid]
        self._gone.setdefault(p.pid, []).append(p)
        self._gone_order.append(p)

    def _evict_one(self) -> bool:
        """Forgets the process that exited first, to make room; False if none has."""
        if not self._gone_order:
            return False
        self._forget(self._gone_order.popleft())
        return True

    def _forget(self, p: _Proc) -> None:
        lst = self._gone.get(p.pid)
        if lst is not None:
            lst.remove(p)
            if not lst:
                del self._gone[p.pid]

    def _trim(self, cutoff: float) -> None:
        """Drops history older than ``cutoff`` (Unix s): exited processes last read before
        it, and each process's vertices before the last one at or before it (the base of
        the segment that crosses it)."""
        if any(p.seen < cutoff for p in self._gone_order):
            keep: deque[_Proc] = deque()
            for p in self._gone_order:
                if p.seen < cutoff:
                    self._forget(p)
                else:
                    keep.append(p)
            self._gone_order = keep
        for p in (*self._live.values(), *self._gone_order):
            times = p.times
            if len(times) < 2 or times[1] > cutoff:
                continue
            i = bisect.bisect_right(times, cutoff) - 1
            del times[:i], p.vals[:i]
            p.born = False

    # -- queries ------------------------------------------------------------------------
    def _start_ts(self, p: _Proc) -> float:
        return self._boot + p.start / CLK_TCK

    def _find(self, pid: int, at: float | None) -> _Proc | None:
        """The process that had ``pid`` at time ``at`` (None: the latest one): the one that
        started last before ``at``, since a reused pid's new process started after the old
        one exited."""
        cands = list(self._gone.get(pid, ()))
        if pid in self._live:
            cands.append(self._live[pid])
        if not cands:
            return None
        if at is None:
            return max(cands, key=lambda p: p.start)
        before = [p for p in cands if self._start_ts(p) <= at + 1.0 / CLK_TCK]
        return max(before, key=lambda p: p.start) if before else None

    def _points(self, p: _Proc) -> tuple[list[float], list[float]]:
        """(times, cumulative CPU seconds): the vertices, and the last read."""
        ts = p.times.tolist()
        vs = [v / CLK_TCK for v in p.vals]
        if p.seen > ts[-1]:
            ts.append(p.seen)
            vs.append(vs[-1])
        if p.born:
            ts.insert(0, self._start_ts(p))
            vs.insert(0, 0.0)
        return ts, vs

    def series(self, pid: int, at: float | None = None) -> tuple[list[float], list[float]] | None:
        """The process ``pid`` had at time ``at`` (None: the latest): the times (Unix s) and
        its cumulative CPU seconds, user + system; linear between the points. A process
        born just before it was first seen starts with (its start time, 0). None if no
        history of it is kept."""
        with self._lock:
            p = self._find(pid, at)
            return None if p is None else self._points(p)

    def cpu_seconds(self, pid: int, t0: float, t1: float) -> float | None:
        """CPU seconds (user + system) process ``pid`` used over ``[t0, t1]``, interpolated
        between samples; None when the history does not reach back to ``t0`` (or holds no
        such process). Past the last sample (the process exited) the figure stays at its
        last value."""
        with self._lock:
            p = self._find(pid, t1)
            if p is None:
                return None
            ts, vs = self._points(p)
        # Before a process's start its CPU time was 0: only a history that begins later
        # than that (the process was older than its first sample) cannot answer.
        if t0 < ts[0] and not p.born:
            return None
        return _interp(t1, ts, vs) - _interp(t0, ts, vs)

    def usage(self) -> tuple[float, float, list[Usage]] | None:
        """The latest interval ``(t0, t1)`` and the processes that used CPU in it (the time
        of processes that exited within it since their last sample is not known). None
        before the second sample."""
        with self._lock:
            if self._prev_ts is None or self._now is None:
                return None
            t1 = self._now
            return (
                self._prev_ts,
                t1,
                [Usage(p.pid, p.start, p.name, d / CLK_TCK) for p, d in self._usage],
            )

    def alive(self, pid: int, start: int) -> bool:
        """Whether the process (pid and start time) is still kept, live or exited."""
        with self._lock:
            p = self._live.get(pid)
            if p is not None and p.start == start:
                return True
            return any(q.start == start for q in self._gone.get(pid, ()))

    def close(self) -> None:
        with self._lock:
            self._live.clear()
            self._gone.clear()
            self._gone_order.clear()


def _interp(t: float, ts: list[float], vs: list[float]) -> float:
    """Linear interpolation clamped at both ends (``np.interp`` without numpy)."""
    i = bisect.bisect_right(ts, t)
    if i == 0:
        return vs[0]
    if i == len(ts):
        return vs[-1]
    t0, t1 = ts[i - 1], ts[i]
    if t1 <= t0:
        return vs[i]
    return vs[i - 1] + (vs[i] - vs[i - 1]) * (t - t0) / (t1 - t0)


def create(max_processes: int = 4096, window: float = 300.0) -> NodeProcessCollector:
    return NodeProcessCollector(max_processes=max_processes, window=window)
