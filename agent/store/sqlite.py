"""SQLite store in WAL mode, schema migrated by ``PRAGMA user_version``.

The schema is documented in ``docs/store.md``. Samples keep tags and fields as compact JSON
so that every collector's record is stored exactly as produced: the run summary and span
attribution can be recomputed from the stored rows alone.

Retention (:meth:`Store.apply_retention`) bounds the file by age and by size; the store is
owner-only (0600, its ``-wal`` and ``-shm`` too, which SQLite creates with the database's
mode); any failure to open it is a :class:`StoreError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from wattspan.agent.private import FILE_MODE, make_private_dirs
from wattspan.collectors.base import Sample

# Each entry upgrades the schema from version i to i+1. Never edit a released entry:
# append a new one, so stores written by older agents open and migrate in place.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL DEFAULT 'run',
        command TEXT NOT NULL DEFAULT '[]',
        host TEXT NOT NULL,
        start_ts REAL NOT NULL,
        end_ts REAL,
        exit_code INTEGER,
        summary TEXT
    );
    CREATE INDEX runs_start ON runs(start_ts);
    CREATE TABLE samples (
        run_id TEXT,
        ts REAL NOT NULL,
        source TEXT NOT NULL,
        tags TEXT NOT NULL,
        fields TEXT NOT NULL
    );
    CREATE INDEX samples_run_source_ts ON samples(run_id, source, ts);
    CREATE INDEX samples_ts ON samples(ts);
    """,
    # v2: pipeline instrumentation. Spans carry their attributed resources as JSON in
    # ``resources``; valued metrics, hyperparameters and confusion matrices have own tables.
    # Spans are stored in batches, one row per OTLP request and run, as JSON arrays: a row per
    # span (with its index on random hex ids) cost more than everything else on the ingest
    # path. The ``spans`` view unpacks them for SQL users. A span re-sent by a client retry
    # is stored twice; ``spans()`` returns its last copy.
    """
    CREATE TABLE span_batches (
        id INTEGER PRIMARY KEY,
        run_id TEXT,
        start_ts REAL NOT NULL,
        end_ts REAL NOT NULL,
        count INTEGER NOT NULL,
        spans TEXT NOT NULL
    );
    CREATE INDEX span_batches_run ON span_batches(run_id, start_ts);
    -- Apart from the spans so that storing the attribution does not rewrite them.
    CREATE TABLE span_resources (
        batch_id INTEGER PRIMARY KEY REFERENCES span_batches(id),
        resources TEXT NOT NULL
    );
    CREATE VIEW spans AS
        SELECT b.run_id AS run_id,
               json_extract(s.value, '$[0]') AS trace_id,
               json_extract(s.value, '$[1]') AS span_id,
               json_extract(s.value, '$[2]') AS parent_span_id,
               json_extract(s.value, '$[3]') AS name,
               json_extract(s.value, '$[4]') AS start_ts,
               json_extract(s.value, '$[5]') AS end_ts,
               json_extract(s.value, '$[6]') AS status,
               json_extract(s.value, '$[7]') AS service,
               json_extract(s.value, '$[8]') AS pid,
               json_extract(s.value, '$[9]') AS attributes,
               json_extract(r.resources, '$[' || s.key || ']') AS resources
        FROM span_batches AS b
        JOIN json_each(b.spans) AS s
        LEFT JOIN span_resources AS r ON r.batch_id = b.id;
    CREATE TABLE metrics (
        run_id TEXT,
        ts REAL NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        step INTEGER,
        trace_id TEXT,
        span_id TEXT,
        attributes TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX metrics_run_name ON metrics(run_id, name, ts);
    CREATE TABLE params (
        run_id TEXT,
        span_id TEXT,
        key TEXT NOT NULL,
        value TEXT NOT NULL
    );
    CREATE INDEX params_run ON params(run_id);
    CREATE TABLE confusion_matrices (
        run_id TEXT,
        ts REAL NOT NULL,
        name TEXT NOT NULL DEFAULT 'confusion_matrix',
        step INTEGER,
        trace_id TEXT,
        span_id TEXT,
        labels TEXT NOT NULL,
        matrix TEXT NOT NULL
    );
    CREATE INDEX confusion_run ON confusion_matrices(run_id);
    CREATE TABLE logs (
        run_id TEXT,
        ts REAL NOT NULL,
        severity TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        trace_id TEXT,
        span_id TEXT,
        service TEXT NOT NULL DEFAULT '',
        attributes TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX logs_run ON logs(run_id, ts);
    """,
    # v3: retention covers every table, and params had no time to expire by. Rows already
    # there take their run's end (now, for runs still open or unknown), so that none is
    # deleted earlier than it would have been with a time of its own.
    """
    ALTER TABLE params ADD COLUMN ts REAL;
    UPDATE params SET ts = COALESCE(
        (SELECT end_ts FROM runs WHERE runs.id = params.run_id),
        (julianday('now') - 2440587.5) * 86400.0
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

#: Tables that retention deletes from, with the time each row is judged by. ``span_resources``
#: goes with its ``span_batches`` row, ``runs`` when nothing of the run is left.
RETAINED_TABLES: dict[str, str] = {
    "samples": "ts",
    "span_batches": "end_ts",
    "metrics": "ts",
    "params": "ts",
    "confusion_matrices": "ts",
    "logs": "ts",
}
#: Rows per retention transaction: small enough that the ingest path (which shares the
#: store's lock) waits milliseconds, not seconds. A span batch holds a whole OTLP request.
_CHUNK_ROWS = 4096
_CHUNK_ROWS_BY_TABLE = {"span_batches": 64}
#: Pages freed per ``incremental_vacuum`` step (8 MiB at the default page size).
_VACUUM_PAGES = 2048
#: Below ``max_bytes``, where deleting for the size bound stops: room for the next hours
#: without deleting a little every time the daemon looks.
SIZE_TARGET = 0.9
#: The WAL is cut back to this after each checkpoint (one large delete can grow it by GBs).
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: SQLite's page cache per connection, KiB (its default is 2000).
CACHE_KIB = 1024


class StoreError(OSError):
    """The store at ``path`` cannot be opened (or created): a directory, under a file, not
    a database, unreadable, a read-only filesystem, a full disk, a newer schema...

    ``str()`` is one line, ``store PATH: CAUSE``; ``errno`` is set where an OS error is the
    cause (``EISDIR``, ``ENOTDIR``, ``EACCES``, ``EROFS``, ``ENOSPC``), else ``None``.
    """

    def __init__(self, path: str | os.PathLike[str], cause: str, err: int | None = None) -> None:
        super().__init__(err, cause, str(path))
        self.path = Path(path)
        self.cause = cause

    def __str__(self) -> str:
        return f"store {self.path}: {self.cause}"

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles as (errno, strerror), which this __init__ does not take.
        return (type(self), (self.path, self.cause, self.errno))


@dataclass(slots=True)
class RetentionResult:
    """What one :meth:`Store.apply_retention` call did."""

    #: Rows deleted by this call, per table (``runs`` and ``span_resources`` included).
    deleted: dict[str, int]
    #: Bytes of pages in use after the call (what ``max_bytes`` bounds).
    used_bytes: int
    #: Bytes of the database file and its WAL on disk after the call.
    file_bytes: int
    #: False when the time budget ran out first: call again soon to finish.
    complete: bool = True

    @property
    def deleted_rows(self) -> int:
        return sum(self.deleted.values())


def _statements(script: str) -> list[str]:
    """A migration script as single statements: ``executescript`` would commit the
    transaction the migration runs in."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out


