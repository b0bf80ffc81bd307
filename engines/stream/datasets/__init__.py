"""Seeded generators of the stream benchmarks' events, as columnar numpy batches.

    >>> from wattspan.engines.stream import datasets
    >>> gen = datasets.generator("ysb", seed=1)          # rate: events per s of event time
    >>> for batch in gen.batches(50_000_000, chunk_rows=1 << 20):
    ...     ...                                          # dict[str, np.ndarray], 1 Mi rows
    >>> gen.ads["campaign_id"][batch["ad_id"]]           # YSB's ad -> campaign join

Same seed and parameters, same rows, however they are chunked. Each module documents its
columns, dtypes, code tables and skew: ``ysb``, ``cm``, ``sg``, ``lrb``.
"""

from __future__ import annotations

from typing import Any

from wattspan.engines.stream.datasets._common import (
    BLOCK_ROWS,
    DEFAULT_CHUNK_ROWS,
    Batch,
    Dataset,
)
from wattspan.engines.stream.datasets.cm import CM
from wattspan.engines.stream.datasets.lrb import LRB
from wattspan.engines.stream.datasets.sg import SG
from wattspan.engines.stream.datasets.ysb import YSB

DATASETS: dict[str, type[Dataset]] = {"ysb": YSB, "cm": CM, "sg": SG, "lrb": LRB}

__all__ = [
    "BLOCK_ROWS",
    "CM",
    "DATASETS",
    "DEFAULT_CHUNK_ROWS",
    "LRB",
    "SG",
    "YSB",
    "Batch",
    "Dataset",
    "generator",
]


def generator(name: str, seed: int = 0, **params: Any) -> Dataset:
    """The generator of dataset ``name`` (``ysb``, ``cm``, ``sg``, ``lrb``)."""
    try:
        cls = DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
    return cls(seed, **params)
