"""The shipped queries, as LightSaber's benchmark applications define them.

========  =================================================================================
YSB       views only, join ad_id -> campaign_id, count per campaign, 10 s tumbling windows
          on ``event_time`` (ms): ``RANGE 10_000 SLIDE 10_000``
CM1       sum(cpu) group by category, ``RANGE 60 SLIDE 1``
CM2       eventType == 3, sum(cpu) group by jobId, ``RANGE 60 SLIDE 1``
SG1       avg(value), ``RANGE 3600 SLIDE 1``
SG2       avg(value) group by plug, household, house, ``RANGE 128 SLIDE 1``
SG3       household == 3, avg(value) group by plug, household, house, ``RANGE 3600 SLIDE 1``
LRB1      avg(speed) group by highway, direction, segment = position / 5280,
          ``RANGE 300 SLIDE 1``, having avg < 40
LRB2      count group by vehicle, highway, direction, segment, ``RANGE 30 SLIDE 1``
========  =================================================================================

CM, SG and LRB timestamps are in seconds; YSB's ``event_time`` in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .expr import col
from .operators import Agg, StaticTable
from .query import Query
from .schema import CM_SCHEMA, LRB_SCHEMA, SG_SCHEMA, YSB_SCHEMA, YSB_VIEW

YSB_WINDOW_MS = 10_000
SEGMENT_FEET = 5280  # a Linear Road segment is one mile of position


def ysb_table(ad_ids: Any, campaign_ids: Any) -> StaticTable:
    """YSB's static table ``ad_id -> campaign_id`` (the Redis map of the original)."""
    return StaticTable(
        "ad_id", {"ad_id": np.asarray(ad_ids), "campaign_id": np.asarray(campaign_ids)}
    )


def ysb(ad_ids: Any, campaign_ids: Any) -> Query:
    return (
        Query(YSB_SCHEMA, name="ysb")
        .where(col("event_type") == YSB_VIEW)
        .join(ysb_table(ad_ids, campaign_ids), on="ad_id", columns=["campaign_id"])
        .window(size=YSB_WINDOW_MS, range_="event_time")
        .group_by("campaign_id")
        .agg(count=Agg.count())
    )


def cm1() -> Query:
    return (
        Query(CM_SCHEMA, name="cm1")
        .window(size=60, slide=1, range_="timestamp")
        .group_by("category")
        .agg(cpu=Agg.sum("cpu"))
    )


def cm2() -> Query:
    return (
        Query(CM_SCHEMA, name="cm2")
        .where(col("eventType") == 3)
        .window(size=60, slide=1, range_="timestamp")
        .group_by("jobId")
        .agg(cpu=Agg.sum("cpu"))
    )


def sg1() -> Query:
    return (
        Query(SG_SCHEMA, name="sg1")
        .window(size=3600, slide=1, range_="timestamp")
        .agg(avg_value=Agg.avg("value"))
    )


def sg2() -> Query:
    return (
        Query(SG_SCHEMA, name="sg2")
        .window(size=128, slide=1, range_="timestamp")
        .group_by("plug", "household", "house")
        .agg(avg_value=Agg.avg("value"))
    )


def sg3() -> Query:
    return (
        Query(SG_SCHEMA, name="sg3")
        .where(col("household") == 3)
        .window(size=3600, slide=1, range_="timestamp")
        .group_by("plug", "household", "house")
        .agg(avg_value=Agg.avg("value"))
    )


def lrb1() -> Query:
    return (
        Query(LRB_SCHEMA, name="lrb1")
        .derive(segment=col("position") // SEGMENT_FEET)
        .window(size=300, slide=1, range_="timestamp")
        .group_by("highway", "direction", "segment")
        .agg(avg_speed=Agg.avg("speed"))
        .having(col("avg_speed") < 40)
    )


def lrb2() -> Query:
    return (
        Query(LRB_SCHEMA, name="lrb2")
        .derive(segment=col("position") // SEGMENT_FEET)
        .window(size=30, slide=1, range_="timestamp")
        .group_by("vehicle", "highway", "direction", "segment")
        .agg(count=Agg.count())
    )


# Name -> builder; YSB's builder takes the static table's arrays.
QUERIES: dict[str, Callable[..., Query]] = {
    "ysb": ysb,
    "cm1": cm1,
    "cm2": cm2,
    "sg1": sg1,
    "sg2": sg2,
    "sg3": sg3,
    "lrb1": lrb1,
    "lrb2": lrb2,
}
