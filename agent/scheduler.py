"""One sampling loop for every collector: drift-free ticks, failures isolated per collector."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wattspan.collectors.base import Collector, Sample

log = logging.getLogger("wattspan.scheduler")


@dataclass(slots=True)
class _Slot:
    collector: Collector
    interval: float
    due: float = 0.0
    errors: int = 0
    failing: bool = False
    seconds: float = 0.0


class Scheduler:
    """Calls each collector at its own interval from a single thread.

    Tick ``k`` is due at ``start + k * interval`` (monotonic clock), so sampling does not
    drift with the time collectors take; a tick that could not run in time is skipped and
    counted rather than run late in a burst. A collector that raises is logged once when it
    starts failing and once when it recovers, and counted; the others carry on.
    """

    def __init__(
        self,
        collectors: Sequence[Collector],
        interval: float,
        emit: Callable[[list[Sample]], None],
        intervals: dict[str, float] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.emit = emit
        intervals = intervals or {}
        self._slots = [_Slot(c, max(intervals.get(c.name, interval), interval)) for c in collectors]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ticks = 0
        self.missed_ticks = 0
        self.emit_errors = 0
        self.cpu_seconds = 0.0

    @property
    def collectors(self) -> list[Collector]:
        return [s.collector for s in self._slots]

    def tick(self, force: bool = False) -> list[Sample]:
        """Sample every collector that is due (all of them with ``force``) and emit."""
        with self._lock:
            cpu0 = time.thread_time()
            mono = time.monotonic()
            now = time.time()
            out: list[Sample] = []
            for slot in self._slots:
                if not force and mono < slot.due:
                    continue
                slot.due = mono + slot.interval - self.interval / 2
                t0 = time.perf_counter()
                try:
                    out.extend(slot.collector.sample(now))
                except Exception as exc:
                    slot.errors += 1
                    if not slot.failing:
                        slot.failing = True
                        log.warning(
                            "collector %s failed, others continue: %s: %s",
                            slot.collector.name,
                            type(exc).__name__,
                            exc,
                        )
                else:
                    if slot.failing:
                        slot.failing = False
                        log.info("collector %s recovered", slot.collector.name)
                slot.seconds += time.perf_counter() - t0
            self.ticks += 1
            try:
                self.emit(out)
            except Exception as exc:
                self.emit_errors += 1
                log.warning("emitting samples failed: %s: %s", type(exc).__name__, exc)
            self.cpu_seconds += time.thread_time() - cpu0
            return out

    def _loop(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.tick()
            k += 1
            target = start + k * self.interval
            now = time.monotonic()
            if now > target:
                behind = int((now - target) // self.interval) + 1
                self.missed_ticks += behind
                k += behind
                target = start + k * self.interval
            self._stop.wait(max(target - time.monotonic(), 0.0))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="wattspan-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        for slot in self._slots:
            try:
                slot.collector.close()
            except Exception as exc:  # closing must not mask the real exit path
                log.debug("closing collector %s: %s", slot.collector.name, exc)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per collector: ``errors_total`` and ``seconds_total`` spent sampling."""
        return {
            s.collector.name: {"errors_total": s.errors, "seconds_total": s.seconds}
            for s in self._slots
        }
