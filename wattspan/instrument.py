"""The instrumentation API: spans, tracked functions and ML values, sent to the agent over OTLP.

Everything here produces ordinary OpenTelemetry spans, so the wattspan agent (or any OTLP
backend) receives them, and spans from other OpenTelemetry instrumentation nest naturally.

Setup is lazy: the first span created through this module looks at the global tracer
provider. If the program (or ``opentelemetry-instrument``) already installed one, wattspan
uses it and configures nothing (its processors, queue and drops are the program's). Otherwise
wattspan installs an SDK ``TracerProvider`` with its own span processor (``_ExportQueue``: a
bounded queue and one export thread) and the OTLP/gRPC exporter, reading the usual
``OTEL_EXPORTER_OTLP_*`` variables; the endpoint defaults to ``http://localhost:4317``. The
resource carries ``service.name`` (``OTEL_SERVICE_NAME``, else the script name),
``process.pid`` and ``wattspan.run_id`` (from ``WATTSPAN_RUN_ID``, which ``wattspan run``
sets).

Export queue: ended spans wait in a FIFO of at most ``OTEL_BSP_MAX_QUEUE_SIZE`` spans (default
8192) and leave in OTLP requests of ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans (default 1024),
sent as soon as a batch is full, else every ``OTEL_BSP_SCHEDULE_DELAY`` ms (default 1000);
``OTEL_BSP_EXPORT_TIMEOUT`` (ms) is each request's deadline, retries included (default 2 s;
``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`` wins). Memory is bounded: a queued plain ``@track``
span holds about 2.8 kB of Python heap (more with events and attributes: 3.5 kB with one
``log_metric`` event), so the default bound is about 23 MB, plus the batch being sent (about
3 MB). One thread encodes spans at about 15 µs each, slower than a tight loop ends them, so:

* while the agent is reachable (the last export succeeded, or none has finished yet), a span
  that finds the queue full makes the thread ending it wait until the export thread takes the
  next batch, at most 5 s: a burst arrives complete, at the export's pace, instead of losing
  the spans past the bound;
* when the agent is unreachable (an export failed, or gRPC found no server at the endpoint),
  nothing waits: spans past the bound are dropped and counted until an export succeeds again;
  likewise, after a wait ran out ("queue bound reached"), until the export thread takes a batch.

Failure policy: instrumentation must never hurt the program it measures. The exporter's own
retry logging is silenced and wattspan logs ONE warning (logger ``wattspan``) for the whole
process, at the first drop, naming the case: "agent unreachable at ENDPOINT" or "span queue
bound reached (N spans dropped so far)". :func:`dropped_spans` returns the count. At exit,
pending spans are flushed within about two seconds, and within a fraction of a second when
the agent is already known to be unreachable; if anything was dropped, one more line gives the
total by reason ("wattspan: D of T spans dropped (...)").

The names used on the wire are documented in ``docs/otlp-names.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from opentelemetry import context as _otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

# Names on the wire, shared with the agent (docs/otlp-names.md).
from wattspan.semconv import (
    ATTR_CM_LABELS,
    ATTR_CM_MATRIX,
    ATTR_CPU_PROCESS,
    ATTR_CPU_THREAD,
    ATTR_EXIT_CODE,
    ATTR_HYPERPARAMETERS,
    ATTR_ITEMS,
    ATTR_METRIC_NAME,
    ATTR_METRIC_VALUE,
    ATTR_PARAM_PREFIX,
    ATTR_RUN_ID,
    ATTR_RUN_NAME,
    ATTR_RUN_START,
    ATTR_STEP,
    ATTR_TAG_PREFIX,
    EVENT_CONFUSION_MATRIX,
    EVENT_METRIC,
    ML_PREFIX,
    RUN_ROOT_SPAN,
    TRACER_NAME,
)

__all__ = [
    "count_items",
    "dropped_spans",
    "flush",
    "log_confusion_matrix",
    "log_metric",
    "log_params",
    "span",
    "track",
]

F = TypeVar("F", bound=Callable[..., Any])


_EXPORT_TIMEOUT_S = 2.0
"""Per-export deadline (all retries included) unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT or
OTEL_BSP_EXPORT_TIMEOUT is set."""
_EXIT_BUDGET_S = 2.0
"""Longest the exit flush may delay interpreter exit when the agent looked healthy."""
_EXIT_BUDGET_DOWN_S = 0.3
"""... and when the last export had already failed."""
_EXIT_EXPORT_TIMEOUT_S = 0.75
"""Per-export deadline at exit; below the exporter's first backoff (0.8 s) so it never retries."""
_SCHEDULE_DELAY_MS = 1000
"""Batch delay unless OTEL_BSP_SCHEDULE_DELAY is set: the agent's live view lags by at most this."""
_MAX_QUEUE_SIZE = 8192
"""Spans held for export unless OTEL_BSP_MAX_QUEUE_SIZE is set: the memory bound, at about
2.8 kB a plain ``@track`` span (tracemalloc over 8192 queued spans; 3.5 kB with a
``log_metric`` event). Small enough that a full queue drains well within the exit budget."""
_MAX_EXPORT_BATCH_SIZE = 1024
"""Spans per OTLP request unless OTEL_BSP_MAX_EXPORT_BATCH_SIZE is set (about 110 bytes each
on the wire for a ``@track`` span: far below the agent's 4 MiB request limit)."""
_BLOCK_MAX_S = 5.0
"""Longest one span end waits for room in a full queue while the agent is reachable."""