def _describe_os_error(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.errno else str(exc)


def _read_only_fs(path: Path) -> bool:
    for p in (path, path.parent):
        try:
            return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            continue
    return False


def _busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)


def _disk_full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def default_store_path() -> Path:
    """``$WATTSPAN_STORE``, else ``$XDG_DATA_HOME/wattspan/wattspan.db`` (XDG default
    ``~/.local/share``)."""
    env = os.environ.get("WATTSPAN_STORE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "wattspan" / "wattspan.db"


@dataclass(slots=True)
class Run:
    id: str
    name: str
    host: str
    start_ts: float
    kind: str = "run"
    description: str = ""
    command: list[str] = field(default_factory=list)
    end_ts: float | None = None
    exit_code: int | None = None
    summary: dict[str, Any] | None = None


@dataclass(slots=True)
class SpanRow:
    """A finished span as stored. Times are Unix seconds; ``resources`` holds the
    attribution (see ``wattspan.agent.attribution``)."""

    run_id: str | None
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ts: float
    end_ts: float
    status: str = "unset"
    service: str = ""
    pid: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.end_ts - self.start_ts


@dataclass(slots=True)
class MetricRow:
    """One valued-metric observation (``ml.loss`` at step 3, say)."""

    run_id: str | None
    ts: float
    name: str
    value: float
    step: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ConfusionRow:
    run_id: str | None
    ts: float
    labels: list[str]
    matrix: list[list[float]]
    name: str = "confusion_matrix"
    step: int | None = None
    trace_id: str | None = None
    span_id: str | None = None


# orjson: encoding and decoding the JSON columns is most of the store's CPU cost on the
# span ingest path (several times faster than the json module). Non-finite floats are
# written as null, the only JSON for them.
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_loads = orjson.loads


def _span_row(run_id: str | None, w: list[Any], resources: dict[str, Any]) -> SpanRow:
    return SpanRow(run_id, *w[:9], attributes=w[9], resources=resources)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj, option=_OPTS, default=str).decode()


#: Most writes one group commit takes (each is a request's rows, or a sampler flush): a
#: bound on how long a transaction holds the store, and on what one failure sends back.
GROUP_MAX_WRITES = 64

_SPAN_BATCH_INSERT = (
    "INSERT INTO span_batches (run_id, start_ts, end_ts, count, spans) VALUES (?,?,?,?,?)"
)
_SPAN_RESOURCES_INSERT = "INSERT INTO span_resources (batch_id, resources) VALUES (?,?)"
_METRICS_INSERT = (
    "INSERT INTO metrics (run_id, ts, name, value, step, trace_id, span_id, attributes) "
    "VALUES (?,?,?,?,?,?,?,?)"
)
_PARAMS_INSERT = "INSERT INTO params (run_id, span_id, key, value, ts) VALUES (?,?,?,?,?)"
_CONFUSION_INSERT = (
    "INSERT INTO confusion_matrices (run_id, ts, name, step, trace_id, span_id, labels, "
    "matrix) VALUES (?,?,?,?,?,?,?,?)"
)
_LOGS_INSERT = (
    "INSERT INTO logs (run_id, ts, severity, body, trace_id, span_id, service, attributes) "
    "VALUES (?,?,?,?,?,?,?,?)"
)
_SAMPLES_INSERT = "INSERT INTO samples (run_id, ts, source, tags, fields) VALUES (?,?,?,?,?)"


