"""``instrument(SparkSession.builder)``: the same spans from a session the program builds.

::

    from pyspark.sql import SparkSession
    import wattspan.engines.spark as ws

    spark = ws.instrument(SparkSession.builder.appName("etl")).getOrCreate()

sets ``spark.eventLog.enabled=true``, ``spark.eventLog.dir`` (a fresh directory unless
given) and ``spark.eventLog.compress=false`` on the builder, and starts a
:class:`~wattspan.engines.spark.monitor.SparkMonitor` on that directory, which sends the
application's spans to the agents as it runs (``OTEL_EXPORTER_OTLP_ENDPOINT`` for the driver's,
the endpoint template for the executors'). At exit, or at :meth:`Instrumented.stop` (after
``spark.stop()``), what is left is sent. Values the builder already has for these keys are
replaced: calling ``instrument`` is the program asking for it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from wattspan.engines.spark.monitor import SparkMonitor
from wattspan.engines.spark.skew import SkewRules

__all__ = ["Instrumented", "event_log_conf", "instrument"]


def event_log_conf(directory: str | os.PathLike[str]) -> dict[str, str]:
    """The Spark properties that make Spark write the event log wattspan reads."""
    return {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": Path(directory).resolve().as_uri(),
        "spark.eventLog.compress": "false",
    }


class Instrumented:
    """What :func:`instrument` started: its monitor, and the directory it follows."""

    def __init__(self, monitor: SparkMonitor, directory: Path, owned: bool) -> None:
        self.monitor = monitor
        self.directory = directory
        self._owned = owned
        self._stopped = False
        atexit.register(self.stop)

    def stop(self, wait_s: float = 5.0) -> None:
        """Sends what is left: waits up to ``wait_s`` for running applications' ends to be
        written (``spark.stop()`` writes it), then reads to the end and closes."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self.monitor.finish(wait_s)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)


# The builder -> its instrumentation, so that a second call on the same builder (or a test
# calling twice) does not start a second tailer on another directory.
_STARTED: dict[int, Instrumented] = {}


def instrument(
    builder: Any,
    *,
    event_log_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    endpoint_template: str | None = None,
    rules: SkewRules | None = None,
    poll_s: float = 0.25,
    flush_s: float | None = None,
) -> Any:
    """Configures ``builder`` (a ``SparkSession.Builder``) to write the event log and
    starts sending its application's spans; returns the builder, for chaining.

    ``event_log_dir``: where the log goes (default: a new temporary directory, removed at
    exit). ``endpoint``: the driver's agent (default: ``OTEL_EXPORTER_OTLP_ENDPOINT``, else
    ``http://localhost:4317``). ``endpoint_template``: executors' agents (default
    ``WATTSPAN_SPARK_ENDPOINT_TEMPLATE``, else ``HOST:4317``). ``flush_s``: how long a span
    waits at most for a full batch (default ``WATTSPAN_SPARK_FLUSH_S``, else 1 s). The
    :class:`Instrumented` handle is ``builder._wattspan`` (``stop()`` it to send the rest
    before the program goes on to other work).
    """
    key = id(builder)
    if key in _STARTED and not _STARTED[key]._stopped:
        return builder
    owned = event_log_dir is None
    directory = Path(tempfile.mkdtemp(prefix="wattspan-spark-")) if owned else Path(event_log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for k, v in event_log_conf(directory).items():
        builder = builder.config(k, v)
    monitor = SparkMonitor(
        directory,
        driver_endpoint=endpoint,
        template=endpoint_template,
        rules=rules,
        poll_s=poll_s,
        flush_s=flush_s,
    )
    handle = Instrumented(monitor.start(), directory, owned)
    _STARTED[key] = handle
    with contextlib.suppress(AttributeError, TypeError):
        builder._wattspan = handle
    return builder
