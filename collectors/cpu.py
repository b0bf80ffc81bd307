"""Node CPU: utilisation by mode (total and per core), frequency, load, context switches."""

from __future__ import annotations

import os

import psutil

from wattspan.collectors.base import Sample, number
from wattspan.collectors.head import STAT_MODES, stat_times

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wattspan.collectors.head import Head

# Modes psutil reports on Linux; others (guest) are already counted inside user/nice.
_MODES = STAT_MODES
_IDLE_MODES = ("idle", "iowait")
# Cumulative fields of the ``cpu`` sample whose sum is busy CPU time (attribution's ``C``).
BUSY_FIELDS = tuple(f"{m}_seconds_total" for m in _MODES if m not in _IDLE_MODES)


def busy_seconds(s: Sample) -> float:
    """Busy CPU seconds (cumulative, every core) of a ``cpu`` sample: the sum of
    :data:`BUSY_FIELDS` it carries."""
    return sum(v for k in BUSY_FIELDS if (v := number(s, k)) is not None)


class Stat:
    """One read of ``/proc/stat``: node-wide seconds by mode (psutil's computation), context
    switches and interrupts since boot (None where the file has no such line), and per-core
    seconds, parsed when first asked for (the power model needs only the node's)."""

    __slots__ = ("_core_lines", "_cores", "_ticks", "ctxt", "intr", "total")

    def __init__(
        self,
        total: dict[str, float],
        core_lines: list[bytes],
        ctxt: int | None,
        intr: int | None,
        ticks: int = 100,
    ) -> None:
        self.total = total
        self._core_lines = core_lines
        self._cores: list[tuple[str, dict[str, float]]] | None = None
        self._ticks = ticks
        self.ctxt = ctxt
        self.intr = intr

    @property
    def cores(self) -> list[tuple[str, dict[str, float]]]:
        """``(number, seconds by mode)`` per core line (``cpu3`` -> ``"3"``): an offline core
        leaves a gap rather than renaming the ones after it. ``ValueError`` if one is
        garbled."""
        if self._cores is None:
            out = []
            for line in self._core_lines:
                fields = line.split()
                out.append((fields[0][3:].decode(), stat_times(fields, self._ticks)))
            self._cores = out
        return self._cores


