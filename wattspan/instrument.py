"""The instrumentation API: spans, tracked functions and ML values, sent to the agent over OTLP.

Everything here produces ordinary OpenTelemetry spans, so the wattspan agent (or any OTLP
backend) receives them, and spans from other OpenTelemetry instrumentation nest naturally.

Setup is lazy: the first span created through this module looks at the global tracer
provider. If the program (or ``opentelemetry-instrument``) already installed one, wattspan
uses it and configures nothing. Otherwise wattspan installs an SDK ``TracerProvider`` with a
``BatchSpanProcessor`` (bounded queue) and the OTLP/gRPC exporter, reading the usual
``OTEL_EXPORTER_OTLP_*`` / ``OTEL_BSP_*`` variables; the endpoint defaults to
``http://localhost:4317``. The resource carries ``service.name`` (``OTEL_SERVICE_NAME``, else
the script name), ``process.pid`` and ``wattspan.run_id`` (from ``WATTSPAN_RUN_ID``, which
``wattspan run`` sets).

Failure policy: instrumentation must never hurt the program it measures. When the agent is
unreachable, spans are buffered up to the queue bound and then dropped; the exporter's own
retry logging is silenced and wattspan logs ONE warning (logger ``wattspan``) for the whole
process. At exit, pending spans are flushed within about two seconds, and within a fraction of
a second when the agent is already known to be unreachable.

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
    ATTR_HYPERPARAMETERS,
    ATTR_ITEMS,
    ATTR_METRIC_NAME,
    ATTR_METRIC_VALUE,
    ATTR_PARAM_PREFIX,
    ATTR_RUN_ID,
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
    "flush",
    "log_confusion_matrix",
    "log_metric",
    "log_params",
    "span",
    "track",
]

F = TypeVar("F", bound=Callable[..., Any])


_EXPORT_TIMEOUT_S = 2.0
"""Per-export deadline (all retries included) unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT is set."""
_EXIT_BUDGET_S = 2.0
"""Longest the exit flush may delay interpreter exit when the agent looked healthy."""
_EXIT_BUDGET_DOWN_S = 0.3
"""... and when the last export had already failed."""
_EXIT_EXPORT_TIMEOUT_S = 0.75
"""Per-export deadline at exit; below the exporter's first backoff (0.8 s) so it never retries."""
_SCHEDULE_DELAY_MS = 1000
"""Batch delay unless OTEL_BSP_SCHEDULE_DELAY is set: the agent's live view lags by at most this."""

_log = logging.getLogger("wattspan")

# Hot-path globals, read without a lock: a stale None only sends the reader to the locked path.
_TRACER: trace.Tracer | None = None
_SETUP_LOCK = threading.RLock()
_PROVIDER: Any = None  # our SDK TracerProvider, when we installed it
_EXPORTER: _GuardedExporter | None = None
_RUN_ROOT: Span | None = None
_ITEMS: dict[int, int | float] = {}  # id(span) -> items counted on a wattspan span
_ITEMS_LOCK = threading.Lock()
_WARNED = False
_WARN_LOCK = threading.Lock()
_EXITED = False

# Bound once: attribute lookups on modules cost measurable time per call.
_attach = _otel_context.attach
_detach = _otel_context.detach
_set_span_in_context = trace.set_span_in_context
_get_current_span = trace.get_current_span


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


def _script_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0 in ("", "-c", "-"):
        return "python"
    path = Path(argv0)
    # `python -m pkg` runs pkg/__main__.py: the package name says more than "__main__".
    return path.parent.name if path.stem == "__main__" and path.parent.name else path.stem


class _Quiet(threading.local):
    active = False
    last = ""


_QUIET = _Quiet()


class _QuietFilter(logging.Filter):
    """Silences the OTel exporter while wattspan's exporter runs, and its queue-full warnings.

    The OTLP exporter logs every retry and failure; with no agent that is a warning per batch
    forever. We keep the last message to quote it in our one warning instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _QUIET.active:
            _QUIET.last = record.getMessage()
            return False
        if record.msg == "Queue full, dropping %s." and record.args == ("Span",):
            _warn_once(
                "wattspan: span buffer full, dropping spans (the agent at %s is not keeping up "
                "or not reachable); this warning is shown once",
                _endpoint(),
            )
            return False
        return True


class _GuardedExporter:
    """Wraps the OTLP span exporter: quiet logs, one warning, bounded work at exit.

    Duck-types ``SpanExporter`` (export/shutdown/force_flush) so the SDK import stays lazy.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failed = False  # last export failed: at exit, do not wait for the agent
        self.drop_after: float | None = None  # monotonic deadline set at exit
        self._exit_failed = False
        self._shut = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self._shut or self._exit_failed:
            return SpanExportResult.FAILURE
        if self.drop_after is not None and time.monotonic() > self.drop_after:
            _warn_once(
                "wattspan: exit flush took too long, %d or more spans not sent to %s",
                len(spans),
                _endpoint(),
            )
            return SpanExportResult.FAILURE
        _QUIET.active = True
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the batch thread
            _QUIET.last = f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        finally:
            _QUIET.active = False
        if result == SpanExportResult.SUCCESS:
            self.failed = False
            return result
        self.failed = True
        if self.drop_after is not None:
            self._exit_failed = True  # at exit one failure means: give up on the rest
        _warn_once(
            "wattspan: cannot deliver spans to the agent at %s, dropping them (%s); "
            "start the agent or set OTEL_EXPORTER_OTLP_ENDPOINT. This warning is shown once",
            _endpoint(),
            _QUIET.last or "export failed",
        )
        return result

    def prepare_exit(self, budget_s: float) -> None:
        self.drop_after = time.monotonic() + budget_s
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

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


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