_DROP_REASONS = {
    "bound": "queue bound reached",
    "unreachable": "agent unreachable",
    "exit": "not sent by the exit deadline",
}

_log = logging.getLogger("wattspan")

# Hot-path globals, read without a lock: a stale None only sends the reader to the locked path.
_TRACER: trace.Tracer | None = None
_SETUP_LOCK = threading.RLock()
_PROVIDER: Any = None  # our SDK TracerProvider, when we installed it
_QUEUE: _ExportQueue | None = None  # its span processor
_RUN_ROOT: Span | None = None
_ITEMS: dict[int, int | float] = {}  # id(span) -> items counted on a wattspan span
_ITEMS_LOCK = threading.Lock()
_WARNED = False
_WARN_LOCK = threading.Lock()
_EXITED = False
_OWN_RUN = False  # this process opened a run of its own (no WATTSPAN_RUN_ID)
_UNCAUGHT = False
_IMPORTED_NS = time.time_ns()
_LAST_EXPORT_ERROR = ""  # the exporter's last log message, quoted in our warning

# Bound once: attribute lookups on modules cost measurable time per call.
_attach = _otel_context.attach
_detach = _otel_context.detach
_set_span_in_context = trace.set_span_in_context
_get_current_span = trace.get_current_span
_process_time = time.process_time
_thread_time = time.thread_time
_get_ident = threading.get_ident
_monotonic = time.monotonic


# --------------------------------------------------------------------------------------------
# setup


def _warn_once(message: str, *args: object) -> None:
    global _WARNED
    with _WARN_LOCK:
        if _WARNED:
            return
        _WARNED = True
    _log.warning(message, *args)


def _endpoint() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "http://localhost:4317"
    )


