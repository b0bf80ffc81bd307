"""NVML collector against a fake pynvml module.

The fake has pynvml's function names and takes the error classes and constants from the
real pynvml module, so ``except nvml.NVMLError`` and the error-code checks in the collector
behave exactly as in production.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from wattspan.collectors.base import CollectorUnavailable
from wattspan.collectors.nvml import NvmlCollector, create

GIB = 1024**3


def not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    util: tuple[int, int] = (50, 25)
    mem: tuple[int, int] = (10 * GIB, 80 * GIB)
    power_mw: list[int] = field(default_factory=lambda: [100_000])
    energy_mj: list[int] | None = None  # None: no counter (pre-Volta)
    temp_c: int = 40
    sm_mhz: int = 1980
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    transient: dict[str, int] = field(default_factory=dict)  # fn -> failures left
    _power_i: int = 0
    _energy_i: int = 0

    def next_power(self) -> int:
        v = self.power_mw[min(self._power_i, len(self.power_mw) - 1)]
        self._power_i += 1
        return v

    def next_energy(self) -> int:
        assert self.energy_mj is not None
        v = self.energy_mj[min(self._energy_i, len(self.energy_mj) - 1)]
        self._energy_i += 1
        return v


class FakeNvml:
    """Module-like stand-in for pynvml with the functions the collector uses."""

    NVMLError = pynvml.NVMLError
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, devices: list[FakeDevice], init_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.initialized = False
        self.shutdowns = 0

    def _dev(self, fn: str, handle: FakeDevice) -> FakeDevice:
        self.calls[fn] += 1
        assert self.initialized, f"{fn} called outside nvmlInit/nvmlShutdown"
        if fn in handle.unsupported:
            raise not_supported()
        if handle.transient.get(fn, 0) > 0:
            handle.transient[fn] -= 1
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return handle

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        return self.devices[index]

    def nvmlDeviceGetUUID(self, h: FakeDevice) -> str:
        return self._dev("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetName(self, h: FakeDevice) -> bytes:
        return self._dev("nvmlDeviceGetName", h).name.encode()  # old pynvml gave bytes

    def nvmlDeviceGetUtilizationRates(self, h: FakeDevice) -> SimpleNamespace:
        d = self._dev("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=d.util[0], memory=d.util[1])

    def nvmlDeviceGetMemoryInfo(self, h: FakeDevice) -> SimpleNamespace:
        d = self._dev("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(used=d.mem[0], total=d.mem[1], free=d.mem[1] - d.mem[0])

    def nvmlDeviceGetPowerUsage(self, h: FakeDevice) -> int:
        return self._dev("nvmlDeviceGetPowerUsage", h).next_power()

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeDevice) -> int:
        d = self._dev("nvmlDeviceGetTotalEnergyConsumption", h)
        if d.energy_mj is None:
            raise not_supported()
        return d.next_energy()

    def nvmlDeviceGetTemperature(self, h: FakeDevice, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._dev("nvmlDeviceGetTemperature", h).temp_c

    def nvmlDeviceGetClockInfo(self, h: FakeDevice, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._dev("nvmlDeviceGetClockInfo", h).sm_mhz

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeDevice) -> list[SimpleNamespace]:
        d = self._dev("nvmlDeviceGetComputeRunningProcesses", h)
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d.compute]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: FakeDevice) -> list[SimpleNamespace]:
        d = self._dev("nvmlDeviceGetGraphicsRunningProcesses", h)
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d.graphics]


def gpu_samples(samples: list[Any]) -> dict[str, Any]:
    return {s.tags["gpu"]: s for s in samples if s.source == "gpu"}


def test_full_device_sample() -> None:
    dev = FakeDevice(energy_mj=[5_000_000], power_mw=[250_500])
    fake = FakeNvml([dev])
    col = create(fake)
    assert col.device_count == 1
    (s,) = col.sample(1000.0)
    assert s.source == "gpu"
    assert s.ts == 1000.0
    assert s.tags == {
        "gpu": "0",
        "uuid": dev.uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "energy_method": "counter",
    }
    assert s.fields == {
        "utilization_gpu_ratio": 0.5,
        "utilization_memory_ratio": 0.25,
        "memory_used_bytes": 10 * GIB,
        "memory_total_bytes": 80 * GIB,
        "power_watts": 250.5,
        "energy_joules_total": 0.0,
        "temperature_celsius": 40.0,
        "sm_clock_hertz": 1_980_000_000,
    }


def test_energy_counter_is_cumulative_since_start() -> None:
    # The first value is the probe at construction; the baseline is the first sample.
    dev = FakeDevice(energy_mj=[7_000_000, 7_000_500, 7_250_500, 7_251_000, 7_400_000])
    fake = FakeNvml([dev])
    col = NvmlCollector(fake)
    got = [gpu_samples(col.sample(float(t)))["0"].fields["energy_joules_total"] for t in range(4)]
    assert got == [0.0, 250.0, 250.5, 399.5]
    assert col.energy_joules() == {"0": 399.5}
    assert col.energy_methods() == {"0": "counter"}


def test_energy_counter_reset_rebases_instead_of_going_negative() -> None:
    dev = FakeDevice(energy_mj=[0, 10_000, 20_000, 1_000, 3_000])
    col = NvmlCollector(FakeNvml([dev]))
    got = [gpu_samples(col.sample(float(t)))["0"].fields["energy_joules_total"] for t in range(4)]
    assert got == [0.0, 10.0, 10.0, 12.0]


def test_integrated_energy_is_exact_trapezoid() -> None:
    # Watts exact in binary; intervals 0.5 s, 1 s, 0.25 s, 2 s.
    dev = FakeDevice(energy_mj=None, power_mw=[100_000, 150_500, 200_000, 50_000, 50_000])
    fake = FakeNvml([dev])
    col = NvmlCollector(fake)
    times = [10.0, 10.5, 11.5, 11.75, 13.75]
    energies = []
    for t in times:
        s = gpu_samples(col.sample(t))["0"]
        assert s.tags["energy_method"] == "integrated"
        energies.append(s.fields["energy_joules_total"])
    expected = [
        0.0,
        (100.0 + 150.5) / 2 * 0.5,
        (100.0 + 150.5) / 2 * 0.5 + (150.5 + 200.0) / 2 * 1.0,
        (100.0 + 150.5) / 2 * 0.5 + (150.5 + 200.0) / 2 * 1.0 + (200.0 + 50.0) / 2 * 0.25,
        62.625 + 175.25 + 31.25 + 100.0,
    ]
    assert energies == expected
    assert energies[-1] == 369.125
    assert col.energy_joules() == {"0": 369.125}


def test_integration_spans_a_failed_power_read() -> None:
    dev = FakeDevice(energy_mj=None, power_mw=[100_000, 300_000])
    col = NvmlCollector(FakeNvml([dev]))
    col.sample(0.0)
    dev.transient["nvmlDeviceGetPowerUsage"] = 1
    s = gpu_samples(col.sample(1.0))["0"]
    assert "power_watts" not in s.fields
    assert "energy_joules_total" not in s.fields  # a stale integral would under-report
    assert s.fields["temperature_celsius"] == 40.0
    s = gpu_samples(col.sample(2.0))["0"]
    assert s.fields["energy_joules_total"] == (100.0 + 300.0) / 2 * 2.0
    # a transient error is retried
    assert col._gpus[0].unsupported == set()


def test_mixed_devices_with_and_without_counter() -> None:
    new = FakeDevice(energy_mj=[0, 1_000, 3_000], uuid="GPU-new")
    old = FakeDevice(energy_mj=None, power_mw=[60_000, 80_000], uuid="GPU-old", name="Tesla P100")
    col = NvmlCollector(FakeNvml([new, old]))
    col.sample(0.0)
    got = gpu_samples(col.sample(2.0))
    assert got["0"].tags["energy_method"] == "counter"
    assert got["1"].tags["energy_method"] == "integrated"
    assert got["0"].fields["energy_joules_total"] == 2.0
    assert got["1"].fields["energy_joules_total"] == 140.0
    assert col.energy_joules() == {"0": 2.0, "1": 140.0}


def test_not_supported_omits_only_that_field_and_is_not_retried() -> None:
    dev = FakeDevice(
        energy_mj=None,
        unsupported={
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetClockInfo",
        },
    )
    fake = FakeNvml([dev])
    col = NvmlCollector(fake)
    for t in range(5):
        s = gpu_samples(col.sample(float(t)))["0"]
        assert set(s.fields) == {
            "memory_used_bytes",
            "memory_total_bytes",
            "power_watts",
            "energy_joules_total",
        }
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 1
    assert fake.calls["nvmlDeviceGetTemperature"] == 1
    assert fake.calls["nvmlDeviceGetClockInfo"] == 1
    # only the construction-time probe asks for the missing energy counter
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 5
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 1


def test_power_not_supported_means_no_integrated_energy() -> None:
    dev = FakeDevice(energy_mj=None, unsupported={"nvmlDeviceGetPowerUsage"})
    col = NvmlCollector(FakeNvml([dev]))
    for t in range(3):
        s = gpu_samples(col.sample(float(t)))["0"]
        assert "power_watts" not in s.fields
        assert "energy_joules_total" not in s.fields
    assert col.energy_joules() == {}


def test_everything_failing_emits_no_device_sample() -> None:
    every = {
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
    }
    dev = FakeDevice(energy_mj=None, unsupported=every, compute=[(42, 1024)])
    col = NvmlCollector(FakeNvml([dev]))
    samples = col.sample(0.0)
    assert [s.source for s in samples] == ["gpu_process"]


def test_process_memory_merged_and_none_skipped() -> None:
    dev = FakeDevice(
        compute=[(100, 2 * GIB), (200, None), (300, 512)],
        graphics=[(300, 512), (400, GIB), (500, None)],
    )
    other = FakeDevice(compute=[(100, GIB)])
    col = NvmlCollector(FakeNvml([dev, other]))
    procs = [
        (s.tags["gpu"], s.tags["pid"], s.fields)
        for s in col.sample(5.0)
        if s.source == "gpu_process"
    ]
    assert procs == [
        ("0", "100", {"memory_used_bytes": 2 * GIB}),
        ("0", "300", {"memory_used_bytes": 512}),
        ("0", "400", {"memory_used_bytes": GIB}),
        ("1", "100", {"memory_used_bytes": GIB}),
    ]
    for s in col.sample(6.0):
        if s.source == "gpu_process":
            assert set(s.tags) == {"gpu", "pid"}
            assert s.ts == 6.0


def test_process_query_failures_do_not_kill_device_sample() -> None:
    dev = FakeDevice(compute=[(7, 100)], unsupported={"nvmlDeviceGetGraphicsRunningProcesses"})
    fake = FakeNvml([dev])
    col = NvmlCollector(fake)
    for t in range(3):
        samples = col.sample(float(t))
        assert [s.source for s in samples] == ["gpu", "gpu_process"]
    assert fake.calls["nvmlDeviceGetGraphicsRunningProcesses"] == 1


def test_library_mismatch_on_old_driver_is_cached() -> None:
    class OldDriverNvml(FakeNvml):
        def nvmlDeviceGetComputeRunningProcesses(self, h: FakeDevice) -> list[SimpleNamespace]:
            self.calls["nvmlDeviceGetComputeRunningProcesses"] += 1
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called ...")

    dev = FakeDevice(graphics=[(9, 4096)])
    fake = OldDriverNvml([dev])
    col = NvmlCollector(fake)
    for t in range(3):
        samples = col.sample(float(t))
        assert [s.source for s in samples] == ["gpu", "gpu_process"]
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver not loaded"),
        (pynvml.NVML_ERROR_UNKNOWN, "initialisation failed"),
    ],
)
def test_init_failure_is_unavailable(code: int, words: str) -> None:
    fake = FakeNvml([FakeDevice()], init_error=code)
    with pytest.raises(CollectorUnavailable, match=words) as info:
        create(fake)
    assert isinstance(info.value.__cause__, pynvml.NVMLError)
    assert "no GPU metrics" in str(info.value)
    assert fake.shutdowns == 0  # nothing to shut down after a failed init


def test_zero_devices_is_unavailable_and_shuts_down() -> None:
    fake = FakeNvml([])
    with pytest.raises(CollectorUnavailable, match="no usable GPU"):
        create(fake)
    assert fake.shutdowns == 1


def test_close_shuts_down_once() -> None:
    fake = FakeNvml([FakeDevice()])
    col = create(fake)
    col.sample(0.0)
    col.close()
    col.close()
    assert fake.shutdowns == 1
    assert fake.calls["nvmlInit"] == 1


def test_default_is_the_real_pynvml_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever this node has, the default path must reach pynvml itself: record the call.
    seen: list[str] = []

    def fake_init() -> None:
        seen.append("init")
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fake_init)
    with pytest.raises(CollectorUnavailable, match="libnvidia-ml"):
        create()
    assert seen == ["init"]
