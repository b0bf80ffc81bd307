"""Linear Road: vehicle position reports on expressways (SABER's LRB).

Columns (LightSaber's tuple order and types):

========= ======= ===============================================================
column    dtype   values
========= ======= ===============================================================
timestamp int64   seconds, ``start + i // rate``, non-decreasing
vehicle   int32   vehicle id, one per trip, ``[0, 2**31 - 1)``
speed     float32 mph: the trip's cruising speed (45-75), times 0.35 on a congested
                  segment, with 5 % noise
highway   int32   ``[0, highways)``, Zipf(``highway_skew``) over trips
lane      int32   0 = entry ramp (a trip's first report), 1-3 travel lanes, 4 = exit
                  ramp (its last report)
direction int32   0 = east (position grows), 1 = west
position  int32   feet from the west end, ``[0, 528000)`` (100 segments of 5,280 ft)
========= ======= ===============================================================

As in Linear Road, a vehicle reports every ``report_period`` (30) s: ``rate *
report_period`` vehicle slots are live at once, each reporting once per period (in an order
reshuffled every period). A slot runs trips of 10-60 min back to back, each inside the road;
a trip's highway, direction, entry point and speed come from a hash of the trip, so they are
the same in every block. Each (highway, direction, segment) is congested during 10 % of the 15 min
epochs (again a hash), which is what gives LRB1's ``having avg(speed) < 40`` its rows.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from wattspan.engines.stream.datasets._common import (
    Batch,
    Dataset,
    check_count,
    mix64,
    unit_float,
    zipf_from_uniform,
)
from wattspan.engines.stream.schema import LRB_SCHEMA, Schema

SEGMENT_FEET = 5_280
SEGMENTS = 100
ROAD_FEET = SEGMENT_FEET * SEGMENTS
_EPOCH_S = 900
_CONGESTED = 0.10
_VEHICLE_MOD = 2**31 - 1

SCHEMA = LRB_SCHEMA


class LRB(Dataset):
    """Linear Road position reports; ``rate`` defaults to 1,000 reports per second
    (30,000 vehicles on the road at once)."""

    name = "lrb"
    tag = 4
    schema: ClassVar[Schema] = SCHEMA
    default_rate = 1_000

    def __init__(
        self,
        seed: int = 0,
        *,
        rate: int | None = None,
        start: int = 0,
        highways: int = 10,
        highway_skew: float = 1.0,
        report_period: int = 30,
    ) -> None:
        self.highways = check_count("highways", highways)
        self.highway_skew = highway_skew
        self.report_period = check_count("report_period", report_period)
        super().__init__(seed, rate=rate, start=start)

    def _static(self, rng: np.random.Generator) -> None:
        self.slots = self.rate * self.report_period
        self._salt = rng.integers(0, 2**63, size=4, dtype=np.int64).astype(np.uint64)
        a = int(rng.integers(1, self.slots + 1))
        while np.gcd(a, self.slots) != 1:
            a = int(rng.integers(1, self.slots + 1))
        self._a = a

    def _hash(self, k: int, x: np.ndarray) -> np.ndarray:
        return mix64(x.astype(np.uint64) ^ self._salt[k])

    def _fill(self, rng: np.random.Generator, idx: np.ndarray, ts: np.ndarray) -> Batch:
        n = len(idx)
        s_count = self.slots
        period, pos_in_period = np.divmod(idx, s_count)
        # A bijection of [0, slots) per period: every slot reports once per period.
        slot = (pos_in_period * self._a + period * 7919) % s_count
        h = self._hash(0, slot)
        trip_len = 600 + (h % np.uint64(3000)).astype(np.int64)
        phase = ((h >> np.uint64(20)) % trip_len.astype(np.uint64)).astype(np.int64)
        tt = ts - self.start + phase
        trip, elapsed = np.divmod(tt, trip_len)
        trip_key = trip * s_count + slot
        g = self._hash(1, trip_key)
        highway = zipf_from_uniform(unit_float(g), self.highways, self.highway_skew)
        direction = ((g >> np.uint64(7)) & np.uint64(1)).astype(np.int64)
        g2 = self._hash(2, trip_key)
        cruise = 45.0 + 30.0 * unit_float(mix64(g2))
        fps = cruise * (5280.0 / 3600.0)
        # The entry leaves room for the whole trip (at most 60 min * 75 mph < the road).
        entry = unit_float(g2) * (ROAD_FEET - 1 - fps * trip_len)
        along = (entry + fps * elapsed).astype(np.int64)
        position = np.where(direction == 0, along, ROAD_FEET - 1 - along)
        segment = position // SEGMENT_FEET
        epoch = (ts // _EPOCH_S).astype(np.int64)
        cell = ((epoch * self.highways + highway) * 2 + direction) * SEGMENTS + segment
        congested = unit_float(self._hash(3, cell)) < _CONGESTED
        speed = cruise * np.where(congested, 0.35, 1.0) * (1.0 + 0.05 * rng.standard_normal(n))
        lane = 1 + rng.integers(0, 3, n)
        lane = np.where(elapsed < self.report_period, 0, lane)
        lane = np.where(trip_len - elapsed <= self.report_period, 4, lane)
        return {
            "timestamp": ts,
            "vehicle": trip_key % _VEHICLE_MOD,
            "speed": np.maximum(speed, 0.0),
            "highway": highway,
            "lane": lane,
            "direction": direction,
            "position": position,
        }