def _env_int(name: str, default: int) -> int:
    """A positive integer from the environment; a bad value is reported and not fatal (the
    SDK's own reading of OTEL_BSP_* does the same)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    with contextlib.suppress(ValueError):
        if (value := int(raw)) > 0:
            return value
    _log.warning("wattspan: %s=%r is not a positive integer; using %d", name, raw, default)
    return default


def _script_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0 in ("", "-c", "-"):
        return "python"
    path = Path(argv0)
    # `python -m pkg` runs pkg/__main__.py: the package name says more than "__main__".
    return path.parent.name if path.stem == "__main__" and path.parent.name else path.stem


class _Quiet(threading.local):
    active = False


_QUIET = _Quiet()

# gRPC core's words for "nothing answers at that address" (as opposed to an agent that
# answered "retry later"): the first failed attempt of an export says so within milliseconds,
# while the exporter's retries would take a second more to give up.
_NO_SERVER = ("failed to connect", "dns resolution failed")


class _QuietFilter(logging.Filter):
    """Silences the OTel exporter while wattspan's exporter runs.

    The OTLP exporter logs every retry and failure; with no agent that is a warning per batch
    forever. We keep the last message to quote it in our one warning instead, and tell the
    queue at once when it says no server answers, so that producers stop waiting for room.
    """

    def __init__(self, on_no_server: Callable[[], None]) -> None:
        super().__init__()
        self._on_no_server = on_no_server

    def filter(self, record: logging.LogRecord) -> bool:
        global _LAST_EXPORT_ERROR
        if not _QUIET.active:
            return True
        message = record.getMessage()
        lowered = message.lower()
        # The gRPC status details say what went wrong; the rest is the exporter's narration.
        # Later chatter ("Shutdown in progress, aborting retry.") must not replace it.
        cut = lowered.rfind("details: ")
        if cut >= 0:
            _LAST_EXPORT_ERROR = message[cut + 9 :]
        elif not _LAST_EXPORT_ERROR:
            _LAST_EXPORT_ERROR = message
        if any(words in lowered for words in _NO_SERVER):
            self._on_no_server()
        return False


def _await_embedded_agent(exporter: _GuardedExporter) -> None:
    """Under ``wattspan run`` the program starts before the embedded agent listens (its
    start-up is not the program's: agent/runner.py), and ``WATTSPAN_OTLP_READY_BY`` says
    until when (Unix time) it may take. Waits, before the first export, until the
    endpoint's port takes a connection or that time (or the exit budget) has passed, so that
    an agent still coming up is not counted unreachable and its first batch is not lost.
    Producers meanwhile see a reachable agent: a full queue makes them wait, as for a slow
    one."""
    raw = os.environ.get("WATTSPAN_OTLP_READY_BY", "")
    try:
        ready_by = float(raw)
    except ValueError:
        return
    import socket
    from urllib.parse import urlsplit

    try:
        url = urlsplit(_endpoint() if "://" in _endpoint() else f"http://{_endpoint()}")
        host, port = url.hostname, url.port
    except ValueError:
        return
    if not host or not port:
        return
    while time.time() < ready_by and not exporter._shut:
        if exporter.drop_after is not None and _monotonic() > exporter.drop_after:
            return
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)


class _GuardedExporter:
    """Wraps the OTLP span exporter: quiet logs, a never-raising send, bounded work at exit."""

    def __init__(self, inner: Any) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._inner = inner
        self._success = SpanExportResult.SUCCESS
        self.drop_after: float | None = None  # monotonic deadline set at exit
        self._shut = False
        self._awaited = False  # the first export looked for an embedded agent coming up
        self._lock = threading.Lock()

    def send(self, spans: list[Any]) -> str | None:
        """None when the agent took ``spans``, else why not (a key of ``_DROP_REASONS``)."""
        global _LAST_EXPORT_ERROR
        if self._shut or (self.drop_after is not None and _monotonic() > self.drop_after):
            return "exit"
        if not self._awaited:
            self._awaited = True
            _await_embedded_agent(self)
        _QUIET.active = True
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the export thread
            _LAST_EXPORT_ERROR = f"{type(exc).__name__}: {exc}"
            result = None
        finally:
            _QUIET.active = False
        if result == self._success:
            return None
        if self._shut or (self.drop_after is not None and _monotonic() > self.drop_after):
            return "exit"  # we cancelled it, or gave up on it, at exit
        return "unreachable"

    def prepare_exit(self, budget_s: float) -> None:
        self.drop_after = _monotonic() + budget_s
        # Private attribute of the OTLP exporter (its per-export deadline); best effort only.
        if isinstance(getattr(self._inner, "_timeout", None), int | float):
            self._inner._timeout = min(self._inner._timeout, _EXIT_EXPORT_TIMEOUT_S)

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        _QUIET.active = True  # "already shut down" chatter
        try:
            # Interrupts a retry backoff in progress and closes the channel.
            self._inner.shutdown()
        except Exception:  # exit path: nothing useful to do with it
            pass
        finally:
            _QUIET.active = False


class _ExportQueue:
    """Our provider's span processor: CPU time at start, a bounded FIFO at end, one export
    thread sending batches, and backpressure instead of loss while the agent is reachable.

    It replaces the SDK's ``BatchSpanProcessor``, which drops every span that finds its queue
    full: a tight loop of ``@track`` calls ends spans faster than one thread can encode them
    (about 15 µs a span in the OTLP encoder), so a burst lost 30 to 45 % of its spans even
    with the agent idle. Here a span that finds the queue full waits, on the calling thread, until
    the export thread has taken the next batch (at most ``_BLOCK_MAX_S``), as long as the
    last export succeeded or none has finished yet. It is dropped, and counted, without
    waiting when the agent is known unreachable (an export failed or gRPC found no server),
    or after a wait ran out, until the export thread takes a batch again.

    CPU time: notes the process's and the thread's CPU time when a span starts; :func:`_finish`
    stamps the difference on wattspan's spans as they end (``wattspan.cpu.process_seconds``,
    and ``wattspan.cpu.thread_seconds`` when the span ends on the thread it began on). The
    process measures this exactly and cheaply (two ``clock_gettime`` calls a side), where the
    agent's sampling sees only interval means and misses a short program entirely: the agent
    uses it for the span's CPU seconds and process share. The stamp goes on before ``end()``:
    the SDK makes a span's attributes read-only before any processor's end hook. One processor
    doing both saves the SDK's per-span loop a call at each end.
    """

    def __init__(self, sender: _GuardedExporter, max_queue: int, batch: int, delay_s: float):
        self.sender = sender
        self.max_queue = max_queue
        self._limit = max_queue  # 0 once closed, which sends every later span the slow way
        self._batch = min(batch, max_queue)
        self._delay_s = delay_s
        self._queue: deque[Any] = deque()
        self.reachable = True  # until an export fails: a burst at start-up waits, not drops
        self._stalled = False  # a wait ran out; cleared when the export thread takes a batch
        self._closed = False
        self._abandoned = False  # exit accounting done: later results are not counted
        self.delivered = 0
        self.dropped = dict.fromkeys(_DROP_REASONS, 0)
        self._inflight = 0
        self._start_worker()

    def _start_worker(self, start: bool = True) -> None:
        self._wake = threading.Event()
        self._woken = False
        # Reentrant: a span can end inside a garbage-collector finalizer (a tracked generator
        # collected) on a thread that is already in here.
        self._room = threading.Condition(threading.RLock())
        self._count_lock = threading.RLock()
        self._export_lock = threading.Lock()
        self._waiters = 0
        self._worker_ident = 0
        self._worker = threading.Thread(target=self._run, name="wattspan-export", daemon=True)
        self._started = start
        if start:
            self._worker.start()

    def _start_now(self) -> None:
        with self._count_lock:
            if not self._started:
                self._started = True
                self._worker.start()

    # span processor interface (duck-typed, so that the SDK import stays lazy)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span._wattspan_cpu = (_process_time(), _thread_time(), _get_ident())

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        if not span.context.trace_flags.sampled:
            return
        if not self._started:  # a forked child's first span (see at_fork_reinit)
            self._start_now()
        queue = self._queue
        if len(queue) < self._limit:
            queue.append(span)
            if len(queue) >= self._batch and not self._woken:
                self._woken = True
                self._wake.set()
        else:
            self._overflow(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._closed:
            return False
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        """Sends what is queued (the sender's exit deadline bounds it) and stops the thread."""
        if self._closed:
            return
        self._closed = True
        self._limit = 0
        self._wake.set()
        self._notify()  # waiting producers: stop waiting
        if self._started and self._worker.ident != _get_ident():
            self._worker.join()  # its last act is sending everything queued
        self._export(everything=True)  # in case the thread is gone (a fork without reinit)
        self.sender.shutdown()

    # the rest

    def _overflow(self, span: Any) -> None:
        if self._closed:
            self._drop("exit")
            return
        if not self.reachable:
            self._drop("unreachable")
            return
        if self._stalled or _get_ident() == self._worker_ident:
            self._drop("bound")  # the export thread must never wait for itself
            return
        deadline = _monotonic() + _BLOCK_MAX_S
        with self._room:
            self._waiters += 1
            try:
                while len(self._queue) >= self._limit and self.reachable and not self._closed:
                    left = deadline - _monotonic()
                    if left <= 0:
                        self._stalled = True
                        break
                    self._room.wait(left)
            finally:
                self._waiters -= 1
            if len(self._queue) < self._limit:
                self._queue.append(span)
                if not self._woken:
                    self._woken = True
                    self._wake.set()
                return
        self._drop("exit" if self._closed else "bound" if self.reachable else "unreachable")

    def _notify(self) -> None:
        if self._waiters:
            with self._room:
                self._room.notify_all()

    def no_server(self) -> None:
        """gRPC found no server during an export: stop making producers wait for room."""
        self.reachable = False
        self._notify()

    def _run(self) -> None:
        self._worker_ident = _get_ident()
        while not self._closed:
            woken = self._wake.wait(self._delay_s)
            self._wake.clear()
            self._woken = False
            if self._closed:
                break
            self._export(everything=False, at_least_one=not woken)
        self._export(everything=True)

    def _export(self, everything: bool, at_least_one: bool = False) -> None:
        with self._export_lock:
            queue = self._queue
            popleft = queue.popleft
            first = True
            # Only this loop removes from the queue (under the lock), so len() cannot shrink
            # under it; producers only append.
            while queue and not self._abandoned:
                if len(queue) < self._batch and not everything and not (first and at_least_one):
                    return
                first = False
                n = min(len(queue), self._batch)
                batch = [popleft() for _ in range(n)]
                self._inflight = n
                self._stalled = False
                self._notify()  # room again
                why = self.sender.send(batch)
                self._settle(n, why)
                if why is not None and self._closed:
                    # Closing and the agent failed once: do not wait out an export per batch.
                    with self._count_lock:
                        rest = len(queue)
                        queue.clear()
                    if rest and not self._abandoned:
                        self._drop(why, rest)
                    return

    def _settle(self, n: int, why: str | None) -> None:
        with self._count_lock:
            if self._abandoned:
                return
            self._inflight = 0
            if why is None:
                self.delivered += n
                self.reachable = True
                return
        if why == "unreachable":
            self.reachable = False
            self._notify()
        self._drop(why, n)

    def _drop(self, reason: str, n: int = 1) -> None:
        if reason == "exit" and not self.reachable:
            reason = "unreachable"  # the exit was short because the agent was gone
        with self._count_lock:
            self.dropped[reason] += n
        if _WARNED or reason == "exit":  # the exit summary tells about the exit
            return
        total = self.dropped_total()
        so_far = f"{total} span{'' if total == 1 else 's'} dropped so far"
        if reason == "unreachable":
            _warn_once(
                "wattspan: agent unreachable at %s (%s); dropping spans (%s). Start the agent "
                "or set OTEL_EXPORTER_OTLP_ENDPOINT; this warning is shown once",
                _endpoint(),
                _LAST_EXPORT_ERROR or "export failed",
                so_far,
            )
        else:
            _warn_once(
                "wattspan: span queue bound reached (%s): the agent at %s took no batch for "
                "%g s while %d spans waited; dropping spans until it catches up "
                "(OTEL_BSP_MAX_QUEUE_SIZE sets the bound); this warning is shown once",
                so_far,
                _endpoint(),
                _BLOCK_MAX_S,
                self.max_queue,
            )

    def dropped_total(self) -> int:
        with self._count_lock:
            return sum(self.dropped.values())

    def counts(self) -> tuple[dict[str, int], int]:
        """(dropped spans by reason, spans the agent took)."""
        with self._count_lock:
            return dict(self.dropped), self.delivered

    def abandon(self) -> None:
        """At exit, after the flush: count what is still queued or in flight as dropped."""
        with self._count_lock:
            if self._abandoned:
                return
            self._abandoned = True
            left = len(self._queue) + self._inflight
            self._queue.clear()
            self._inflight = 0
            # Left because the agent had failed, or because the time was up.
            self.dropped["exit" if self.reachable else "unreachable"] += left

    def at_fork_reinit(self) -> None:
        """In a forked child: the parent's spans and counts are the parent's.

        The export thread starts with the child's first span, not here. Most forked children
        only exec: ``subprocess`` with a ``preexec_fn`` (pyspark's JVM launcher has one) runs
        this hook in the child, and a thread started here was running there while the child
        closed its descriptors and exec'd. (A test session once lost a Spark JVM that way, as
        far as can be told: the launcher died before its exec, and gRPC's poller reported a
        closed descriptor.)
        """
        self._queue.clear()
        self.delivered = self._inflight = 0
        self.dropped = dict.fromkeys(_DROP_REASONS, 0)
        self.reachable, self._stalled, self._abandoned = True, False, False
        self._start_worker(start=False)


class _PidProcessor:
    """Stamps ``process.pid`` on spans started in a forked child (the resource names the parent).

    Added to our provider only in children, so the parent pays nothing.
    """

    pid = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("process.pid", self.pid)

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_PID_PROCESSOR = _PidProcessor()


def _after_fork_in_child() -> None:
    global _RUN_ROOT, _EXITED, _OWN_RUN
    # The run is the parent's: the child must not end it when it exits.
    _OWN_RUN = False
    # The parent's run root and item counters belong to the parent; ending them here would
    # export a duplicate span.
    _RUN_ROOT = None
    _ITEMS.clear()
    _EXITED = False
    if _QUEUE is not None:
        _QUEUE.at_fork_reinit()
    if _PROVIDER is not None:
        added = _PID_PROCESSOR.pid != 0  # set only here, just before the first add
        _PID_PROCESSOR.pid = os.getpid()
        if not added:
            _PROVIDER.add_span_processor(_PID_PROCESSOR)


def _mp_after_fork(_obj: object) -> None:
    # multiprocessing's fork children leave through os._exit(), which skips atexit but runs
    # multiprocessing's finalizers. Registered via register_after_fork because the child's
    # bootstrap clears the finalizer registry after os-level at-fork hooks have run.
    from multiprocessing import util as mp_util

    mp_util.Finalize(None, _at_exit, exitpriority=0)


def _build_provider() -> tuple[Any, _ExportQueue]:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from wattspan import __version__

    attrs: dict[str, Any] = {"process.pid": os.getpid(), "telemetry.distro.name": "wattspan"}
    attrs["telemetry.distro.version"] = __version__
    global _OWN_RUN
    run_id = os.environ.get("WATTSPAN_RUN_ID")
    if run_id:
        attrs[ATTR_RUN_ID] = run_id
    else:
        # No `wattspan run` around us: this program is a run of its own, which a daemon agent
        # stores as such (kind "program"), from the process's start to its exit.
        _OWN_RUN = True
        attrs[ATTR_RUN_ID] = str(uuid.uuid4())
        attrs[ATTR_RUN_START] = _process_start_ns()
        attrs["process.command_args"] = [str(a) for a in sys.argv]
    resource = Resource.create(attrs)
    # Resource.create lets explicit attributes win over OTEL_SERVICE_NAME, so only fill in the
    # script name when the environment named no service.
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": _script_name()}))
    if _OWN_RUN:
        name = os.environ.get("WATTSPAN_RUN_NAME") or str(resource.attributes["service.name"])
        resource = resource.merge(Resource({ATTR_RUN_NAME: name}))

    timeout_set = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" in os.environ or (
        "OTEL_EXPORTER_OTLP_TIMEOUT" in os.environ
    )
    timeout_s = _env_int("OTEL_BSP_EXPORT_TIMEOUT", int(_EXPORT_TIMEOUT_S * 1000)) / 1000
    inner = OTLPSpanExporter(timeout=None if timeout_set else timeout_s)
    queue = _ExportQueue(
        _GuardedExporter(inner),
        max_queue=_env_int("OTEL_BSP_MAX_QUEUE_SIZE", _MAX_QUEUE_SIZE),
        batch=_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _MAX_EXPORT_BATCH_SIZE),
        delay_s=_env_int("OTEL_BSP_SCHEDULE_DELAY", _SCHEDULE_DELAY_MS) / 1000,
    )
    # shutdown_on_exit=False: the SDK's own atexit shutdown waits up to 30 s per processor;
    # ours (below) is bounded.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(queue)  # type: ignore[arg-type]
    return provider, queue


