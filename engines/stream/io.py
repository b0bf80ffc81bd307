"""Parquet and CSV sources and sinks for the stream engine (pyarrow, the ``stream`` extra).

Sources yield columnar batches (``dict[str, np.ndarray]``, schema order) of at most
``batch_rows`` rows, reading the file incrementally, so memory stays around one batch
whatever the file's size. Each column is checked against the schema (a mapping column ->
numpy dtype): a missing column, another dtype or a null raises ``SchemaMismatch`` naming
the column and the file. Columns the schema does not name are not read.

Sinks take window results as a pandas DataFrame, a dict of arrays or a pyarrow table or
batch, append them as they come (one Parquet row group per write) and report the bytes
written on ``close()``.

    >>> for batch in read_batches("ysb.parquet", YSB_SCHEMA, batch_rows=1 << 20): ...
    >>> with open_sink("counts.csv") as sink:
    ...     sink.write(result_frame)
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from wattspan.engines.stream.errors import StreamError

Batch = dict[str, np.ndarray]
SchemaLike = Mapping[str, Any]  # column -> anything np.dtype() accepts

DEFAULT_BATCH_ROWS = 1 << 20
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)


class SchemaMismatch(StreamError):
    """A source's column is missing, of another dtype, or holds nulls."""


def require_pyarrow() -> ModuleType:
    """``pyarrow``, or one clear ImportError saying how to get it."""
    try:
        import pyarrow
    except ImportError:
        raise ImportError(
            "Parquet and CSV I/O need pyarrow: pip install 'wattspan[stream]'"
        ) from None
    return pyarrow


def _schema(schema: SchemaLike) -> dict[str, np.dtype]:
    if not schema:
        raise ValueError("the schema names no column")
    return {str(c): np.dtype(dt) for c, dt in schema.items()}


def _check_rows(batch_rows: int) -> int:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    return batch_rows


def kind_of(path: str | os.PathLike[str]) -> str:
    """``"parquet"`` or ``"csv"`` from the name (a directory: its Parquet files)."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    if p.suffix.lower() in CSV_SUFFIXES:
        return "csv"
    raise ValueError(f"{p}: unknown file type {p.suffix!r}; use .parquet, .pq or .csv")


def read_batches(
    path: str | os.PathLike[str], schema: SchemaLike, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[Batch]:
    """Batches of ``path`` (Parquet file or directory of them, or CSV) by its name."""
    if kind_of(path) == "parquet":
        return read_parquet(path, schema, batch_rows)
    return read_csv(path, schema, batch_rows)


def _to_batch(rb: Any, schema: dict[str, np.dtype], where: Path) -> Batch:
    out: Batch = {}
    for i, (col, want) in enumerate(schema.items()):
        arr = rb.column(i)
        if arr.null_count:
            raise SchemaMismatch(f"{where}: column {col!r} has {arr.null_count} null value(s)")
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype != want:
            raise SchemaMismatch(
                f"{where}: column {col!r} is {values.dtype}, the schema wants {want}"
            )
        out[col] = values
    return out


def _parquet_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in PARQUET_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{path}: no .parquet file in the directory")
    return files


def read_parquet(
    path: str | os.PathLike[str], schema: SchemaLike, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[Batch]:
    """Batches of a Parquet file, or of a directory's ``*.parquet`` files in name order."""
    want = _schema(schema)
    _check_rows(batch_rows)
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    files = _parquet_files(Path(path))
    for f in files:
        pf = pq.ParquetFile(f)
        arrow_schema = pf.schema_arrow
        for col, dt in want.items():
            idx = arrow_schema.get_field_index(col)
            if idx < 0:
                raise SchemaMismatch(f"{f}: missing column {col!r}")
            typ = arrow_schema.field(idx).type
            have = _numpy_of(pa, typ)
            if have != dt:
                raise SchemaMismatch(f"{f}: column {col!r} is {typ}, the schema wants {dt}")
        yield from rechunk(_row_groups(pf, want, f), batch_rows)


def _row_groups(pf: Any, want: dict[str, np.ndarray], f: Path) -> Iterator[Batch]:
    # One row group at a time: iter_batches' read-ahead held memory that grew with the
    # file (pyarrow 26: 37 MB, then 71 MB, reading 218 MB of events).
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i, columns=list(want)).combine_chunks()
        for rb in table.to_batches():
            yield _to_batch(rb, want, f)


def _numpy_of(pa: ModuleType, typ: Any) -> np.dtype | None:
    try:
        return np.dtype(typ.to_pandas_dtype())
    except (NotImplementedError, TypeError, pa.ArrowNotImplementedError):
        return None


_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")


