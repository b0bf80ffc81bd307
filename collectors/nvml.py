"""NVIDIA GPU utilisation, memory, power, energy, temperature and clocks through NVML.

Everything goes through one module-like object, ``pynvml`` (package ``nvidia-ml-py``) by
default; tests hand in a fake with the same function names and the real ``NVMLError``
classes, and the collector calls exactly the same functions on it.

Samples, per GPU, source ``gpu``, tags ``gpu`` (index), ``uuid``, ``name``,
``energy_method`` (``counter`` or ``integrated``); fields:

- ``utilization_gpu_ratio``, ``utilization_memory_ratio``: 0..1, from percent
- ``memory_used_bytes``, ``memory_total_bytes``: bytes
- ``power_watts``: watts (NVML reports milliwatts; on recent drivers this is a 1 s average)
- ``energy_joules_total``: joules, cumulative since the collector started. ``counter``: from
  ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load, Volta and
  newer). ``integrated``: trapezoids between consecutive power readings, so it lags
  reality by the power reading's own averaging and misses swings between samples.
- ``temperature_celsius``: GPU die, degrees Celsius
- ``sm_clock_hertz``: SM clock, hertz (NVML reports MHz)

Per process, source ``gpu_process``, tags ``gpu``, ``pid``; field ``memory_used_bytes``
(bytes), from the compute and graphics process lists merged by pid. Processes whose
memory NVML cannot report (``usedGpuMemory`` is None: Windows WDDM, some MIG setups)
produce no sample, as a sample without fields cannot be stored.

A query that fails omits only its own field(s) for that device and tick. Failures that
will not go away (not supported, no permission, function missing in the driver) are
remembered per device and the query is not repeated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from wattspan.collectors.base import CollectorUnavailable, FieldValue, Sample

log = logging.getLogger(__name__)

_MISSING: Any = object()

# Error codes after which a query is never retried for that device.
_PERMANENT_CODE_NAMES = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
)


def _text(value: Any) -> str:
    # pynvml returned bytes before 11.5 and str since; accept both.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(slots=True)
class _Gpu:
    index: int
    handle: Any
    tags: dict[str, str]
    counter: bool
    unsupported: set[str] = field(default_factory=set)
    # Counter method: millijoules, integers so that days of accumulation stay exact.
    last_counter_mj: int | None = None
    counter_total_mj: int = 0
    # Integrated method: joules and the previous power reading.
    integrated_j: float = 0.0
    last_power_w: float | None = None
    last_power_ts: float | None = None

    def energy_j(self) -> float | None:
        """Cumulative joules, or None before the first usable reading."""
        if self.counter:
            return None if self.last_counter_mj is None else self.counter_total_mj / 1000.0
        return None if self.last_power_ts is None else self.integrated_j


class NvmlCollector:
    """Per-GPU and per-process GPU samples through NVML.

    ``nvml`` is the pynvml module or an object with the same names (functions, the
    ``NVMLError`` class hierarchy and the ``NVML_*`` constants); ``None`` imports
    ``pynvml``. The constructor calls ``nvmlInit`` and takes every device handle once;
    it raises :class:`CollectorUnavailable` without a driver or without GPUs.
    """

    name = "nvml"

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:  # the dependency is declared; this is a broken install
                raise CollectorUnavailable(f"pynvml is not importable: {exc}") from exc
        self._nvml = nvml
        # pynvml raises NVMLLibraryMismatchError (not an NVMLError) when an unversioned
        # function is missing from an older driver, e.g. the _v3 process lists.
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", nvml.NVMLError)
        self._errors: tuple[type[BaseException], ...] = (nvml.NVMLError, mismatch)
        self._mismatch: type[BaseException] = mismatch
        self._permanent = {getattr(nvml, n) for n in _PERMANENT_CODE_NAMES if hasattr(nvml, n)}
        self._closed = False
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._closed = True
            raise CollectorUnavailable(_init_message(nvml, exc)) from exc
        try:
            count = int(nvml.nvmlDeviceGetCount())
            self._gpus = [g for g in (self._open(i) for i in range(count)) if g is not None]
        except nvml.NVMLError as exc:
            self.close()
            raise CollectorUnavailable(f"NVML could not list GPUs ({exc}); no GPU metrics") from exc
        if not self._gpus:
            self.close()
            raise CollectorUnavailable(
                "NVIDIA driver loaded but NVML reports no usable GPU; no GPU metrics"
            )

    def _open(self, index: int) -> _Gpu | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except self._errors as exc:
            log.info("GPU %d skipped: no NVML handle (%s)", index, exc)
            return None
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except self._errors:
            uuid = "unknown"
        try:
            name = _text(nvml.nvmlDeviceGetName(handle))
        except self._errors:
            name = "unknown"
        # Decide the energy method once, so a series never changes its meaning mid-run.
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            counter = True
        except self._errors:
            counter = False
        tags = {
            "gpu": str(index),
            "uuid": uuid,
            "name": name,
            "energy_method": "counter" if counter else "integrated",
        }
        return _Gpu(index, handle, tags, counter)

    # -- sampling ------------------------------------------------------------------

    def _query(self, gpu: _Gpu, fn_name: str, *args: Any) -> Any:
        """``nvml.<fn_name>(handle, *args)``, or ``_MISSING`` if it failed; remembers
        permanent failures per device so they cost nothing on later ticks."""
        if fn_name in gpu.unsupported:
            return _MISSING
        try:
            return getattr(self._nvml, fn_name)(gpu.handle, *args)
        except self._errors as exc:
            if isinstance(exc, self._mismatch) or getattr(exc, "value", None) in self._permanent:
                gpu.unsupported.add(fn_name)
                log.debug("GPU %d: %s unavailable (%s), not asked again", gpu.index, fn_name, exc)
            return _MISSING

    def sample(self, now: float) -> list[Sample]:
        """One ``gpu`` sample per device plus one ``gpu_process`` sample per process."""
        out: list[Sample] = []
        for gpu in self._gpus:
            fields = self._device_fields(gpu, now)
            if fields:
                out.append(Sample("gpu", now, dict(gpu.tags), fields))
            out.extend(self._process_samples(gpu, now))
        return out

    def _device_fields(self, gpu: _Gpu, now: float) -> dict[str, FieldValue]:
        nvml = self._nvml
        fields: dict[str, FieldValue] = {}
        util = self._query(gpu, "nvmlDeviceGetUtilizationRates")
        if util is not _MISSING:
            fields["utilization_gpu_ratio"] = util.gpu / 100.0
            fields["utilization_memory_ratio"] = util.memory / 100.0
        mem = self._query(gpu, "nvmlDeviceGetMemoryInfo")
        if mem is not _MISSING:
            fields["memory_used_bytes"] = int(mem.used)
            fields["memory_total_bytes"] = int(mem.total)
        milliwatts = self._query(gpu, "nvmlDeviceGetPowerUsage")
        watts = None if milliwatts is _MISSING else milliwatts / 1000.0
        if watts is not None:
            fields["power_watts"] = watts
        if gpu.counter:
            mj = self._query(gpu, "nvmlDeviceGetTotalEnergyConsumption")
            if mj is not _MISSING:
                mj = int(mj)
                # A counter that goes backwards was reset (driver reload): rebase, count 0.
                if gpu.last_counter_mj is not None and mj >= gpu.last_counter_mj:
                    gpu.counter_total_mj += mj - gpu.last_counter_mj
                gpu.last_counter_mj = mj
                fields["energy_joules_total"] = gpu.counter_total_mj / 1000.0
        elif watts is not None:
            # Only with a power reading this tick: without one the integral would be stale,
            # low by the energy of the gap, so the field is left out instead.
            if gpu.last_power_w is not None and gpu.last_power_ts is not None:
                dt = now - gpu.last_power_ts
                if dt > 0:
                    gpu.integrated_j += (gpu.last_power_w + watts) / 2.0 * dt
            if gpu.last_power_ts is None or now > gpu.last_power_ts:
                gpu.last_power_w, gpu.last_power_ts = watts, now
            fields["energy_joules_total"] = gpu.integrated_j
        temp = self._query(gpu, "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        if temp is not _MISSING:
            fields["temperature_celsius"] = float(temp)
        mhz = self._query(gpu, "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)
        if mhz is not _MISSING:
            fields["sm_clock_hertz"] = int(mhz) * 1_000_000
        return fields

    def _process_samples(self, gpu: _Gpu, now: float) -> list[Sample]:
        used: dict[int, int | None] = {}
        for fn_name in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            procs = self._query(gpu, fn_name)
            if procs is _MISSING:
                continue
            for p in procs:
                mem = getattr(p, "usedGpuMemory", None)
                prev = used.get(p.pid)
                # A process with both a compute and a graphics context appears in both
                # lists with its per-process figure: summing would count it twice.
                if mem is not None and (prev is None or mem > prev):
                    used[p.pid] = int(mem)
                else:
                    used.setdefault(p.pid, None)
        gpu_tag = gpu.tags["gpu"]
        return [
            Sample(
                "gpu_process", now, {"gpu": gpu_tag, "pid": str(pid)}, {"memory_used_bytes": mem}
            )
            for pid, mem in sorted(used.items())
            if mem is not None
        ]

    # -- accessors -----------------------------------------------------------------

    @property
    def device_count(self) -> int:
        """Number of GPUs sampled."""
        return len(self._gpus)

    def energy_joules(self) -> dict[str, float]:
        """GPU index (as in the ``gpu`` tag) -> cumulative joules since the collector
        started, as of the last :meth:`sample` (no NVML call). GPUs without any energy
        reading yet are absent."""
        out: dict[str, float] = {}
        for gpu in self._gpus:
            e = gpu.energy_j()
            if e is not None:
                out[gpu.tags["gpu"]] = e
        return out

    def energy_methods(self) -> dict[str, str]:
        """GPU index -> ``counter`` or ``integrated``."""
        return {g.tags["gpu"]: g.tags["energy_method"] for g in self._gpus}

    def close(self) -> None:
        """Shut NVML down; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._errors as exc:
            log.debug("nvmlShutdown: %s", exc)


def _init_message(nvml: Any, exc: BaseException) -> str:
    code = getattr(exc, "value", None)
    if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
        return "NVIDIA driver library (libnvidia-ml.so.1) not found; no GPU metrics on this node"
    if code == getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
        return "NVIDIA kernel driver not loaded; no GPU metrics on this node"
    return f"NVML initialisation failed ({exc}); no GPU metrics on this node"


def create(nvml: Any = None) -> NvmlCollector:
    """Factory for the scheduler; raises :class:`CollectorUnavailable` without GPUs."""
    return NvmlCollector(nvml)