def _configure() -> trace.Tracer:
    """Pick or install the tracer provider; called once, under ``_SETUP_LOCK``."""
    global _PROVIDER, _QUEUE, _PREVIOUS_EXCEPTHOOK
    from wattspan import __version__

    current = trace.get_tracer_provider()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if not isinstance(current, trace.ProxyTracerProvider) or disabled:
        # The user's provider (or OTel's no-op when disabled): use it, configure nothing.
        atexit.register(_at_exit)
        return trace.get_tracer(TRACER_NAME, __version__)
    try:
        provider, queue = _build_provider()
    except Exception as exc:  # e.g. an invalid OTEL_* variable: run uninstrumented, loudly once
        _warn_once(
            "wattspan: cannot set up span export (%s: %s); spans are not sent",
            type(exc).__name__,
            exc,
        )
        return trace.NoOpTracer()
    logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").addFilter(
        _QuietFilter(queue.no_server)
    )
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        # Another thread or library installed one between our check and our set: use theirs.
        provider.shutdown()
        atexit.register(_at_exit)
        return trace.get_tracer(TRACER_NAME, __version__)
    _PROVIDER, _QUEUE = provider, queue
    if _OWN_RUN:
        # An uncaught exception is the one exit status an atexit hook can still learn of.
        _PREVIOUS_EXCEPTHOOK, sys.excepthook = sys.excepthook, _note_uncaught
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    try:
        from multiprocessing import util as mp_util

        mp_util.register_after_fork(_PID_PROCESSOR, _mp_after_fork)
    except Exception:  # no multiprocessing support on this platform: nothing to flush
        pass
    atexit.register(_at_exit)
    return provider.get_tracer(TRACER_NAME, __version__)


