"""Which process ids a client may name in ``process.pid``.

A pid a client sends becomes a process tree the agent samples every tick, so it is checked
before the agent watches it or attributes a process share by it. Refused, with the reason
returned to the client as a partial-success warning (the span itself is kept, without a pid):

- anything that is not an integer in ``2 .. pid_max``: ``0``, negative pids, ``-1``;
- pid 1: init's tree is the whole node (and a containerised client that reports its own
  pid 1 names a process the node's agent cannot see);
- kernel threads (kthreadd, pid 2, and its children; ``PF_KTHREAD`` in ``/proc/PID/stat``):
  they run no client code and their "tree" is every kernel worker.

A pid that no longer exists is accepted: a short program sends its spans as it exits, and
its samples, if any, are already in the ring. How many trees clients may have watched at
once is bounded separately (``otlp.max_watched_processes``).
"""

from __future__ import annotations

_PF_KTHREAD = 0x00200000


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4_194_304  # the kernel's ceiling (PID_MAX_LIMIT on 64-bit)


PID_MAX = _pid_max()


def stat_field(pid: int, field: int, proc: str = "/proc") -> int | None:
    """Field ``field`` (numbered from 1 as in proc(5): 4 ppid, 9 flags, 22 starttime) of
    ``/proc/PID/stat`` as an integer; None when the process is gone or the field is not a
    number."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(rest[field - 3])
    except (IndexError, ValueError):
        return None


def refusal(pid: object) -> str | None:
    """Why ``pid`` may not be watched, or None when it may."""
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 <= pid <= PID_MAX:
        return "process.pid is not a process id"
    if pid == 1:
        return "process.pid 1 (init) is the whole node, not watched"
    if pid == 2:
        return "process.pid is a kernel thread, not watched"
    # Gone already, or no /proc: nothing to watch, nothing to refuse.
    ppid, flags = stat_field(pid, 4), stat_field(pid, 9)
    if ppid is None or flags is None:
        return None
    if flags & _PF_KTHREAD or ppid == 2:
        return "process.pid is a kernel thread, not watched"
    return None
