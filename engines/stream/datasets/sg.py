"""Smart grid: plug measurements shaped like the DEBS 2014 Grand Challenge (SABER's SG).

Columns (LightSaber's tuple order and types):

========= ======= ===============================================================
column    dtype   values
========= ======= ===============================================================
timestamp int64   seconds, ``start + i // rate``, non-decreasing
value     float32 property 1 (load): watts, the plug's base load times a daily cycle
                  and 10 % noise; property 0 (work): the plug's cumulative kWh,
                  non-decreasing per plug
property  int32   ``PROPERTIES`` codes: 0 = work, 1 = load (half each)
plug      int32   the plug's index within its household, from 0
household int32   the household's index within its house, from 0
house     int32   ``[0, houses)``
========= ======= ===============================================================

The plug set is static per seed: ``houses`` houses with 1-15 households of 1-11 plugs each
(about 2,400 plugs for 40 houses). Which plug reports is Zipf(``plug_skew``) over plugs, so
big houses and busy plugs dominate; SG3's ``household == 3`` keeps the houses with at least
four households.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from wattspan.engines.stream.datasets._common import Batch, Dataset, check_count, zipf_ranks
from wattspan.engines.stream.schema import SG_SCHEMA, Schema

PROPERTIES = ("work", "load")
WORK, LOAD = 0, 1
_DAY = 86_400.0

SCHEMA = SG_SCHEMA


class SG(Dataset):
    """SG measurements; ``rate`` defaults to 2,000 events per second."""

    name = "sg"
    tag = 3
    schema: ClassVar[Schema] = SCHEMA
    default_rate = 2_000

    def __init__(
        self,
        seed: int = 0,
        *,
        rate: int | None = None,
        start: int = 0,
        houses: int = 40,
        plug_skew: float = 0.5,
    ) -> None:
        self.houses = check_count("houses", houses)
        self.plug_skew = plug_skew
        super().__init__(seed, rate=rate, start=start)

    def _static(self, rng: np.random.Generator) -> None:
        house, household, plug = [], [], []
        for h in range(self.houses):
            for hh in range(int(rng.integers(1, 16))):
                k = int(rng.integers(1, 12))
                house.append(np.full(k, h))
                household.append(np.full(k, hh))
                plug.append(np.arange(k))
        order = rng.permutation(sum(len(p) for p in plug))  # popularity rank -> plug row
        self.plugs: Batch = {
            "house": np.concatenate(house).astype(np.int32)[order],
            "household": np.concatenate(household).astype(np.int32)[order],
            "plug": np.concatenate(plug).astype(np.int32)[order],
        }
        n = len(order)
        self._base_w = rng.lognormal(np.log(40.0), 1.0, n)  # appliances: 5 W ... 1 kW
        self._phase = rng.random(n) * 2 * np.pi
        self._work0 = rng.random(n) * 100.0  # kWh on the meter when the stream starts

    def _fill(self, rng: np.random.Generator, idx: np.ndarray, ts: np.ndarray) -> Batch:
        n = len(idx)
        p = zipf_ranks(rng, len(self._base_w), self.plug_skew, n)
        base = self._base_w[p]
        prop = rng.integers(0, 2, n)
        t = ts.astype(np.float64)
        load = base * (1.0 + 0.5 * np.sin(2 * np.pi * t / _DAY + self._phase[p]))
        load *= rng.lognormal(0.0, 0.1, n)
        # Cumulative kWh from the mean load: exact in t, so it never decreases for a plug.
        work = self._work0[p] + base * (t - self.start) / 3.6e6
        return {
            "timestamp": ts,
            "value": np.where(prop == LOAD, load, work),
            "property": prop,
            "plug": self.plugs["plug"][p],
            "household": self.plugs["household"][p],
            "house": self.plugs["house"][p],
        }
