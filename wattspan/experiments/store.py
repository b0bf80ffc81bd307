"""Experiments and their repetitions, in the embedded store's SQLite file.

Two tables beside the agent's (``docs/experiments.md`` documents them), versioned apart from
it in ``experiment_schema`` so the daemon's ``PRAGMA user_version`` and migrations stay the
agent's alone. A repetition row copies its run's headline figures (``figures``): the store's
retention may delete a run's samples, the experiment's results stay.

A repetition may be tried more than once (``attempt``); the row that decides its outcome has
``final = 1``. Resuming skips every (configuration, phase, repetition) with a final row.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from wattspan.agent.store import Store, StoreError

MIGRATIONS: list[str] = [
    """
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        config_path TEXT NOT NULL DEFAULT '',
        config TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        seed INTEGER NOT NULL,
        host TEXT NOT NULL,
        env TEXT NOT NULL,
        env_fingerprint TEXT NOT NULL,
        planned INTEGER NOT NULL,
        start_ts REAL NOT NULL,
        end_ts REAL,
        status TEXT NOT NULL
    );
    CREATE INDEX experiments_start ON experiments(start_ts);
    CREATE TABLE experiment_repetitions (
        id INTEGER PRIMARY KEY,
        experiment_id TEXT NOT NULL REFERENCES experiments(id),
        config_key TEXT NOT NULL,
        params TEXT NOT NULL,
        run_name TEXT NOT NULL,
        phase TEXT NOT NULL,
        repetition INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        final INTEGER NOT NULL,
        run_id TEXT,
        start_ts REAL,
        end_ts REAL,
        exit_code INTEGER,
        figures TEXT NOT NULL,
        spans TEXT NOT NULL DEFAULT '[]',
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX experiment_repetitions_exp ON experiment_repetitions(experiment_id, seq);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: statuses of an experiment
RUNNING, FINISHED, INTERRUPTED, ABORTED = "running", "finished", "interrupted", "aborted"


def _dumps(v: Any, sort: bool = True) -> str:
    opts = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_SORT_KEYS if sort else 0)
    return orjson.dumps(v, option=opts).decode()


@dataclass(slots=True)
class Experiment:
    id: str
    name: str
    description: str
    config_path: str
    config: dict[str, Any]
    config_hash: str
    seed: int
    host: str
    env: dict[str, Any]
    env_fingerprint: str
    planned: int
    start_ts: float
    end_ts: float | None
    status: str


@dataclass(slots=True)
class Repetition:
    experiment_id: str
    config_key: str
    params: dict[str, Any]
    run_name: str
    phase: str
    repetition: int
    attempt: int
    seq: int
    status: str
    final: bool
    run_id: str | None
    start_ts: float | None
    end_ts: float | None
    exit_code: int | None
    figures: dict[str, Any] = field(default_factory=dict)
    spans: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def warmup(self) -> bool:
        return self.phase != "measured"


_EXP_COLS = (
    "id, name, description, config_path, config, config_hash, seed, host, env, "
    "env_fingerprint, planned, start_ts, end_ts, status"
)
_REP_COLS = (
    "experiment_id, config_key, params, run_name, phase, repetition, attempt, seq, status, "
    "final, run_id, start_ts, end_ts, exit_code, figures, spans, error"
)


