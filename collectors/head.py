"""The node's energy and CPU counters read at the instant ``wattspan run`` spawns its command.

The command starts before the collectors exist (``agent/runner.py`` says why), and their
first sample comes 40-70 ms later. Counting energy from that sample would leave out the
command's first tens of milliseconds: 18 % of the node energy of a 0.5 s command was missing
that way. These counters are cumulative, so one raw read just before the spawn is all the
window's start needs: the collectors take it as their previous reading (their ``seed``) and
their first sample's delta then covers the spawn onwards, as exactly as any later interval.

Read here: ``/proc/stat``'s node-wide CPU seconds by mode (the cpu collector's busy seconds
and the power model's utilisation), every RAPL zone's ``energy_uj``, keyed by the zone's
real path as :mod:`.rapl` keys its zones; and, once the spawn has returned, this process's
own peak RSS, which tells whether the command's ``ru_maxrss`` is the command's
(:class:`Head`). Not read: NVML
(opening it takes tens of ms before the spawn), whose energy starts at the first sample.

Only ``os`` is imported: this runs before the spawn, where every millisecond is added to the
command's wall time (issue 15, ``tests/test_run_fast.py``).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

#: ``/proc/stat``'s first columns in order (proc(5)), by the names psutil gives them.
STAT_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_ZONE_PREFIXES = ("intel-rapl:", "intel-rapl-mmio:")


class Head:
    """Counters read at ``ts`` (Unix seconds): ``cpu_times`` (mode -> seconds, the node's
    every core; None where ``/proc/stat`` cannot be read) and ``rapl_uj`` (zone real path ->
    raw microjoules)."""

    __slots__ = ("cpu_times", "hwm_bytes", "rapl_uj", "ts")

    def __init__(
        self,
        ts: float,
        cpu_times: dict[str, float] | None,
        rapl_uj: dict[str, int],
        hwm_bytes: int | None = None,
    ) -> None:
        self.ts = ts
        self.cpu_times = cpu_times
        self.rapl_uj = rapl_uj
        self.hwm_bytes = hwm_bytes

    def spawned(self) -> None:
        """Note this process's own peak RSS (VmHWM) once posix_spawn has returned.

        The spawned child runs on its parent's memory until it execs (vfork), and the kernel
        then records that memory's high-water mark as the child's ``ru_maxrss``; posix_spawn
        returns after the exec, and building the child's argv and environment may have
        raised the mark after :func:`read`, so it is read then: a ``ru_maxrss`` above it is
        the command's own."""
        self.hwm_bytes = hwm_bytes()


def stat_times(fields: list[bytes], ticks: int) -> dict[str, float]:
    """Seconds by mode from a ``/proc/stat`` ``cpu`` line split into fields (the name first),
    as psutil computes them; ``ValueError`` for a field that is not a number."""
    # Old kernels have fewer columns (steal came in 2.6.11): 0, as psutil gives them.
    values = [int(v) / ticks for v in fields[1 : 1 + len(STAT_MODES)]]
    values += [0.0] * (len(STAT_MODES) - len(values))
    return dict(zip(STAT_MODES, values, strict=True))


def cpu_times(stat: str = "/proc/stat") -> dict[str, float] | None:
    """Node-wide CPU seconds by mode, as ``psutil.cpu_times()`` computes them."""
    try:
        with open(stat, "rb") as f:
            first = f.readline().split()
        return stat_times(first, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None


def _nested(path: str, name: str) -> Iterator[tuple[str, str]]:
    yield path, name
    try:
        children = sorted(os.listdir(path))
    except OSError:
        return
    for child in children:
        if child.startswith(name + ":"):
            yield from _nested(os.path.join(path, child), child)


def zone_dirs(root: str) -> Iterator[tuple[str, str]]:
    """(path, directory name) of every powercap zone under ``root`` and of its nested
    subzones, depth first in name order. sysfs shows a subzone both at the top level and
    inside its parent: both paths come, and callers deduplicate by real path. The RAPL
    collector's discovery walks the tree through this too, so both key a zone alike."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return
    for entry in entries:
        if entry.startswith(_ZONE_PREFIXES):
            yield from _nested(os.path.join(root, entry), entry)


def rapl_uj(root: str | None) -> dict[str, int]:
    """Raw ``energy_uj`` of every readable zone under the powercap ``root``, by real path."""
    out: dict[str, int] = {}
    for path, _ in zone_dirs(root) if root else ():
        key = os.path.realpath(path)
        if key in out:
            continue
        raw = _energy_uj(key)
        if raw is not None:
            out[key] = raw
    return out


def _energy_uj(zone: str) -> int | None:
    try:
        # One read, as the collector's: a counter file is not read to its end.
        fd = os.open(os.path.join(zone, "energy_uj"), os.O_RDONLY)
        try:
            return int(os.read(fd, 64))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


def hwm_bytes(status: str = "/proc/self/status") -> int | None:
    """``VmHWM`` of ``status`` (a ``/proc/<pid>/status`` file) in bytes."""
    try:
        with open(status, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def read(rapl_root: str | None, now: float) -> Head:
    """The counters at ``now``; ``rapl_root`` None or empty: RAPL is not read."""
    return Head(now, cpu_times(), rapl_uj(rapl_root))


def reread(head: Head, now: float) -> Head:
    """The same counters as ``head`` again, at ``now``: its zones without walking the tree
    (a walk's listdir and realpath calls are dozens of system calls, each a hand-over of
    the interpreter lock to a busy main thread: 6-17 ms at the command's exit)."""
    zones = {k: raw for k in head.rapl_uj if (raw := _energy_uj(k)) is not None}
    return Head(now, cpu_times(), zones)
