"""Node CPU: utilisation by mode (total and per core), frequency, load, context switches."""

from __future__ import annotations

import os

import psutil

from wattspan.collectors.base import Sample, number

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wattspan.collectors.head import Head

# Modes psutil reports on Linux; others (guest) are already counted inside user/nice.
_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE_MODES = ("idle", "iowait")
# Cumulative fields of the ``cpu`` sample whose sum is busy CPU time (attribution's ``C``).
BUSY_FIELDS = tuple(f"{m}_seconds_total" for m in _MODES if m not in _IDLE_MODES)


def busy_seconds(s: Sample) -> float:
    """Busy CPU seconds (cumulative, every core) of a ``cpu`` sample: the sum of
    :data:`BUSY_FIELDS` it carries."""
    return sum(v for k in BUSY_FIELDS if (v := number(s, k)) is not None)


def _times_dict(t: object) -> dict[str, float]:
    return {m: float(getattr(t, m, 0.0)) for m in _MODES}


# The last node-wide reading and the tick (``now``) it was taken for. Every collector of one
# tick is called with the same ``now``, so the power model reuses the cpu collector's reading
# instead of having /proc/stat generated and parsed again (costly on many-core hosts).
_last_total: tuple[float, dict[str, float]] | None = None


def total_times(now: float) -> dict[str, float]:
    """Node-wide CPU seconds by mode, read once per tick ``now`` (do not mutate the dict)."""
    global _last_total
    last = _last_total
    if last is not None and last[0] == now:
        return last[1]
    times = _times_dict(psutil.cpu_times())
    _last_total = (now, times)
    return times


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
    """Samples ``/proc/stat`` through psutil.

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
        if head.cpu_times is None or "total" in self._prev:
            return []
        return [self._emit(head.ts, "total", dict(head.cpu_times))]

    def sample(self, now: float) -> list[Sample]:
        total = self._emit(now, "total", total_times(now))
        hz = self._frequency(now)
        if hz is not None:  # absent is better than a made-up number
            total.fields["frequency_hertz"] = hz
        load1, load5, load15 = os.getloadavg()
        total.fields.update({"load1": load1, "load5": load5, "load15": load15})
        stats = psutil.cpu_stats()
        total.fields["context_switches_total"] = stats.ctx_switches
        total.fields["interrupts_total"] = stats.interrupts
        out = [total]
        if self.percpu:
            for i, t in enumerate(psutil.cpu_times(percpu=True)):
                out.append(self._emit(now, str(i), _times_dict(t)))
        return out

    def close(self) -> None:
        self._prev.clear()


def create(percpu: bool = True) -> CpuCollector:
    return CpuCollector(percpu=percpu)