_process_time = time.process_time
_thread_time = time.thread_time
_get_ident = threading.get_ident


class _CpuTimeProcessor:
    """Notes the process's and the thread's CPU time when a span of our provider starts;
    :func:`_finish` stamps the difference on wattspan's spans as they end
    (``wattspan.cpu.process_seconds``, and ``wattspan.cpu.thread_seconds`` when the span ends
    on the thread it began on).

    The process measures this exactly and cheaply (two ``clock_gettime`` calls a side), where
    the agent's sampling sees only interval means and misses a short program entirely: the
    agent uses it for the span's CPU seconds and process share. The stamp goes on before
    ``end()``: the SDK makes a span's attributes read-only before any processor's end hook.
    """

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span._wattspan_cpu = (_process_time(), _thread_time(), _get_ident())

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _after_fork_in_child() -> None:
    global _RUN_ROOT, _EXITED
    # The parent's run root and item counters belong to the parent; ending them here would
    # export a duplicate span.
    _RUN_ROOT = None
    _ITEMS.clear()
    _EXITED = False
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


def _build_provider() -> Any:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from wattspan import __version__

    attrs: dict[str, Any] = {"process.pid": os.getpid(), "telemetry.distro.name": "wattspan"}
    attrs["telemetry.distro.version"] = __version__
    run_id = os.environ.get("WATTSPAN_RUN_ID")
    if run_id:
        attrs[ATTR_RUN_ID] = run_id
    resource = Resource.create(attrs)
    # Resource.create lets explicit attributes win over OTEL_SERVICE_NAME, so only fill in the
    # script name when the environment named no service.
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": _script_name()}))

    timeout_set = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" in os.environ or (
        "OTEL_EXPORTER_OTLP_TIMEOUT" in os.environ
    )
    inner = OTLPSpanExporter(timeout=None if timeout_set else _EXPORT_TIMEOUT_S)
    exporter = _GuardedExporter(inner)
    processor = BatchSpanProcessor(
        exporter,  # type: ignore[arg-type]
        schedule_delay_millis=None
        if "OTEL_BSP_SCHEDULE_DELAY" in os.environ
        else _SCHEDULE_DELAY_MS,
    )
    # shutdown_on_exit=False: the SDK's own atexit shutdown waits up to 30 s per processor;
    # ours (below) is bounded.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(_CpuTimeProcessor())  # type: ignore[arg-type]
    provider.add_span_processor(processor)
    return provider, exporter


def _configure() -> trace.Tracer:
    """Pick or install the tracer provider; called once, under ``_SETUP_LOCK``."""
    global _PROVIDER, _EXPORTER
    from wattspan import __version__

    current = trace.get_tracer_provider()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if not isinstance(current, trace.ProxyTracerProvider) or disabled:
        # The user's provider (or OTel's no-op when disabled): use it, configure nothing.
        atexit.register(_at_exit)
        return trace.get_tracer(TRACER_NAME, __version__)
    try:
        provider, exporter = _build_provider()
    except Exception as exc:  # e.g. an invalid OTEL_* variable: run uninstrumented, loudly once
        _warn_once(
            "wattspan: cannot set up span export (%s: %s); spans are not sent",
            type(exc).__name__,
            exc,
        )
        return trace.NoOpTracer()
    for name in (
        "opentelemetry.exporter.otlp.proto.grpc.exporter",
        "opentelemetry.sdk._shared_internal",
    ):
        logging.getLogger(name).addFilter(_QuietFilter())
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        # Another thread or library installed one between our check and our set: use theirs.
        provider.shutdown()
        atexit.register(_at_exit)
        return trace.get_tracer(TRACER_NAME, __version__)
    _PROVIDER, _EXPORTER = provider, exporter
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
    with _SETUP_LOCK:
        root, _RUN_ROOT = _RUN_ROOT, None
    if root is not None:
        _finish(root)


def _at_exit() -> None:
    """End the run root span and flush, bounded so exit is never held up for long."""
    global _EXITED
    if _EXITED:
        return
    _EXITED = True
    with contextlib.suppress(Exception):
        _end_run_root()
    provider, exporter = _PROVIDER, _EXPORTER
    if provider is None or exporter is None:
        return  # the user's provider: flushing it is the user's (or the SDK's atexit) business
    budget = _EXIT_BUDGET_DOWN_S if exporter.failed else _EXIT_BUDGET_S
    exporter.prepare_exit(budget)
    # provider.shutdown() drains the batch queue through the exporter; in a thread so that a
    # hung network call cannot hold the interpreter past the budget.
    worker = threading.Thread(target=provider.shutdown, name="wattspan-exit-flush", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        exporter.shutdown()  # cancel the in-flight call
        worker.join(0.2)


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
            _RUN_ROOT = tracer.start_span(RUN_ROOT_SPAN, context=_otel_context.Context())
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
