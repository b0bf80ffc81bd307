"""In-process measurement windows: ``with wattspan.measure() as m: ...``.

What Zeus users do with ``begin_window``/``end_window``: an energy-aware loop asks, there
and then, how much a piece of work cost, without an agent or a span round trip::

    with wattspan.measure() as m:
        train_one_epoch()
    print(m.energy_joules, m.cpu_seconds, m.gpu_energy_joules, m.wall_seconds)

A window reads the same collectors as the agent, synchronously, at its start and its end:
RAPL (``/sys/class/powercap``, or ``$WATTSPAN_COLLECTORS__RAPL__ROOT``), NVML for GPUs, and
where no RAPL is readable the power model (``m.energy_estimated`` is then True: an estimate
is never presented as a measurement). ``cpu_seconds`` is this process's CPU time (every
thread, ``time.process_time``). No thread is started and nothing sleeps: a window costs two
reads of the counters (``bench/bench_track.py`` measures it).

Windows nest and overlap freely: each keeps its own start reading, and a reading is a
snapshot of cumulative counters, so ``a.start(); b.start(); a.stop(); b.stop()`` is as
valid as nesting. RAPL counters wrap (about 65 kJ on AMD EPYC, minutes at full load); one
wrap between two reads is unwrapped, so a window longer than that with no other window
read in between undercounts: open shorter windows, or run the agent.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["Measurement", "Reading", "measure"]


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative counters at one instant."""

    wall: float  # perf_counter, s
    cpu: float  # process_time, s
    energy: dict[str, float]  # primary CPU-side domain -> J
    gpu: dict[str, float]  # GPU index -> J
    estimated: bool


class _Meter:
    """The process's collectors, opened on first use and read under a lock (their unwrap
    state is shared by every window)."""

    def __init__(self) -> None:
        from wattspan.agent.domains import primary_domains
        from wattspan.collectors.base import CollectorUnavailable

        self._lock = threading.Lock()
        self._primary = primary_domains
        self.rapl: Any = None
        self.model: Any = None
        self.nvml: Any = None
        root = os.environ.get("WATTSPAN_COLLECTORS__RAPL__ROOT", "/sys/class/powercap")
        try:
            from wattspan.collectors.rapl import RaplCollector

            self.rapl = RaplCollector(root.strip('"'))
        except CollectorUnavailable:
            from wattspan.collectors.power_model import PowerModelCollector

            self.model = PowerModelCollector()
        if os.environ.get("WATTSPAN_COLLECTORS__NVML__ENABLED", "true") != "false":
            try:
                from wattspan.collectors.nvml import NvmlCollector

                self.nvml = NvmlCollector()
            except (CollectorUnavailable, ImportError, OSError):
                self.nvml = None
        self.read()  # baselines: the first sample of a counter only sets its start

    def read(self) -> Reading:
        with self._lock:
            now = time.time()
            if self.rapl is not None:
                self.rapl.sample(now)
                energy = self.rapl.energy_joules()
            else:
                self.model.sample(now)
                energy = self.model.energy_joules()
            gpu: dict[str, float] = {}
            if self.nvml is not None:
                self.nvml.sample(now)
                gpu = self.nvml.energy_joules()
            primary = self._primary(energy)
            return Reading(
                time.perf_counter(),
                time.process_time(),
                {d: energy[d] for d in primary},
                gpu,
                self.rapl is None,
            )


_meter: _Meter | None = None
_meter_lock = threading.Lock()


def meter() -> _Meter:
    global _meter
    if _meter is None:
        with _meter_lock:
            if _meter is None:
                _meter = _Meter()
    return _meter


@dataclass
class Measurement:
    """One window; see the module doc. Figures are those of the window so far while it is
    open, and final once it is stopped."""

    name: str = ""
    _start: Reading | None = field(default=None, repr=False)
    _end: Reading | None = field(default=None, repr=False)

    def start(self) -> Measurement:
        self._start, self._end = meter().read(), None
        return self

    def stop(self) -> Measurement:
        if self._start is None:
            raise RuntimeError("measurement window stopped before it was started")
        self._end = meter().read()
        return self

    def __enter__(self) -> Measurement:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _pair(self) -> tuple[Reading, Reading]:
        if self._start is None:
            raise RuntimeError("measurement window not started")
        return self._start, self._end or meter().read()

    @property
    def wall_seconds(self) -> float:
        a, b = self._pair()
        return b.wall - a.wall

    @property
    def cpu_seconds(self) -> float:
        """This process's CPU time in the window, every thread (not its children)."""
        a, b = self._pair()
        return b.cpu - a.cpu

    @property
    def energy_by_domain(self) -> dict[str, float]:
        a, b = self._pair()
        return {d: b.energy[d] - a.energy.get(d, 0.0) for d in b.energy}

    @property
    def energy_joules(self) -> float:
        """The node's CPU-side energy (RAPL packages, else psys, else the power model)."""
        return sum(self.energy_by_domain.values())

    @property
    def energy_estimated(self) -> bool:
        """True when the energy is the power model's estimate (no readable RAPL)."""
        return self._pair()[1].estimated

    @property
    def gpu_energy_by_gpu(self) -> dict[str, float]:
        a, b = self._pair()
        return {g: b.gpu[g] - a.gpu[g] for g in b.gpu if g in a.gpu}

    @property
    def gpu_energy_joules(self) -> float | None:
        """Every GPU's energy in the window; None on a node without NVIDIA GPUs."""
        per = self.gpu_energy_by_gpu
        return sum(per.values()) if per else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "energy_joules": self.energy_joules,
            "energy_by_domain": self.energy_by_domain,
            "energy_estimated": self.energy_estimated,
            "gpu_energy_joules": self.gpu_energy_joules,
        }


def measure(name: str = "") -> Measurement:
    """A measurement window: use it as a context manager, or call ``start()`` and
    ``stop()`` for windows that overlap."""
    return Measurement(name)