def _tracer() -> trace.Tracer:
    global _TRACER
    with _SETUP_LOCK:
        if _TRACER is None:
            _TRACER = _configure()
        return _TRACER


def _end_run_root() -> None:
    global _RUN_ROOT
    if _OWN_RUN and _PROVIDER is not None:
        # The program's run ends with its root span: make sure there is one.
        root = _run_root()
        if _UNCAUGHT:
            root.set_attribute(ATTR_EXIT_CODE, 1)
    with _SETUP_LOCK:
        root, _RUN_ROOT = _RUN_ROOT, None
    if root is not None:
        _finish(root)


@functools.cache
def _process_start_ns() -> int:
    """When this process started, in Unix ns: ``/proc/self/stat`` field 22 (clock ticks after
    boot) against ``CLOCK_BOOTTIME`` now, since ``btime`` has only whole seconds; the time
    wattspan was imported where that cannot be read. Computed once: the resource and the run
    root must agree to the nanosecond."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return min(time.time_ns() - int(age * 1e9), _IMPORTED_NS)
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_NS


def _note_uncaught(kind: Any, value: Any, tb: Any) -> None:
    global _UNCAUGHT
    if not issubclass(kind, KeyboardInterrupt):
        _UNCAUGHT = True
    _PREVIOUS_EXCEPTHOOK(kind, value, tb)


_PREVIOUS_EXCEPTHOOK = sys.excepthook


def _at_exit() -> None:
    """End the run root span and flush, bounded so exit is never held up for long."""
    global _EXITED
    if _EXITED:
        return
    _EXITED = True
    with contextlib.suppress(Exception):
        _end_run_root()
    provider, queue = _PROVIDER, _QUEUE
    if provider is None or queue is None:
        return  # the user's provider: flushing it is the user's (or the SDK's atexit) business
    budget = _EXIT_BUDGET_S if queue.reachable else _EXIT_BUDGET_DOWN_S
    queue.sender.prepare_exit(budget)
    # provider.shutdown() drains the queue through the exporter; in a thread so that a hung
    # network call cannot hold the interpreter past the budget.
    worker = threading.Thread(target=provider.shutdown, name="wattspan-exit-flush", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        queue.sender.shutdown()  # cancel the in-flight call
        worker.join(0.2)
    queue.abandon()
    dropped, sent = queue.counts()
    total = sum(dropped.values())
    if total:
        # No endpoint here: the one warning named it (or the drops were all at exit).
        _log.warning(
            "wattspan: %d of %d spans dropped (%s)",
            total,
            total + sent,
            ", ".join(f"{_DROP_REASONS[k]}: {n}" for k, n in dropped.items() if n),
        )


def dropped_spans() -> int:
    """Spans ended in this process that wattspan's own exporter dropped so far (0 when the
    program installed its own tracer provider, whose losses wattspan does not see).

    Counts spans refused by a full queue, spans in batches the agent did not accept, and, once
    the exit flush ran, spans it could not send in time. ``wattspan.instrument`` logs one
    warning at the first drop and a one-line total at exit.
    """
    queue = _QUEUE
    return 0 if queue is None else queue.dropped_total()


def flush(timeout_s: float = 5.0) -> bool:
    """Send buffered spans now; True if done within ``timeout_s`` seconds.

    Only acts on the provider wattspan installed; with your own provider call its
    ``force_flush``. Spans still open are not sent (they are sent when they end).
    """
    provider = _PROVIDER
    if provider is None:
        return True
    done = threading.Event()

    def run() -> None:
        provider.force_flush()
        done.set()

    threading.Thread(target=run, name="wattspan-flush", daemon=True).start()
    return done.wait(timeout_s)


# --------------------------------------------------------------------------------------------
# attribute helpers


def _attr_value(value: Any) -> Any:
    """Coerce ``value`` to something OTel accepts as an attribute, never dropping it silently."""
    if isinstance(value, str | bool | int | float):
        return value
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            v = item()
        except Exception:
            v = None
        if isinstance(v, str | bool | int | float):
            return v
    if isinstance(value, list | tuple) and value:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return list(value)
    if value is None or isinstance(value, Mapping | list | tuple):
        # Structured values keep their structure as JSON text (the agent can parse it back).
        try:
            return json.dumps(value, default=str, separators=(",", ":"))
        except (TypeError, ValueError):
            pass
    return str(value)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _str_keys(value: Any) -> Any:
    # JSON objects have string keys, and sort_keys cannot order mixed int/str keys.
    if isinstance(value, Mapping):
        return {str(k): _str_keys(v) for k, v in value.items()}
    return value


def _params_json(params: Mapping[str, Any]) -> str:
    return json.dumps(_str_keys(params), default=str, sort_keys=True)


def _flat_param_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    return {ATTR_PARAM_PREFIX + k: _attr_value(v) for k, v in _flatten(params).items()}


def _param_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    attrs = _flat_param_attributes(params)
    attrs[ATTR_HYPERPARAMETERS] = _params_json(params)
    return attrs


def _tag_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    # Dotted keys (only reachable via **{"db.system": ...}) are taken as already namespaced,
    # e.g. semantic-convention names; bare keyword names get the wattspan.tag. prefix.
    return {(k if "." in k else ATTR_TAG_PREFIX + k): _attr_value(v) for k, v in attrs.items()}


def _fail(span: Span, exc: BaseException) -> None:
    # Same recording as tracer.start_as_current_span: only Exception subclasses are errors
    # (GeneratorExit, KeyboardInterrupt... are not).
    if isinstance(exc, Exception) and span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _finish(span: Span) -> None:
    if _ITEMS:  # almost always empty: one truth test on the hot path
        with _ITEMS_LOCK:
            items = _ITEMS.pop(id(span), None)
        if items is not None:
            span.set_attribute(ATTR_ITEMS, items)
    start = getattr(span, "_wattspan_cpu", None)
    if start is not None:
        p0, t0, tid = start
        span.set_attribute(ATTR_CPU_PROCESS, _process_time() - p0)
        if _get_ident() == tid:
            span.set_attribute(ATTR_CPU_THREAD, _thread_time() - t0)
    span.end()


def _run_root() -> Span:
    global _RUN_ROOT
    with _SETUP_LOCK:
        if _RUN_ROOT is None:
            tracer = _TRACER or _tracer()
            # An empty context: the run root is a root even if called under a foreign context.
            # A program's own run spans the process's life.
            _RUN_ROOT = tracer.start_span(
                RUN_ROOT_SPAN,
                context=_otel_context.Context(),
                start_time=_process_start_ns() if _OWN_RUN else None,
            )
        return _RUN_ROOT


def _target_span() -> Span:
    """The current span, or the run root when there is none (a non-recording current span
    stays the target: its sampler said no, and we must not move its data elsewhere)."""
    if _TRACER is None:
        _tracer()
    current = _get_current_span()
    if current.get_span_context().is_valid:
        return current
    return _run_root()


def _is_ours(span: Any) -> bool:
    scope = getattr(span, "instrumentation_scope", None)
    return scope is not None and scope.name == TRACER_NAME


# --------------------------------------------------------------------------------------------
# public API


class _SpanScope:
    """What :func:`span` returns: a single-use context manager yielding the OTel span."""

    __slots__ = ("_attrs", "_name", "_span", "_token")

    def __init__(self, name: str, attrs: dict[str, Any] | None) -> None:
        self._name = name
        self._attrs = attrs
        self._span: Span | None = None
        self._token: object = None

    def __enter__(self) -> Span:
        if self._span is not None:
            raise RuntimeError("a wattspan.span() object can be entered only once")
        s = (_TRACER or _tracer()).start_span(self._name, attributes=self._attrs)
        self._span = s
        self._token = _attach(_set_span_in_context(s))
        return s

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        s = self._span
        assert s is not None
        _detach(self._token)  # type: ignore[arg-type]
        if exc is not None:
            _fail(s, exc)
        _finish(s)


def span(name: str, *, params: Mapping[str, Any] | None = None, **attrs: Any) -> _SpanScope:
    """A context manager measuring a block as an OpenTelemetry span (the current span inside).

    ``with wattspan.span("train", params={"lr": 1e-3}, epoch=3) as s: ...``

    Keyword attributes become ``wattspan.tag.<key>``; ``params`` (hyperparameters) become
    ``ml.param.<key>`` (nested dicts flattened with dots) plus ``ml.hyperparameters`` (the
    dict as JSON). Values OTel cannot carry (dicts, None, objects) are sent as JSON text.
    An exception leaving the block is recorded and sets the span status to ERROR.
    """
    merged: dict[str, Any] | None = None
    if attrs:
        merged = _tag_attributes(attrs)
    if params:
        merged = {**(merged or {}), **_param_attributes(params)}
    return _SpanScope(name, merged)


@overload
def track(func: F, /) -> F: ...
@overload
def track(name: str, /) -> Callable[[F], F]: ...
@overload
def track(*, name: str | None = None) -> Callable[[F], F]: ...


def track(func: Any = None, /, *, name: str | None = None) -> Any:
    """Decorator: every call of the function is a span named ``name`` (default: qualname).

    Usable as ``@track``, ``@track("name")`` or ``@track(name="name")``, on plain functions,
    ``async def`` coroutines, generators and async generators. For generators the span opens at
    the first ``next()`` and covers the iteration until exhaustion or ``close()``; the span is
    current only while the generator body runs, not while the consumer holds a value.
    """
    if isinstance(func, str):
        name, func = func, None
    if func is None:
        return lambda f: _decorate(f, name)
    if not callable(func):
        raise TypeError(f"@track expects a function or a span name, got {func!r}")
    return _decorate(func, name)


def _decorate(func: Callable[..., Any], name: str | None) -> Callable[..., Any]:
    span_name = name or getattr(func, "__qualname__", None) or repr(func)
    # Decided once here, not per call (inspect is slow).
    if inspect.isasyncgenfunction(func):
        return _wrap_async_gen(func, span_name)
    if inspect.isgeneratorfunction(func):
        return _wrap_gen(func, span_name)
    if inspect.iscoroutinefunction(func):
        return _wrap_async(func, span_name)
    return _wrap_sync(func, span_name)


def _wrap_sync(func: Callable[..., Any], span_name: str) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        s = (_TRACER or _tracer()).start_span(span_name)
        token = _attach(_set_span_in_context(s))
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            _fail(s, exc)
            raise
        finally:
            _detach(token)
            _finish(s)

    return wrapper


def _wrap_async(func: Callable[..., Any], span_name: str) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        # A coroutine runs inside one task's context from start to end, so attach/detach
        # around the await is balanced even across suspensions.
        s = (_TRACER or _tracer()).start_span(span_name)
        token = _attach(_set_span_in_context(s))
        try:
            return await func(*args, **kwargs)
        except Exception as exc:
            _fail(s, exc)
            raise
        finally:
            _detach(token)
            _finish(s)

    return wrapper


def _wrap_gen(func: Callable[..., Generator[Any, Any, Any]], span_name: str) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        s = (_TRACER or _tracer()).start_span(span_name)
        ctx = _set_span_in_context(s)
        # The span is attached only while the wrapped body runs: leaving it attached across
        # `yield` would make it the consumer's current span and break detach ordering.
        try:
            token = _attach(ctx)
            try:
                gen = func(*args, **kwargs)
            finally:
                _detach(token)
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                token = _attach(ctx)
                try:
                    if to_throw is not None:
                        exc, to_throw = to_throw, None
                        item = gen.throw(exc)
                    else:
                        item = gen.send(to_send)
                except StopIteration as stop:
                    return stop.value
                finally:
                    _detach(token)
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = _attach(ctx)
                    try:
                        gen.close()
                    finally:
                        _detach(token)
                    raise
                except BaseException as exc:  # thrown in by the consumer: forward it
                    to_throw = exc
        except Exception as exc:
            _fail(s, exc)
            raise
        finally:
            _finish(s)

    return wrapper


def _wrap_async_gen(
    func: Callable[..., AsyncGenerator[Any, Any]], span_name: str
) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        s = (_TRACER or _tracer()).start_span(span_name)
        ctx = _set_span_in_context(s)
        try:
            agen = func(*args, **kwargs)
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                token = _attach(ctx)
                try:
                    if to_throw is not None:
                        exc, to_throw = to_throw, None
                        item = await agen.athrow(exc)
                    else:
                        item = await agen.asend(to_send)
                except StopAsyncIteration:
                    return
                finally:
                    _detach(token)
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = _attach(ctx)
                    try:
                        await agen.aclose()
                    finally:
                        _detach(token)
                    raise
                except BaseException as exc:
                    to_throw = exc
        except Exception as exc:
            _fail(s, exc)
            raise
        finally:
            _finish(s)

    return wrapper


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record a valued metric (loss, accuracy...) as an ``ml.metric`` event on the current span.

    ``name`` is normalised to start with ``ml.`` (``"loss"`` -> ``ml.loss``), the namespace
    the agent reads for time-to-accuracy and energy-to-accuracy. The event's timestamp is now;
    ``step`` (epoch, iteration) goes to ``ml.step``. Outside any span the event goes to the
    run root span ``wattspan.run`` (sent when the program exits).
    """
    target = _target_span()
    if not target.is_recording():
        return
    metric = name if name.startswith(ML_PREFIX) else ML_PREFIX + name
    attrs: dict[str, Any] = {ATTR_METRIC_NAME: metric, ATTR_METRIC_VALUE: float(value)}
    if step is not None:
        attrs[ATTR_STEP] = int(step)
    target.add_event(EVENT_METRIC, attrs)


