"""Schemas: an ordered mapping column -> numpy dtype, and the shipped benchmark schemas.

A batch is ``dict[str, numpy.ndarray]`` with every column the same length. A :class:`Schema`
checks a batch once (missing column, wrong dtype, unequal lengths) with one clear
:class:`~wattspan.engines.stream.errors.StreamError` line. Extra columns in a batch are
allowed and ignored.

Time units of the shipped schemas (range windows count in the unit of the time column):

* ``YSB_SCHEMA.event_time`` is in **milliseconds** since the epoch: a 10 s window is
  ``size=10_000``.
* ``CM_SCHEMA``, ``SG_SCHEMA`` and ``LRB_SCHEMA`` ``timestamp`` are in **seconds**: SG1's
  ``RANGE 3600 SLIDE 1`` is ``size=3600, slide=1``.

YSB code tables (small integer codes instead of strings, so a filter is one comparison):

* ``event_type``: ``0 = view, 1 = click, 2 = purchase`` (:data:`YSB_EVENT_TYPES`).
* ``ad_type``: ``0 = banner, 1 = modal, 2 = sponsored-search, 3 = mail, 4 = mobile``
  (:data:`YSB_AD_TYPES`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .errors import StreamError


def check_order(t: np.ndarray, batch: int, row: int, stream_row: int) -> None:
    """Raise if ``t`` (rows ``row..`` of batch ``batch``, ``stream_row..`` of the stream)
    goes back in time anywhere, naming the first row that does."""
    if len(t) > 1:
        back = t[1:] < t[:-1]
        if back.any():
            i = int(np.argmax(back)) + 1
            raise StreamError(
                f"batch {batch}, row {row + i} (stream row {stream_row + i}): timestamp "
                f"{int(t[i])} is before the previous row's {int(t[i - 1])}"
            )


class Schema(Mapping[str, np.dtype]):
    """Ordered column -> dtype mapping; ``time`` names the event-time column (int64), if any.

    ``unit`` documents the time column's unit (``"ms"``, ``"s"``); range windows are expressed
    in that unit.
    """

    def __init__(
        self,
        columns: Mapping[str, Any],
        *,
        time: str | None = None,
        unit: str | None = None,
        name: str = "",
    ) -> None:
        if not columns:
            raise StreamError("a schema needs at least one column")
        self._cols: dict[str, np.dtype] = {str(k): np.dtype(v) for k, v in columns.items()}
        if time is not None:
            if time not in self._cols:
                raise StreamError(f"schema time column {time!r} is not one of its columns")
            if self._cols[time] != np.dtype(np.int64):
                raise StreamError(f"schema time column {time!r} must be int64")
        self.time = time
        self.unit = unit
        self.name = name

    def __getitem__(self, key: str) -> np.dtype:
        return self._cols[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols)

    def __len__(self) -> int:
        return len(self._cols)

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}: {v}" for k, v in self._cols.items())
        return f"Schema({self.name or '?'}: {cols}; time={self.time!r})"

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (the sum of the column itemsizes): what task sizes count."""
        return sum(d.itemsize for d in self._cols.values())

    def validate(self, batch: Mapping[str, Any], index: int = 0) -> int:
        """Check ``batch`` (the ``index``-th of its stream) against the schema; return its row
        count. One :class:`StreamError` line for the first problem found."""
        n = -1
        for name, dtype in self._cols.items():
            arr = batch.get(name) if isinstance(batch, Mapping) else None
            if arr is None:
                have = ", ".join(sorted(batch)) if isinstance(batch, Mapping) else type(batch)
                raise StreamError(f"batch {index}: missing column {name!r} (batch has: {have})")
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                raise StreamError(f"batch {index}: column {name!r} is not a 1-d numpy array")
            if arr.dtype != dtype:
                raise StreamError(
                    f"batch {index}: column {name!r} has dtype {arr.dtype}, schema says {dtype}"
                )
            # The kernels read the data under a mask, so masked rows would count as values.
            if isinstance(arr, np.ma.MaskedArray) and (masked := np.ma.count_masked(arr)):
                raise StreamError(
                    f"batch {index}: column {name!r} has {masked} masked rows: fill them "
                    "(.filled(value)) or drop them before the engine"
                )
            if n < 0:
                n = len(arr)
            elif len(arr) != n:
                raise StreamError(
                    f"batch {index}: column {name!r} has {len(arr)} rows, others have {n}"
                )
        return n

    def empty(self) -> dict[str, np.ndarray]:
        """A batch with no rows."""
        return {k: np.empty(0, v) for k, v in self._cols.items()}


YSB_EVENT_TYPES: tuple[str, ...] = ("view", "click", "purchase")
YSB_AD_TYPES: tuple[str, ...] = ("banner", "modal", "sponsored-search", "mail", "mobile")
YSB_VIEW = YSB_EVENT_TYPES.index("view")
YSB_CAMPAIGNS = 100
YSB_ADS_PER_CAMPAIGN = 10

YSB_SCHEMA = Schema(
    {
        "user_id": np.int64,
        "page_id": np.int64,
        "ad_id": np.int32,
        "ad_type": np.int8,
        "event_type": np.int8,
        "event_time": np.int64,
        "ip_address": np.uint32,
    },
    time="event_time",
    unit="ms",
    name="ysb",
)

# Field order and types as LightSaber's cluster-monitoring tuple (Google cluster trace).
CM_SCHEMA = Schema(
    {
        "timestamp": np.int64,
        "jobId": np.int64,
        "taskId": np.int64,
        "machineId": np.int64,
        "eventType": np.int32,
        "userId": np.int32,
        "category": np.int32,
        "priority": np.int32,
        "cpu": np.float32,
        "ram": np.float32,
        "disk": np.float32,
        "constraints": np.int32,
    },
    time="timestamp",
    unit="s",
    name="cm",
)

SG_SCHEMA = Schema(
    {
        "timestamp": np.int64,
        "value": np.float32,
        "property": np.int32,
        "plug": np.int32,
        "household": np.int32,
        "house": np.int32,
    },
    time="timestamp",
    unit="s",
    name="sg",
)

LRB_SCHEMA = Schema(
    {
        "timestamp": np.int64,
        "vehicle": np.int32,
        "speed": np.float32,
        "highway": np.int32,
        "lane": np.int32,
        "direction": np.int32,
        "position": np.int32,
    },
    time="timestamp",
    unit="s",
    name="lrb",
)
