"""CPU, DRAM and platform energy from the Linux powercap (RAPL) sysfs interface.

Each powercap zone (``/sys/class/powercap/intel-rapl:N[:M]``, ``intel-rapl-mmio:N``)
exposes a free-running energy counter ``energy_uj`` (microjoules) that wraps to 0 after
``max_energy_range_uj``. This collector reads the counters directly (no pyRAPL: it neither
unwraps nor knows AMD or multi-die naming), unwraps them on every read and reports
cumulative joules since the collector started.

Samples: source ``rapl``, one per zone per tick, tags ``zone`` (directory name, e.g.
``intel-rapl:0:1``), ``domain`` (unique readable name, e.g. ``package-0``,
``package-0/dram``, ``mmio:package-0``), ``estimated="false"``; fields ``energy_joules_total``
(float, joules, cumulative since the collector started) and ``power_watts`` (float,
watts, mean since the previous read of that zone; absent on the first read).

Domains overlap: ``core`` and ``uncore`` are parts of their package, ``psys`` covers the
whole SoC, ``mmio:package-0`` is the same package as ``package-0`` read another way.
Never sum all domains.

Wraparound: the collector cannot tell one wrap from two, so it must read each zone at
least once per ``max_energy_range_uj / P_max`` seconds (see :func:`max_interval_for_range`
and :meth:`RaplCollector.max_interval_s`): about 160 s for a 65.5 kJ AMD EPYC counter at
400 W, about 15 minutes for a 262 kJ Intel package counter at 280 W.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from wattspan.collectors.base import CollectorUnavailable, Sample
from wattspan.collectors.head import zone_dirs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wattspan.collectors.head import Head

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/class/powercap"

# Top-level zones and subzones of the msr ("intel-rapl") and MMIO control types. AMD
# processors use the same "intel-rapl" control type through the same kernel driver.
_ZONE_RE = re.compile(r"^(intel-rapl|intel-rapl-mmio):(\d+(?::\d+)*)$")
_MMIO = "intel-rapl-mmio"

# With every zone lost at run time, look again at most this often rather than each tick:
# a scan is a directory walk, far dearer than the reads a tick normally costs.
_EMPTY_RESCAN_S = 60.0


def _read_int(path: str) -> int:
    """Read a small sysfs file holding one decimal integer.

    ``os.open``/``os.read`` avoid building a buffered file object on every tick. Raises
    ``OSError`` (``PermissionError`` when the counter is root-only, ``FileNotFoundError``
    when the zone is gone) or ``ValueError`` for garbled content.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    return int(data)


def _read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip()


def unwrap_delta_uj(last_uj: int, new_uj: int, max_range_uj: int) -> int:
    """Energy in microjoules between two reads of one counter, assuming at most one wrap.

    The counter takes the values ``0..max_range_uj`` inclusive (the kernel reports
    ``max_energy_range_uj`` as the counter's all-ones value converted to microjoules, see
    ``get_max_energy_counter`` in ``drivers/powercap/intel_rapl_common.c``), so going from
    ``last`` up to the maximum, rolling over to 0 and on to ``new`` is
    ``(max_range - last) + 1 + new``. Without the ``+ 1`` every wrap would lose one step.
    Strictly, RAPL's hardware step is one energy unit (15.3 µJ on most parts, 61 µJ on
    some Intel packages), which sysfs does not expose; ``+ 1`` is the exact answer for the
    powercap ABI's microjoule counter and errs by under 0.1 mJ per wrap on RAPL, about
    1e-9 of the range.
    """
    if new_uj >= last_uj:
        return new_uj - last_uj
    return max_range_uj - last_uj + 1 + new_uj