def log_params(params: Mapping[str, Any]) -> None:
    """Attach hyperparameters to the current span (or the run root span when there is none).

    Sets ``ml.param.<key>`` per (flattened) entry and ``ml.hyperparameters``, the JSON of all
    parameters logged on that span so far (later calls merge into it).
    """
    target = _target_span()
    if not target.is_recording() or not params:
        return
    merged: dict[str, Any] = _str_keys(params)
    previous = (getattr(target, "attributes", None) or {}).get(ATTR_HYPERPARAMETERS)
    if isinstance(previous, str):
        with contextlib.suppress(ValueError):
            merged = {**json.loads(previous), **merged}
    attrs = _flat_param_attributes(params)
    attrs[ATTR_HYPERPARAMETERS] = _params_json(merged)
    target.set_attributes(attrs)


def log_confusion_matrix(matrix: Any, labels: Sequence[Any], step: int | None = None) -> None:
    """Record a confusion matrix as an ``ml.confusion_matrix`` event on the current span.

    ``matrix[i][j]`` counts samples of true class ``labels[i]`` predicted as ``labels[j]``
    (scikit-learn's convention); lists or a numpy array. Sent as ``ml.confusion_matrix.matrix``
    (JSON list of rows) and ``ml.confusion_matrix.labels`` (list of strings).

    Raises:
        ValueError: if the matrix is not ``len(labels)`` x ``len(labels)``.
    """
    rows = matrix.tolist() if hasattr(matrix, "tolist") else [list(r) for r in matrix]
    n = len(labels)
    if len(rows) != n or any(len(r) != n for r in rows):
        raise ValueError(f"confusion matrix must be {n}x{n} to match {n} labels")
    target = _target_span()
    if not target.is_recording():
        return
    attrs: dict[str, Any] = {
        ATTR_CM_MATRIX: json.dumps(rows, default=float, separators=(",", ":")),
        ATTR_CM_LABELS: [str(label) for label in labels],
    }
    if step is not None:
        attrs[ATTR_STEP] = int(step)
    target.add_event(EVENT_CONFUSION_MATRIX, attrs)


def count_items(n: int | float = 1) -> None:
    """Add ``n`` processed items (rows, samples, tokens...) to the current span.

    When the span ends it carries the total as ``wattspan.items``, from which the agent
    derives throughput (items/s) and cost per item (s/item, J/item). Thread-safe. Outside any
    span the items count for the run root span.
    """
    target = _target_span()
    if not target.is_recording():
        return
    key = id(target)
    with _ITEMS_LOCK:
        if _is_ours(target):
            _ITEMS[key] = _ITEMS.get(key, 0) + n
            return
        # A span wattspan did not create (plain OTel API): we do not see its end, so keep
        # the running total on the span itself.
        previous = (getattr(target, "attributes", None) or {}).get(ATTR_ITEMS, 0)
        target.set_attribute(ATTR_ITEMS, previous + n)
