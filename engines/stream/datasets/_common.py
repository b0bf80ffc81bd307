"""What every generator shares: fixed-size seeded blocks, re-chunking, timestamps, skew.

A dataset's rows are cut into blocks of ``BLOCK_ROWS``; block ``b`` draws from its own
``np.random.Generator`` seeded by ``(seed, dataset tag, b)``. So the rows depend on the seed
and the row index only, never on how a caller chunks them: 50M events streamed in chunks of
64 Ki rows equal the same 50M in chunks of 1 Mi rows, and any block can be made alone.
Static tables (YSB's ads, CM's jobs, ...) come from a separate stream of the same seed.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from wattspan.engines.stream.schema import Schema

Batch = dict[str, np.ndarray]

BLOCK_ROWS = 1 << 16
# Big enough to amortise numpy's per-call cost, small enough for caches and bounded memory.
DEFAULT_CHUNK_ROWS = 1 << 20
_STATIC = 0xFFFF_FFFF  # block index reserved for the static tables' stream
_UNITS_PER_SECOND = {"ms": 1000, "s": 1}


_ZIPF_HEAD = 256


def zipf_ranks(rng: np.random.Generator, n: int, s: float, size: int) -> np.ndarray:
    """``size`` ranks in ``[0, n)`` with P(rank = k) proportional to ``(k + 1) ** -s``
    (Zipf's law; ``s = 0`` is uniform; rank 0 is the most popular)."""
    return zipf_from_uniform(rng.random(size), n, s)


def _power_integral(a: float, b: float, s: float) -> float:
    if s == 1:
        return math.log(b / a)
    return (b ** (1 - s) - a ** (1 - s)) / (1 - s)


def _power_inverse(u: np.ndarray, a: float, b: float, s: float) -> np.ndarray:
    """x in [a, b) with density proportional to x**-s, at quantiles u."""
    if s == 1:
        return a * np.exp(u * math.log(b / a))
    e = 1.0 - s
    return (a**e + u * (b**e - a**e)) ** (1.0 / e)


_GUIDE = 1 << 14


@functools.lru_cache(maxsize=64)
def _zipf_head(n: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """The head's CDF (with a sentinel 2.0 after it, where the tail begins) and the guide:
    ``guide[j]`` is the rank of quantile ``j / _GUIDE``."""
    head = min(n, _ZIPF_HEAD)
    weights = np.arange(1, head + 1, dtype=np.float64) ** -s
    tail = _power_integral(head + 0.5, n + 0.5, s) if n > head else 0.0
    cdf = np.cumsum(weights) / (weights.sum() + tail)
    if n == head:
        cdf[-1] = 1.0
    cdf = np.append(cdf, 2.0)
    guide = np.searchsorted(cdf, np.arange(_GUIDE) / _GUIDE, side="right").astype(np.int64)
    return cdf, guide


def zipf_from_uniform(u: np.ndarray, n: int, s: float) -> np.ndarray:
    """``zipf_ranks`` at given uniforms in ``[0, 1)`` (e.g. ``unit_float(mix64(..))``).

    The 256 most popular ranks are drawn exactly (a search in their CDF); the tail from the
    continuous power law on ``[256.5, n + 0.5)``, rounded, which matches the discrete law
    there to well under 0.1 % and costs O(1) per draw whatever ``n``.
    """
    if n < 1:
        raise ValueError(f"need at least one key, got n={n}")
    if s < 0:
        raise ValueError(f"skew exponent must be >= 0, got {s}")
    head = min(n, _ZIPF_HEAD)
    cdf, guide = _zipf_head(n, float(s))
    # A guide table takes each draw to (almost) its rank; a step or two finishes the search,
    # an order of magnitude cheaper than np.searchsorted over the head.
    ranks = guide[(u * _GUIDE).astype(np.int64)]
    while True:
        step = cdf[ranks] <= u
        if not step.any():
            break
        ranks += step
    if n > head:
        in_tail = ranks >= head
        head_mass = cdf[head - 1]
        ut = (u[in_tail] - head_mass) / (1.0 - head_mass)
        x = _power_inverse(ut, head + 0.5, n + 0.5, s)
        ranks[in_tail] = np.floor(x + 0.5).astype(np.int64) - 1
    np.clip(ranks, 0, n - 1, out=ranks)
    return ranks


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64: a stateless hash, for attributes that must be the
    same wherever a key shows up (a vehicle's trip, a segment's congestion) without a table."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit_float(h: np.ndarray) -> np.ndarray:
    """Uniform floats in ``[0, 1)`` from 64-bit hashes (their top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def affine_bijection(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """``(a, b)`` with ``gcd(a, n) == 1``: ``(a * k + b) % n`` permutes ``[0, n)`` without a
    table, so popular ranks land on scattered ids (hot keys are not simply 0, 1, 2)."""
    if n == 1:
        return 1, 0
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a, int(rng.integers(0, n))


def apply_bijection(ranks: np.ndarray, ab: tuple[int, int], n: int) -> np.ndarray:
    a, b = ab
    if n > 3_000_000_000:  # a * rank must stay below 2**63
        raise ValueError(f"key space too large for the affine permutation: {n}")
    return (ranks * a + b) % n


def categorical(rng: np.random.Generator, probs: np.ndarray, size: int) -> np.ndarray:
    """Codes ``0..len(probs)-1`` drawn with the given probabilities (int64)."""
    cdf = np.cumsum(probs, dtype=np.float64)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(size), side="right").astype(np.int64)


def check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class Dataset(ABC):
    """A seeded generator of one benchmark's events, as columnar batches.

    Subclasses set the class attributes and implement ``_static`` (tables drawn once per
    seed) and ``_fill`` (one block's columns). ``rate`` is events per second of event time:
    row ``i`` has time ``start + i * time_unit // rate`` (non-decreasing, exact integers).
    """

    name: ClassVar[str]
    tag: ClassVar[int]  # separates the datasets' random streams for one seed
    schema: ClassVar[Schema]
    default_rate: ClassVar[int]

    @property
    def time_column(self) -> str:
        """The event-time column, as the schema names it."""
        return self.schema.time

    @property
    def time_unit(self) -> int:
        """Event-time units per second, from the schema's unit (1000: ms, 1: s)."""
        return _UNITS_PER_SECOND[self.schema.unit]

    def __init__(self, seed: int = 0, *, rate: int | None = None, start: int = 0) -> None:
        self.seed = check_count("seed", seed, minimum=0)
        self.rate = check_count("rate", self.default_rate if rate is None else rate)
        self.start = check_count("start", start, minimum=0)
        self._static(np.random.default_rng([self.seed, self.tag, _STATIC]))

    @abstractmethod
    def _static(self, rng: np.random.Generator) -> None:
        """Draw the tables every block shares (key permutations, per-key attributes)."""

    @abstractmethod
    def _fill(self, rng: np.random.Generator, idx: np.ndarray, ts: np.ndarray) -> Batch:
        """Columns for global rows ``idx`` (int64) at times ``ts``, in ``schema`` order."""

    def times(self, idx: np.ndarray) -> np.ndarray:
        return self.start + idx * self.time_unit // self.rate

    def block(self, b: int, rows: int = BLOCK_ROWS) -> Batch:
        """The first ``rows`` rows of block ``b`` (global rows ``b * BLOCK_ROWS`` on)."""
        lo = b * BLOCK_ROWS
        idx = np.arange(lo, lo + rows, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.tag, b])
        cols = self._fill(rng, idx, self.times(idx))
        return {c: np.ascontiguousarray(cols[c], dtype=dt) for c, dt in self.schema.items()}

    def batches(self, events: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Batch]:
        """``events`` rows in batches of ``chunk_rows`` (the last one shorter); memory stays
        around one chunk plus one block whatever ``events`` is."""
        events = check_count("events", events, minimum=0)
        chunk_rows = check_count("chunk_rows", chunk_rows)
        pending: list[Batch] = []
        have = 0
        nblocks = -(-events // BLOCK_ROWS)
        for b in range(nblocks):
            rows = min(BLOCK_ROWS, events - b * BLOCK_ROWS)
            pending.append(self.block(b, rows))
            have += rows
            while have >= chunk_rows:
                chunk, rest = _split(_concat(pending), chunk_rows)
                yield chunk
                pending = [rest] if len(rest[self.time_column]) else []
                have -= chunk_rows
        if have:
            yield _concat(pending)

    def take(self, events: int) -> Batch:
        """All ``events`` rows as one batch (for small sizes and tests)."""
        out = list(self.batches(events, chunk_rows=max(1, events)))
        return out[0] if out else {c: np.empty(0, dtype=dt) for c, dt in self.schema.items()}

    def bytes_per_event(self) -> int:
        return sum(np.dtype(dt).itemsize for dt in self.schema.values())


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def _split(batch: Batch, n: int) -> tuple[Batch, Batch]:
    return {c: v[:n] for c, v in batch.items()}, {c: v[n:] for c, v in batch.items()}
