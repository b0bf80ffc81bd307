"""YSB baselines for bench_stream.py: pandas, and Spark Structured Streaming on local[2].

Both compute the YSB query (keep views, join ad_id -> campaign_id, count per campaign per
10 s tumbling window of event time) and return the counts in the stream engine's result
format (``window_start, window_end, campaign_id, count``; ms; sorted by window then
campaign), so the bench can check they equal the engine's.

- ``pandas_ysb(batches, ads)``: one pandas pipeline per in-memory batch (DataFrame, filter,
  ``merge`` with the ads table, group by window and campaign), partial counts summed at the
  end, as a pandas user streaming chunks would write it.
- ``spark_ysb(spark, events_dir, ads)``: a streaming query over a directory of Parquet files
  (``write_parquet_parts``), the file source reading ``files_per_trigger`` files per
  micro-batch, a broadcast stream-static join, ``window(ts, "10 seconds")`` with a
  watermark (state of closed windows is dropped), update mode into the memory sink,
  ``trigger(availableNow=True)``. Timed from ``start()`` to termination: Spark's engine
  reading, decoding, joining, aggregating and checkpointing, not its JVM start. Run it once
  on a small input first to warm the JVM (codegen, class loading).

    python bench/_stream_baselines.py [--events 5M] [--files 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattspan.engines.stream.datasets.ysb import SCHEMA, VIEW, WINDOW_MS, YSB

Batch = Mapping[str, np.ndarray]
RESULT_COLUMNS = ["window_start", "window_end", "campaign_id", "count"]


def _finish(counts: pd.Series, window_ms: int) -> pd.DataFrame:
    out = counts.rename("count").reset_index()
    out["window_start"] = out["window_start"].astype(np.int64)
    out["window_end"] = out["window_start"] + window_ms
    out["campaign_id"] = out["campaign_id"].astype(np.int64)
    out["count"] = out["count"].astype(np.int64)
    return out[RESULT_COLUMNS].sort_values(["window_start", "campaign_id"], ignore_index=True)


def pandas_ysb(batches: Iterable[Batch], ads: Batch, window_ms: int = WINDOW_MS) -> pd.DataFrame:
    """YSB counts with pandas, batch by batch."""
    ads_df = pd.DataFrame({"ad_id": ads["ad_id"], "campaign_id": ads["campaign_id"]})
    partials = []
    for batch in batches:
        df = pd.DataFrame(batch)
        views = df[df["event_type"] == VIEW]
        joined = views.merge(ads_df, on="ad_id", how="inner")
        joined["window_start"] = joined["event_time"] // window_ms * window_ms
        partials.append(joined.groupby(["window_start", "campaign_id"]).size())
    if not partials:
        return pd.DataFrame({c: pd.Series(dtype=np.int64) for c in RESULT_COLUMNS})
    total = pd.concat(partials).groupby(level=[0, 1]).sum()
    return _finish(total, window_ms)


def numpy_ysb_reference(batch: Batch, ads: Batch, window_ms: int = WINDOW_MS) -> pd.DataFrame:
    """The same counts by sorting keys with numpy: a third, independent path for tests."""
    keep = batch["event_type"] == VIEW
    win = batch["event_time"][keep] // window_ms * window_ms
    camp = ads["campaign_id"][batch["ad_id"][keep]]
    keys, counts = np.unique(np.stack([win, camp]), axis=1, return_counts=True)
    s = pd.Series(
        counts, index=pd.MultiIndex.from_arrays(keys, names=["window_start", "campaign_id"])
    )
    return _finish(s, window_ms)


# --- Spark Structured Streaming -----------------------------------------------------------


def spark_session(cores: int = 2, app: str = "wattspan-ysb-baseline") -> Any:
    """A ``local[cores]`` session tuned as a fair user would: shuffle partitions = cores
    (not 200 for 100 groups), no UI, quiet logs, UTC."""
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app)
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.streaming.numRecentProgressUpdates", "10000")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def write_parquet_parts(batches: Iterable[Batch], directory: Path, rows_per_file: int) -> int:
    """The events as ``part-00000.parquet``... of ``rows_per_file`` rows (the Spark file
    source's unit); returns the number of files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    pending: list[pa.Table] = []
    rows = 0

    def flush(tables: list[pa.Table]) -> None:
        nonlocal n
        pq.write_table(pa.concat_tables(tables), directory / f"part-{n:05d}.parquet")
        n += 1

    for batch in batches:
        t = pa.table({c: np.asarray(v) for c, v in batch.items()})
        while t.num_rows:
            take = min(rows_per_file - rows, t.num_rows)
            pending.append(t.slice(0, take))
            rows += take
            t = t.slice(take)
            if rows == rows_per_file:
                flush(pending)
                pending, rows = [], 0
    if pending:
        flush(pending)
    return n


def _spark_schema() -> Any:
    from pyspark.sql import types as T

    spark_of = {
        np.dtype(np.int64): T.LongType(),
        np.dtype(np.int32): T.IntegerType(),
        np.dtype(np.int8): T.ByteType(),
        np.dtype(
            np.uint32
        ): T.LongType(),  # Spark has no unsigned types; Parquet UINT_32 reads as long
    }
    return T.StructType([T.StructField(c, spark_of[dt], False) for c, dt in SCHEMA.items()])


@dataclass
class SparkResult:
    events: int  # input rows Spark's progress reports counted
    seconds: float  # start() to termination
    micro_batches: int
    counts: pd.DataFrame
    progress: list[dict[str, Any]]  # the query's progress reports (durationMs per phase...)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def spark_ysb(
    spark: Any,
    events_dir: Path,
    ads: Batch,
    *,
    files_per_trigger: int = 1,
    window_ms: int = WINDOW_MS,
    watermark: str = "1 second",
) -> SparkResult:
    """Run YSB as a Structured Streaming query over ``events_dir``'s Parquet files."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    ads_sdf = spark.createDataFrame(
        list(zip(ads["ad_id"].tolist(), ads["campaign_id"].tolist(), strict=True)),
        T.StructType(
            [T.StructField("ad_id", T.IntegerType()), T.StructField("campaign_id", T.LongType())]
        ),
    )
    name = f"ysb_{uuid.uuid4().hex[:12]}"
    checkpoint = Path(tempfile.mkdtemp(prefix="wattspan-spark-ysb-"))
    events = (
        spark.readStream.schema(_spark_schema())
        .option("maxFilesPerTrigger", files_per_trigger)
        .parquet(str(events_dir))
    )
    counts = (
        events.where(F.col("event_type") == VIEW)
        .join(F.broadcast(ads_sdf), "ad_id")
        .withColumn("ts", F.timestamp_millis("event_time"))
        .withWatermark("ts", watermark)
        .groupBy(F.window("ts", f"{window_ms} milliseconds"), "campaign_id")
        .count()
    )
    try:
        t0 = time.perf_counter()
        query = (
            counts.writeStream.outputMode("update")
            .format("memory")
            .queryName(name)
            .option("checkpointLocation", str(checkpoint))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        seconds = time.perf_counter() - t0
        if query.exception() is not None:
            raise RuntimeError(f"the Spark YSB query failed: {query.exception()}")
        progress = query.recentProgress
        rows = spark.sql(
            f"SELECT unix_millis(window.start) AS window_start, campaign_id, count FROM {name}"
        ).collect()
        pdf = pd.DataFrame(
            [tuple(r) for r in rows], columns=["window_start", "campaign_id", "count"]
        ).astype(np.int64)
        spark.catalog.dropTempView(name)
    finally:
        shutil.rmtree(checkpoint, ignore_errors=True)
    # Update mode appends a window's count each time it grows: its final count is the max.
    final = pdf.groupby(["window_start", "campaign_id"])["count"].max()
    return SparkResult(
        events=int(sum(p["numInputRows"] for p in progress)),
        seconds=seconds,
        micro_batches=sum(1 for p in progress if p["numInputRows"] > 0),
        counts=_finish(final, window_ms),
        progress=progress,
    )


def main() -> int:
    from wattspan.cli.stream_cmd import parse_count

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=parse_count, default=5_000_000)
    ap.add_argument("--files", type=int, default=10, help="Parquet files (micro-batches)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    gen = YSB(args.seed)
    batches = list(gen.batches(args.events))
    t0 = time.perf_counter()
    pdf = pandas_ysb(batches, gen.ads)
    tp = time.perf_counter() - t0
    print(f"pandas: {args.events / tp / 1e6:.2f} M events/s ({tp:.2f} s, {len(pdf)} counts)")
    with tempfile.TemporaryDirectory(prefix="wattspan-ysb-") as tmp:
        warm, full = Path(tmp) / "warm", Path(tmp) / "full"
        write_parquet_parts(YSB(args.seed + 1).batches(200_000), warm, 50_000)
        write_parquet_parts(batches, full, -(-args.events // args.files))
        spark = spark_session()
        try:
            spark_ysb(spark, warm, YSB(args.seed + 1).ads)
            res = spark_ysb(spark, full, gen.ads)
        finally:
            spark.stop()
    same = res.counts.equals(pdf)
    print(
        f"spark SS local[2]: {res.events_per_s / 1e6:.3f} M events/s ({res.seconds:.2f} s, "
        f"{res.micro_batches} micro-batches, {res.events:,} rows); counts equal pandas: {same}"
    )
    print(f"pandas throughput / Spark SS throughput: {tp and (res.seconds / tp):.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
