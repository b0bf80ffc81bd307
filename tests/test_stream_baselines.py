"""The YSB baselines bench_stream compares against: pandas and Spark Structured Streaming
(local[2]) give the same counts as an independent numpy reference on the same events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench._stream_baselines import (
    RESULT_COLUMNS,
    numpy_ysb_reference,
    pandas_ysb,
    spark_session,
    spark_ysb,
    write_parquet_parts,
)
from wattspan.engines.stream import io
from wattspan.engines.stream.datasets import YSB

pytestmark = pytest.mark.server

# 40 s of event time at 1,000 events/s: 4 full windows and files that end mid-window.
EVENTS, RATE, FILE_ROWS = 40_000, 1_000, 15_000


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    s = spark_session(cores=2, app="wattspan-test-ysb")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ysb() -> YSB:
    return YSB(seed=11, rate=RATE)


def test_pandas_equals_numpy_reference(ysb: YSB) -> None:
    whole = ysb.take(EVENTS)
    ref = numpy_ysb_reference(whole, ysb.ads)
    got = pandas_ysb(ysb.batches(EVENTS, chunk_rows=7_777), ysb.ads)  # windows cut by chunks
    assert list(got.columns) == RESULT_COLUMNS
    assert all(got[c].dtype == np.int64 for c in RESULT_COLUMNS)
    pd.testing.assert_frame_equal(got, ref)
    assert got["count"].sum() == np.sum(whole["event_type"] == 0)
    assert sorted(got["window_start"].unique()) == [0, 10_000, 20_000, 30_000]
    assert np.all(got["window_end"] - got["window_start"] == 10_000)
    assert got.groupby("window_start").size().tolist() == [100] * 4
    assert pandas_ysb([], ysb.ads).empty


def test_spark_structured_streaming_equals_pandas(spark: Any, ysb: YSB, tmp_path: Path) -> None:
    files = write_parquet_parts(ysb.batches(EVENTS, chunk_rows=4096), tmp_path, FILE_ROWS)
    assert files == 3
    # The parts hold the events in order, as the engine's own source reads them.
    back = io.read_table(tmp_path, ysb.schema)
    assert all(np.array_equal(back[c], v) for c, v in ysb.take(EVENTS).items())
    res = spark_ysb(spark, tmp_path, ysb.ads, files_per_trigger=1)
    assert res.events == EVENTS
    assert res.micro_batches == files  # one file per micro-batch: a real stream
    assert res.seconds > 0 and res.events_per_s == EVENTS / res.seconds
    expect = pandas_ysb(ysb.batches(EVENTS), ysb.ads)
    pd.testing.assert_frame_equal(res.counts, expect)
