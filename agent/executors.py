"""Which local process is a Spark executor: its JVM's pid, from ``/proc``.

Spark task spans are reported by the driver side (from Spark's event log), not by the
executor that ran the task, so neither ``process.pid`` nor the OTLP peer names the process
whose CPU the task used. The spans do name the executor (``spark.app.id`` and
``spark.executor.id``), and so does the executor's command line:

* an executor backend of any cluster manager (standalone's
  ``org.apache.spark.executor.CoarseGrainedExecutorBackend``, YARN's and Kubernetes'
  subclasses) is started with ``--executor-id N ... --app-id APP``;
* executor ``driver`` is the driver JVM itself (local mode runs every task there): a
  ``org.apache.spark.deploy.SparkSubmit`` process (``spark-submit``, PySpark, the shells) or
  standalone cluster mode's ``org.apache.spark.deploy.worker.DriverWrapper``. Its command
  line names no application, so among several drivers on the node the one is taken that
  has ``APP`` in the name of a file it holds open (its event log, ``APP.inprogress`` or
  ``eventlog_v2_APP/``, which wattspan's Spark integration always enables); failing that,
  for a local-mode id (``local-<start in ms>``) the latest driver started within
  :data:`DRIVER_START_WINDOW_S` before the application; failing that, the only driver on
  the node, if there is one; otherwise none (no guess between two).

Cost: a walk of ``/proc/*/cmdline`` per executor not seen before (bounded by
:data:`SCAN_BUDGET_S`), at most one per application and :data:`RESCAN_S` (an executor that a
walk for its application that recent did not find is not there: an imported application's
thousand long-gone executors cost one walk, not a thousand); every executor the walk finds is
remembered at once. A hit is a
dict lookup, re-checked against the process's start time (``/proc/PID/stat`` field 22) at
most every :data:`RECHECK_S`: after an executor exits, its pid may be given to another
process, which must not inherit its tasks. Misses are remembered for
:data:`NEGATIVE_TTL_S`; at most :data:`MAX_ENTRIES` entries are kept. Thread-safe.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wattspan.agent.pids import stat_field

__all__ = [
    "ATTR_APP_ID",
    "ATTR_EXECUTOR_ID",
    "DRIVER",
    "ExecutorPids",
    "SparkProcess",
    "parse_cmdline",
]

#: span (or resource) attributes naming the executor that ran a task
ATTR_APP_ID = "spark.app.id"
ATTR_EXECUTOR_ID = "spark.executor.id"
#: the executor id of the driver (local mode runs every task there)
DRIVER = "driver"

MAX_ENTRIES = 1024
NEGATIVE_TTL_S = 10.0
RECHECK_S = 1.0
SCAN_BUDGET_S = 0.5
RESCAN_S = 1.0
#: how long before its application's start a local-mode driver JVM may have started
DRIVER_START_WINDOW_S = 120.0

_EXECUTOR_PACKAGE = "org.apache.spark.executor."
_DRIVER_CLASSES = frozenset(
    {"org.apache.spark.deploy.SparkSubmit", "org.apache.spark.deploy.worker.DriverWrapper"}
)
_LOCAL_APP = re.compile(r"local-(\d{10,16})")
_CHECK_EVERY = 64
_PROC = "/proc"


@dataclass(frozen=True, slots=True)
class SparkProcess:
    """A Spark JVM found in ``/proc``: an executor backend, or a driver (``executor_id`` is
    :data:`DRIVER`, ``app_id`` None: its command line does not say)."""

    pid: int
    start_ticks: int  # /proc/PID/stat starttime: tells a reused pid apart
    executor_id: str
    app_id: str | None


def parse_cmdline(argv: list[str]) -> tuple[str, str | None] | None:
    """(executor id, app id) if ``argv`` is a Spark executor backend's or driver's command
    line, else None. A driver's app id is None."""
    main_at = -1
    for i, a in enumerate(argv):
        if a in _DRIVER_CLASSES:
            return DRIVER, None
        if a.startswith(_EXECUTOR_PACKAGE) and a.endswith("ExecutorBackend"):
            main_at = i
            break
    if main_at < 0:
        return None
    opts: dict[str, str] = {}
    rest = argv[main_at + 1 :]
    for i in range(len(rest) - 1):
        if rest[i] in ("--executor-id", "--app-id"):
            opts[rest[i]] = rest[i + 1]
    eid, app = opts.get("--executor-id"), opts.get("--app-id")
    if not eid or not app:
        return None
    return eid, app


def _start_ticks(pid: int) -> int | None:
    return stat_field(pid, 22, _PROC)


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.decode("utf-8", "replace").split("\0")[:-1] if raw else None


