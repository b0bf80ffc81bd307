"""A finished application's event log into the store, as a run with its span tree.

The run id is derived from the application (:func:`~wattspan.engines.spark.spans.run_id_of`),
so importing the same log twice stores it once (the store keeps one copy of a span id).
Imported spans carry what the log says, without energy: the log has no node samples.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from wattspan.agent.store import Run, Store
from wattspan.engines.spark.eventlog import EventLogParser, read_event_log
from wattspan.engines.spark.skew import SkewRules
from wattspan.engines.spark.spans import SpanBuilder, SpanOut, run_id_of, to_rows

__all__ = ["Imported", "import_event_log"]

# Spans written to the store per batch while importing (bounded memory for big logs).
_BATCH = 20_000


@dataclass
class Imported:
    run: Run
    spans: int
    tasks: int
    parser: EventLogParser


def import_event_log(
    path: str | os.PathLike[str],
    store: Store,
    *,
    name: str | None = None,
    rules: SkewRules | None = None,
) -> Imported:
    """Reads the log at ``path`` (a file or an ``eventlog_v2_*`` directory) into ``store``.

    Raises :class:`~wattspan.engines.spark.eventlog.EventLogError` for what is not an
    uncompressed Spark event log with an application in it."""
    from wattspan.engines.spark.eventlog import EventLogError

    pending: list[SpanOut] = []
    runs: list[Run] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if pending:
            store.write_spans(to_rows(pending, runs[0].id, runs[0].name))
            written += len(pending)
            pending.clear()

    def emit(span: SpanOut) -> None:
        if not runs:
            app = builder.app
            assert app is not None
            run = Run(
                id=run_id_of(app),
                name=name or app.name or os.path.basename(os.fspath(path)),
                host=app.driver_host or socket.gethostname(),
                start_ts=app.start_ms / 1e3,
                kind="run",
                description=f"Spark application {app.app_id}, imported from its event log",
                command=["wattspan", "spark", "import", os.fspath(path)],
            )
            store.add_run(run)
            runs.append(run)
        pending.append(span)
        if len(pending) >= _BATCH:
            flush()

    builder = SpanBuilder(emit, rules=rules)
    parser = read_event_log(os.fspath(path), builder)
    flush()
    if not runs or not parser.app.app_id:
        raise EventLogError(f"{path}: the log holds no Spark application")
    run, app = runs[0], parser.app
    end = (app.end_ms or parser.last_ms) / 1e3
    summary = {
        "spark_app_id": app.app_id,
        "spark_tasks": builder.counts["task"],
        "spark_stages": builder.counts["stage"],
        "spark_jobs": builder.counts["job"],
        "spans": written,
    }
    store.finish_run(run.id, end, app.exit_code, summary)
    run.end_ts, run.exit_code, run.summary = end, app.exit_code, summary
    return Imported(run, written, builder.counts["task"], parser)
