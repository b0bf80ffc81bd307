"""Process trees: a root PID and all its descendants, which appear and vanish while sampled."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from wattspan.collectors.base import Sample

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)

log = logging.getLogger("wattspan.collectors.process")


_THREADS_RE = re.compile(rb"Threads:\t(\d+)")
_HWM_RE = re.compile(rb"(?m)^VmHWM:\s+(\d+)")


def _status(pid: int) -> tuple[int, int | None]:
    """Thread count and ``VmHWM`` (bytes; None for kernel threads) from /proc/PID/status.

    ``VmHWM`` is the kernel's own resident high-water mark: it catches peaks between our
    samples, which a polled maximum would miss. psutil's ``num_threads`` reads this same
    file, so one read serves both. Raises ``OSError`` (gone, denied, no /proc) or
    ``ValueError``/``IndexError`` on unexpected content.
    """
    with open(f"/proc/{pid}/status", "rb") as f:
        data = f.read()
    threads = int(_THREADS_RE.findall(data)[0])
    m = _HWM_RE.search(data)
    return threads, int(m.group(1)) * 1024 if m else None


def _descendants(root: int) -> list[int] | None:
    """PIDs below ``root``, from the kernel's per-thread ``children`` lists.

    Costs in proportion to the watched tree, where psutil's ``children()`` reads the stat
    file of every process on the node. None when the kernel lacks these files
    (``CONFIG_PROC_CHILDREN`` off).
    """
    if not os.path.exists(f"/proc/{root}/task/{root}/children"):
        return None if os.path.exists(f"/proc/{root}") else []
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # vanished meanwhile: a normal race
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


@dataclass(slots=True)
class _Last:
    user: float = 0.0
    system: float = 0.0
    read: int = 0
    write: int = 0


@dataclass(slots=True)
class _Tree:
    root: int
    name: str = ""
    peak_rss: int = 0
    dynamic: bool = False
    # CPU seconds and I/O of descendants that already exited: keeps the tree's counters
    # monotonic when a child vanishes between two samples.
    dead: _Last | None = None

    def __post_init__(self) -> None:
        if self.dead is None:
            self.dead = _Last()


class ProcessCollector:
    """Samples every process under each root PID.

    Per tree (source ``process_tree``, tag ``root``): ``cpu_user_seconds_total``,
    ``cpu_system_seconds_total``, ``rss_bytes`` (sum over live processes),
    ``peak_rss_bytes`` (largest sum seen), ``read_bytes_total``, ``write_bytes_total``,
    ``processes``, ``threads``. Per process (source ``process``, tags ``pid``, ``name``,
    ``root``), when ``per_process`` is on: the same CPU, I/O and thread fields, ``rss_bytes``
    and ``peak_rss_bytes`` (the kernel's VmHWM).

    The tree's CPU counters include children that exited since the last sample only up to
    their last sampled value; ``wattspan run`` adds the exact figure from ``wait4`` at the end.
    """

    name = "process"

    def __init__(self, roots: Iterable[int] = (), per_process: bool = True) -> None:
        self.per_process = per_process
        #: roots dropped because reading them failed unexpectedly
        self.errors = 0
        self._trees: dict[int, _Tree] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[int, tuple[int, _Last]] = {}
        for pid in roots:
            self.add_root(pid)

    def add_root(self, pid: int, dynamic: bool = False) -> None:
        """Watch ``pid`` and its descendants. A ``dynamic`` root (a process the agent learnt
        of from its spans) is dropped once it has exited. Raises ``ValueError`` for a pid
        that cannot name a process (not an int, or below 1)."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
            raise ValueError(f"not a process id: {pid!r}")
        self._trees.setdefault(pid, _Tree(root=pid, dynamic=dynamic))

    def watches(self, pid: int) -> bool:
        """True if ``pid`` is a root or was seen in a watched tree at the last sample."""
        return pid in self._trees or pid in self._last

    @property
    def dynamic_roots(self) -> int:
        return sum(1 for t in self._trees.values() if t.dynamic)

    def _process(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            p = psutil.Process(pid)
            self._procs[pid] = p
        return p

    def _members(self, root: int) -> list[psutil.Process]:
        try:
            p = self._process(root)
        except _GONE:
            return []
        pids = _descendants(root)
        if pids is None:
            # No /proc/PID/task/TID/children (kernel without CONFIG_PROC_CHILDREN): psutil
            # reads every process on the node to build its parent map.
            try:
                pids = [k.pid for k in p.children(recursive=True)]
            except _GONE:
                return []
            except psutil.AccessDenied:
                pids = []
        members = [p]
        for pid in pids:
            # Reuse cached Process objects so psutil's pid-reuse check (create_time) stays
            # meaningful across samples.
            cached = self._procs.get(pid)
            if cached is None:
                try:
                    cached = self._procs[pid] = psutil.Process(pid)
                except _GONE:
                    continue
            members.append(cached)
        return members

    def sample(self, now: float) -> list[Sample]:
        out: list[Sample] = []
        seen: set[int] = set()
        totals: list[tuple[_Tree, _Last, int, int, int]] = []
        for tree in list(self._trees.values()):
            sums = _Last()
            rss = threads = count = 0
            try:
                members = self._members(tree.root)
            except Exception as exc:
                # One root that cannot be read must not cost every other tree its samples
                # on every tick from now on: drop it, once, and say why.
                self.errors += 1
                del self._trees[tree.root]
                log.warning(
                    "stopped watching process %d: %s: %s", tree.root, type(exc).__name__, exc
                )
                continue
            for p in members:
                try:
                    with p.oneshot():
                        # A zombie holds no resources; its CPU time moves to the tree's
                        # dead totals like any process that vanished.
                        if p.status() == psutil.STATUS_ZOMBIE:
                            continue
                        ct = p.cpu_times()
                        mem = p.memory_info()
                        try:
                            nthreads, hwm = _status(p.pid)
                        except (OSError, ValueError, IndexError):
                            # No Linux /proc, or the process is going: psutil reads it its
                            # own way and raises what applies (gone, denied).
                            nthreads, hwm = p.num_threads(), None
                        pname = p.name()
                        try:
                            io = p.io_counters()
                            rd, wr = io.read_bytes, io.write_bytes
                        except (psutil.AccessDenied, AttributeError):
                            rd = wr = 0
                except (*_GONE, psutil.AccessDenied):
                    continue
                seen.add(p.pid)
                self._last[p.pid] = (tree.root, _Last(ct.user, ct.system, rd, wr))
                sums.user += ct.user
                sums.system += ct.system
                sums.read += rd
                sums.write += wr
                rss += mem.rss
                threads += nthreads
                count += 1
                if p.pid == tree.root:
                    tree.name = pname
                if self.per_process:
                    fields: dict[str, float | int | str | bool] = {
                        "cpu_user_seconds_total": ct.user,
                        "cpu_system_seconds_total": ct.system,
                        "rss_bytes": mem.rss,
                        "read_bytes_total": rd,
                        "write_bytes_total": wr,
                        "threads": nthreads,
                    }
                    if hwm is not None:
                        fields["peak_rss_bytes"] = max(hwm, mem.rss)
                    tags = {"pid": str(p.pid), "name": pname, "root": str(tree.root)}
                    out.append(Sample("process", now, tags, fields))
            tree.peak_rss = max(tree.peak_rss, rss)
            totals.append((tree, sums, rss, threads, count))
        # Fold processes that vanished into their tree's totals before reporting the trees,
        # so a tree's CPU counter never goes backwards when a child exits.
        self._forget(seen)
        for tree, sums, rss, threads, count in totals:
            dead = tree.dead
            assert dead is not None
            out.append(
                Sample(
                    "process_tree",
                    now,
                    {"root": str(tree.root), "name": tree.name},
                    {
                        "cpu_user_seconds_total": sums.user + dead.user,
                        "cpu_system_seconds_total": sums.system + dead.system,
                        "read_bytes_total": sums.read + dead.read,
                        "write_bytes_total": sums.write + dead.write,
                        "rss_bytes": rss,
                        "peak_rss_bytes": tree.peak_rss,
                        "processes": count,
                        "threads": threads,
                    },
                )
            )
            if tree.dynamic and count == 0:
                del self._trees[tree.root]
        return out

    def _forget(self, seen: set[int]) -> None:
        """Move processes that vanished into their tree's ``dead`` totals."""
        for pid in [pid for pid in self._last if pid not in seen]:
            root, last = self._last.pop(pid)
            self._procs.pop(pid, None)
            tree = self._trees.get(root)
            if tree is not None and tree.dead is not None:
                tree.dead.user += last.user
                tree.dead.system += last.system
                tree.dead.read += last.read
                tree.dead.write += last.write
        for pid in [pid for pid in self._procs if pid not in seen and pid not in self._trees]:
            self._procs.pop(pid, None)

    def close(self) -> None:
        self._procs.clear()


def create(roots: Iterable[int] = (), per_process: bool = True) -> ProcessCollector:
    return ProcessCollector(roots, per_process=per_process)