def read_stat(path: str = "/proc/stat") -> Stat:
    """Everything a tick needs from ``/proc/stat`` in one read: psutil's ``cpu_times()``,
    ``cpu_times(percpu=True)`` and ``cpu_stats()`` read and parse the file once each.
    ``ValueError`` if the file has no node-wide line or a garbled one, ``OSError`` if it
    cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    ticks = os.sysconf("SC_CLK_TCK")
    total: dict[str, float] | None = None
    cores: list[bytes] = []
    ctxt = intr = None
    for line in data.splitlines():
        if line.startswith(b"cpu "):
            total = stat_times(line.split(), ticks)
        elif line.startswith(b"cpu"):
            cores.append(line)
        elif line.startswith(b"ctxt "):
            ctxt = int(line.split()[1])
        elif line.startswith(b"intr "):
            intr = int(line.split(None, 2)[1])  # the total; the per-source counts follow
    if total is None:
        raise ValueError(f"{path} has no node-wide cpu line")
    return Stat(total, cores, ctxt, intr, ticks)


# The last reading and the tick (``now``) it was taken for. Every collector of one tick is
# called with the same ``now``, so the power model reuses the cpu collector's reading
# instead of having /proc/stat generated and parsed again (costly on many-core hosts).
_last: tuple[float, Stat] | None = None


def stat_at(now: float) -> Stat:
    """``/proc/stat`` read once per tick ``now`` (do not mutate what it holds)."""
    global _last
    last = _last
    if last is not None and last[0] == now:
        return last[1]
    st = read_stat()
    _last = (now, st)
    return st


def total_times(now: float) -> dict[str, float]:
    """Node-wide CPU seconds by mode, read once per tick ``now`` (do not mutate the dict)."""
    return stat_at(now).total


def _busy_share(deltas: dict[str, float], total: float) -> float:
    return 1.0 - sum(deltas[m] for m in _IDLE_MODES) / total


def busy_ratio(prev: dict[str, float], cur: dict[str, float]) -> float:
    """Share of CPU time (0..1) that was not idle between two ``cpu_times`` readings."""
    deltas = {m: max(cur[m] - prev[m], 0.0) for m in _MODES}
    total = sum(deltas.values())
    if total <= 0:
        return 0.0
    return _busy_share(deltas, total)


class CpuCollector:
    """Samples ``/proc/stat``, read once per tick (:func:`read_stat`).

    Emits one ``cpu`` sample tagged ``cpu=total`` and, with ``percpu``, one per logical CPU.
    Fields: ``<mode>_seconds_total`` (cumulative CPU seconds), ``<mode>_ratio`` (share of the
    last interval, 0..1), ``utilization_ratio`` (1 - idle - iowait). The total sample also
    carries ``frequency_hertz``, ``load1``/``load5``/``load15`` and
    ``context_switches_total``/``interrupts_total``.
    """

    name = "cpu"

    # psutil reads /proc/cpuinfo for the frequency where cpufreq is absent (most VMs), which
    # is costly on many-core hosts; the figure changes slowly, so it is refreshed this often.
    FREQ_REFRESH_S = 60.0

    def __init__(self, percpu: bool = True) -> None:
        self.percpu = percpu
        self._prev: dict[str, dict[str, float]] = {}
        self._freq_hz: float | None = None
        self._freq_at = -float("inf")
        self._freq_known = True

    def _frequency(self, now: float) -> float | None:
        if self._freq_known and now - self._freq_at >= self.FREQ_REFRESH_S:
            self._freq_at = now
            freq = psutil.cpu_freq()
            self._freq_hz = freq.current * 1e6 if freq is not None and freq.current else None
            # Nothing the first time: the node has no frequency to report; stop asking.
            self._freq_known = self._freq_hz is not None
        return self._freq_hz

    def _emit(self, now: float, cpu: str, times: dict[str, float]) -> Sample:
        fields: dict[str, float | int | str | bool] = {
            f"{m}_seconds_total": v for m, v in times.items()
        }
        prev = self._prev.get(cpu)
        if prev is not None:
            deltas = {m: max(times[m] - prev[m], 0.0) for m in _MODES}
            total = sum(deltas.values())
            if total > 0:
                for m in _MODES:
                    fields[f"{m}_ratio"] = deltas[m] / total
                fields["utilization_ratio"] = _busy_share(deltas, total)
        self._prev[cpu] = times
        return Sample("cpu", now, {"cpu": cpu}, fields)

    def seed(self, head: Head) -> list[Sample]:
        """Start from ``head``'s node-wide reading (:mod:`.head` says why): the node's busy
        seconds then count from the command's spawn. No per-core sample is made for it."""
        return [] if "total" in self._prev else self.sample_head(head)

    def sample_head(self, head: Head) -> list[Sample]:
        """The node-wide sample of ``head``'s reading, taken after this collector's last
        read (at the command's exit, agent/runner.py)."""
        if head.cpu_times is None:
            return []
        return [self._emit(head.ts, "total", dict(head.cpu_times))]

    def sample(self, now: float) -> list[Sample]:
        st = stat_at(now)
        total = self._emit(now, "total", st.total)
        hz = self._frequency(now)
        if hz is not None:  # absent is better than a made-up number
            total.fields["frequency_hertz"] = hz
        load1, load5, load15 = os.getloadavg()
        total.fields.update({"load1": load1, "load5": load5, "load15": load15})
        if st.ctxt is not None:
            total.fields["context_switches_total"] = st.ctxt
        if st.intr is not None:
            total.fields["interrupts_total"] = st.intr
        out = [total]
        if self.percpu:
            for name, t in st.cores:
                out.append(self._emit(now, name, t))
        return out

    def close(self) -> None:
        self._prev.clear()


def create(percpu: bool = True) -> CpuCollector:
    return CpuCollector(percpu=percpu)
