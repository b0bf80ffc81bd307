"""RAPL collector against a fabricated powercap tree shaped like real sysfs."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattspan.collectors import rapl
from wattspan.collectors.base import CollectorUnavailable
from wattspan.collectors.rapl import (
    RaplCollector,
    create,
    max_interval_for_range,
    unwrap_delta_uj,
)

INTEL_RANGE = 262_143_328_850  # a real Intel package max_energy_range_uj
AMD_RANGE = 65_532_610_987  # a real AMD EPYC max_energy_range_uj


class FakePowercap:
    """A powercap tree laid out like the kernel's.

    Zone directories live under ``devices/virtual/powercap/<control type>/`` with subzones
    nested in their parent zone's directory; ``class/powercap`` holds a symlink per zone and
    per subzone, so a subzone is reachable both ways, as on a real machine.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "class" / "powercap"
        self.devices = base / "devices" / "virtual" / "powercap"
        self.root.mkdir(parents=True)
        self.max_range: dict[str, int] = {}

    def zone_dir(self, zone: str) -> Path:
        control, ids = zone.split(":", 1)
        parts = ids.split(":")
        path = self.devices / control
        for i in range(1, len(parts) + 1):
            path = path / f"{control}:{':'.join(parts[:i])}"
        return path

    def add_zone(
        self,
        zone: str,
        name: str | None,
        energy_uj: int | None = 0,
        max_range_uj: int | None = INTEL_RANGE,
        top_level_link: bool = True,
    ) -> Path:
        control = zone.split(":", 1)[0]
        ctl = self.devices / control
        if not ctl.exists():
            ctl.mkdir(parents=True)
            # The control-type directory itself also shows up in class/powercap.
            (self.root / control).symlink_to(ctl)
        path = self.zone_dir(zone)
        path.mkdir(parents=True)
        if name is not None:
            (path / "name").write_text(name + "\n")
        if max_range_uj is not None:
            (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
            self.max_range[zone] = max_range_uj
        if energy_uj is not None:
            (path / "energy_uj").write_text(f"{energy_uj}\n")
        (path / "enabled").write_text("1\n")
        if top_level_link:
            (self.root / zone).symlink_to(path)
        return path

    def set(self, zone: str, energy_uj: int) -> None:
        (self.zone_dir(zone) / "energy_uj").write_text(f"{energy_uj}\n")

    def get(self, zone: str) -> int:
        return int((self.zone_dir(zone) / "energy_uj").read_text())

    def advance(self, zone: str, delta_uj: int) -> None:
        """Add energy the way the hardware does: modulo the counter's range + 1."""
        self.set(zone, (self.get(zone) + delta_uj) % (self.max_range[zone] + 1))

    def remove(self, zone: str) -> None:
        link = self.root / zone
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(self.zone_dir(zone))


def intel_two_socket(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0")
    fake.add_zone("intel-rapl:0:0", "core")
    fake.add_zone("intel-rapl:0:1", "dram", max_range_uj=65_712_999_613)
    fake.add_zone("intel-rapl:1", "package-1")
    fake.add_zone("intel-rapl:1:0", "core")
    fake.add_zone("intel-rapl:1:1", "dram", max_range_uj=65_712_999_613)
    fake.add_zone("intel-rapl:2", "psys")


@pytest.fixture
def fake(tmp_path: Path) -> FakePowercap:
    return FakePowercap(tmp_path)


def by_domain(samples: list[rapl.Sample]) -> dict[str, rapl.Sample]:
    return {s.tags["domain"]: s for s in samples}


def test_discovers_zones_and_subzones_once_each(fake: FakePowercap) -> None:
    intel_two_socket(fake)
    col = create(fake.root)
    samples = col.sample(100.0)
    assert sorted(s.tags["domain"] for s in samples) == [
        "package-0",
        "package-0/core",
        "package-0/dram",
        "package-1",
        "package-1/core",
        "package-1/dram",
        "psys",
    ]
    assert {s.tags["zone"] for s in samples} == {
        "intel-rapl:0",
        "intel-rapl:0:0",
        "intel-rapl:0:1",
        "intel-rapl:1",
        "intel-rapl:1:0",
        "intel-rapl:1:1",
        "intel-rapl:2",
    }
    for s in samples:
        assert s.source == "rapl"
        assert s.ts == 100.0
        assert s.tags["estimated"] == "false"
        assert s.fields == {"energy_joules_total": 0.0}


def test_subzones_found_without_top_level_links(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0")
    fake.add_zone("intel-rapl:0:0", "core", top_level_link=False)
    fake.add_zone("intel-rapl:0:0:0", "deep", top_level_link=False)
    col = RaplCollector(fake.root)
    assert col.domains == ["package-0", "package-0/core", "package-0/core/deep"]


def test_subzone_only_as_top_level_entry(tmp_path: Path) -> None:
    # A flat layout (no nesting) still yields parent-qualified names.
    root = tmp_path / "powercap"
    for zone, name in [("intel-rapl:0", "package-0"), ("intel-rapl:0:1", "dram")]:
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name)
        (root / zone / "energy_uj").write_text("5")
        (root / zone / "max_energy_range_uj").write_text("100")
    assert RaplCollector(root).domains == ["package-0", "package-0/dram"]


def test_known_power_gives_exact_energy_and_power(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    fake.add_zone("intel-rapl:0:1", "dram", energy_uj=7)
    col = create(fake.root)
    col.sample(10.0)
    for i in range(1, 21):
        fake.advance("intel-rapl:0", 25_000_000)  # 50 W for 0.5 s
        fake.advance("intel-rapl:0:1", 2_500_000)  # 5 W for 0.5 s
        got = by_domain(col.sample(10.0 + 0.5 * i))
        assert got["package-0"].fields["power_watts"] == 50.0
        assert got["package-0/dram"].fields["power_watts"] == 5.0
        assert got["package-0"].fields["energy_joules_total"] == 25.0 * i
        assert got["package-0/dram"].fields["energy_joules_total"] == 2.5 * i
    assert col.energy_joules() == {"package-0": 500.0, "package-0/dram": 50.0}


def test_wrap_adds_range_plus_one(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=990, max_range_uj=999)
    col = create(fake.root)
    col.sample(0.0)
    fake.set("intel-rapl:0", 5)  # 990 -> 999 (9 steps) -> 0 (1 step) -> 5 (5 steps)
    (s,) = col.sample(1.0)
    assert s.fields["energy_joules_total"] == 15 / 1e6
    assert unwrap_delta_uj(990, 5, 999) == 15
    assert unwrap_delta_uj(5, 990, 999) == 985
    assert unwrap_delta_uj(7, 7, 999) == 0


def test_many_wraps_across_many_reads_amd_range(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=AMD_RANGE - 10, max_range_uj=AMD_RANGE)
    col = create(fake.root)
    col.sample(0.0)
    step = 40_000_000_000  # 40 kJ per read: wraps every second read or so
    for i in range(1, 101):
        fake.advance("intel-rapl:0", step)
        col.sample(float(i))
    assert col.energy_joules()["package-0"] == 100 * 40_000.0


@settings(max_examples=60, deadline=None)
@given(
    max_range=st.integers(min_value=1, max_value=2**40),
    data=st.data(),
)
def test_cumulative_equals_sum_of_true_increments(max_range: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(min_value=0, max_value=max_range), label="start")
    increments = data.draw(
        st.lists(st.integers(min_value=0, max_value=max_range), max_size=40), label="incs"
    )
    with tempfile.TemporaryDirectory() as d:
        fake = FakePowercap(Path(d))
        fake.add_zone("intel-rapl:0", "package-0", energy_uj=start, max_range_uj=max_range)
        col = RaplCollector(fake.root)
        col.sample(0.0)
        for i, inc in enumerate(increments, 1):
            fake.advance("intel-rapl:0", inc)
            col.sample(float(i))
        assert col.energy_joules()["package-0"] == sum(increments) / 1e6


def test_max_interval(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", max_range_uj=AMD_RANGE)
    fake.add_zone("intel-rapl:1", "package-1", max_range_uj=INTEL_RANGE)
    col = create(fake.root)
    assert col.max_interval_s(400.0) == pytest.approx(163.83, abs=0.01)
    assert max_interval_for_range(1_000_000, 2.0) == 0.5
    with pytest.raises(ValueError):
        max_interval_for_range(1_000_000, 0.0)


def test_no_powercap_at_all(tmp_path: Path) -> None:
    with pytest.raises(CollectorUnavailable, match="no RAPL powercap zones"):
        create(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectorUnavailable, match="no RAPL powercap zones"):
        create(tmp_path / "empty")


def test_zone_without_energy_or_with_garbage_is_skipped(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=123)
    fake.add_zone("intel-rapl:0:0", "core", energy_uj=None)
    fake.add_zone("intel-rapl:0:1", "dram", max_range_uj=None)
    fake.add_zone("intel-rapl:1", None)
    fake.add_zone("intel-rapl:2", "psys")
    fake.set("intel-rapl:2", 0)
    (fake.zone_dir("intel-rapl:2") / "energy_uj").write_text("not a number\n")
    col = create(fake.root)
    assert col.domains == ["package-0"]
    assert set(col.skipped) == {"intel-rapl:0:0", "intel-rapl:0:1", "intel-rapl:1", "intel-rapl:2"}


def test_only_useless_zones_is_unavailable(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=None)
    with pytest.raises(CollectorUnavailable, match="no readable RAPL energy counter"):
        create(fake.root)


def deny_energy_reads(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Make ``energy_uj`` files below ``under`` fail to open with EACCES, as they do for a
    non-root user on Linux >= 5.10. We run as root, where chmod 000 changes nothing, so the
    denial is injected at ``os.open`` (what ``_read_int`` calls) and only for those paths;
    the collector's own code path is unchanged."""
    real_open = os.open
    target = os.path.realpath(under) + os.sep

    def guarded_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        p = os.fspath(path)
        if (
            isinstance(p, str)
            and p.endswith("/energy_uj")
            and os.path.realpath(p).startswith(target)
        ):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)


def test_all_counters_unreadable_gives_one_clear_message(
    fake: FakePowercap, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    intel_two_socket(fake)
    deny_energy_reads(monkeypatch, fake.base)
    with pytest.raises(CollectorUnavailable) as info:
        create(fake.root)
    msg = str(info.value)
    assert "CVE-2020-8694" in msg
    assert "root" in msg
    assert "chmod g+r" in msg
    assert "udev" in msg
    assert "systemd-tmpfiles" in msg
    assert "power model" in msg
    assert "estimated=true" in msg
    assert "intel-rapl:0" in msg
    assert caplog.records == []  # the caller logs the message, once


def test_some_counters_unreadable_keeps_the_rest(
    fake: FakePowercap, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_zone("intel-rapl:0", "package-0")
    fake.add_zone("intel-rapl:0:1", "dram")
    deny_energy_reads(monkeypatch, fake.zone_dir("intel-rapl:0:1"))
    col = create(fake.root)
    assert col.domains == ["package-0"]
    assert col.skipped == {"intel-rapl:0:1": "permission denied"}


def test_amd_multi_die_names(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0-die-0", max_range_uj=AMD_RANGE)
    fake.add_zone("intel-rapl:0:0", "core", max_range_uj=AMD_RANGE)
    fake.add_zone("intel-rapl:1", "package-0-die-1", max_range_uj=AMD_RANGE)
    col = create(fake.root)
    assert col.domains == ["package-0-die-0", "package-0-die-0/core", "package-0-die-1"]


def test_mmio_zone_colliding_with_msr_zone_is_prefixed(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0")
    fake.add_zone("intel-rapl:0:0", "core")
    fake.add_zone("intel-rapl:1", "psys")
    fake.add_zone("intel-rapl-mmio:0", "package-0")
    fake.add_zone("intel-rapl-mmio:1", "package-9")
    col = create(fake.root)
    zones = {s.tags["zone"]: s.tags["domain"] for s in col.sample(0.0)}
    assert zones == {
        "intel-rapl:0": "package-0",
        "intel-rapl:0:0": "package-0/core",
        "intel-rapl:1": "psys",
        "intel-rapl-mmio:0": "mmio:package-0",
        "intel-rapl-mmio:1": "package-9",
    }


def test_mmio_alone_keeps_plain_name(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl-mmio:0", "package-0")
    assert create(fake.root).domains == ["package-0"]


def test_duplicate_names_stay_unique(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0")
    fake.add_zone("intel-rapl:1", "package-0")
    assert create(fake.root).domains == ["package-0", "package-0[intel-rapl:1]"]


def test_zone_vanishing_mid_run_is_dropped_quietly(
    fake: FakePowercap, caplog: pytest.LogCaptureFixture
) -> None:
    intel_two_socket(fake)
    col = create(fake.root)
    col.sample(0.0)
    for zone in ("intel-rapl:0", "intel-rapl:1:1"):
        fake.advance(zone, 3_000_000)
    col.sample(1.0)
    fake.remove("intel-rapl:1")  # takes its subzones with it
    fake.advance("intel-rapl:0", 1_000_000)
    got = by_domain(col.sample(2.0))  # read fails for socket 1, rescan after the tick
    assert set(got) == {"package-0", "package-0/core", "package-0/dram", "psys"}
    assert got["package-0"].fields["energy_joules_total"] == 4.0
    assert got["package-0"].fields["power_watts"] == 1.0
    assert set(by_domain(col.sample(3.0))) == set(got)
    assert col.energy_joules()["package-1/dram"] == 3.0  # kept with its last value
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_transient_read_failure_keeps_state(
    fake: FakePowercap, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=0, max_range_uj=999)
    col = create(fake.root)
    col.sample(0.0)
    fake.set("intel-rapl:0", 900)
    col.sample(1.0)
    fake.set("intel-rapl:0", 100)  # wrapped
    calls = {"n": 0}
    real = rapl._read_int

    def flaky(path: str) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real(path)

    monkeypatch.setattr(rapl, "_read_int", flaky)
    assert col.sample(2.0) == []  # this tick lost; the rescan still finds the zone
    monkeypatch.undo()
    (s,) = col.sample(3.0)
    assert s.fields["energy_joules_total"] == (900 + 100 + 100) / 1e6
    assert s.fields["power_watts"] == pytest.approx(200 / 1e6 / 2.0)


def test_vanished_zone_returning_continues_its_series(fake: FakePowercap) -> None:
    fake.add_zone("intel-rapl:0", "package-0", energy_uj=0)
    fake.add_zone("intel-rapl:1", "package-1", energy_uj=0)
    col = create(fake.root)
    col.sample(0.0)
    fake.advance("intel-rapl:1", 2_000_000)
    col.sample(1.0)
    fake.remove("intel-rapl:1")
    col.sample(2.0)
    assert col.domains == ["package-0"]
    fake.add_zone("intel-rapl:1", "package-1", energy_uj=50)
    col.rediscover()
    col.sample(3.0)
    fake.advance("intel-rapl:1", 1_000_000)
    got = by_domain(col.sample(4.0))
    assert got["package-1"].fields["energy_joules_total"] == 3.0


def test_everything_vanishing_rescans_slowly(
    fake: FakePowercap, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_zone("intel-rapl:0", "package-0")
    col = create(fake.root)
    col.sample(0.0)
    fake.remove("intel-rapl:0")
    assert col.sample(1.0) == []
    scans = {"n": 0}
    real_scan = rapl._scan

    def counting_scan(root: str) -> list[rapl._Found]:
        scans["n"] += 1
        return real_scan(root)

    monkeypatch.setattr(rapl, "_scan", counting_scan)
    for t in range(2, 30):
        assert col.sample(float(t)) == []
    assert scans["n"] == 0
    fake.add_zone("intel-rapl:0", "package-0")
    col.sample(61.0)
    assert scans["n"] == 1
    assert col.domains == ["package-0"]


def test_no_directory_scan_per_tick(fake: FakePowercap, monkeypatch: pytest.MonkeyPatch) -> None:
    intel_two_socket(fake)
    col = create(fake.root)

    def no_scan(root: str) -> list[rapl._Found]:
        raise AssertionError("scanned on a healthy tick")

    monkeypatch.setattr(rapl, "_scan", no_scan)
    for t in range(5):
        assert len(col.sample(float(t))) == 7
    col.close()
