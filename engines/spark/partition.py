"""Cost-balanced partitioning on Spark: SkewReduce's planner for DataFrames.

Spark balances what it can count: ``repartition(n, key)`` spreads keys by hash and
``repartitionByRange(n, key)`` cuts key ranges of equal record counts. When the cost of a
record depends on its content (SkewReduce's point: a cell of dense particles costs more
than a sparse one of the same size), equal counts are not equal work, and the stage waits
for its most expensive partition. :func:`balanced_repartition` instead

1. samples the data (``sample_fraction``, ``seed``),
2. evaluates the user's cost function on every sampled record, on the executors: a Column
   expression, or a Python function of the record (``cost_arg="row"``) or of its key
   (``cost_arg="key"``),
3. sums the cost per sampled key and cuts the key order into ranges of near-equal cost
   (weighted quantiles of the key by cost, chosen so that the costliest range is as cheap
   as any cut into key ranges allows: a key heavier than an equal share gets a range to
   itself and the others share the rest), and
4. repartitions by those key ranges: each record gets the id of its range, found by a
   balanced tree of comparisons (log2(partitions) per record), and the shuffle sends range
   ``i`` to partition ``i`` exactly.

Step 4's exactness: Spark's hash partitioning puts a value ``v`` in partition
``pmod(hash(v), n)``, so the range id written into the shuffle column is not ``i`` itself but
a number whose hash lands on ``i`` (found once per plan with Spark's own ``hash``): no two
ranges share a partition by a hash collision, and adaptive execution does not coalesce a
repartition whose partition count is given.

Limits: a key range is the unit, so all records of one key stay together (a single key
heavier than ``total / partitions`` bounds the balance from below). Keys must be orderable
by Spark (numbers, strings, dates, timestamps); null keys go to partition 0. The driver
holds at most ``max_sample_keys`` distinct sampled keys: past that, a uniform sample of them
(reservoir), so its memory is bounded however large the data.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Row, SparkSession

__all__ = ["BalancedPlan", "balanced_repartition", "plan_balanced"]

#: distinct sampled keys kept on the driver (reservoir past it)
MAX_SAMPLE_KEYS = 200_000

_KEY = "__wattspan_key"
_COST = "__wattspan_cost"
_SLOT = "__wattspan_partition"

CostFunction = Callable[[Any], float]


@dataclass(frozen=True)
class BalancedPlan:
    """Key-range boundaries chosen to equalise the estimated cost per partition.

    Partition ``i`` holds the keys ``k`` with ``boundaries[i-1] < k <= boundaries[i]`` (the
    first from below, the last up); there may be fewer boundaries than ``partitions - 1``
    when the sample had fewer distinct keys, and the partitions past them are empty.
    """

    key: str | Column
    partitions: int
    boundaries: list[Any]
    #: estimated cost of each partition over the whole data (sampled cost / sampling rate)
    estimated_costs: list[float]
    #: sampled records and the distinct keys among them (before any reservoir)
    sampled_records: int
    sampled_keys: int
    #: per partition i, a value whose Spark hash lands on partition i (see the module doc)
    slots: list[int] = field(repr=False)

    @property
    def estimated_imbalance(self) -> float:
        """Max over mean of :attr:`estimated_costs` (1.0 is perfect; nan when no cost)."""
        total = sum(self.estimated_costs)
        if total <= 0:
            return math.nan
        return max(self.estimated_costs) / (total / self.partitions)

    def partition_of(self, key_value: Any) -> int:
        """The partition this plan sends a key to (the same rule as :meth:`partition_id`)."""
        if key_value is None:
            return 0
        return bisect.bisect_left(self.boundaries, key_value)

    def partition_id(self) -> Column:
        """A Column evaluating to each record's partition index (0 .. partitions-1)."""
        return self._tree(list(range(self.partitions)))

    def apply(self, df: DataFrame, *, keep_column: str | None = None) -> DataFrame:
        """``df`` repartitioned into this plan's key ranges; with ``keep_column``, each row
        also carries its partition index under that name."""
        from pyspark.sql import functions as F

        slotted = df.withColumn(_SLOT, self._tree(self.slots).cast("bigint"))
        out = slotted.repartition(self.partitions, F.col(_SLOT))
        if keep_column is not None:
            out = out.withColumn(keep_column, self.partition_id())
        return out.drop(_SLOT)

    def _tree(self, values: Sequence[int]) -> Column:
        """values[partition of the key], as nested comparisons against the boundaries."""
        from pyspark.sql import functions as F

        key = _key_column(self.key)
        bounds = self.boundaries

        def build(lo: int, hi: int) -> Column:
            # Buckets lo..hi: bucket j holds keys in (bounds[j-1], bounds[j]].
            if lo == hi:
                return F.lit(values[lo])
            mid = (lo + hi) // 2
            return F.when(key <= F.lit(bounds[mid]), build(lo, mid)).otherwise(build(mid + 1, hi))

        return F.when(key.isNull(), F.lit(values[0])).otherwise(build(0, len(bounds)))


