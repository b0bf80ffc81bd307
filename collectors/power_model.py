"""CPU package power estimated from utilisation, for nodes where RAPL cannot be read.

The model is linear in utilisation, the shape SPECpower data and Kepler's fallback use:

    P(u) = P_idle + (P_max - P_idle) * u,   P_idle = idle_fraction * P_max

with ``u`` the node's busy CPU share (0..1) over the interval and ``P_max`` the package TDP.
Energy is the integral of P over each interval. Every series carries ``estimated=true``:
these are modelled figures, never measurements.
"""

from __future__ import annotations

import psutil

from wattspan.collectors.base import Sample
from wattspan.collectors.cpu import busy_ratio, total_times

# Without a configured TDP we assume a per-thread share of a typical server package
# (e.g. 10 W per hardware thread: 160 W for a 16-thread part). Crude but bounded, and
# stated in every series' labels and in the README.
DEFAULT_WATTS_PER_THREAD = 10.0
DEFAULT_IDLE_FRACTION = 0.3
_TAGS = {"domain": "cpu", "estimated": "true"}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wattspan.collectors.head import Head


def default_tdp_watts() -> float:
    return DEFAULT_WATTS_PER_THREAD * (psutil.cpu_count(logical=True) or 1)


class PowerModelCollector:
    """Emits ``power_model`` samples tagged ``domain=cpu``, ``estimated=true``.

    Fields: ``power_watts`` (mean over the last interval), ``energy_joules_total``
    (cumulative since the collector started), ``utilization_ratio`` used for the estimate,
    ``tdp_watts`` and ``idle_power_watts`` (the model's power at zero utilisation, which
    attribution uses as idle power).
    """

    name = "power_model"

    def __init__(
        self, tdp_watts: float | None = None, idle_fraction: float = DEFAULT_IDLE_FRACTION
    ) -> None:
        self.tdp_watts = float(tdp_watts) if tdp_watts else default_tdp_watts()
        self.idle_fraction = idle_fraction
        self._energy = 0.0
        self._prev: tuple[float, dict[str, float]] | None = None

    def power(self, utilization: float) -> float:
        """Watts at a busy share ``utilization`` (0..1)."""
        idle = self.idle_fraction * self.tdp_watts
        return idle + (self.tdp_watts - idle) * min(max(utilization, 0.0), 1.0)

    def _fields(self) -> dict[str, float | int | str | bool]:
        return {"tdp_watts": self.tdp_watts, "idle_power_watts": self.power(0.0)}

    def seed(self, head: Head) -> list[Sample]:
        """Integrate from ``head``'s CPU reading on (:mod:`.head` says why): the first
        sample's energy then covers the command's spawn onwards."""
        if head.cpu_times is None or self._prev is not None:
            return []
        self._prev = (head.ts, dict(head.cpu_times))
        fields = self._fields()
        fields["energy_joules_total"] = self._energy
        return [Sample("power_model", head.ts, dict(_TAGS), fields)]

    def sample_head(self, head: Head) -> list[Sample]:
        """Integrate up to ``head``'s CPU reading, taken after this collector's last read
        (at the command's exit, agent/runner.py)."""
        if head.cpu_times is None:
            return []
        return self._advance(head.ts, dict(head.cpu_times))

    def sample(self, now: float) -> list[Sample]:
        return self._advance(now, total_times(now))

    def _advance(self, now: float, times: dict[str, float]) -> list[Sample]:
        fields = self._fields()
        if self._prev is not None:
            prev_ts, prev_times = self._prev
            dt = now - prev_ts
            if dt > 0:
                u = busy_ratio(prev_times, times)
                watts = self.power(u)
                self._energy += watts * dt
                fields["power_watts"] = watts
                fields["utilization_ratio"] = u
        self._prev = (now, times)
        fields["energy_joules_total"] = self._energy
        return [Sample("power_model", now, dict(_TAGS), fields)]

    def energy_joules(self) -> dict[str, float]:
        return {"cpu": self._energy}

    def close(self) -> None:
        pass


def create(
    tdp_watts: float | None = None, idle_fraction: float = DEFAULT_IDLE_FRACTION
) -> PowerModelCollector:
    return PowerModelCollector(tdp_watts, idle_fraction)
