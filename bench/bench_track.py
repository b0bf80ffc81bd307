"""Per-call cost of ``@wattspan.track`` beside a bare OpenTelemetry SDK span and no instrumentation.

Run: ``python bench/bench_track.py [--calls N] [--repeat R] [--pipeline noop|receiver]``

Fairness: every instrumented column runs through ONE ``TracerProvider`` and ONE
``BatchSpanProcessor``, installed as the global provider before wattspan is first used (so
wattspan takes the "user already configured OpenTelemetry" path and adds nothing of its own).
``--pipeline noop`` (default) ends the processor in an exporter that discards batches, which
measures the cost paid on the calling thread; ``--pipeline receiver`` exports over OTLP/gRPC
to an in-process wattspan ``OtlpReceiver`` with a discarding handler, which adds the export
thread's competition for the GIL to every column alike.

Columns:
  none        the function called directly
  otel-with   ``with tracer.start_as_current_span(name): f()`` (the brief's baseline)
  otel-deco   ``@tracer.start_as_current_span(name)`` used as a decorator
  track       ``@wattspan.track``
  span        ``with wattspan.span(name): f()``
  codecarbon  ``EmissionsTracker.start_task()/stop_task()`` around f (if installed and usable)

Each cell is the best of ``--repeat`` runs of ``--calls`` calls, in ns per call. Ratios are
per-call time over the ``otel-with`` column, and instrumentation overhead (time minus the
``none`` column) over the same for ``otel-with``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class _DiscardExporter(SpanExporter):
    """Accepts and forgets batches: the pipeline cost without a network."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _DiscardHandler:
    def on_spans(self, spans: list[Any]) -> None:
        pass

    def on_metrics(self, points: list[Any]) -> None:
        pass

    def on_logs(self, logs: list[Any]) -> None:
        pass


def work(x: int) -> int:
    """The measured function: trivial, so the numbers show instrumentation cost only."""
    return x + 1


def _time(call: Callable[[int], Any], calls: int, repeat: int) -> float:
    """Best-of-``repeat`` ns per call (the minimum is the least noise-polluted estimate)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter_ns()
        for i in range(calls):
            call(i)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def _codecarbon_column(calls: int) -> tuple[Callable[[int], Any] | None, str, Callable[[], None]]:
    """Build the CodeCarbon column, or explain why it is skipped."""
    try:
        from codecarbon import OfflineEmissionsTracker
    except Exception as exc:  # not installed / broken install
        return None, f"codecarbon not importable ({type(exc).__name__}: {exc})", lambda: None
    # Its import installs an INFO-level handler; the bench output should stay a table.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    outdir = tempfile.mkdtemp(prefix="bench-codecarbon-")
    try:
        # Offline tracker: no network at runtime (the online one geolocates the IP over HTTP).
        tracker = OfflineEmissionsTracker(
            country_iso_code="USA",
            save_to_file=False,
            output_dir=outdir,
            log_level="error",
            measure_power_secs=1,
        )
        tracker.start()
    except Exception as exc:
        return (
            None,
            f"codecarbon tracker failed to start ({type(exc).__name__}: {exc})",
            (lambda: None),
        )

    def call(i: int) -> int:
        tracker.start_task("work")
        try:
            return work(i)
        finally:
            tracker.stop_task()

    def stop() -> None:
        with contextlib.suppress(Exception):
            tracker.stop()

    return call, "", stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="calls per run (default 50000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per column, best kept")
    parser.add_argument("--codecarbon-calls", type=int, default=200, help="calls for codecarbon")
    parser.add_argument("--pipeline", choices=("noop", "receiver"), default="noop")
    parser.add_argument("--no-codecarbon", action="store_true", help="skip the codecarbon column")
    args = parser.parse_args(argv)

    receiver = None
    if args.pipeline == "receiver":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        from wattspan.agent.receiver import OtlpReceiver

        receiver = OtlpReceiver(_DiscardHandler(), port=0)
        receiver.start()
        exporter: SpanExporter = OTLPSpanExporter(
            endpoint=f"http://127.0.0.1:{receiver.port}", insecure=True
        )
    else:
        exporter = _DiscardExporter()
    # A queue big enough that no column drops spans (dropping would make a column cheaper).
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=1 << 20, max_export_batch_size=4096)
    )
    trace.set_tracer_provider(provider)
    import wattspan.instrument as ws  # after the provider: wattspan must reuse it

    tracer = provider.get_tracer("bench")

    def otel_with(i: int) -> int:
        with tracer.start_as_current_span("work"):
            return work(i)

    otel_deco = tracer.start_as_current_span("work")(work)
    tracked = ws.track(work)

    def ws_span(i: int) -> int:
        with ws.span("work"):
            return work(i)

    columns: dict[str, Callable[[int], Any]] = {
        "none": work,
        "otel-with": otel_with,
        "otel-deco": otel_deco,
        "track": tracked,
        "span": ws_span,
    }
    # Warm-up: first calls configure wattspan and fill caches.
    for call in columns.values():
        for i in range(1000):
            call(i)
        provider.force_flush()

    results: dict[str, float] = {}
    # Interleave columns across repeats so drift (thermal, GC, the export thread) hits all.
    for _ in range(args.repeat):
        for label, call in columns.items():
            ns = _time(call, args.calls, 1)
            results[label] = min(results.get(label, float("inf")), ns)
            provider.force_flush()

    cc_note = "skipped (--no-codecarbon)"
    if not args.no_codecarbon:
        cc_call, cc_note, cc_stop = _codecarbon_column(args.codecarbon_calls)
        if cc_call is not None:
            results["codecarbon"] = _time(cc_call, args.codecarbon_calls, 3)
            cc_stop()

    base = results["otel-with"]
    none = results["none"]
    print(
        f"python {sys.version.split()[0]}, pipeline={args.pipeline}, calls={args.calls}, "
        f"repeat={args.repeat}, pid={os.getpid()}"
    )
    print(f"{'column':<12}{'ns/call':>12}{'x otel-with':>14}{'overhead x':>13}")
    for label, ns in results.items():
        over = (ns - none) / (base - none) if base > none else float("nan")
        print(f"{label:<12}{ns:>12.0f}{ns / base:>14.2f}{over:>13.2f}")
    if "codecarbon" not in results:
        print(f"codecarbon: {cc_note}")

    provider.shutdown()
    if receiver is not None:
        receiver.stop(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
