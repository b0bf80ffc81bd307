"""The store's limits: retention of every table, the size bound, concurrent creation,
owner-only files, and one clear error for a store that cannot be opened."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tmpfs import fill, mounted_tmpfs, remount
from wattspan.agent.store import (
    ConfusionRow,
    MetricRow,
    Run,
    SpanRow,
    Store,
    StoreError,
)
from wattspan.agent.store.sqlite import MIGRATIONS, RETAINED_TABLES, SCHEMA_VERSION, SIZE_TARGET
from wattspan.cli import main
from wattspan.collectors.base import Sample

HOUR = 3600.0
DAY = 24 * HOUR
NOW = time.time()
TABLES = [*RETAINED_TABLES, "span_resources"]


def fill_run(store: Store, run_id: str, t: float, n: int = 3, blob: int = 0) -> None:
    """Rows at time ``t`` in every table that retention covers (``n`` samples)."""
    store.write_samples(
        run_id, [Sample("cpu", t + i * 1e-3, {"cpu": "0"}, {"x": "y" * blob}) for i in range(n)]
    )
    trace = f"{run_id}-{t}".encode().hex()[:32].ljust(32, "0")
    span = SpanRow(run_id, trace, "1" * 16, None, "step", t, t + 1, resources={"j": 1.0})
    store.add_span_batch(run_id, [span])
    store.write_metrics([MetricRow(run_id, t, "ml.loss", 0.5)])
    store.write_params(run_id, None, {"lr": 0.1}, ts=t)
    store.write_confusion([ConfusionRow(run_id, t, ["a", "b"], [[1, 0], [0, 1]])])
    store.write_logs([(run_id, t, "INFO", "hello", None, None, "svc", {})])


def rows(path: Path, run_id: str | None = None) -> dict[str, int]:
    """Rows per table (of one run), read through a connection of its own."""
    db = sqlite3.connect(path)
    try:
        out = {}
        for t in TABLES:
            if t == "span_resources":
                sql = "SELECT count(*) FROM span_resources r JOIN span_batches b ON b.id=r.batch_id"
                sql += " WHERE b.run_id=?" if run_id else ""
            else:
                sql = f"SELECT count(*) FROM {t}" + (" WHERE run_id=?" if run_id else "")
            out[t] = db.execute(sql, (run_id,) if run_id else ()).fetchone()[0]
        return out
    finally:
        db.close()


def run_ids(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT id FROM runs")}
    finally:
        db.close()


def ended(run_id: str, start: float, end: float) -> Run:
    return Run(id=run_id, name=run_id, host="h", start_ts=start, end_ts=end, exit_code=0)


# -- retention ---------------------------------------------------------------------------------


def test_retention_covers_every_table_and_keeps_open_runs(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(ended("old", NOW - 10 * DAY, NOW - 10 * DAY + 60))
    fill_run(store, "old", NOW - 10 * DAY + 30)
    store.create_run(ended("recent", NOW - HOUR, NOW - HOUR / 2))
    fill_run(store, "recent", NOW - 0.8 * HOUR)
    # The agent's own session, open for ten days: its old rows go, the row and new rows stay.
    store.create_run(Run(id="session", name="agent@h", host="h", start_ts=NOW - 10 * DAY))
    store.create_run(Run(id="empty", name="crashed", host="h", start_ts=NOW - 9 * DAY))
    fill_run(store, "session", NOW - 9 * DAY)
    fill_run(store, "session", NOW - 60)
    recent_before = rows(store_path, "recent")

    result = store.apply_retention(168, now=NOW)

    one_run = {t: (3 if t == "samples" else 1) for t in TABLES}
    assert result.deleted == {t: 2 * n for t, n in one_run.items()} | {"runs": 1}
    assert result.complete and not store.retention_incomplete
    assert store.deleted_rows_total == result.deleted
    assert run_ids(store_path) == {"recent", "session", "empty"}  # open runs keep their row
    assert rows(store_path, "old") == dict.fromkeys(TABLES, 0)
    assert rows(store_path, "session") == one_run
    assert rows(store_path, "recent") == recent_before
    assert [s.ts for s in store.samples("session")] == pytest.approx(
        [NOW - 60, NOW - 60 + 1e-3, NOW - 60 + 2e-3]
    )
    assert store.params("session") == {"lr": 0.1}
    # Nothing more to do the second time; the counters keep what the first call did.
    assert store.apply_retention(168, now=NOW).deleted_rows == 0
    assert sum(store.deleted_rows_total.values()) == result.deleted_rows


def test_retention_zero_hours_means_no_age_limit(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(ended("old", NOW - 400 * DAY, NOW - 399 * DAY))
    fill_run(store, "old", NOW - 400 * DAY)
    assert store.apply_retention(0, now=NOW).deleted_rows == 0
    assert rows(store_path)["samples"] == 3


def test_a_time_budget_stops_retention_and_the_next_call_goes_on(store_path: Path) -> None:
    store = Store(store_path)
    fill_run(store, "r", NOW - 30 * DAY)
    first = store.apply_retention(168, now=NOW, budget=0.0)
    assert not first.complete and store.retention_incomplete
    assert first.deleted_rows == 0
    second = store.apply_retention(168, now=NOW)
    assert second.complete and not store.retention_incomplete
    assert rows(store_path) == dict.fromkeys(TABLES, 0)


def test_attribution_of_a_batch_retention_deleted_is_not_stored(store_path: Path) -> None:
    """A row left for a deleted batch would later pass for the attribution of a new batch
    that gets the same id (SQLite reuses the highest rowid)."""
    store = Store(store_path)
    span = SpanRow("r", "a" * 32, "b" * 16, None, "s", NOW - 30 * DAY, NOW - 30 * DAY + 1)
    bid = store.add_span_batch("r", [span])
    store.apply_retention(168, now=NOW)
    store.set_batch_resources([(bid, [{"j": 1.0}])])
    assert rows(store_path)["span_resources"] == 0
    new = store.add_span_batch("r", [SpanRow("r", "c" * 32, "d" * 16, None, "s", NOW, NOW + 1)])
    assert new == bid  # the id is reused...
    assert store.unattributed_batches()[0][0] == new  # ...and the new batch is not attributed


# -- the size bound ----------------------------------------------------------------------------


def test_max_bytes_deletes_the_oldest_ended_runs_first(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(Run(id="session", name="agent@h", host="h", start_ts=NOW - DAY))
    fill_run(store, "session", NOW - DAY, n=40, blob=10_000)
    names = [f"r{i}" for i in range(6)]
    for i, name in enumerate(names):  # r0 is the oldest
        start = NOW - (6 - i) * HOUR
        store.create_run(ended(name, start, start + 60))
        fill_run(store, name, start + 1, n=40, blob=10_000)
    session_rows = rows(store_path, "session")
    used = store.used_bytes()
    max_bytes = int(used * 0.75)  # about two runs' worth over

    result = store.apply_retention(168, max_bytes, now=NOW)

    left = [n for n in names if n in run_ids(store_path)]
    assert left and left == names[len(names) - len(left) :]  # a prefix of the oldest went
    assert 2 <= len(names) - len(left) <= 3
    assert result.deleted["runs"] == len(names) - len(left)
    assert result.used_bytes <= SIZE_TARGET * max_bytes
    assert rows(store_path, "session") == session_rows  # the open session was not needed
    for name in names[: len(names) - len(left)]:
        assert rows(store_path, name) == dict.fromkeys(TABLES, 0)
    # New stores give the freed pages back: the file itself is under the bound.
    assert store_path.stat().st_size <= max_bytes


def test_max_bytes_then_deletes_the_oldest_rows_of_the_open_session(store_path: Path) -> None:
    store = Store(store_path)
    store.create_run(ended("done", NOW - 2 * HOUR, NOW - HOUR))
    fill_run(store, "done", NOW - 2 * HOUR, n=10, blob=10_000)
    store.create_run(Run(id="session", name="agent@h", host="h", start_ts=NOW - 10 * HOUR))
    for k in range(100):  # ten hours, oldest first, as the agent writes them
        fill_run(store, "session", NOW - 10 * HOUR + k * 360, n=2, blob=10_000)
    max_bytes = store.used_bytes() // 3

    result = store.apply_retention(0, max_bytes, now=NOW)

    assert run_ids(store_path) == {"session"}
    assert result.used_bytes <= SIZE_TARGET * max_bytes
    kept = [s.ts for s in store.samples("session")]
    assert 0 < len(kept) < 200
    # What is left is the newest part, and the other tables were cut at the same time.
    assert kept[-1] == pytest.approx(NOW - 360 + 1e-3)
    assert min(m.ts for m in store.metrics("session")) >= kept[0] - 360
    assert result.deleted["samples"] == 10 + 200 - len(kept)
    assert store.deleted_rows_total == result.deleted


def test_an_old_store_shrinks_after_the_documented_vacuum(store_path: Path) -> None:
    """Stores created before auto_vacuum=INCREMENTAL reuse freed pages but keep their size
    until ``PRAGMA auto_vacuum=INCREMENTAL; VACUUM`` (docs/store.md)."""
    db = sqlite3.connect(store_path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = Store(store_path)
    fill_run(store, "old", NOW - 30 * DAY, n=200, blob=10_000)
    fill_run(store, "new", NOW, n=5, blob=10_000)
    store.apply_retention(168, now=NOW)
    store.close()
    big = store_path.stat().st_size
    assert big > 1_500_000  # the freed pages are still in the file
    db = sqlite3.connect(store_path, isolation_level=None)
    db.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")  # as docs/store.md says
    db.close()
    store = Store(store_path)
    assert store_path.stat().st_size < big / 5
    fill_run(store, "later", NOW - 30 * DAY, n=200, blob=10_000)
    grown = store.used_bytes()
    result = store.apply_retention(168, now=NOW)
    store.close()
    assert result.used_bytes < grown / 5
    assert store_path.stat().st_size < big / 5  # and from now on retention shrinks it


def test_the_daemon_applies_retention_hourly_and_the_size_bound_sooner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wattspan.agent import daemon
    from wattspan.agent.config import load_config

    monkeypatch.setattr(daemon, "build_collectors", lambda *_a, **_k: [])
    path = tmp_path / "agent.db"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[store]\npath = "{path}"\nretention_hours = 24.0\nmax_bytes = 2000000\n')
    agent = daemon.Agent(load_config(cfg, environ={}), serve_metrics=False, otlp=False)
    store = agent.store
    assert store is not None and agent.run is not None
    try:
        store.create_run(ended("old", NOW - 3 * DAY, NOW - 2 * DAY))
        fill_run(store, "old", NOW - 2 * DAY)
        agent.maintain()  # the first call applies retention at once
        assert "old" not in run_ids(path)
        # Over the size bound within the hour: the next pass comes a minute after the last.
        fill_run(store, agent.run.id, time.time(), n=300, blob=10_000)
        agent.maintain()
        assert store.used_bytes() > 2_000_000  # not yet
        agent._last_retention -= 61
        agent.maintain()
        assert store.used_bytes() <= 2_000_000
        assert agent.run.id in run_ids(path)  # the session keeps its row
        stats = next(s for s in agent.pipeline.sinks if s.name == "store").stats()
        assert stats["retention_deleted_rows_total"] == sum(store.deleted_rows_total.values())
        assert stats["retention_deleted_rows_total"] > 300
    finally:
        agent.stop()
        agent.close_store()


# -- concurrent first use ----------------------------------------------------------------------


def _open_and_record(path: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(30)
        store = Store(path)
        store.create_run(Run(id=str(os.getpid()), name="p", host="h", start_ts=time.time()))
        results.put(("ok", store.schema_version))
        store.close()
    except BaseException as exc:  # reported to the test, which fails on it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_creating_one_store_at_once_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 4
    for attempt in range(20):
        path = tmp_path / f"round{attempt}" / "wattspan.db"
        barrier = ctx.Barrier(n)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_open_and_record, args=(str(path), barrier, results))
            for _ in range(n)
        ]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert got == [("ok", SCHEMA_VERSION)] * n, f"round {attempt}"
        assert [p.exitcode for p in procs] == [0] * n
        assert len(run_ids(path)) == n
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


# -- owner-only files --------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_store_wal_shm_and_new_directories_are_owner_only(tmp_path: Path) -> None:
    before = mode(tmp_path)
    path = tmp_path / "data" / "wattspan" / "wattspan.db"
    with umask(0o022):
        store = Store(path)
        store.write_samples("r", [Sample("cpu", NOW, {}, {"x": 1})])  # -wal and -shm exist now
        files = {p.name: mode(p) for p in path.parent.iterdir()}
        store.close()
    assert files == {"wattspan.db": 0o600, "wattspan.db-wal": 0o600, "wattspan.db-shm": 0o600}
    assert (mode(tmp_path / "data"), mode(path.parent)) == (0o700, 0o700)
    assert mode(tmp_path) == before  # a directory that was there is not ours to change


# -- clear errors ------------------------------------------------------------------------------


def assert_one_line(exc: StoreError, path: Path, cause: str) -> None:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(f"store {path}: ")
    assert cause in text


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as e:
        Store(tmp_path)
    assert_one_line(e.value, tmp_path, "is a directory")
    assert e.value.errno == errno.EISDIR


def test_a_path_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "sub" / "wattspan.db"
    with pytest.raises(StoreError) as e:
        Store(path)
    assert_one_line(e.value, path, f"{tmp_path / 'file'} is not a directory")
    assert e.value.errno == errno.ENOTDIR
    assert isinstance(e.value, OSError)


def test_random_bytes_are_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "noise.db"
    noise = os.urandom(64 * 1024)
    path.write_bytes(noise)
    with pytest.raises(StoreError) as e:
        Store(path)
    assert_one_line(e.value, path, "not a wattspan store")
    assert path.read_bytes() == noise  # and it is left as it was


def test_a_newer_schema_is_refused(store_path: Path) -> None:
    db = sqlite3.connect(store_path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError) as e:
        Store(store_path)
    assert_one_line(e.value, store_path, "newer than this wattspan understands")


def test_an_unreadable_store(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        path = tmp_path / "wattspan.db"
        Store(path).close()
        path.chmod(0)
        with pytest.raises(StoreError) as e:
            Store(path)
        assert_one_line(e.value, path, "permission denied")
        return
    # Root reads any file whatever its mode: open it as "nobody" in a child process instead,
    # from a directory that user can search (pytest's tmp_path is root's alone).
    shared = Path(tempfile.mkdtemp(prefix="wattspan-unreadable-"))
    try:
        shared.chmod(0o711)
        path = shared / "wattspan.db"
        Store(path).close()  # 0600, root's
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(reader)
                os.setgid(65534)
                os.setuid(65534)
                try:
                    Store(path)
                    msg = "opened"
                except StoreError as exc:
                    msg = f"{exc.errno}|{exc}"
                os.write(writer, msg.encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as f:
            got = f.read().decode()
        os.waitpid(pid, 0)
        err, _, text = got.partition("|")
        assert int(err) == errno.EACCES, got
        assert text == f"store {path}: permission denied (needs read and write access)"
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mnt:
        yield mnt


def test_a_read_only_filesystem(tmpfs: Path) -> None:
    existing = tmpfs / "wattspan.db"
    Store(existing).close()
    remount(tmpfs, "ro")
    try:
        for path in (existing, tmpfs / "new" / "wattspan.db"):
            with pytest.raises(StoreError) as e:
                Store(path)
            assert_one_line(e.value, path, "read-only file system")
            assert e.value.errno == errno.EROFS
    finally:
        remount(tmpfs, "rw")


def test_a_full_disk_at_start(tmpfs: Path) -> None:
    existing = tmpfs / "old.db"
    Store(existing).close()
    filler = fill(tmpfs)
    for path in (tmpfs / "new.db", existing):
        with pytest.raises(StoreError) as e:
            Store(path)
        assert_one_line(e.value, path, "no space left on device")
        assert e.value.errno == errno.ENOSPC
    filler.unlink()
    Store(tmpfs / "new.db").close()  # nothing left behind stands in the way afterwards


# -- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["runs"], ["show", "latest"]])
def test_cli_says_why_in_one_line_and_exits_2(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noise = tmp_path / "noise.db"
    noise.write_bytes(os.urandom(8192))
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path: "is a directory",
        noise: "not a wattspan store",
        tmp_path / "file" / "x.db": "is not a directory",
    }
    for path, cause in cases.items():
        with pytest.raises(SystemExit) as e:
            main([*command, "--store", str(path)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"wattspan: store {path}: ") and cause in err
        assert err.count("\n") == 1
    assert not (tmp_path / "file").is_dir()  # reading created nothing
    # A store that is not there at all stays "not found" (exit 1), as before.
    assert main([*command, "--store", str(tmp_path / "none.db")]) == 1
    assert "no store at" in capsys.readouterr().err


def test_cli_exit_code_from_the_console_script(tmp_path: Path, wattspan_cmd: list[str]) -> None:
    r = subprocess.run(
        [*wattspan_cmd, "runs", "--store", str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr == f"wattspan: store {tmp_path}: is a directory\n"
