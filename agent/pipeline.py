"""Fan-out of the agent's records to its sinks, and the latest value of every series."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from wattspan.agent.sinks import Sink
from wattspan.collectors.base import Sample

log = logging.getLogger("wattspan.pipeline")

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class SinkError(RuntimeError):
    """A sink could not take records; raised by ``Pipeline.submit`` so a caller (the OTLP
    receiver) does not acknowledge data that is not safely stored."""


class Pipeline:
    """Hands every batch of samples to each sink and keeps the newest sample per series.

    A sink that raises is logged once when it starts failing and once when it recovers;
    its failures are counted in ``sink_errors``.
    """

    def __init__(
        self, sinks: Sequence[Sink] = (), stale_after: float = 30.0, keep_latest: bool = True
    ) -> None:
        self.sinks = list(sinks)
        self.stale_after = stale_after
        # Only /metrics reads the latest samples: without it, keeping them is work per tick
        # that nothing uses.
        self.keep_latest = keep_latest
        self._latest: dict[SeriesKey, Sample] = {}
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self.sink_errors: dict[str, int] = {s.name: 0 for s in self.sinks}

    def add_sink(self, sink: Sink, first: bool = False) -> None:
        """Adds ``sink`` after the others, or before them with ``first``."""
        self.sinks.insert(0 if first else len(self.sinks), sink)
        self.sink_errors.setdefault(sink.name, 0)

    def wants(self, source: str) -> bool:
        """True if any sink may take records of ``source``; lets producers skip building
        records nobody would receive."""
        return any(source not in getattr(s, "SKIP_SOURCES", ()) for s in self.sinks)

    def emit(self, samples: Sequence[Sample]) -> list[str]:
        """Best effort: a failing sink is counted and logged, the others still get the data.
        Returns the names of the sinks that failed."""
        self._remember(samples)
        return [sink.name for sink in self.sinks if not self._write(sink, samples)]

    def submit(self, samples: Sequence[Sample]) -> None:
        """All-or-error: raises :class:`SinkError` if any sink failed to take the records."""
        failed = self.emit(samples)
        if failed:
            raise SinkError(f"not accepted by: {', '.join(failed)}")

    def _write(self, sink: Sink, samples: Sequence[Sample]) -> bool:
        try:
            sink.write(samples)
        except Exception as exc:
            self.sink_errors[sink.name] = self.sink_errors.get(sink.name, 0) + 1
            if sink.name not in self._failing:
                self._failing.add(sink.name)
                log.error("sink %s failed: %s: %s", sink.name, type(exc).__name__, exc)
            return False
        if sink.name in self._failing:
            self._failing.discard(sink.name)
            log.info("sink %s recovered", sink.name)
        return True

    def _remember(self, samples: Sequence[Sample]) -> None:
        if not self.keep_latest:
            return
        with self._lock:
            for s in samples:
                self._latest[(s.source, tuple(sorted(s.tags.items())))] = s

    def latest(self) -> list[Sample]:
        """The newest sample of each series seen within ``stale_after`` seconds (none
        without ``keep_latest``)."""
        cutoff = time.time() - self.stale_after
        with self._lock:
            for key in [k for k, s in self._latest.items() if s.ts < cutoff]:
                del self._latest[key]
            return list(self._latest.values())

    def flush(self, timeout: float | None = None) -> None:
        """Flush every sink, in order, within ``timeout`` s in all (None: each sink's own
        default): a slow sink leaves the later ones the rest of the budget, not its own."""
        self._each("flushing", lambda sink, left: sink.flush(left), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Close every sink within ``timeout`` s in all, like :meth:`flush`."""
        self._each("closing", lambda sink, left: sink.close(left), timeout)

    def _each(
        self,
        what: str,
        call: Callable[[Sink, float | None], None],
        timeout: float | None,
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for sink in self.sinks:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                call(sink, left)
            except Exception as exc:
                log.error("%s sink %s failed: %s: %s", what, sink.name, type(exc).__name__, exc)