def max_interval_for_range(max_energy_range_uj: int, assumed_max_watts: float) -> float:
    """Longest read interval in seconds that keeps a counter to at most one wrap per read.

    A counter with range ``max_energy_range_uj`` (microjoules) drawing at most
    ``assumed_max_watts`` (watts) must be read at least this often; read well inside it,
    since a slow tick or a suspended agent also counts.
    """
    if assumed_max_watts <= 0:
        raise ValueError("assumed_max_watts must be positive")
    return max_energy_range_uj / 1e6 / assumed_max_watts


@dataclass(slots=True)
class _Zone:
    """One readable zone and its unwrapping state. Energies in integer microjoules so that
    accumulation over days loses nothing to float rounding."""

    zone: str
    domain: str
    key: str  # resolved real path: the same zone is reachable by two sysfs paths
    energy_path: str
    max_range_uj: int
    last_raw_uj: int | None = None
    total_uj: int = 0
    prev_ts: float | None = None


@dataclass(slots=True)
class _Found:
    zone: str
    path: str
    key: str
    control: str
    ids: tuple[int, ...]
    name: str | None


def _zone_sort_key(f: _Found) -> tuple[int, tuple[int, ...]]:
    # msr zones before mmio zones so that msr keeps the plain domain names.
    return (1 if f.control == _MMIO else 0, f.ids)


def _scan(root: str) -> list[_Found]:
    """Every zone directory under ``root``, top-level entries and nested subzones alike,
    deduplicated by real path (sysfs shows subzones both ways)."""
    found: dict[str, _Found] = {}
    for path, name in zone_dirs(root):
        m = _ZONE_RE.match(name)
        if m is None or not os.path.isdir(path):
            continue
        key = os.path.realpath(path)
        if key in found:
            continue
        try:
            zone_name: str | None = _read_text(os.path.join(path, "name")) or None
        except OSError:
            zone_name = None
        ids = tuple(int(x) for x in m.group(2).split(":"))
        found[key] = _Found(name, path, key, m.group(1), ids, zone_name)
    return sorted(found.values(), key=_zone_sort_key)


def _domains(found: list[_Found]) -> dict[str, str]:
    """Map zone directory name -> unique readable domain name.

    Top-level zones use their ``name`` file (``package-0``, ``psys``, ``package-0-die-1``),
    subzones ``<parent domain>/<name>`` (``package-0/dram``). An MMIO zone named like an
    msr zone (``intel-rapl-mmio:0`` is usually ``package-0`` too) gets ``mmio:`` in front,
    so that the two views of one package never share a series.
    """
    by_zone = {f.zone: f for f in found}
    msr_top = {f.name for f in found if f.control != _MMIO and len(f.ids) == 1 and f.name}
    memo: dict[str, str] = {}

    def domain_of(f: _Found) -> str:
        if f.zone in memo:
            return memo[f.zone]
        own = f.name or f.zone
        if len(f.ids) == 1:
            dom = f"mmio:{own}" if f.control == _MMIO and own in msr_top else own
        else:
            parent_zone = f"{f.control}:" + ":".join(str(i) for i in f.ids[:-1])
            parent = by_zone.get(parent_zone)
            parent_dom = domain_of(parent) if parent is not None else parent_zone
            dom = f"{parent_dom}/{own}"
        memo[f.zone] = dom
        return dom

    out: dict[str, str] = {}
    used: set[str] = set()
    for f in found:
        dom = domain_of(f)
        if dom in used:
            # Only a firmware naming two zones alike gets here; keep series distinct.
            dom = f"{dom}[{f.zone}]"
        used.add(dom)
        out[f.zone] = dom
    return out


