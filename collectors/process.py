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


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from every thread's ``children`` list (a child belongs to
    the thread that forked it); empty when ``pid`` vanished meanwhile, a normal race."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _has_children_files(pid: int) -> bool | None:
    """Whether the kernel has per-thread ``children`` files (``CONFIG_PROC_CHILDREN``);
    None when ``pid`` is gone, so the answer is unknown."""
    if os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return True
    return False if os.path.exists(f"/proc/{pid}") else None


def _descendants(root: int) -> list[int] | None:
    """PIDs below ``root``, from the kernel's per-thread ``children`` lists.

    Costs in proportion to the watched tree, where psutil's ``children()`` reads the stat
    file of every process on the node. None when the kernel lacks these files
    (``CONFIG_PROC_CHILDREN`` off).
    """
    has = _has_children_files(root)
    if not has:
        return None if has is False else []
    out: list[int] = []
    stack = [root]
    while stack:
        kids = _children(stack.pop())
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
    # A child subreaper that the tree's orphans are reparented to, and that process's
    # children which are not the tree's (it had them before the tree existed).
    reaper: int | None = None
    not_ours: frozenset[int] = frozenset()
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

    def adopt_orphans(self, root: int, reaper: int, exclude: Iterable[int] = ()) -> None:
        """Count ``reaper``'s children (other than ``root`` and ``exclude``) and their
        descendants in ``root``'s tree, also once ``root`` has exited.

        For a ``reaper`` that made itself a child subreaper before starting ``root``: the
        tree's orphans are reparented to it, out of reach of a walk down from ``root``,
        and a daemon that double-forks is such an orphan from its first instant.
        """
        tree = self._trees.get(root)
        if tree is not None:
            tree.reaper, tree.not_ours = reaper, frozenset(exclude)

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

    def _below(self, p: psutil.Process) -> list[int] | None:
        """PIDs below ``p``; None when psutil, asked in place of /proc, found it gone."""
        pids = _descendants(p.pid)
        if pids is None:
            # No /proc/PID/task/TID/children (kernel without CONFIG_PROC_CHILDREN): psutil
            # reads every process on the node to build its parent map.
            try:
                pids = [k.pid for k in p.children(recursive=True)]
            except _GONE:
                return None
            except psutil.AccessDenied:
                pids = []
        return pids

    def _orphans(self, tree: _Tree) -> list[int]:
        """The tree's processes reparented to its subreaper, and their descendants."""
        if tree.reaper is None:
            return []
        skip = tree.not_ours | {tree.root}
        if _has_children_files(tree.reaper):
            kids = _children(tree.reaper)
        else:
            try:
                kids = [k.pid for k in self._process(tree.reaper).children()]
            except (*_GONE, psutil.AccessDenied):
                return []
        out: list[int] = []
        for kid in kids:
            if kid in skip:
                continue
            try:
                below = self._below(self._process(kid))
            except _GONE:
                continue
            out.append(kid)
            out.extend(below or [])
        return out

    def _members(self, tree: _Tree) -> list[psutil.Process]:
        members: list[psutil.Process] = []
        pids: list[int] = []
        try:
            p = self._process(tree.root)
        except _GONE:
            pass
        else:
            below = self._below(p)
            if below is not None:
                members.append(p)
                pids = below
        if tree.reaper is not None:
            # A process reparented between the two walks would otherwise count twice.
            pids = list(dict.fromkeys(pids + self._orphans(tree)))
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
                members = self._members(tree)
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