def _key_column(key: str | Column) -> Column:
    from pyspark.sql import functions as F

    return F.col(key) if isinstance(key, str) else key


def _check(partitions: int, sample_fraction: float, cost_arg: str, max_sample_keys: int) -> None:
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive integer, got {partitions!r}")
    if not (isinstance(sample_fraction, int | float) and 0.0 < sample_fraction <= 1.0):
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction!r}")
    if cost_arg not in ("row", "key"):
        raise ValueError(f"cost_arg must be 'row' or 'key', got {cost_arg!r}")
    if max_sample_keys < 1:
        raise ValueError(f"max_sample_keys must be positive, got {max_sample_keys!r}")


def _sampled_costs(
    sample: DataFrame, key: str | Column, cost: Column | CostFunction, cost_arg: str
) -> DataFrame:
    """(key, cost) of every sampled record, computed on the executors."""
    from pyspark.sql import Column
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StructField, StructType

    keyed = sample.select(_key_column(key).alias(_KEY), F.struct(*sample.columns).alias("r"))
    if isinstance(cost, Column):
        return sample.select(_key_column(key).alias(_KEY), cost.cast("double").alias(_COST))
    if not callable(cost):
        raise TypeError(f"cost must be a Column or a function, got {type(cost).__name__}")
    fn = cost
    by_key = cost_arg == "key"

    def evaluate(row: Row) -> tuple[Any, float]:
        k = row[0]
        return k, float(fn(k) if by_key else fn(row[1]))

    schema = StructType([keyed.schema[_KEY], StructField(_COST, DoubleType(), nullable=False)])
    spark = sample.sparkSession
    return spark.createDataFrame(keyed.rdd.map(evaluate), schema)


def _reservoir(rows: Any, limit: int, seed: int | None) -> tuple[list[tuple[Any, float]], int, int]:
    """Up to ``limit`` (key, cost) pairs drawn uniformly from the stream ``rows`` of
    (key, cost sum, records); also how many records and keys it held."""
    rng = random.Random(seed)
    kept: list[tuple[Any, float]] = []
    records = keys = 0
    for k, c, n in rows:
        records += n
        keys += 1
        item = (k, float(c or 0.0))
        if len(kept) < limit:
            kept.append(item)
        else:
            j = rng.randrange(keys)
            if j < limit:
                kept[j] = item
    return kept, records, keys


def _cut(pairs: list[tuple[Any, float]], partitions: int) -> tuple[list[Any], list[float]]:
    """Boundaries and per-partition cost: the costliest partition as cheap as key ranges
    allow (the stage's wall time when each partition has a task slot), the others as near
    an equal share of the rest as that leaves.

    The least capacity C for which partitions filled in key order up to C hold every key is
    found by bisection (the linear partition problem); then each partition in turn ends
    where its running cost is nearest an equal share of what is left, but never past C and
    never so early that the rest no longer fits into the partitions after it at C.
    """
    pairs.sort(key=lambda p: p[0])
    keys = [k for k, _ in pairs]
    prefix = [0.0]
    for _, c in pairs:
        prefix.append(prefix[-1] + max(c, 0.0))
    n, total = len(keys), prefix[-1]
    if n == 0 or total <= 0.0:
        # No cost seen: equal key counts are as good as any split.
        step = n / partitions
        bounds = [keys[int((i + 1) * step) - 1] for i in range(partitions - 1) if step >= 1]
        return sorted(set(bounds)), [0.0] * partitions
    slack = total * 1e-12

    def fits(cap: float) -> bool:
        pos = 0
        for _ in range(partitions):
            pos = bisect.bisect_right(prefix, prefix[pos] + cap + slack, pos) - 1
            if pos == n:
                return True
        return False

    lo = max(max(prefix[i + 1] - prefix[i] for i in range(n)), total / partitions)
    hi = total
    if not fits(lo):
        while hi - lo > total * 1e-9:
            mid = (lo + hi) / 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
        lo = hi
    cap = lo + slack
    # first[m]: the earliest key the last m partitions can start at and still hold the rest.
    first = [n]
    for _ in range(partitions):
        first.append(bisect.bisect_left(prefix, prefix[first[-1]] - cap))
    ends: list[int] = []
    pos = 0
    for part in range(partitions):
        if pos == n:
            break
        left = partitions - part
        if left == 1:
            ends.append(n)
            break
        latest = bisect.bisect_right(prefix, prefix[pos] + cap, pos) - 1
        target = prefix[pos] + (total - prefix[pos]) / left
        j = bisect.bisect_left(prefix, target, pos + 1)
        if j > n or (j > pos + 1 and target - prefix[j - 1] <= prefix[j] - target):
            j -= 1
        pos = min(max(j, pos + 1, first[left - 1]), latest)
        ends.append(pos)
    bounds = [keys[e - 1] for e in ends[:-1]]
    starts = [0, *ends[:-1]]
    sums = [prefix[e] - prefix[s] for s, e in zip(starts, ends, strict=True)]
    sums.extend([0.0] * (partitions - len(sums)))
    return bounds, sums


