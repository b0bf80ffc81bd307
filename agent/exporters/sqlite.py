"""The embedded store as a sink: the agent's samples for one run, batched into SQLite.

Spans, metrics and logs have tables of their own and reach the store through the telemetry
ingest (:mod:`wattspan.agent.ingest`); this sink writes every other record.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence

from wattspan.agent.records import TELEMETRY_SOURCES
from wattspan.agent.store import Store
from wattspan.collectors.base import Sample


class StoreSink:
    """Batches samples for one run into the store: one transaction per ``flush_interval``."""

    name = "store"

    def __init__(self, store: Store, run_id: str | None, flush_interval: float = 1.0) -> None:
        self.store = store
        self.run_id = run_id
        self.flush_interval = flush_interval
        self._buf: list[Sample] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._written = 0
        self._errors = 0

    # Records that have tables of their own (written by the telemetry ingest).
    SKIP_SOURCES = TELEMETRY_SOURCES

    def write(self, samples: Sequence[Sample]) -> None:
        with self._lock:
            self._buf.extend(s for s in samples if s.source not in self.SKIP_SOURCES)
            due = time.monotonic() - self._last_flush >= self.flush_interval
        if due:
            self.flush()

    def flush(self, timeout: float | None = None) -> None:
        with self._lock:
            buf, self._buf = self._buf, []
            self._last_flush = time.monotonic()
        if not buf:
            return
        try:
            self._written += self.store.write_samples(self.run_id, buf)
        except sqlite3.Error:
            # Disk full or locked: keep the rows for the next flush rather than lose them.
            self._errors += 1
            with self._lock:
                self._buf[:0] = buf
            raise

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)

    def stats(self) -> dict[str, float | int | str]:
        with self._lock:
            pending = len(self._buf)
        return {
            "written_records_total": self._written,
            "write_errors_total": self._errors,
            "queued_records": pending,
            # Retention and the size bound (store.retention_hours, store.max_bytes).
            "retention_deleted_rows_total": sum(self.store.deleted_rows_total.values()),
            "used_bytes": self.store.used_bytes(),
        }