class ExperimentStore:
    """One connection on the store file; thread-safe (a lock serialises it)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        # The agent's Store creates the file owner-only and migrates its own schema: the
        # repetitions' runs are written through it, so it must be usable anyway.
        Store(self.path, timeout=timeout).close()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=timeout)
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"experiment tables: {exc}") from exc

    def _migrate(self) -> None:
        db = self._db
        with self._lock:
            db.execute("CREATE TABLE IF NOT EXISTS experiment_schema (version INTEGER NOT NULL)")
            db.commit()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT version FROM experiment_schema").fetchone()
                version = 0 if row is None else int(row[0])
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        self.path,
                        f"experiment schema {version} is newer than this wattspan understands "
                        f"({SCHEMA_VERSION}); upgrade wattspan",
                    )
                for v in range(version, SCHEMA_VERSION):
                    for stmt in MIGRATIONS[v].split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                if row is None:
                    db.execute("INSERT INTO experiment_schema VALUES (?)", (SCHEMA_VERSION,))
                elif version < SCHEMA_VERSION:
                    db.execute("UPDATE experiment_schema SET version=?", (SCHEMA_VERSION,))
                db.commit()
            except BaseException:
                db.rollback()
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- experiments -------------------------------------------------------------------
    def create(self, e: Experiment) -> None:
        with self._lock, self._db:
            self._db.execute(
                f"INSERT INTO experiments ({_EXP_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    e.id,
                    e.name,
                    e.description,
                    e.config_path,
                    _dumps(e.config),
                    e.config_hash,
                    e.seed,
                    e.host,
                    _dumps(e.env),
                    e.env_fingerprint,
                    e.planned,
                    e.start_ts,
                    e.end_ts,
                    e.status,
                ),
            )

    def set_status(self, exp_id: str, status: str, end_ts: float | None = None) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE experiments SET status=?, end_ts=? WHERE id=?",
                (
                    status,
                    end_ts if end_ts is not None or status == RUNNING else time.time(),
                    exp_id,
                ),
            )

    @staticmethod
    def _exp(row: Sequence[Any]) -> Experiment:
        return Experiment(
            id=row[0],
            name=row[1],
            description=row[2],
            config_path=row[3],
            config=orjson.loads(row[4]),
            config_hash=row[5],
            seed=int(row[6]),
            host=row[7],
            env=orjson.loads(row[8]),
            env_fingerprint=row[9],
            planned=int(row[10]),
            start_ts=float(row[11]),
            end_ts=row[12],
            status=row[13],
        )

    def experiments(self, limit: int | None = None, name: str | None = None) -> list[Experiment]:
        """Newest first."""
        sql = f"SELECT {_EXP_COLS} FROM experiments"
        args: list[Any] = []
        if name is not None:
            sql += " WHERE name=?"
            args.append(name)
        sql += " ORDER BY start_ts DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return [self._exp(r) for r in self._db.execute(sql, args)]

    def resolve(self, ref: str) -> Experiment:
        """By id, unique id prefix, ``latest``/``last``, or name (the newest of that name)."""
        with self._lock:
            if ref in ("latest", "last"):
                rows = self._db.execute(
                    f"SELECT {_EXP_COLS} FROM experiments ORDER BY start_ts DESC LIMIT 1"
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_EXP_COLS} FROM experiments WHERE id LIKE ? ESCAPE '\\' "
                    "ORDER BY start_ts DESC",
                    (ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
                ).fetchall()
                exact = [r for r in rows if r[0] == ref]
                if len(rows) > 1 and not exact:
                    raise KeyError(f"experiment id prefix {ref!r} is ambiguous ({len(rows)})")
                rows = exact or rows
                if not rows:
                    rows = self._db.execute(
                        f"SELECT {_EXP_COLS} FROM experiments WHERE name=? "
                        "ORDER BY start_ts DESC LIMIT 1",
                        (ref,),
                    ).fetchall()
        if not rows:
            raise KeyError(f"no experiment matches {ref!r} (see `wattspan experiment list`)")
        return self._exp(rows[0])

    # -- repetitions -------------------------------------------------------------------
    def add_repetition(self, r: Repetition) -> None:
        with self._lock, self._db:
            self._db.execute(
                f"INSERT INTO experiment_repetitions ({_REP_COLS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.experiment_id,
                    r.config_key,
                    _dumps(r.params, sort=False),  # the matrix's order, for labels
                    r.run_name,
                    r.phase,
                    r.repetition,
                    r.attempt,
                    r.seq,
                    r.status,
                    int(r.final),
                    r.run_id,
                    r.start_ts,
                    r.end_ts,
                    r.exit_code,
                    _dumps(r.figures),
                    _dumps(r.spans),
                    r.error,
                ),
            )

    @staticmethod
    def _rep(row: Sequence[Any]) -> Repetition:
        return Repetition(
            experiment_id=row[0],
            config_key=row[1],
            params=orjson.loads(row[2]),
            run_name=row[3],
            phase=row[4],
            repetition=int(row[5]),
            attempt=int(row[6]),
            seq=int(row[7]),
            status=row[8],
            final=bool(row[9]),
            run_id=row[10],
            start_ts=row[11],
            end_ts=row[12],
            exit_code=row[13],
            figures=orjson.loads(row[14]),
            spans=orjson.loads(row[15]),
            error=row[16],
        )

    def repetitions(self, exp_id: str, final_only: bool = False) -> list[Repetition]:
        """In the order they ran (by start time; seq breaks ties)."""
        sql = f"SELECT {_REP_COLS} FROM experiment_repetitions WHERE experiment_id=?"
        if final_only:
            sql += " AND final=1"
        sql += " ORDER BY start_ts, seq, id"
        with self._lock:
            return [self._rep(r) for r in self._db.execute(sql, (exp_id,))]

    def done(self, exp_id: str) -> set[tuple[str, str, int]]:
        """(config_key, phase, repetition) of every repetition whose outcome is recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT config_key, phase, repetition FROM experiment_repetitions "
                "WHERE experiment_id=? AND final=1",
                (exp_id,),
            ).fetchall()
        return {(r[0], r[1], int(r[2])) for r in rows}

    def attempts(self, exp_id: str) -> dict[tuple[str, str, int], int]:
        """How many attempts each repetition already had (resumed retries go on counting)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT config_key, phase, repetition, MAX(attempt) FROM experiment_repetitions "
                "WHERE experiment_id=? GROUP BY config_key, phase, repetition",
                (exp_id,),
            ).fetchall()
        return {(r[0], r[1], int(r[2])): int(r[3]) for r in rows}


def measured(reps: Iterable[Repetition]) -> list[Repetition]:
    """The repetitions that count for statistics: final, measured and successful."""
    return [r for r in reps if r.final and r.phase == "measured" and r.status == "ok"]
