"""SQLite store in WAL mode, schema migrated by ``PRAGMA user_version``.

The schema is documented in ``docs/store.md``. Samples keep tags and fields as compact JSON
so that every collector's record is stored exactly as produced: the run summary and span
attribution can be recomputed from the stored rows alone.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

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
]

SCHEMA_VERSION = len(MIGRATIONS)


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


class Store:
    """Thread-safe handle on one SQLite file (one connection, serialised by a lock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the agent (not of the kernel) without an
        # fsync per transaction; the durable delivery queues carry the stronger promise.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"store {self.path} has schema version {version}, newer than this "
                    f"wattspan understands ({SCHEMA_VERSION}); upgrade wattspan"
                )
            for v in range(version, SCHEMA_VERSION):
                with self._db:
                    self._db.executescript(MIGRATIONS[v])
                    self._db.execute(f"PRAGMA user_version={v + 1}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """Writes ``rows`` with ``sql`` in one transaction (none for no rows); returns how many."""
        if rows:
            with self._lock, self._db:
                self._db.executemany(sql, rows)
        return len(rows)

    # -- runs ---------------------------------------------------------------------------
    def create_run(self, run: Run) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO runs (id, name, description, kind, command, host, start_ts, "
                "end_ts, exit_code, summary) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
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
                ),
            )

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
        return self._insert_many(
            "INSERT INTO samples (run_id, ts, source, tags, fields) VALUES (?,?,?,?,?)",
            [(run_id, s.ts, s.source, _dumps(s.tags), _dumps(s.fields)) for s in samples],
        )

    def samples(
        self,
        run_id: str | None = None,
        source: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> list[Sample]:
        """Stored samples in time order, filtered by run, source and time range."""
        clauses, args = [], []
        if run_id is not None:
            clauses.append("run_id=?")
            args.append(run_id)
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
        attributed = all(r.resources for r in rows)
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO span_batches (run_id, start_ts, end_ts, count, spans) "
                "VALUES (?,?,?,?,?)",
                (
                    run_id,
                    min(r.start_ts for r in rows),
                    max(r.end_ts for r in rows),
                    len(rows),
                    _dumps(wire),
                ),
            )
            bid = int(cur.lastrowid or 0)
            if attributed:
                self._db.execute(
                    "INSERT INTO span_resources (batch_id, resources) VALUES (?,?)",
                    (bid, _dumps([r.resources for r in rows])),
                )
            return bid

    def set_batch_resources(self, items: Iterable[tuple[int, list[dict[str, Any]]]]) -> None:
        """Attribution results: (batch id, resources of its spans in order)."""
        self._insert_many(
            "INSERT OR REPLACE INTO span_resources (resources, batch_id) VALUES (?,?)",
            [(_dumps(res), bid) for bid, res in items],
        )

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
        data = [
            (r.run_id, r.ts, r.name, r.value, r.step, r.trace_id, r.span_id, _dumps(r.attributes))
            for r in rows
        ]
        return self._insert_many(
            "INSERT INTO metrics (run_id, ts, name, value, step, trace_id, span_id, "
            "attributes) VALUES (?,?,?,?,?,?,?,?)",
            data,
        )

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

    def write_params(self, run_id: str | None, span_id: str | None, params: dict[str, Any]) -> None:
        self._insert_many(
            "INSERT INTO params (run_id, span_id, key, value) VALUES (?,?,?,?)",
            [(run_id, span_id, str(k), _dumps(v)) for k, v in params.items()],
        )

    def params(self, run_id: str) -> dict[str, Any]:
        """Hyperparameters of a run; a key logged twice keeps its latest value."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM params WHERE run_id=? ORDER BY rowid", (run_id,)
            ).fetchall()
        return {k: _loads(v) for k, v in rows}

    def write_confusion(self, rows: Iterable[ConfusionRow]) -> int:
        data = [
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
        ]
        return self._insert_many(
            "INSERT INTO confusion_matrices (run_id, ts, name, step, trace_id, span_id, "
            "labels, matrix) VALUES (?,?,?,?,?,?,?,?)",
            data,
        )

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
        return self._insert_many(
            "INSERT INTO logs (run_id, ts, severity, body, trace_id, span_id, service, "
            "attributes) VALUES (?,?,?,?,?,?,?,?)",
            [(*r[:7], _dumps(r[7])) for r in rows],
        )

    def logs(self, run_id: str) -> list[tuple[Any, ...]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, severity, body, trace_id, span_id, service, attributes FROM logs "
                "WHERE run_id=? ORDER BY ts, rowid",
                (run_id,),
            ).fetchall()
        return [(*r[:6], _loads(r[6])) for r in rows]

    def delete_samples_before(self, ts: float) -> int:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM samples WHERE ts < ?", (ts,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