def _slots(spark: SparkSession, partitions: int) -> list[int]:
    """For each partition i, the smallest non-negative bigint v with pmod(hash(v), n) == i
    (the partition Spark's hash partitioning gives v), found with Spark's own hash."""
    from pyspark.sql import functions as F

    found: dict[int, int] = {}
    start, size = 0, 16 * partitions + 64
    while len(found) < partitions:
        rows = (
            spark.range(start, start + size)
            .select(F.col("id"), F.expr(f"pmod(hash(id), {partitions})").alias("p"))
            .groupBy("p")
            .agg(F.min("id").alias("id"))
            .collect()
        )
        for r in rows:
            found.setdefault(int(r["p"]), int(r["id"]))
        start += size
        size *= 2
    return [found[i] for i in range(partitions)]


def plan_balanced(
    df: DataFrame,
    key: str | Column,
    cost: Column | CostFunction,
    partitions: int,
    sample_fraction: float = 0.05,
    seed: int | None = 0,
    *,
    cost_arg: Literal["row", "key"] = "row",
    max_sample_keys: int = MAX_SAMPLE_KEYS,
) -> BalancedPlan:
    """Samples ``df``, evaluates ``cost`` per sampled record and chooses key-range
    boundaries that equalise the estimated cost of ``partitions`` partitions.

    Args:
        df: the data.
        key: the column (name or expression) whose ranges make the partitions.
        cost: a Column expression of a record's cost, or a Python function given the
            record (a ``Row`` of ``df``'s columns) or, with ``cost_arg="key"``, its key
            value; any non-negative unit (seconds, operations...), only ratios matter.
        partitions: how many partitions to make.
        sample_fraction: share of the records sampled, in (0, 1]; when the sample holds
            fewer records than ``partitions``, the whole data is read instead.
        seed: the sample's seed (None: a different sample each call).
        max_sample_keys: distinct sampled keys the driver holds at most.

    Raises ValueError (one line) on a bad argument.
    """
    from pyspark.sql import functions as F

    _check(partitions, sample_fraction, cost_arg, max_sample_keys)
    fraction = float(sample_fraction)
    while True:
        sample = df if fraction >= 1.0 else df.sample(False, fraction, seed)
        per_key = (
            _sampled_costs(sample, key, cost, cost_arg)
            .groupBy(_KEY)
            .agg(F.sum(_COST).alias(_COST), F.count(F.lit(1)).alias("n"))
        )
        stream = ((r[0], r[1], r[2]) for r in per_key.toLocalIterator())
        kept, records, keys = _reservoir(stream, max_sample_keys, seed)
        if records >= partitions or fraction >= 1.0:
            break
        fraction = 1.0
    nonnull = [(k, c) for k, c in kept if k is not None]
    nulls = math.fsum(c for k, c in kept if k is None)
    if nonnull:
        # Null keys go to partition 0 with the smallest key: cut as if that key cost both.
        low = min(range(len(nonnull)), key=lambda i: nonnull[i][0])
        nonnull[low] = (nonnull[low][0], nonnull[low][1] + nulls)
        bounds, sums = _cut(nonnull, partitions)
    else:
        bounds, sums = [], [nulls] + [0.0] * (partitions - 1)
    scale = (keys / len(kept) if kept else 1.0) / fraction
    return BalancedPlan(
        key=key,
        partitions=partitions,
        boundaries=bounds,
        estimated_costs=[s * scale for s in sums],
        sampled_records=records,
        sampled_keys=keys,
        slots=_slots(df.sparkSession, partitions),
    )


def balanced_repartition(
    df: DataFrame,
    key: str | Column,
    cost: Column | CostFunction,
    partitions: int,
    sample_fraction: float = 0.05,
    seed: int | None = 0,
    *,
    cost_arg: Literal["row", "key"] = "row",
    max_sample_keys: int = MAX_SAMPLE_KEYS,
) -> DataFrame:
    """``df`` repartitioned into ``partitions`` key ranges of equal estimated cost.

    The arguments are :func:`plan_balanced`'s; use it directly to see the boundaries and
    the estimated cost per partition. Every record is kept once; the columns are ``df``'s.
    """
    plan = plan_balanced(
        df,
        key,
        cost,
        partitions,
        sample_fraction,
        seed,
        cost_arg=cost_arg,
        max_sample_keys=max_sample_keys,
    )
    return plan.apply(df)
