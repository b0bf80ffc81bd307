"""balanced_repartition on real Spark (local[2], one session for the module).

The workload: 128 keys of 200 records each, a record of key k costing (k+1)^3 units: equal
counts per key, cost growing steeply with the key. ``repartitionByRange`` balances counts
and so leaves the top range with most of the cost; hash partitioning spreads the few heavy
keys by chance. The cost-balanced plan must balance both its own estimate and the cost
measured over every record of each partition it actually made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("pyspark")

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from wattspan.engines.spark.partition import balanced_repartition, plan_balanced

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

KEYS, PER_KEY, PARTITIONS = 128, 200, 8


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = (
        SparkSession.builder.master("local[2]")
        .appName("test_spark_partition")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def data(spark: SparkSession) -> DataFrame:
    return spark.range(KEYS * PER_KEY).select("id", (F.col("id") % KEYS).alias("k")).cache()


def cost_col() -> Column:
    return F.pow(F.col("k") + 1, 3)


def measured(df: DataFrame, partitions: int = PARTITIONS) -> list[float]:
    """The true cost of each partition Spark made: the cost of every record in it."""
    rows = df.groupBy(F.spark_partition_id().alias("p")).agg(F.sum(cost_col()).alias("c"))
    got = {r["p"]: float(r["c"]) for r in rows.collect()}
    assert set(got) <= set(range(partitions))
    return [got.get(i, 0.0) for i in range(partitions)]


def imbalance(costs: list[float]) -> float:
    return max(costs) / (sum(costs) / len(costs))


def test_cost_is_balanced_where_hash_and_range_are_not(data: DataFrame) -> None:
    plan = plan_balanced(data, "k", cost_col(), PARTITIONS, sample_fraction=0.25, seed=7)
    assert len(plan.boundaries) == PARTITIONS - 1
    assert plan.boundaries == sorted(set(plan.boundaries))
    # The estimate, from the sample, is balanced...
    assert plan.estimated_imbalance < 1.15
    got = measured(plan.apply(data))
    mean = sum(got) / PARTITIONS
    # ...and so is the cost measured over every record of each partition actually made,
    # which is close to the estimate partition by partition.
    assert imbalance(got) < 1.2
    for est, real in zip(plan.estimated_costs, got, strict=True):
        assert abs(est - real) < 0.15 * mean
    hashed = imbalance(measured(data.repartition(PARTITIONS, "k")))
    ranged = imbalance(measured(data.repartitionByRange(PARTITIONS, "k")))
    assert hashed > 1.3 * imbalance(got)
    assert ranged > 2.0 * imbalance(got)


def test_every_row_kept_once_and_in_its_planned_partition(data: DataFrame) -> None:
    plan = plan_balanced(data, "k", cost_col(), PARTITIONS, sample_fraction=0.25, seed=7)
    out = plan.apply(data, keep_column="planned")
    assert out.rdd.getNumPartitions() == PARTITIONS
    rows = out.select("id", "k", "planned", F.spark_partition_id().alias("p")).collect()
    assert sorted(r["id"] for r in rows) == list(range(KEYS * PER_KEY))
    for r in rows:
        assert r["p"] == r["planned"] == plan.partition_of(r["k"])
    assert balanced_repartition(data, "k", cost_col(), PARTITIONS).columns == data.columns


def test_python_cost_function_of_row_or_key(data: DataFrame) -> None:
    by_col = plan_balanced(data, "k", cost_col(), PARTITIONS, sample_fraction=0.25, seed=3)
    by_row = plan_balanced(
        data, "k", lambda row: (row["k"] + 1) ** 3, PARTITIONS, sample_fraction=0.25, seed=3
    )
    by_key = plan_balanced(
        data,
        "k",
        lambda k: (k + 1) ** 3,
        PARTITIONS,
        sample_fraction=0.25,
        seed=3,
        cost_arg="key",
    )
    assert by_row.boundaries == by_col.boundaries == by_key.boundaries
    assert by_row.estimated_costs == pytest.approx(by_col.estimated_costs)
    assert imbalance(measured(by_row.apply(data))) < 1.2


def test_string_keys_nulls_and_a_key_heavier_than_a_share(spark: SparkSession) -> None:
    rows = [(f"k{i:03d}", 1.0) for i in range(300)] + [("hot", 500.0)] * 2 + [(None, 1.0)] * 5
    df = spark.createDataFrame(rows, "k string, c double")
    plan = plan_balanced(df, "k", F.col("c"), 4, sample_fraction=1.0)
    # "hot" (1000 of 1305 units) cannot be split: it gets a range of its own (with the
    # nulls, which go to partition 0 as the smallest key does) and the other three share
    # the rest.
    assert plan.partition_of("hot") not in {plan.partition_of(f"k{i:03d}") for i in range(300)}
    assert plan.partition_of(None) == 0
    out = plan.apply(df, keep_column="planned")
    got = out.select("k", "planned", F.spark_partition_id().alias("p")).collect()
    assert len(got) == len(rows)
    assert sorted((r["k"] or "") for r in got) == sorted((k or "") for k, _ in rows)
    assert all(r["p"] == r["planned"] == plan.partition_of(r["k"]) for r in got)
    costs = plan.estimated_costs
    assert plan.partition_of("hot") == 0
    assert costs[0] == pytest.approx(1005.0)
    assert costs[1:] == pytest.approx([100.0] * 3)


def test_a_tiny_sample_reads_the_whole_data(spark: SparkSession) -> None:
    df = spark.range(40).select((F.col("id") % 10).alias("k"))
    plan = plan_balanced(df, "k", F.lit(1.0), 5, sample_fraction=0.001, seed=1)
    assert plan.sampled_records == 40
    assert plan.estimated_costs == pytest.approx([8.0] * 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"partitions": 0}, "partitions must be a positive integer"),
        ({"partitions": 2.5}, "partitions must be a positive integer"),
        ({"sample_fraction": 0.0}, "sample_fraction must be in (0, 1]"),
        ({"sample_fraction": 1.5}, "sample_fraction must be in (0, 1]"),
        ({"cost_arg": "value"}, "cost_arg must be 'row' or 'key'"),
    ],
)
def test_bad_arguments_give_one_clear_error(
    data: DataFrame, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"partitions": 4, "sample_fraction": 0.1, **kwargs}
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        plan_balanced(data, "k", cost_col(), **args)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost must be a Column or a function"):
        plan_balanced(data, "k", 3, 4)  # type: ignore[arg-type]
