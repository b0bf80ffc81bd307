"""The glue: an event-log directory tailed into spans sent to the agents.

:class:`SparkMonitor` is what both entry points run: ``wattspan run -- spark-submit ...``
(:mod:`wattspan.engines.spark.launch`, in the ``wattspan run`` process) and
:func:`wattspan.engines.spark.instrument` (in the user's driver process). One tailer follows
the directory; each application log gets its own parser and span builder; one sender routes
all spans (tasks to their node's agent, the rest to the driver's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wattspan import semconv as sc
from wattspan.engines.spark.eventlog import Application
from wattspan.engines.spark.sender import EndpointRouter, SpanSender, flush_interval
from wattspan.engines.spark.skew import SkewRules
from wattspan.engines.spark.spans import SpanBuilder, SpanOut, run_id_of
from wattspan.engines.spark.tail import EventLogTailer

__all__ = ["SparkMonitor"]

log = logging.getLogger("wattspan.spark")


class _AppSpans(SpanBuilder):
    """A builder for one application log, sending through the monitor's sender; in a run
    of its own (no ``wattspan run`` around it) it also ends that run with a ``wattspan.run``
    root span on every agent that got its spans."""

    def __init__(self, monitor: SparkMonitor) -> None:
        self.monitor = monitor
        self.sender: SpanSender | None = None
        super().__init__(self._emit, rules=monitor.rules)

    def _emit(self, span: SpanOut) -> None:
        if self.sender is None:
            assert self.app is not None
            self.sender = self.monitor.sender_for(self.app)
        self.sender.add(span)

    def app_ended(self, app: Application) -> None:
        own = self.monitor.run_id is None
        if own:
            # The application span hangs under the run root, which ends the run.
            self.root_parent = self.span_id(app, "run")
        super().app_ended(app)
        if self.sender is None:
            return
        self.sender.flush()
        if own:
            root = SpanOut(
                sc.RUN_ROOT_SPAN,
                self._trace,
                self.span_id(app, "run"),
                b"",
                app.start_ms * 1_000_000,
                max(app.end_ms or app.start_ms, app.start_ms) * 1_000_000,
                {"spark.app.id": app.app_id, sc.ATTR_EXIT_CODE: app.exit_code or 0},
            )
            for ep in sorted(self.sender.endpoints()):
                self.sender.send_to(ep, [root])
        self.monitor.apps_done += 1


class SparkMonitor:
    """Tails ``directory`` and sends the spans of every application that appears in it.

    ``run_id``: the run the spans belong to (``wattspan run``'s); None gives each
    application a run of its own (:func:`~wattspan.engines.spark.spans.run_id_of`).
    ``driver_endpoint`` / ``driver_headers``: the driver's agent (default: the
    ``OTEL_EXPORTER_OTLP_*`` environment). ``flush_s``: the longest a span read from the log
    waits for its batch to fill before the next poll sends it (default
    ``WATTSPAN_SPARK_FLUSH_S``, else 1 s; 0: at the poll that read it).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        run_id: str | None = None,
        driver_endpoint: str | None = None,
        driver_headers: str | None = None,
        template: str | None = None,
        env: Mapping[str, str] | None = None,
        rules: SkewRules | None = None,
        poll_s: float = 0.25,
        flush_s: float | None = None,
        service: str | None = None,
    ) -> None:
        e = os.environ if env is None else env
        self.flush_s = flush_interval(flush_s, e)
        self.directory = Path(directory)
        self.run_id = run_id if run_id is not None else (e.get("WATTSPAN_RUN_ID") or None)
        self.router = EndpointRouter(driver_endpoint, template, e)
        self.driver_headers = driver_headers
        self.rules = rules or SkewRules()
        self.service = service or e.get("OTEL_SERVICE_NAME") or ""
        self.senders: list[SpanSender] = []
        self._shared: SpanSender | None = None
        self.apps_done = 0
        self.builders: list[_AppSpans] = []
        self.tailer = EventLogTailer(
            self.directory, self._listener, poll_s=poll_s, after_poll=self.flush_due
        )

    def _listener(self, path: Path) -> _AppSpans:
        b = _AppSpans(self)
        self.builders.append(b)
        return b

    def sender_for(self, app: Application) -> SpanSender:
        if app.driver_host:
            self.router.driver_hosts.add(app.driver_host)
        base = {
            "service.name": self.service or app.name or "spark",
            "telemetry.distro.name": "wattspan",
            "spark.app.id": app.app_id,
            "spark.app.name": app.name,
        }
        if self.run_id is not None:
            # One run for everything: one sender (and one channel per agent) for all apps.
            if self._shared is None:
                base[sc.ATTR_RUN_ID] = self.run_id
                self._shared = self._new_sender(base)
            return self._shared
        base[sc.ATTR_RUN_ID] = run_id_of(app)
        base[sc.ATTR_RUN_NAME] = app.name or "spark"
        base[sc.ATTR_RUN_START] = app.start_ms * 1_000_000
        return self._new_sender(base)

    def _new_sender(self, resource: dict[str, Any]) -> SpanSender:
        s = SpanSender(
            resource, self.router, flush_s=self.flush_s, driver_headers=self.driver_headers
        )
        self.senders.append(s)
        return s

    def start(self) -> SparkMonitor:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tailer.start()
        return self

    def flush(self) -> None:
        for s in list(self.senders):
            s.flush()

    def flush_due(self) -> int:
        """Sends the spans that waited ``flush_s`` (the tailer's thread, after each poll)."""
        return sum(s.flush_due() for s in list(self.senders))

    def finish(self, wait_s: float = 0.0) -> None:
        """Reads what is left (waiting up to ``wait_s`` for running applications to end),
        sends everything and closes the channels."""
        if wait_s > 0 and self.tailer.followers:
            self.tailer.wait_done(wait_s)
        self.tailer.finish()
        for s in list(self.senders):
            s.close()

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.senders)

    @property
    def sent(self) -> int:
        return sum(sum(s.sent.values()) for s in self.senders)