def read_csv(
    path: str | os.PathLike[str], schema: SchemaLike, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[Batch]:
    """Batches of a CSV file with a header row; values are parsed as the schema's dtypes."""
    want = _schema(schema)
    _check_rows(batch_rows)
    pa = require_pyarrow()
    import pyarrow.csv as pacsv

    p = Path(path)
    with open(p, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    for col in want:
        if col not in header:
            raise SchemaMismatch(f"{p}: missing column {col!r}")
    # About one batch of text per block.
    block = int(min(max(1 << 20, batch_rows * len(header) * 12), 1 << 30))
    reader_opts = pacsv.ReadOptions(block_size=block)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.from_numpy_dtype(dt) for c, dt in want.items()},
        include_columns=list(want),
    )

    def named(exc: Exception) -> SchemaMismatch:
        m = _CSV_COLUMN.search(str(exc))
        if m and int(m.group(1)) < len(header):
            col = header[int(m.group(1))]
            detail = str(exc).split(": ", 1)[-1]
            return SchemaMismatch(
                f"{p}: column {col!r} does not parse as {want.get(col, '?')}: {detail}"
            )
        return SchemaMismatch(f"{p}: {exc}")

    def blocks() -> Iterator[Batch]:
        try:
            reader = pacsv.open_csv(p, read_options=reader_opts, convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise named(exc) from None
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise named(exc) from None
            yield _to_batch(rb, want, p)

    # Arrow cuts a CSV into blocks of bytes: re-cut them into batches of batch_rows rows.
    yield from rechunk(blocks(), batch_rows)


def rechunk(batches: Iterable[Batch], rows: int) -> Iterator[Batch]:
    """The same rows in batches of exactly ``rows`` (the last one shorter)."""
    _check_rows(rows)
    pending: list[Batch] = []
    have = 0
    for batch in batches:
        n = len(next(iter(batch.values()))) if batch else 0
        if not n:
            continue
        pending.append(batch)
        have += n
        while have >= rows:
            merged = pending[0] if len(pending) == 1 else _concat(pending)
            yield {c: v[:rows] for c, v in merged.items()}
            rest = {c: v[rows:] for c, v in merged.items()}
            have -= rows
            pending = [rest] if have else []
    if have:
        yield pending[0] if len(pending) == 1 else _concat(pending)


def _concat(parts: list[Batch]) -> Batch:
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def read_table(path: str | os.PathLike[str], schema: SchemaLike) -> Batch:
    """A whole (small) file as one batch, e.g. YSB's ads table."""
    parts = list(read_batches(path, schema))
    want = _schema(schema)
    if not parts:
        return {c: np.empty(0, dtype=dt) for c, dt in want.items()}
    return {c: np.concatenate([b[c] for b in parts]) for c in want}


def _to_arrow(pa: ModuleType, data: Any) -> Any:
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return data
    if isinstance(data, Mapping):
        return pa.table({str(k): np.asarray(v) for k, v in data.items()})
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(
        f"cannot write {type(data).__name__}: give a DataFrame, a dict of arrays or a pyarrow Table"
    )


class _Sink:
    """Appends batches to one file; ``close()`` (or leaving ``with``) finishes it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: SchemaLike | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._pa = require_pyarrow()
        self._arrow_schema = None
        if schema is not None:
            self._arrow_schema = self._pa.schema(
                [(c, self._pa.from_numpy_dtype(np.dtype(dt))) for c, dt in schema.items()]
            )
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._writer: Any = None
        self.rows = 0
        self.bytes_written = 0

    def write(self, data: Any) -> None:
        table = _to_arrow(self._pa, data)
        if self._writer is None:
            self._open(self._arrow_schema or table.schema)
        if self._arrow_schema is not None and table.schema.names == self._arrow_schema.names:
            table = table.cast(self._arrow_schema)
        self._write(table)
        self.rows += table.num_rows

    def _open(self, schema: Any) -> None:
        if self._metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **self._metadata})
        self._arrow_schema = schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._new_writer(schema)

    def _new_writer(self, schema: Any) -> Any:
        raise NotImplementedError

    def _write(self, table: Any) -> None:
        self._writer.write(table)

    def close(self) -> int:
        """Finish the file (an empty one with the header if nothing was written and the
        schema is known); returns its size in bytes."""
        if self._writer is None and self._arrow_schema is not None:
            self._open(self._arrow_schema)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        self.bytes_written = self.path.stat().st_size
        return self.bytes_written

    def __enter__(self) -> _Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ParquetSink(_Sink):
    """Parquet file; each ``write`` is one row group. ``metadata`` goes in the footer."""

    compression = "snappy"

    def _new_writer(self, schema: Any) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetWriter(self.path, schema, compression=self.compression)

    def _write(self, table: Any) -> None:
        if isinstance(table, self._pa.RecordBatch):
            table = self._pa.Table.from_batches([table])
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))


class CsvSink(_Sink):
    """CSV file with a header row (``metadata`` is not stored)."""

    def _new_writer(self, schema: Any) -> Any:
        import pyarrow.csv as pacsv

        return pacsv.CSVWriter(self.path, schema)


def open_sink(
    path: str | os.PathLike[str],
    schema: SchemaLike | None = None,
    metadata: Mapping[str, str] | None = None,
) -> _Sink:
    """A Parquet or CSV sink by the file's suffix."""
    if Path(path).suffix.lower() in PARQUET_SUFFIXES:
        return ParquetSink(path, schema, metadata)
    if Path(path).suffix.lower() in CSV_SUFFIXES:
        return CsvSink(path, schema, metadata)
    raise ValueError(f"{path}: unknown file type {Path(path).suffix!r}; use .parquet, .pq or .csv")


def write_table(path: str | os.PathLike[str], data: Any, schema: SchemaLike | None = None) -> int:
    """Write one DataFrame / dict of arrays / table; returns the bytes written."""
    with open_sink(path, schema) as sink:
        sink.write(data)
    return sink.bytes_written


def parquet_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The key-value metadata a ``ParquetSink`` stored (without arrow's own keys)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(Path(path)).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k != b"ARROW:schema"}
