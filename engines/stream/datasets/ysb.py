"""Yahoo Streaming Benchmark events (yahoo/streaming-benchmarks, as LightSaber encodes them).

Columns (design.md order), one row per ad event:

============ ======= ==========================================================
column       dtype   values
============ ======= ==========================================================
user_id      int64   ``[0, users)``, Zipf(``user_skew``) popularity, ids scattered
page_id      int64   ``[0, pages)``, Zipf(``page_skew``)
ad_id        int32   ``[0, 1000)``: 100 campaigns x 10 ads, Zipf(``ad_skew``) over ads
ad_type      int8    the ad's type (fixed per ad): ``AD_TYPES`` codes
event_type   int8    ``EVENT_TYPES`` codes, drawn with ``event_probs`` (YSB: 1/3 each)
event_time   int64   milliseconds, ``start + i * 1000 // rate``, non-decreasing
ip_address   uint32  IPv4 as an integer, fixed per user (a user's home address)
============ ======= ==========================================================

The static table ``ads`` (``ad_id`` -> ``campaign_id``, ``ad_type``) is the Redis table of
the original: 100 distinct campaign ids drawn from ``[0, 1_000_000)``, each owning 10 ads
chosen at random (so ad popularity does not follow campaign order). It is sorted by ad_id,
so ``ads["campaign_id"][ad_id]`` is the join.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from wattspan.engines.stream.datasets._common import (
    Batch,
    Dataset,
    affine_bijection,
    apply_bijection,
    categorical,
    check_count,
    zipf_ranks,
)
from wattspan.engines.stream.schema import (
    YSB_AD_TYPES,
    YSB_ADS_PER_CAMPAIGN,
    YSB_CAMPAIGNS,
    YSB_EVENT_TYPES,
    YSB_SCHEMA,
    YSB_VIEW,
    Schema,
)

AD_TYPES = YSB_AD_TYPES
EVENT_TYPES = YSB_EVENT_TYPES
VIEW = YSB_VIEW
CAMPAIGNS = YSB_CAMPAIGNS
ADS_PER_CAMPAIGN = YSB_ADS_PER_CAMPAIGN
WINDOW_MS = 10_000  # the query's tumbling window: 10 s of event time

SCHEMA = YSB_SCHEMA
ADS_SCHEMA: dict[str, np.dtype] = {
    "ad_id": np.dtype(np.int32),
    "campaign_id": np.dtype(np.int64),
    "ad_type": np.dtype(np.int8),
}


class YSB(Dataset):
    """YSB events; ``rate`` defaults to 100k events per second of event time (1M per
    10 s window, so every campaign has views in every window)."""

    name = "ysb"
    tag = 1
    schema: ClassVar[Schema] = SCHEMA
    default_rate = 100_000

    def __init__(
        self,
        seed: int = 0,
        *,
        rate: int | None = None,
        start: int = 0,
        users: int = 1_000_000,
        pages: int = 100_000,
        user_skew: float = 1.0,
        page_skew: float = 1.0,
        ad_skew: float = 1.0,
        event_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    ) -> None:
        self.users = check_count("users", users)
        self.pages = check_count("pages", pages)
        self.user_skew, self.page_skew, self.ad_skew = user_skew, page_skew, ad_skew
        if len(event_probs) != len(EVENT_TYPES) or min(event_probs) < 0 or sum(event_probs) <= 0:
            raise ValueError(f"event_probs needs 3 non-negative weights, got {event_probs}")
        self.event_probs = np.asarray(event_probs, dtype=np.float64)
        super().__init__(seed, rate=rate, start=start)

    def _static(self, rng: np.random.Generator) -> None:
        n_ads = CAMPAIGNS * ADS_PER_CAMPAIGN
        campaigns = np.sort(rng.choice(1_000_000, size=CAMPAIGNS, replace=False)).astype(np.int64)
        owner = rng.permutation(np.repeat(np.arange(CAMPAIGNS), ADS_PER_CAMPAIGN))
        self.ads: Batch = {
            "ad_id": np.arange(n_ads, dtype=np.int32),
            "campaign_id": campaigns[owner],
            "ad_type": rng.integers(0, len(AD_TYPES), size=n_ads).astype(np.int8),
        }
        self._ad_by_rank = rng.permutation(n_ads).astype(np.int32)
        self._user_map = affine_bijection(rng, self.users)
        self._page_map = affine_bijection(rng, self.pages)
        self._ip_salt = int(rng.integers(0, 2**32))

    def _fill(self, rng: np.random.Generator, idx: np.ndarray, ts: np.ndarray) -> Batch:
        n = len(idx)
        ad_id = self._ad_by_rank[zipf_ranks(rng, len(self._ad_by_rank), self.ad_skew, n)]
        user = apply_bijection(
            zipf_ranks(rng, self.users, self.user_skew, n), self._user_map, self.users
        )
        page = apply_bijection(
            zipf_ranks(rng, self.pages, self.page_skew, n), self._page_map, self.pages
        )
        # Knuth's multiplicative hash: a fixed, scattered address per user.
        ip = (
            user.astype(np.uint64) * np.uint64(2654435761) + np.uint64(self._ip_salt)
        ) & np.uint64(0xFFFF_FFFF)
        return {
            "user_id": user,
            "page_id": page,
            "ad_id": ad_id,
            "ad_type": self.ads["ad_type"][ad_id],
            "event_type": categorical(rng, self.event_probs, n),
            "event_time": ts,
            "ip_address": ip,
        }

    def campaign_of(self, ad_id: np.ndarray) -> np.ndarray:
        return self.ads["campaign_id"][ad_id]