def permission_message(root: str, zones: list[str]) -> str:
    """The one message the caller logs when RAPL exists but no counter is readable."""
    uid = os.geteuid() if hasattr(os, "geteuid") else -1
    return (
        f"RAPL energy counters exist under {root} ({', '.join(zones)}) but energy_uj is not "
        f"readable by this user (uid {uid}): since Linux 5.10 (CVE-2020-8694) it is readable "
        "by root only. Falling back to the CPU power model (series labelled "
        "estimated=true). To measure instead, run the agent as root, or grant a group read "
        "access and add the agent's user to it: once with "
        f"`chgrp powercap {root}/intel-rapl*:*/energy_uj; chmod g+r "
        f"{root}/intel-rapl*:*/energy_uj`, at every boot with a systemd-tmpfiles line "
        f"`z {root}/intel-rapl*:*/energy_uj 0440 root powercap -`, or with a udev rule "
        '`SUBSYSTEM=="powercap", ACTION=="add", RUN+="/bin/chgrp powercap %S%p/energy_uj", '
        'RUN+="/bin/chmod g+r %S%p/energy_uj"`. Members of that group can then observe '
        "the power side channel the CVE is about."
    )


class RaplCollector:
    """Cumulative energy per RAPL zone, read from powercap sysfs.

    ``root`` is the powercap class directory (``/sys/class/powercap``; tests pass a
    fabricated tree). Zones are discovered once here; a read failure triggers one
    re-discovery after that tick, and zones that vanished are dropped quietly. Raises
    :class:`CollectorUnavailable` when no zone has a readable counter.

    Attributes: ``skipped`` maps zone directory name -> reason for zones seen but not
    read (no ``energy_uj``, garbled file, permission denied); the caller may log it.
    """

    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = str(root)
        self.skipped: dict[str, str] = {}
        self._zones: list[_Zone] = []
        # Cumulative µJ of zones that vanished, by domain: a zone that comes back
        # continues its series instead of restarting at 0.
        self._retired_uj: dict[str, int] = {}
        self._last_scan: float | None = None
        found, unreadable = self._discover()
        if not self._zones:
            if unreadable:
                raise CollectorUnavailable(permission_message(self.root, unreadable))
            if found:
                raise CollectorUnavailable(
                    f"no readable RAPL energy counter under {self.root}: "
                    + "; ".join(f"{z}: {r}" for z, r in sorted(self.skipped.items()))
                )
            raise CollectorUnavailable(f"no RAPL powercap zones under {self.root}")

    # -- discovery -----------------------------------------------------------------

    def _discover(self) -> tuple[list[_Found], list[str]]:
        """Rebuild the zone list, keeping unwrap state of zones that are still there.

        Returns every zone directory seen and the names of those denied by permissions.
        """
        found = _scan(self.root)
        domains = _domains(found)
        old = {z.key: z for z in self._zones}
        zones: list[_Zone] = []
        unreadable: list[str] = []
        skipped: dict[str, str] = {}
        for f in found:
            energy_path = os.path.join(f.path, "energy_uj")
            if f.name is None:
                skipped[f.zone] = "missing or empty name file"
                continue
            try:
                max_range = _read_int(os.path.join(f.path, "max_energy_range_uj"))
                _read_int(energy_path)
            except PermissionError:
                unreadable.append(f.zone)
                skipped[f.zone] = "permission denied"
                continue
            except FileNotFoundError:
                skipped[f.zone] = "no energy_uj or max_energy_range_uj"
                continue
            except (OSError, ValueError) as exc:
                skipped[f.zone] = f"unreadable counter: {exc}"
                continue
            if max_range <= 0:
                skipped[f.zone] = "max_energy_range_uj is not positive"
                continue
            prev = old.get(f.key)
            if prev is not None and prev.domain == domains[f.zone]:
                del old[f.key]
                prev.energy_path = energy_path
                prev.max_range_uj = max_range
                zones.append(prev)
                continue
            zone = _Zone(f.zone, domains[f.zone], f.key, energy_path, max_range)
            carried = self._retired_uj.pop(zone.domain, 0)
            zone.total_uj = carried
            zones.append(zone)
        for gone in old.values():
            log.debug("RAPL zone %s (%s) is gone", gone.zone, gone.domain)
            self._retired_uj[gone.domain] = gone.total_uj
        self._zones = zones
        self.skipped = skipped
        return found, unreadable

    # -- reading -------------------------------------------------------------------

    def seed(self, head: Head) -> list[Sample]:
        """Take ``head``'s raw counters as the zones' previous reads (:mod:`.head` says why):
        the first sample's energy then covers the command's spawn onwards. A zone already
        read, or absent from ``head``, is left as it is."""
        out: list[Sample] = []
        for z in self._zones:
            raw = head.rapl_uj.get(z.key)
            if raw is None or z.last_raw_uj is not None:
                continue
            z.last_raw_uj, z.prev_ts = raw, head.ts
            out.append(self._sample(z, head.ts, {"energy_joules_total": z.total_uj / 1e6}))
        return out

    def sample_head(self, head: Head) -> list[Sample]:
        """A sample from ``head``'s counters, read elsewhere after this collector's last
        read (at the command's exit, agent/runner.py), as if this collector had read them."""
        return [
            self._advance(z, head.ts, raw)
            for z in self._zones
            if (raw := head.rapl_uj.get(z.key)) is not None
        ]

    def _advance(self, z: _Zone, now: float, raw: int) -> Sample:
        delta_uj = 0
        if z.last_raw_uj is not None:
            delta_uj = unwrap_delta_uj(z.last_raw_uj, raw, z.max_range_uj)
            z.total_uj += delta_uj
        z.last_raw_uj = raw
        fields: dict[str, float | int | str | bool] = {"energy_joules_total": z.total_uj / 1e6}
        if z.prev_ts is not None and now > z.prev_ts:
            fields["power_watts"] = delta_uj / 1e6 / (now - z.prev_ts)
        z.prev_ts = now
        return self._sample(z, now, fields)

    @staticmethod
    def _sample(z: _Zone, now: float, fields: dict[str, float | int | str | bool]) -> Sample:
        return Sample(
            "rapl", now, {"zone": z.zone, "domain": z.domain, "estimated": "false"}, fields
        )

    def sample(self, now: float) -> list[Sample]:
        """One sample per zone: cumulative ``energy_joules_total`` and ``power_watts``."""
        out: list[Sample] = []
        failed = False
        for z in self._zones:
            try:
                raw = _read_int(z.energy_path)
            except (OSError, ValueError):
                failed = True
                continue
            out.append(self._advance(z, now, raw))
        idle_due = not self._zones and (
            self._last_scan is None or now - self._last_scan >= _EMPTY_RESCAN_S
        )
        if failed or idle_due:
            self._rescan(now)
        return out

    def _rescan(self, now: float) -> None:
        had = bool(self._zones)
        self._last_scan = now
        self._discover()
        if had and not self._zones:
            log.warning("all RAPL zones under %s became unreadable", self.root)

    def energy_joules(self) -> dict[str, float]:
        """Domain -> cumulative joules since the collector started, as of the last
        :meth:`sample` (no I/O). Includes zones that vanished since, with their last value."""
        out = {d: uj / 1e6 for d, uj in self._retired_uj.items()}
        out.update({z.domain: z.total_uj / 1e6 for z in self._zones})
        return out

    @property
    def domains(self) -> list[str]:
        """Domains currently read, in discovery order (msr zones first)."""
        return [z.domain for z in self._zones]

    def max_interval_s(self, assumed_max_watts: float) -> float:
        """Longest safe read interval (seconds) over all zones if any zone may draw up to
        ``assumed_max_watts`` watts; see :func:`max_interval_for_range`. Infinite while
        no zone is read."""
        return min(
            (max_interval_for_range(z.max_range_uj, assumed_max_watts) for z in self._zones),
            default=math.inf,
        )

    def rediscover(self) -> None:
        """Scan for zones now, e.g. after CPU or module hotplug; state of kept zones stays."""
        self._discover()

    def close(self) -> None:
        """Nothing is held open between reads."""


def create(root: str | Path = DEFAULT_ROOT) -> RaplCollector:
    """Factory for the scheduler; raises :class:`CollectorUnavailable` without RAPL."""
    return RaplCollector(root)