def _boot_time() -> float:
    try:
        with open(f"{_PROC}/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0.0


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(slots=True)
class _Hit:
    proc: SparkProcess
    checked: float  # time.monotonic() of the last start-time check


@dataclass(frozen=True, slots=True)
class _Miss:
    until: float


class ExecutorPids:
    """Maps (application id, executor id) to the pid of that executor's JVM on this node."""

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        recheck_s: float = RECHECK_S,
        scan_budget_s: float = SCAN_BUDGET_S,
        rescan_s: float = RESCAN_S,
    ) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self._max_entries = max_entries
        self._negative_ttl_s = negative_ttl_s
        self._recheck_s = recheck_s
        self._scan_budget_s = scan_budget_s
        self._rescan_s = rescan_s
        # Application -> time.monotonic() of the last walk that looked for it.
        self._searched: dict[str, float] = {}
        self._own_pid = os.getpid()
        self._cache: dict[tuple[str, str], _Hit | _Miss] = {}
        self._lock = threading.Lock()
        self._resolve_lock = threading.Lock()
        self.scans = 0
        self.scan_timeouts = 0

    def __len__(self) -> int:
        return len(self._cache)

    def pid_for_span(
        self, attributes: Mapping[str, Any], resource: Mapping[str, Any], pid: int | None
    ) -> int | None:
        """The pid a span should be attributed to: for a span naming a Spark executor
        (``spark.app.id`` and ``spark.executor.id`` on the span or its resource) that does
        not carry its own ``process.pid``, the executor's JVM, or None when it is not on this
        node (the sender's pid, from its resource or connection, is the reporter's, not the
        task's); for every other span ``pid`` as it is."""
        eid = attributes.get(ATTR_EXECUTOR_ID, resource.get(ATTR_EXECUTOR_ID))
        if eid is None or "process.pid" in attributes:
            return pid
        app = attributes.get(ATTR_APP_ID, resource.get(ATTR_APP_ID))
        if not isinstance(app, str) or not app:
            return pid
        return self.pid_of(app, str(eid))

    def pid_of(self, app_id: str, executor_id: str) -> int | None:
        """The pid of executor ``executor_id`` of application ``app_id``, or None."""
        key = (app_id, executor_id)
        known, pid = self._lookup(key)
        if known:
            return pid
        with self._resolve_lock:
            # Another thread may have scanned meanwhile (two requests of one application).
            known, pid = self._lookup(key)
            if known:
                return pid
            now = time.monotonic()
            if now - self._searched.get(app_id, -math.inf) < self._rescan_s:
                with self._lock:
                    self._remember(key, _Miss(now + self._negative_ttl_s))
                return None
            found = self._scan(app_id, executor_id)
            now = time.monotonic()
            if len(self._searched) >= self._max_entries:
                self._searched.clear()
            for app in {app_id, *(a for a, _ in found)}:
                self._searched[app] = now
            with self._lock:
                # The one asked for last: the oldest entries go first when the cache is full.
                for k, proc in sorted(found.items(), key=lambda kv: kv[0] == key):
                    self._remember(k, _Hit(proc, now))
                if key not in found:
                    self._remember(key, _Miss(now + self._negative_ttl_s))
        got = found.get(key)
        return None if got is None else got.pid

    def _lookup(self, key: tuple[str, str]) -> tuple[bool, int | None]:
        """(whether the cache answers, its answer): a hit still naming the same process, or
        a miss not yet expired."""
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(key)
            if isinstance(entry, _Miss):
                return now < entry.until, None
            if entry is None:
                return False, None
            if now - entry.checked >= self._recheck_s:
                if _start_ticks(entry.proc.pid) != entry.proc.start_ticks:
                    del self._cache[key]  # exited; the pid may be another process's now
                    return False, None
                entry.checked = now
            return True, entry.proc.pid

    def _remember(self, key: tuple[str, str], entry: _Hit | _Miss) -> None:
        cache = self._cache
        cache.pop(key, None)  # re-inserted at the end: the oldest entries go first
        while len(cache) >= self._max_entries:
            del cache[next(iter(cache))]
        cache[key] = entry

    def _scan(self, app_id: str, executor_id: str) -> dict[tuple[str, str], SparkProcess]:
        """Every executor backend on the node by (app, executor id), and the driver of
        ``app_id`` when ``executor_id`` is the driver and one is found."""
        self.scans += 1
        deadline = time.monotonic() + self._scan_budget_s
        try:
            names = os.listdir(_PROC)
        except OSError:
            return {}
        found: dict[tuple[str, str], SparkProcess] = {}
        drivers: list[SparkProcess] = []
        # Newest first: the executor asked for has usually just started.
        pids = sorted((int(n) for n in names if n.isdigit()), reverse=True)
        for i, pid in enumerate(pids):
            if i % _CHECK_EVERY == _CHECK_EVERY - 1 and time.monotonic() > deadline:
                self.scan_timeouts += 1
                break
            if pid == self._own_pid:
                continue
            argv = _cmdline(pid)
            parsed = parse_cmdline(argv) if argv else None
            if parsed is None:
                continue
            ticks = _start_ticks(pid)
            if ticks is None:
                continue
            eid, app = parsed
            proc = SparkProcess(pid, ticks, eid, app)
            if app is None:
                drivers.append(proc)
            else:
                found[(app, eid)] = proc
        if executor_id == DRIVER and drivers:
            driver = self._driver_of(app_id, drivers)
            if driver is not None:
                found[(app_id, DRIVER)] = SparkProcess(
                    driver.pid, driver.start_ticks, DRIVER, app_id
                )
        return found

    def _driver_of(self, app_id: str, drivers: list[SparkProcess]) -> SparkProcess | None:
        holding = [d for d in drivers if _holds_file_named(d.pid, app_id)]
        if len(holding) == 1:
            return holding[0]
        m = _LOCAL_APP.fullmatch(app_id)
        if m is not None:
            began = int(m.group(1)) / 1000.0
            boot = _boot_time()
            near = [
                d
                for d in drivers
                if -2.0 <= began - (boot + d.start_ticks / _CLK_TCK) <= DRIVER_START_WINDOW_S
            ]
            if near:
                return max(near, key=lambda d: d.start_ticks)
        return drivers[0] if len(drivers) == 1 else None


def _holds_file_named(pid: int, needle: str) -> bool:
    """True if process ``pid`` has a file open whose path contains ``needle``."""
    base = f"{_PROC}/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return False
    for name in fds:
        try:
            if needle in os.readlink(f"{base}/{name}"):
                return True
        except OSError:
            continue
    return False