class Writes:
    """Rows that :meth:`Store.write` commits together: all of them or none.

    Each method encodes its rows at once, in the calling thread, so that a value that cannot
    be stored fails its own caller before anything reaches the store's transaction.
    """

    __slots__ = ("rows", "steps")

    def __init__(self) -> None:
        # (sql, rows) for executemany; a span batch is (None, (values, resources or None)).
        self.steps: list[tuple[str | None, Any]] = []
        self.rows = 0

    def __bool__(self) -> bool:
        return bool(self.steps)

    def _many(self, sql: str, data: list[tuple[Any, ...]]) -> int:
        if data:
            self.steps.append((sql, data))
            self.rows += len(data)
        return len(data)

    def span_batch(self, run_id: str | None, rows: Sequence[SpanRow]) -> None:
        """Spans as one batch; :meth:`Store.write` returns its id (in the order added)."""
        wire = [
            [
                r.trace_id,
                r.span_id,
                r.parent_span_id,
                r.name,
                r.start_ts,
                r.end_ts,
                r.status,
                r.service,
                r.pid,
                r.attributes,
            ]
            for r in rows
        ]
        values = (
            run_id,
            min(r.start_ts for r in rows),
            max(r.end_ts for r in rows),
            len(rows),
            _dumps(wire),
        )
        resources = _dumps([r.resources for r in rows]) if all(r.resources for r in rows) else None
        self.steps.append((None, (values, resources)))
        self.rows += len(rows)

    def metrics(self, rows: Iterable[MetricRow]) -> int:
        return self._many(
            _METRICS_INSERT,
            [
                (
                    r.run_id,
                    r.ts,
                    r.name,
                    r.value,
                    r.step,
                    r.trace_id,
                    r.span_id,
                    _dumps(r.attributes),
                )
                for r in rows
            ],
        )

    def params(
        self, run_id: str | None, span_id: str | None, params: dict[str, Any], ts: float
    ) -> int:
        return self._many(
            _PARAMS_INSERT, [(run_id, span_id, str(k), _dumps(v), ts) for k, v in params.items()]
        )

    def confusion(self, rows: Iterable[ConfusionRow]) -> int:
        return self._many(
            _CONFUSION_INSERT,
            [
                (
                    r.run_id,
                    r.ts,
                    r.name,
                    r.step,
                    r.trace_id,
                    r.span_id,
                    _dumps(r.labels),
                    _dumps(r.matrix),
                )
                for r in rows
            ],
        )

    def logs(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """Rows of (run_id, ts, severity, body, trace_id, span_id, service, attributes)."""
        return self._many(_LOGS_INSERT, [(*r[:7], _dumps(r[7])) for r in rows])

    def samples(self, run_id: str | None, samples: Iterable[Sample]) -> int:
        return self._many(
            _SAMPLES_INSERT,
            [(run_id, s.ts, s.source, _dumps(s.tags), _dumps(s.fields)) for s in samples],
        )


class _Waiter:
    """One :meth:`Store.write` call waiting for the group commit that holds its rows."""

    __slots__ = ("done", "error", "owner", "result", "wake", "writes")

    def __init__(self, writes: Writes) -> None:
        self.writes = writes
        self.owner = threading.get_ident()
        self.done = False
        self.result: list[int] = []
        self.error: BaseException | None = None
        # Held until the waiter is woken, once: its group is done, or it leads the next.
        # A bare lock per waiter: a condition shared by all would wake every waiter at
        # every commit, which cost more than the commits it saved.
        self.wake = threading.Lock()
        self.wake.acquire()


def _own_copy(exc: BaseException) -> BaseException:
    """The group's error for one more waiter: a copy without the leader's traceback (whose
    frames hold another request), of the same type and with the same sqlite attributes."""
    try:
        dup = copy.copy(exc)
    except Exception:
        return exc
    dup.__traceback__ = None
    return dup


class Store:
    """Thread-safe handle on one SQLite file (one connection, serialised by a lock).

    Raises :class:`StoreError` when the file cannot be opened, created or migrated. Several
    processes may open (and create) the same path at once: one migrates, the others wait up
    to ``timeout`` seconds for it.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        #: Rows deleted by retention since this handle was opened, per table.
        self.deleted_rows_total: dict[str, int] = dict.fromkeys(
            [*RETAINED_TABLES, "span_resources", "runs"], 0
        )
        #: The last :meth:`apply_retention` stopped at its time budget.
        self.retention_incomplete = False
        self._lock = threading.Lock()
        # Group commit (:meth:`write`): writes queue here; one caller at a time leads.
        self._group = threading.Lock()
        self._queued: list[_Waiter] = []
        self._leading = False
        #: Transactions :meth:`write` committed (or tried to), and the writes they held.
        self.groups_total = 0
        self.grouped_writes_total = 0
        memory = str(path) == ":memory:"
        new = memory or self._prepare_file()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=timeout)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            if new:
                # Only a database without tables takes it, and only before the switch to WAL
                # (which writes the header): old stores need a VACUUM (docs/store.md).
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._wal(timeout)
            # NORMAL in WAL mode survives a crash of the agent (not of the kernel) without an
            # fsync per transaction; the durable delivery queues carry the stronger promise.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            # The agent appends: its hot pages are the ends of a few tables and indexes. At
            # SQLite's default 2000 KiB the cache had filled with cold pages after about five
            # minutes, 1 MiB of the daemon's RSS (bench/bench_agent_rss.py); reads beyond it
            # come from the OS page cache.
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._migrate()
            if not memory and _read_only_fs(self.path):
                # SQLite opens a WAL store on a read-only mount for reading; the agent would
                # only find out at its first write, long after start-up.
                raise StoreError(self.path, "read-only file system", errno.EROFS)
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error(exc) from exc
        except BaseException:
            self._db.close()
            raise

    def _prepare_file(self) -> bool:
        """Checks the path and creates the directories (0700) and an empty database file
        (0600) if there is none; returns True when the database is new (empty)."""
        p = self.path
        if p.is_dir():
            raise StoreError(p, "is a directory", errno.EISDIR)
        try:
            make_private_dirs(p.parent)
        except NotADirectoryError as exc:
            raise StoreError(p, f"{exc.filename} is not a directory", errno.ENOTDIR) from None
        except OSError as exc:
            cause = f"cannot create directory {p.parent}: {_describe_os_error(exc)}"
            raise StoreError(p, cause, exc.errno) from None
        try:
            # Created here rather than by SQLite so that it is owner-only whatever the umask;
            # SQLite gives the -wal and -shm files the database file's mode.
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(p, _describe_os_error(exc), exc.errno) from None
        else:
            try:
                os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
        try:
            return p.stat().st_size == 0
        except OSError as exc:
            raise StoreError(p, _describe_os_error(exc), exc.errno) from None

    def _wal(self, timeout: float) -> None:
        # Switching a new file to WAL needs its exclusive lock, and SQLite answers SQLITE_BUSY
        # at once rather than through the busy handler when another process holds it.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """The SQLite error as a one-line :class:`StoreError`, naming the likely cause."""
        p = self.path
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if name.startswith("SQLITE_NOTADB") or "not a database" in text:
            return StoreError(p, "not a wattspan store (the file is not an SQLite database)")
        if name.startswith("SQLITE_CORRUPT"):
            return StoreError(p, f"the database is damaged ({text})")
        if _busy(exc):
            return StoreError(p, "locked by another process (gave up waiting)")
        if _read_only_fs(p):
            return StoreError(p, "read-only file system", errno.EROFS)
        if name.startswith("SQLITE_FULL") or _disk_full(p):
            return StoreError(p, "no space left on device", errno.ENOSPC)
        if p.exists() and not os.access(p, os.R_OK | os.W_OK):
            return StoreError(p, "permission denied (needs read and write access)", errno.EACCES)
        if name.startswith("SQLITE_READONLY"):
            return StoreError(p, f"cannot write ({text})", errno.EACCES)
        return StoreError(p, text)

    def _migrate(self) -> None:
        with self._lock:
            version = self._check_version()
            if version == SCHEMA_VERSION:
                return
            # Several processes can open a new store at once (``wattspan run`` three times):
            # the write lock, taken before the version is read again, makes one of them
            # migrate and the others find the migrated schema.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._check_version()
                for v in range(version, SCHEMA_VERSION):
                    for statement in _statements(MIGRATIONS[v]):
                        self._db.execute(statement)
                if version < SCHEMA_VERSION:
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    def _check_version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                self.path,
                f"schema version {version} is newer than this wattspan understands "
                f"({SCHEMA_VERSION}); upgrade wattspan",
            )
        return version

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """Writes ``rows`` with ``sql`` (nothing for no rows); returns how many."""
        w = Writes()
        n = w._many(sql, rows)
        self.write(w)
        return n

    # -- group commit -------------------------------------------------------------------
    def write(self, writes: Writes) -> list[int]:
        """Commits ``writes`` (all or nothing) and returns the ids of its span batches.

        Returns only once the transaction holding them is committed. Writes of concurrent
        callers share one transaction (group commit): the first caller to find no commit in
        progress leads, taking whatever is queued (up to :data:`GROUP_MAX_WRITES`) once it
        holds the store, while the others wait; a commit in progress is what the next group
        forms behind, so a lone caller never waits for company. Each write runs under a
        savepoint: one that SQLite refuses fails only its caller. When the transaction
        cannot commit, every caller in the group raises (its own copy of the error) and
        none of their rows is stored.
        """
        if not writes:
            return []
        me = _Waiter(writes)
        with self._group:
            self._queued.append(me)
            lead = not self._leading
            self._leading = True
        if not lead:
            me.wake.acquire()  # done, or told to lead
        if not me.done:
            try:
                while not me.done:
                    self._commit_group()
            finally:
                with self._group:
                    if self._queued:  # queued meanwhile: the first leads the next group
                        self._queued[0].wake.release()
                    else:
                        self._leading = False
        if me.error is not None:
            raise me.error
        return me.result

    def _commit_group(self) -> None:
        """One transaction for the writes queued now (the leader's own among them)."""
        with self._lock:
            # Taken once the store is ours: what queued while retention or a reader held it
            # joins this group.
            with self._group:
                group = self._queued[:GROUP_MAX_WRITES]
                del self._queued[:GROUP_MAX_WRITES]
            db = self._db
            leader = threading.get_ident()
            alone = len(group) == 1
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for w in group:
                        if alone:
                            w.result = self._apply(w.writes)
                            continue
                        db.execute("SAVEPOINT w")
                        try:
                            w.result = self._apply(w.writes)
                        except Exception as exc:
                            db.execute("ROLLBACK TO w")
                            w.error = exc
                        db.execute("RELEASE w")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except BaseException as exc:
                for w in group:
                    w.result = []
                    w.error = exc if w.owner == leader else _own_copy(exc)
            finally:
                self.groups_total += 1
                self.grouped_writes_total += len(group)
                for w in group:
                    w.done = True
                    if w.owner != leader:
                        w.wake.release()

    def _apply(self, writes: Writes) -> list[int]:
        """Runs ``writes``' statements (store lock and transaction held); their batch ids."""
        db = self._db
        ids: list[int] = []
        for sql, data in writes.steps:
            if sql is not None:
                db.executemany(sql, data)
                continue
            values, resources = data
            bid = int(db.execute(_SPAN_BATCH_INSERT, values).lastrowid or 0)
            if resources is not None:
                db.execute(_SPAN_RESOURCES_INSERT, (bid, resources))
            ids.append(bid)
        return ids

    # -- runs ---------------------------------------------------------------------------
    _RUN_INSERT = (
        "INTO runs (id, name, description, kind, command, host, start_ts, end_ts, exit_code, "
        "summary) VALUES (?,?,?,?,?,?,?,?,?,?)"
    )

    @staticmethod
    def _run_values(run: Run) -> tuple[Any, ...]:
        return (
            run.id,
            run.name,
            run.description,
            run.kind,
            _dumps(run.command),
            run.host,
            run.start_ts,
            run.end_ts,
            run.exit_code,
            None if run.summary is None else _dumps(run.summary),
        )

    def create_run(self, run: Run) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT " + self._RUN_INSERT, self._run_values(run))

    def add_run(self, run: Run) -> bool:
        """Creates ``run`` unless a run with its id exists; True when it was created (two
        agents, or two requests, may see a program's first spans at once)."""
        with self._lock, self._db:
            cur = self._db.execute("INSERT OR IGNORE " + self._RUN_INSERT, self._run_values(run))
            return cur.rowcount == 1

    def run_kind(self, run_id: str) -> str | None:
        """The kind of the run with exactly this id, or None when there is none."""
        with self._lock:
            row = self._db.execute("SELECT kind FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def finish_run(
        self,
        run_id: str,
        end_ts: float,
        exit_code: int | None,
        summary: dict[str, Any] | None,
        start_ts: float | None = None,
    ) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE runs SET end_ts=?, exit_code=?, summary=?, "
                "start_ts=COALESCE(?, start_ts) WHERE id=?",
                (end_ts, exit_code, None if summary is None else _dumps(summary), start_ts, run_id),
            )

    @staticmethod
    def _run(row: Sequence[Any]) -> Run:
        return Run(
            id=row[0],
            name=row[1],
            description=row[2],
            kind=row[3],
            command=_loads(row[4]),
            host=row[5],
            start_ts=row[6],
            end_ts=row[7],
            exit_code=row[8],
            summary=None if row[9] is None else _loads(row[9]),
        )

    _RUN_COLS = "id, name, description, kind, command, host, start_ts, end_ts, exit_code, summary"

    def runs(self, limit: int | None = None, kind: str | None = None) -> list[Run]:
        """Runs, newest first."""
        sql = f"SELECT {self._RUN_COLS} FROM runs"
        args: list[Any] = []
        if kind:
            sql += " WHERE kind=?"
            args.append(kind)
        sql += " ORDER BY start_ts DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return [self._run(r) for r in self._db.execute(sql, args)]

    def resolve_run(self, ref: str) -> Run:
        """A run by id, unique id prefix, ``latest``/``last``, or name (newest of that name)."""
        with self._lock:
            if ref in ("latest", "last"):
                rows = self._db.execute(
                    f"SELECT {self._RUN_COLS} FROM runs ORDER BY start_ts DESC LIMIT 1"
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {self._RUN_COLS} FROM runs WHERE id LIKE ? ORDER BY start_ts DESC",
                    (ref.replace("%", "").replace("_", "\\_") + "%",),
                ).fetchall()
                if len(rows) > 1 and not any(r[0] == ref for r in rows):
                    raise KeyError(f"run id prefix {ref!r} is ambiguous ({len(rows)} runs)")
                rows = [r for r in rows if r[0] == ref] or rows
                if not rows:
                    rows = self._db.execute(
                        f"SELECT {self._RUN_COLS} FROM runs WHERE name=? "
                        "ORDER BY start_ts DESC LIMIT 1",
                        (ref,),
                    ).fetchall()
        if not rows:
            raise KeyError(f"no run matches {ref!r}")
        return self._run(rows[0])

    # -- samples ------------------------------------------------------------------------
    def write_samples(self, run_id: str | None, samples: Iterable[Sample]) -> int:
        w = Writes()
        n = w.samples(run_id, samples)
        self.write(w)
        return n

    def samples(
        self,
        run_id: str | Sequence[str] | None = None,
        source: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> list[Sample]:
        """Stored samples in time order, filtered by run (one id or several), source and
        time range."""
        clauses: list[str] = []
        args: list[Any] = []
        if isinstance(run_id, str):
            clauses.append("run_id=?")
            args.append(run_id)
        elif run_id is not None:
            clauses.append(f"run_id IN ({','.join('?' * len(run_id))})")
            args.extend(run_id)
        if source is not None:
            clauses.append("source=?")
            args.append(source)
        if start is not None:
            clauses.append("ts>=?")
            args.append(start)
        if end is not None:
            clauses.append("ts<=?")
            args.append(end)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT ts, source, tags, fields FROM samples{where} ORDER BY ts, rowid", args
            ).fetchall()
        return [Sample(src, ts, _loads(t), _loads(f)) for ts, src, t, f in rows]

    # -- spans and valued metrics -------------------------------------------------------
    def add_span_batch(self, run_id: str | None, rows: Sequence[SpanRow]) -> int:
        """Stores received spans (not yet attributed) as one batch; returns its id."""
        w = Writes()
        w.span_batch(run_id, rows)
        return self.write(w)[0]

    def set_batch_resources(self, items: Iterable[tuple[int, list[dict[str, Any]]]]) -> None:
        """Attribution results: (batch id, resources of its spans in order). A batch that
        retention deleted meanwhile gets none: a row left behind would later be taken for
        the attribution of a new batch that reuses the id."""
        self._insert_many(
            "INSERT OR REPLACE INTO span_resources (resources, batch_id) "
            "SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM span_batches WHERE id = ?2)",
            [(_dumps(res), bid) for bid, res in items],
        )

    def delete_span_batches(self, ids: Iterable[int]) -> int:
        """Forgets batches (a spool's, once its spans are in every exporter's queue)."""
        keys = [(i,) for i in ids]
        with self._lock, self._db:
            self._db.executemany("DELETE FROM span_resources WHERE batch_id = ?", keys)
            return self._db.executemany("DELETE FROM span_batches WHERE id = ?", keys).rowcount

    def unattributed_batches(self) -> list[tuple[int, list[SpanRow]]]:
        """Batches received but not attributed (the agent stopped before it got to them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.id, b.run_id, b.spans FROM span_batches AS b "
                "LEFT JOIN span_resources AS r ON r.batch_id = b.id "
                "WHERE r.batch_id IS NULL ORDER BY b.id"
            ).fetchall()
        return [
            (bid, [_span_row(run_id, w, {}) for w in _loads(spans)]) for bid, run_id, spans in rows
        ]

    def write_spans(self, rows: Iterable[SpanRow]) -> int:
        """Stores finished spans (with their resources, if any), one batch per run."""
        by_run: dict[str | None, list[SpanRow]] = {}
        for r in rows:
            by_run.setdefault(r.run_id, []).append(r)
        for run_id, group in by_run.items():
            self.add_span_batch(run_id, group)
        return sum(len(g) for g in by_run.values())

    def spans(self, run_id: str | None = None) -> list[SpanRow]:
        """Spans in start order. A span stored twice (a client retried a request whose answer
        it lost) counts once: its last copy wins."""
        sql = (
            "SELECT b.run_id, b.spans, r.resources FROM span_batches AS b "
            "LEFT JOIN span_resources AS r ON r.batch_id = b.id"
        )
        args: list[Any] = []
        if run_id is not None:
            sql += " WHERE b.run_id=?"
            args.append(run_id)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY b.id", args).fetchall()
        unique: dict[tuple[str, str], SpanRow] = {}
        for rid, spans, resources in rows:
            res = _loads(resources) if resources else None
            for i, w in enumerate(_loads(spans)):
                unique[(w[0], w[1])] = _span_row(rid, w, res[i] if res else {})
        return sorted(unique.values(), key=lambda r: r.start_ts)

    def write_metrics(self, rows: Iterable[MetricRow]) -> int:
        w = Writes()
        n = w.metrics(rows)
        self.write(w)
        return n

    def metrics(self, run_id: str | None = None, name: str | None = None) -> list[MetricRow]:
        clauses, args = [], []
        if run_id is not None:
            clauses.append("run_id=?")
            args.append(run_id)
        if name is not None:
            clauses.append("name=?")
            args.append(name)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, ts, name, value, step, trace_id, span_id, attributes FROM metrics"
                f"{where} ORDER BY ts, rowid",
                args,
            ).fetchall()
        return [MetricRow(*r[:7], attributes=_loads(r[7])) for r in rows]

    def write_params(
        self,
        run_id: str | None,
        span_id: str | None,
        params: dict[str, Any],
        ts: float | None = None,
    ) -> None:
        """``ts``: when they were logged (default now), what retention judges them by."""
        w = Writes()
        w.params(run_id, span_id, params, time.time() if ts is None else ts)
        self.write(w)

    def params(self, run_id: str) -> dict[str, Any]:
        """Hyperparameters of a run; a key logged twice keeps its latest value."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM params WHERE run_id=? ORDER BY rowid", (run_id,)
            ).fetchall()
        return {k: _loads(v) for k, v in rows}

    def write_confusion(self, rows: Iterable[ConfusionRow]) -> int:
        w = Writes()
        n = w.confusion(rows)
        self.write(w)
        return n

    def confusion_matrices(self, run_id: str) -> list[ConfusionRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, ts, labels, matrix, name, step, trace_id, span_id "
                "FROM confusion_matrices WHERE run_id=? ORDER BY ts, rowid",
                (run_id,),
            ).fetchall()
        return [ConfusionRow(r[0], r[1], _loads(r[2]), _loads(r[3]), *r[4:]) for r in rows]

    def write_logs(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """Rows of (run_id, ts, severity, body, trace_id, span_id, service, attributes)."""
        w = Writes()
        n = w.logs(rows)
        self.write(w)
        return n

    def logs(self, run_id: str) -> list[tuple[Any, ...]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, severity, body, trace_id, span_id, service, attributes FROM logs "
                "WHERE run_id=? ORDER BY ts, rowid",
                (run_id,),
            ).fetchall()
        return [(*r[:6], _loads(r[6])) for r in rows]

    # -- retention ----------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of pages in use: the file's size once free pages are given back, and what
        ``max_bytes`` of :meth:`apply_retention` bounds."""
        with self._lock:
            return self._used_bytes()

    def _used_bytes(self) -> int:
        q = self._db.execute
        pages = q("PRAGMA page_count").fetchone()[0] - q("PRAGMA freelist_count").fetchone()[0]
        return int(pages * q("PRAGMA page_size").fetchone()[0])

    def file_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):  # no WAL: nothing written since the last close
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def apply_retention(
        self,
        retention_hours: float,
        max_bytes: int = 0,
        *,
        now: float | None = None,
        budget: float | None = None,
    ) -> RetentionResult:
        """Deletes what is older than ``retention_hours`` (0: no age limit) from every table,
        then, while more than ``max_bytes`` (0: no bound) of pages are in use, whole runs
        that ended, oldest first, then the oldest rows of the runs still open, until the data
        fits in :data:`SIZE_TARGET` of ``max_bytes``; and gives the freed pages back to the
        filesystem (stores created with ``auto_vacuum=INCREMENTAL``, see docs/store.md).

        A row's age is its own time column (:data:`RETAINED_TABLES`). Rows are examined in
        the order they arrived, a chunk at a time, and a chunk with nothing old in it ends
        a table's pass: a row that arrived long after others with an old timestamp waits
        for them. A run's row goes once it ended before the horizon and none of its data is
        left; runs still open keep theirs.

        Deletes in short transactions, so that writers wait milliseconds; stops once
        ``budget`` seconds have passed (``complete`` False in the result, and in
        :attr:`retention_incomplete`): call again to go on. Counted in
        :attr:`deleted_rows_total`.
        """
        now = time.time() if now is None else now
        deadline = float("inf") if budget is None else time.monotonic() + budget
        deleted = dict.fromkeys(self.deleted_rows_total, 0)
        complete = True
        if retention_hours > 0:
            horizon = now - retention_hours * 3600.0
            complete = self._expire_all(horizon, deadline, deleted)
            if complete:
                self._delete_ended_runs(horizon, deleted)
        if complete and max_bytes > 0 and self.used_bytes() > max_bytes:
            complete = self._shrink(int(max_bytes * SIZE_TARGET), now, deadline, deleted)
        if complete:
            complete = self._reclaim(deadline)
        self.retention_incomplete = not complete
        return RetentionResult(deleted, self.used_bytes(), self.file_bytes(), complete)

    def _count(self, table: str, n: int, deleted: dict[str, int]) -> None:
        deleted[table] += n
        self.deleted_rows_total[table] += n

    def _delete_batches(self, ids: list[int], deleted: dict[str, int]) -> None:
        """Span batches and their attribution (lock and transaction held)."""
        rows = [(i,) for i in ids]
        cur = self._db.executemany("DELETE FROM span_resources WHERE batch_id=?", rows)
        self._count("span_resources", cur.rowcount, deleted)
        cur = self._db.executemany("DELETE FROM span_batches WHERE id=?", rows)
        self._count("span_batches", cur.rowcount, deleted)

    def _expire_all(self, horizon: float, deadline: float, deleted: dict[str, int]) -> bool:
        return all(self._expire(t, horizon, deadline, deleted) for t in RETAINED_TABLES)

    def _expire(self, table: str, horizon: float, deadline: float, deleted: dict[str, int]) -> bool:
        """Deletes ``table``'s rows older than ``horizon``; False if the deadline came first."""
        col = RETAINED_TABLES[table]
        chunk = _CHUNK_ROWS_BY_TABLE.get(table, _CHUNK_ROWS)
        after = -(2**63)
        while True:
            if time.monotonic() > deadline:
                return False
            with self._lock, self._db:
                if table == "samples":
                    # Indexed by time (samples_ts): exact, whatever the arrival order.
                    n = self._db.execute(
                        "DELETE FROM samples WHERE rowid IN "
                        "(SELECT rowid FROM samples WHERE ts < ? LIMIT ?)",
                        (horizon, chunk),
                    ).rowcount
                    self._count(table, n, deleted)
                    if n < chunk:
                        return True
                    continue
                # No time index on the others (one more index entry per row on the ingest
                # path): rowids follow arrival, which follows time closely enough.
                last = self._db.execute(
                    f"SELECT max(rowid) FROM (SELECT rowid FROM {table} WHERE rowid > ? "
                    "ORDER BY rowid LIMIT ?)",
                    (after, chunk),
                ).fetchone()[0]
                if last is None:
                    return True
                if table == "span_batches":
                    ids = [
                        r[0]
                        for r in self._db.execute(
                            "SELECT id FROM span_batches WHERE id > ? AND id <= ? AND end_ts < ?",
                            (after, last, horizon),
                        )
                    ]
                    self._delete_batches(ids, deleted)
                    n = len(ids)
                else:
                    n = self._db.execute(
                        f"DELETE FROM {table} WHERE rowid > ? AND rowid <= ? AND {col} < ?",
                        (after, last, horizon),
                    ).rowcount
                    self._count(table, n, deleted)
            if n == 0:
                return True
            after = last

    def _delete_ended_runs(self, horizon: float, deleted: dict[str, int]) -> None:
        has_data = " OR ".join(
            f"EXISTS (SELECT 1 FROM {t} WHERE run_id = runs.id)" for t in RETAINED_TABLES
        )
        with self._lock, self._db:
            n = self._db.execute(
                f"DELETE FROM runs WHERE end_ts IS NOT NULL AND end_ts < ? AND NOT ({has_data})",
                (horizon,),
            ).rowcount
            self._count("runs", n, deleted)

    def delete_run(self, run_id: str) -> int:
        """Deletes one run (by its full id) with its rows in every table (``wattspan rm``);
        returns the rows deleted, the run's own row included."""
        deleted = dict.fromkeys(self.deleted_rows_total, 0)
        self._delete_run(run_id, float("inf"), deleted)
        return sum(deleted.values())

    def _delete_run(self, run_id: str, deadline: float, deleted: dict[str, int]) -> bool:
        """All of one run: its rows in every table, then the run itself."""
        for table in RETAINED_TABLES:
            chunk = _CHUNK_ROWS_BY_TABLE.get(table, _CHUNK_ROWS)
            while True:
                if time.monotonic() > deadline:
                    return False
                with self._lock, self._db:
                    if table == "span_batches":
                        ids = [
                            r[0]
                            for r in self._db.execute(
                                "SELECT id FROM span_batches WHERE run_id=? LIMIT ?",
                                (run_id, chunk),
                            )
                        ]
                        self._delete_batches(ids, deleted)
                        n = len(ids)
                    else:
                        n = self._db.execute(
                            f"DELETE FROM {table} WHERE rowid IN "
                            f"(SELECT rowid FROM {table} WHERE run_id=? LIMIT ?)",
                            (run_id, chunk),
                        ).rowcount
                        self._count(table, n, deleted)
                if n < chunk:
                    break
        with self._lock, self._db:
            n = self._db.execute("DELETE FROM runs WHERE id=?", (run_id,)).rowcount
            self._count("runs", n, deleted)
        return True

    def _oldest(self) -> float | None:
        """The oldest time at the head of any table (samples: the oldest overall)."""
        times: list[float] = []
        with self._lock:
            for table, col in RETAINED_TABLES.items():
                order = "ts" if table == "samples" else "rowid"
                row = self._db.execute(
                    f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL ORDER BY {order} LIMIT 1"
                ).fetchone()
                if row is not None:
                    times.append(float(row[0]))
        return min(times, default=None)

    def _shrink(self, target: int, now: float, deadline: float, deleted: dict[str, int]) -> bool:
        """Size bound: runs that ended, oldest first, then time slices of what is left."""
        with self._lock:
            ended = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM runs WHERE end_ts IS NOT NULL ORDER BY start_ts, end_ts"
                )
            ]
        for run_id in ended:
            if not self._delete_run(run_id, deadline, deleted):
                return False
            if self.used_bytes() <= target:
                return True
        oldest = self._oldest()
        if oldest is None:
            return True
        # The runs still open (the agent's own session, a long `wattspan run`): move a
        # horizon forward from the oldest row in sixteenths of what they span.
        step = max((now - oldest) / 16.0, 60.0)
        horizon = oldest
        while self.used_bytes() > target and horizon <= now:
            horizon += step
            if not self._expire_all(horizon, deadline, deleted):
                return False
        return True

    def _reclaim(self, deadline: float) -> bool:
        """Free pages back to the filesystem, a step at a time, then the WAL cut back."""
        with self._lock:
            incremental = self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        while incremental:
            if time.monotonic() > deadline:
                return False
            with self._lock:
                if not self._db.execute("PRAGMA freelist_count").fetchone()[0]:
                    break
                self._db.execute(f"PRAGMA incremental_vacuum({_VACUUM_PAGES})").fetchall()
        with self._lock:
            # PASSIVE rather than TRUNCATE: never waits for readers (a `wattspan show`);
            # journal_size_limit cuts the WAL back once a checkpoint completes.
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()
