"""The embedded SQLite store: WAL, migrations, runs and samples."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from wattspan.agent.exporters.sqlite import StoreSink
from wattspan.agent.store import Run, Store, StoreError, default_store_path
from wattspan.agent.store.sqlite import MIGRATIONS, SCHEMA_VERSION
from wattspan.collectors.base import Sample


def test_new_store_is_wal_and_current(store_path: Path) -> None:
    store = Store(store_path)
    assert store.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(store_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrates_an_older_store_in_place(store_path: Path) -> None:
    db = sqlite3.connect(store_path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO runs (id, name, host, start_ts) VALUES ('old', 'from v1', 'h', 1.0)")
    db.commit()
    db.close()
    store = Store(store_path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.resolve_run("old").name == "from v1"
    tables = {
        r[0]
        for r in sqlite3.connect(store_path).execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {"runs", "samples", "span_batches", "metrics", "params", "confusion_matrices"} <= tables


def test_refuses_a_newer_schema(store_path: Path) -> None:
    db = sqlite3.connect(store_path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(store_path)


def test_samples_round_trip_exactly(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(Run(id="r1", name="a", host="h", start_ts=1.0))
    samples = [
        Sample(
            "rapl",
            10.5,
            {"domain": "package-0", "zone": "intel-rapl:0"},
            {"energy_joules_total": 123.456789012345, "power_watts": 41.0},
        ),
        Sample(
            "process",
            10.6,
            {"pid": "7", "name": 'py, "x"'},
            {"rss_bytes": 2**40 + 3, "threads": 4, "ok": True},
        ),
    ]
    store.write_samples("r1", samples)
    store.write_samples("other", [Sample("cpu", 11.0, {}, {"x": 1})])
    assert store.samples("r1") == samples
    assert store.samples("r1", source="rapl") == samples[:1]
    assert store.samples(start=10.55) == [samples[1], Sample("cpu", 11.0, {}, {"x": 1})]


def test_resolve_run_by_prefix_name_and_latest(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(Run(id="aaaa-1", name="train", host="h", start_ts=1.0))
    store.create_run(Run(id="aaab-2", name="train", host="h", start_ts=2.0))
    store.create_run(Run(id="bbbb-3", name="eval", host="h", start_ts=3.0))
    assert store.resolve_run("bbbb").id == "bbbb-3"
    assert store.resolve_run("latest").id == "bbbb-3"
    assert store.resolve_run("train").id == "aaab-2"  # newest of that name
    with pytest.raises(KeyError, match="ambiguous"):
        store.resolve_run("aaa")
    with pytest.raises(KeyError, match="no run"):
        store.resolve_run("zzz")
    assert [r.id for r in store.runs()] == ["bbbb-3", "aaab-2", "aaaa-1"]


def test_finish_run_stores_summary(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(Run(id="r", name="n", host="h", start_ts=1.0, command=["a", "b c"]))
    store.finish_run("r", 5.0, 3, {"wall_seconds": 4.0, "energy": []})
    r = Store(store_path).resolve_run("r")
    assert (r.end_ts, r.exit_code, r.summary, r.command) == (
        5.0,
        3,
        {"wall_seconds": 4.0, "energy": []},
        ["a", "b c"],
    )


def test_sink_batches_and_keeps_rows_when_the_write_fails(store_path: Path) -> None:
    store = Store(store_path)
    sink = StoreSink(store, "r", flush_interval=3600)
    sink.write([Sample("cpu", time.time(), {}, {"x": 1})])
    assert store.samples("r") == []  # batched, not yet written
    store._db.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON samples BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(sqlite3.Error):
        sink.flush()
    assert sink.stats()["queued_records"] == 1
    assert sink.stats()["write_errors_total"] == 1
    store._db.execute("DROP TRIGGER fail")
    sink.flush()
    assert len(store.samples("r")) == 1
    assert sink.stats()["written_records_total"] == 1


def test_default_path_follows_env_and_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    assert default_store_path() == tmp_path / "d" / "wattspan" / "wattspan.db"
    monkeypatch.setenv("WATTSPAN_STORE", str(tmp_path / "x.db"))
    assert default_store_path() == tmp_path / "x.db"


def test_a_span_stored_twice_reads_back_once(store_path: Path) -> None:
    from wattspan.agent.store import SpanRow

    store = Store(store_path)
    first = SpanRow("r", "t" * 32, "s" * 16, None, "a", 1.0, 2.0, resources={"v": 1})
    other = SpanRow("r", "t" * 32, "u" * 16, None, "b", 1.5, 2.0)
    again = SpanRow("r", "t" * 32, "s" * 16, None, "a", 1.0, 2.0, resources={"v": 2})
    store.write_spans([first, other])
    store.write_spans([again])
    spans = store.spans("r")
    assert [(s.span_id, s.resources) for s in spans] == [("s" * 16, {"v": 2}), ("u" * 16, {})]


def test_span_batches_attributed_later_and_readable_through_sql(store_path: Path) -> None:
    from wattspan.agent.store import SpanRow

    store = Store(store_path)
    rows = [
        SpanRow("r", "t" * 32, "a" * 16, None, "outer", 1.0, 4.0, attributes={"k": "v"}),
        SpanRow("r", "t" * 32, "b" * 16, "a" * 16, "inner", 2.0, 3.0, pid=7),
    ]
    bid = store.add_span_batch("r", rows)
    pending = Store(store_path).unattributed_batches()
    assert [(b, [s.name for s in spans]) for b, spans in pending] == [(bid, ["outer", "inner"])]
    store.set_batch_resources([(bid, [{"x": 1.5}, {"x": 2.5}])])
    assert store.unattributed_batches() == []
    got = store.spans("r")
    assert [(s.name, s.parent_span_id, s.pid, s.attributes, s.resources) for s in got] == [
        ("outer", None, None, {"k": "v"}, {"x": 1.5}),
        ("inner", "a" * 16, 7, {}, {"x": 2.5}),
    ]
    # The ``spans`` view serves SQL users one row per span.
    db = sqlite3.connect(store_path)
    view = db.execute(
        "SELECT name, span_id, json_extract(resources, '$.x') FROM spans "
        "WHERE run_id='r' ORDER BY start_ts"
    ).fetchall()
    assert view == [("outer", "a" * 16, 1.5), ("inner", "b" * 16, 2.5)]
