"""Parquet and CSV sources and sinks of the stream engine (engines/stream/io.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wattspan.engines.stream import io
from wattspan.engines.stream.datasets import generator

SCHEMA = {"t": np.int64, "k": np.int32, "v": np.float32, "c": np.int8}


def _data(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "t": np.arange(n, dtype=np.int64) // 3,
        "k": rng.integers(-5, 5, n).astype(np.int32),
        "v": rng.random(n).astype(np.float32),
        "c": rng.integers(0, 3, n).astype(np.int8),
    }


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_in_bounded_batches(tmp_path: Path, suffix: str) -> None:
    data = _data(10_007)
    path = tmp_path / f"d{suffix}"
    with io.open_sink(path, SCHEMA) as sink:
        for lo in range(0, 10_007, 3000):  # several writes: several row groups / appends
            sink.write({c: v[lo : lo + 3000] for c, v in data.items()})
    assert sink.rows == 10_007 and sink.bytes_written == path.stat().st_size > 0
    parts = list(io.read_batches(path, SCHEMA, batch_rows=1024))
    assert [len(p["t"]) for p in parts] == [1024] * 9 + [791]
    got = _joined(parts)
    assert list(got) == list(SCHEMA)
    for c, dt in SCHEMA.items():
        assert got[c].dtype == np.dtype(dt)
        assert np.array_equal(got[c], data[c]), c


def test_source_reads_only_the_schema_columns_in_schema_order(tmp_path: Path) -> None:
    data = _data(100)
    path = tmp_path / "d.parquet"
    io.write_table(path, {"extra": np.arange(100), **data})
    got = next(io.read_batches(path, {"c": np.int8, "t": np.int64}))
    assert list(got) == ["c", "t"] and np.array_equal(got["c"], data["c"])
    csv = tmp_path / "d.csv"
    io.write_table(csv, {"extra": np.arange(100), **data})
    got = next(io.read_batches(csv, {"v": np.float32, "k": np.int32}))
    assert list(got) == ["v", "k"] and np.array_equal(got["k"], data["k"])


def test_parquet_directory_is_read_in_name_order(tmp_path: Path) -> None:
    data = _data(900)
    for i, lo in enumerate(range(0, 900, 300)):
        io.write_table(
            tmp_path / f"part-{2 - i}.parquet", {c: v[lo : lo + 300] for c, v in data.items()}
        )
    got = _joined(list(io.read_batches(tmp_path, SCHEMA, batch_rows=128)))
    # part-0 holds the last third.
    assert np.array_equal(got["t"][:300], data["t"][600:])
    assert np.array_equal(got["t"][600:], data["t"][:300])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.parquet file"):
        list(io.read_batches(empty, SCHEMA))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_missing_column_is_named(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    data = _data(10)
    del data["k"]
    io.write_table(path, data)
    with pytest.raises(io.SchemaMismatch) as exc:
        list(io.read_batches(path, SCHEMA))
    assert str(exc.value) == f"{path}: missing column 'k'"


def test_wrong_parquet_dtype_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    data = _data(10)
    data["k"] = data["k"].astype(np.int64)
    io.write_table(path, data)
    with pytest.raises(io.SchemaMismatch) as exc:
        list(io.read_batches(path, SCHEMA))
    assert str(exc.value) == f"{path}: column 'k' is int64, the schema wants int32"
    strings = tmp_path / "s.parquet"
    pq.write_table(pa.table({"t": ["a", "b"]}), strings)
    with pytest.raises(io.SchemaMismatch, match="column 't' is string, the schema wants int64"):
        list(io.read_batches(strings, {"t": np.int64}))


def test_wrong_csv_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("t,k,v,c\n1,2,0.5,1\n2,oops,0.5,1\n")
    with pytest.raises(io.SchemaMismatch) as exc:
        list(io.read_batches(path, SCHEMA))
    msg = str(exc.value)
    assert msg.startswith(f"{path}: column 'k' does not parse as int32") and "oops" in msg
    assert "\n" not in msg
    # A value out of the dtype's range is a parse error too, not a silent wrap.
    path.write_text("t,k,v,c\n1,2,0.5,300\n")
    with pytest.raises(io.SchemaMismatch, match="column 'c' does not parse as int8"):
        list(io.read_batches(path, SCHEMA))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_nulls_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    t = pa.table(
        {"t": pa.array([1, None, 3], type=pa.int64()), "k": pa.array([1, 2, 3], pa.int32())}
    )
    io.write_table(path, t)
    with pytest.raises(io.SchemaMismatch, match="column 't' has 1 null value"):
        list(io.read_batches(path, {"t": np.int64, "k": np.int32}))


def test_sinks_take_frames_dicts_and_tables(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "window_start": np.array([0, 0, 10], dtype=np.int64),
            "campaign_id": [7, 9, 7],
            "count": np.array([3, 1, 2], dtype=np.int64),
        },
        index=[5, 6, 7],  # not written
    )
    for suffix in (".parquet", ".csv"):
        path = tmp_path / f"r{suffix}"
        with io.open_sink(path) as sink:
            sink.write(df)
            sink.write({c: df[c].to_numpy()[:1] for c in df.columns})
            sink.write(pa.table({c: df[c].to_numpy()[:1] for c in df.columns}))
        schema = {"window_start": np.int64, "campaign_id": np.int64, "count": np.int64}
        got = io.read_table(path, schema)
        assert list(got["count"]) == [3, 1, 2, 3, 3]
        assert list(got["campaign_id"]) == [7, 9, 7, 7, 7]
    with pytest.raises(TypeError, match="cannot write list"):
        io.open_sink(tmp_path / "x.csv").write([1, 2])


def test_empty_sink_still_writes_a_readable_file(tmp_path: Path) -> None:
    for suffix in (".parquet", ".csv"):
        path = tmp_path / f"e{suffix}"
        sink = io.open_sink(path, {"a": np.int64})
        assert sink.close() == path.stat().st_size > 0
        got = io.read_table(path, {"a": np.int64})
        assert got["a"].dtype == np.int64 and len(got["a"]) == 0


def test_metadata_and_unknown_types(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    with io.open_sink(path, {"a": np.int32}, metadata={"wattspan.seed": "4"}) as sink:
        sink.write({"a": np.arange(3)})  # int64 values cast to the sink's schema
    assert io.parquet_metadata(path) == {"wattspan.seed": "4"}
    assert pq.read_schema(path).field("a").type == pa.int32()
    with pytest.raises(ValueError, match=r"unknown file type '\.json'"):
        io.open_sink(tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"unknown file type '\.json'"):
        list(io.read_batches(tmp_path / "x.json", SCHEMA))
    with pytest.raises(ValueError, match="batch_rows must be a positive integer"):
        list(io.read_batches(path, {"a": np.int32}, batch_rows=0))


def test_rechunk_makes_exact_batches() -> None:
    parts = [{"a": np.arange(i, i + n)} for i, n in ((0, 5), (5, 0), (5, 17), (22, 3))]
    out = list(io.rechunk(parts, 8))
    assert [len(b["a"]) for b in out] == [8, 8, 8, 1]
    assert np.array_equal(np.concatenate([b["a"] for b in out]), np.arange(25))


def test_generated_events_stream_from_parquet_in_bounded_memory(tmp_path: Path) -> None:
    gen = generator("ysb", seed=2)
    path = tmp_path / "ysb.parquet"
    with io.open_sink(path, gen.schema) as sink:
        for b in gen.batches(1_600_000, chunk_rows=1 << 16):
            sink.write(b)
    pool = pa.default_memory_pool()
    rows = peak_batch = held = 0
    for b in io.read_batches(path, gen.schema, batch_rows=1 << 15):
        rows += len(b["ad_id"])
        peak_batch = max(peak_batch, len(b["ad_id"]))
        held = max(held, pool.bytes_allocated())
    assert rows == 1_600_000 and peak_batch == 1 << 15
    # While reading, arrow holds about one row group (64 Ki rows x 34 B), a few at most,
    # never the whole 54 MB of events.
    assert 0 < held < 12 << 20


def test_missing_pyarrow_gives_one_clear_line(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from wattspan.engines.stream import io\n"
        "try:\n    io.require_pyarrow()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Parquet and CSV I/O need pyarrow: pip install 'wattspan[stream]'"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['pyarrow'] = None\n"
            "from wattspan.cli import main; raise SystemExit(main(sys.argv[1:]))",
            "stream",
            "generate",
            "sg",
            "-n",
            "10",
            "-o",
            str(tmp_path / "x.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == "wattspan: Parquet and CSV I/O need pyarrow: pip install 'wattspan[stream]'"
    )
    assert not (tmp_path / "x.parquet").exists()
