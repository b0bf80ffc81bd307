"""Zero-code Spark under ``wattspan run``: ``spark-submit app.py`` or ``python etl.py``.

The mechanism: Spark's launcher (``bin/spark-class``, which ``spark-submit`` and PySpark's
gateway both go through) puts ``SPARK_SUBMIT_OPTS`` on the driver JVM's command line, and
``SparkConf`` loads every Java system property that starts with ``spark.``. So ``wattspan
run`` adds ``-Dspark.eventLog.enabled=true -Dspark.eventLog.dir=file:DIR
-Dspark.eventLog.compress=false`` in front of whatever ``SPARK_SUBMIT_OPTS`` holds, with DIR a
fresh directory, and tails DIR while the command runs. Nothing of the user's is changed, and
the user's own settings win: ``--conf`` and ``spark-defaults.conf`` override system
properties in ``SparkSubmit``, a later ``-D`` in ``SPARK_SUBMIT_OPTS`` overrides ours, and so
does ``.config(...)`` in the program. When they turn the log off or send it elsewhere,
wattspan says so at the end.

Startup cost: this module imports nothing of Spark or the rest of the engine until the
command looks like Spark (:func:`looks_like_spark`: a Spark launcher, or a Python script that
mentions ``pyspark``); ``WATTSPAN_SPARK=1`` / ``0`` forces it on or off.
"""

from __future__ import annotations

import os

# Imported by ``wattspan run`` before it starts its command: what only a Spark run needs
# (pathlib, tempfile, shutil, typing) loads inside the functions that use it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

__all__ = ["SPARK_LAUNCHERS", "SparkRunHook", "looks_like_spark", "submit_opts"]

SPARK_LAUNCHERS = frozenset(
    {"spark-submit", "pyspark", "spark-shell", "spark-sql", "sparkR", "run-example"}
)
# How much of a script is searched for "pyspark".
_SCRIPT_HEAD = 1 << 20
FORCE_ENV = "WATTSPAN_SPARK"


def _is_python(name: str) -> bool:
    """``python``, ``python3``, ``python3.11`` (no regex: ``re`` costs milliseconds here)."""
    if not name.startswith("python"):
        return False
    major, dot, minor = name[6:].partition(".")
    if not major:
        return not dot
    return major.isdigit() and (not dot or minor.isdigit())


def _script_mentions_pyspark(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"pyspark" in f.read(_SCRIPT_HEAD)
    except OSError:
        return False


def looks_like_spark(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """True for a Spark launcher (``spark-submit``...), or ``python SCRIPT`` / ``python -m
    MODULE`` whose script or module source mentions ``pyspark``; ``WATTSPAN_SPARK=1``/``0``
    decides instead when set."""
    e = os.environ if env is None else env
    forced = e.get(FORCE_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off") or not cmd:
        return False
    name = os.path.basename(cmd[0])
    if name.removesuffix(".cmd") in SPARK_LAUNCHERS:
        return True
    if not _is_python(name):
        return False
    args = list(cmd[1:])
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-m" and i + 1 < len(args):
            mod = args[i + 1]
            if mod.split(".")[0] == "pyspark":
                return True
            import importlib.util

            try:
                spec = importlib.util.find_spec(mod)
            except (ImportError, ValueError):
                return False
            return bool(spec and spec.origin and _script_mentions_pyspark(spec.origin))
        if a == "-c":
            return i + 1 < len(args) and "pyspark" in args[i + 1]
        if a.startswith("-"):
            i += 1
            continue
        return _script_mentions_pyspark(a)
    return False


def submit_opts(directory: str | os.PathLike[str], existing: str = "") -> str:
    """``SPARK_SUBMIT_OPTS`` with the event-log properties in front of ``existing``."""
    from pathlib import Path

    uri = Path(directory).resolve().as_uri()
    ours = (
        f"-Dspark.eventLog.enabled=true -Dspark.eventLog.dir={uri} -Dspark.eventLog.compress=false"
    )
    return f"{ours} {existing}".strip()


class SparkRunHook:
    """``wattspan run``'s Spark support: ``on_start(agent)`` makes the event-log directory,
    starts the monitor against the embedded agent and returns the child's environment;
    ``on_exit()`` (the command ended) reads the rest, sends it and removes the directory.

    ``headers``: OTLP headers for the embedded agent (its bearer token), as the child gets
    them.
    """

    def __init__(self, env: Mapping[str, str] | None = None, headers: str | None = None):
        self.env = dict(os.environ if env is None else env)
        self.headers = headers
        self.directory: Path | None = None
        self.monitor: Any = None

    @classmethod
    def for_config(cls, config: Any) -> SparkRunHook:
        """The hook for an agent built from ``config`` (its OTLP bearer token, if any)."""
        from wattspan.agent.errors import ConfigError
        from wattspan.agent.receiver.security import load_bearer_token

        o = config["otlp"]
        try:
            token = load_bearer_token(
                "otlp", o["bearer_token_file"] or None, o["bearer_token_env"] or None
            )
        except ConfigError:
            token = None  # the runner reports it, with the key, when it builds the agent
        return cls(headers=None if token is None else "authorization=Bearer%20" + token.decode())

    def on_start(self, agent: Any) -> dict[str, str]:
        from wattspan.engines.spark.monitor import SparkMonitor

        endpoint = agent.otlp_endpoint
        if not endpoint:
            return {}
        run_id = agent.run.id if agent.run is not None else None
        import tempfile
        from pathlib import Path

        directory = Path(tempfile.mkdtemp(prefix="wattspan-spark-"))
        try:
            monitor = SparkMonitor(
                directory,
                run_id=run_id,
                driver_endpoint=endpoint,
                driver_headers=self.headers,
                env=self.env,
            )
        except ValueError as exc:
            # A bad WATTSPAN_SPARK_* setting: the command is still measured, without Spark
            # spans, rather than not run at all.
            import logging
            import shutil

            logging.getLogger("wattspan.spark").warning("wattspan: %s: no Spark spans", exc)
            shutil.rmtree(directory, ignore_errors=True)
            return {}
        self.directory = directory
        self.monitor = monitor.start()
        return {
            "SPARK_SUBMIT_OPTS": submit_opts(self.directory, self.env.get("SPARK_SUBMIT_OPTS", ""))
        }

    def on_exit(self) -> dict[str, int]:
        """Sends what is left; returns counts (applications, spans sent and dropped)."""
        import logging

        if self.monitor is None:
            return {}
        m = self.monitor
        m.finish()
        out = {"applications": len(m.builders), "spans_sent": m.sent, "spans_dropped": m.dropped}
        if not m.builders:
            logging.getLogger("wattspan.spark").warning(
                "wattspan: the Spark command wrote no event log to %s (its configuration "
                "turned spark.eventLog off or sent it elsewhere): no Spark spans",
                self.directory,
            )
        if self.directory is not None:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)
        return out
