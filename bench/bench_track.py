"""Per-call cost of ``@wattspan.track`` beside a bare OpenTelemetry SDK span and no instrumentation.

Run: ``python bench/bench_track.py [--calls N] [--repeat R] [--pipeline noop|receiver|own]``
and ``python bench/bench_track.py --burst N [--burst-sink receiver|run]``

Fairness: every instrumented column runs through ONE ``TracerProvider`` and ONE span
processor. With ``--pipeline noop`` (default) and ``receiver`` that is an SDK
``BatchSpanProcessor``, installed as the global provider before wattspan is first used (so
wattspan takes the "user already configured OpenTelemetry" path and adds nothing of its own).
``noop`` ends the processor in an exporter that discards batches, which measures the cost paid
on the calling thread; ``receiver`` exports over OTLP/gRPC to an in-process wattspan
``OtlpReceiver`` with a discarding handler, which adds the export thread's competition for the
GIL to every column alike. ``--pipeline own`` lets wattspan install its own provider (the one a
program gets under ``wattspan run``: CPU-time stamps at start, wattspan's export queue), whose
sender is replaced by one that discards batches; the OTel columns then use a tracer of that
same provider, so the ratio isolates ``@track``'s own wrapper again.

Columns:
  none        the function called directly
  otel-with   ``with tracer.start_as_current_span(name): f()`` (the brief's baseline)
  otel-deco   ``@tracer.start_as_current_span(name)`` used as a decorator
  track       ``@wattspan.track``
  span        ``with wattspan.span(name): f()``
  codecarbon  ``EmissionsTracker.start_task()/stop_task()`` around f (if installed and usable)

Each cell is the best of ``--repeat`` runs of ``--calls`` calls, in ns per call. Ratios are
per-call time over the ``otel-with`` column, and instrumentation overhead (time minus the
``none`` column) over the same for ``otel-with``. Target: ``track`` at most 1.3x ``otel-with``.

``--burst N``: instead of the table, a fresh interpreter calls a ``@wattspan.track`` function
N times in a tight loop on one thread, exporting with the defaults to a real receiver:
``--burst-sink receiver`` (default) an ``OtlpReceiver`` in this process that counts distinct
spans; ``--burst-sink run`` the program runs under ``wattspan run`` with a temporary store,
and the spans stored and attributed are counted. Twice: first through an SDK
``BatchSpanProcessor`` with its defaults installed by the program (the baseline, what wattspan
itself installed before), then through the provider wattspan installs. Reported: the loop's
spans/s and its worst single call, spans arrived per second from the loop's start to the end
of the exit flush, spans arrived and dropped. Target: 0 dropped through wattspan's provider.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine


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


class _DiscardSender:
    """Stands in for wattspan's OTLP sender in ``--pipeline own``: every batch delivered."""

    def send(self, spans: list[Any]) -> None:
        return None

    def prepare_exit(self, budget_s: float) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _CountingHandler(_DiscardHandler):
    """Counts distinct spans (a retried request must not count twice)."""

    def __init__(self) -> None:
        self.ids: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def on_spans(self, spans: list[Any]) -> None:
        with self._lock:
            self.ids.update((s.trace_id, s.span_id) for s in spans)


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


BURST_CHILD = """
import atexit, json, sys, time

if sys.argv[2] == "sdk":
    # The baseline: what wattspan installed before, an SDK BatchSpanProcessor with its
    # defaults (queue 2048, batch 512), installed as the program's own provider.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # The SDK's own exit hook flushes it; ours below runs after it (atexit is LIFO).
    atexit.register(lambda: print(json.dumps({"flushed_wall": time.time()}), flush=True))
    atexit.register(provider.shutdown)
    import logging
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)  # one "Queue full" per span
else:
    # Registered before wattspan's own exit hook, so it runs after the exit flush (LIFO).
    atexit.register(lambda: print(json.dumps({"flushed_wall": time.time()}), flush=True))

import wattspan.instrument as w

w._tracer()  # configure (imports, exporter) outside the measured loop

@w.track
def work(x):
    return x + 1

n = int(sys.argv[1])
start_wall = time.time()
t0 = last = time.perf_counter()
worst = 0.0
for i in range(n):
    work(i)
    now = time.perf_counter()
    if now - last > worst:
        worst = now - last
    last = now
q = w._QUEUE
print(json.dumps({
    "start_wall": start_wall, "loop_s": last - t0, "worst_call_s": worst,
    "dropped_in_loop": w.dropped_spans(),
    "config": f"queue {q.max_queue}, batch {q._batch}" if q else "queue 2048, batch 512",
}), flush=True)
"""


def _child_env(endpoint: str | None) -> dict[str, str]:
    # The defaults are what is measured: no inherited OTEL_ tuning.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WATTSPAN_"))}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    return env


def _json_lines(stdout: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.update(json.loads(line))
    return out


def _burst_once(script: Path, n: int, mode: str, sink: str) -> dict[str, Any]:
    """One burst child; its report plus what arrived (and was attributed, for ``run``)."""
    child = [sys.executable, str(script), str(n), mode]
    attributed: int | None = None
    if sink == "receiver":
        from wattspan.agent.receiver import OtlpReceiver

        handler = _CountingHandler()
        with OtlpReceiver(handler, port=0) as receiver:
            p = subprocess.run(
                child,
                env=_child_env(f"http://127.0.0.1:{receiver.port}"),
                capture_output=True,
                text=True,
                timeout=600,
            )
        arrived = len(handler.ids)
    else:
        from wattspan.agent.store import Store

        store = script.parent / f"runs-{mode}.db"
        p = subprocess.run(
            [sys.executable, "-m", "wattspan", "run", "--store", str(store), "--", *child],
            env=_child_env(None),
            capture_output=True,
            text=True,
            timeout=600,
        )
        spans = [s for s in Store(store).spans() if s.name == "work"]
        arrived = len(spans)
        attributed = sum(1 for s in spans if "cpu_seconds" in s.resources)
    report = _json_lines(p.stdout)
    if p.returncode != 0 or "loop_s" not in report or "flushed_wall" not in report:
        raise RuntimeError(f"burst child failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    report.update(arrived=arrived, attributed=attributed)
    report["warnings"] = [ln for ln in p.stderr.splitlines() if ln.startswith("wattspan:")]
    return report


def burst(n: int, sink: str) -> int:
    """N ``@track`` spans from one thread into a real sink: the SDK's processor, then ours."""
    where = {
        "receiver": "an in-process OtlpReceiver counting distinct spans",
        "run": "wattspan run (embedded agent, SQLite store) counting stored spans",
    }[sink]
    print(
        f"python {sys.version.split()[0]}, burst of {n} @track calls from one thread into {where}"
    )
    print(
        f"{'provider':<48}{'loop s':>8}{'spans/s':>9}{'worst ms':>10}{'e2e s':>8}{'spans/s':>9}"
        f"{'arrived':>9}{'dropped':>9}{'attrib.':>9}"
    )
    ours: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        script = Path(tmp) / "burst.py"
        script.write_text(BURST_CHILD)
        for mode, label in (("sdk", "SDK BatchSpanProcessor"), ("own", "wattspan's own")):
            try:
                r = _burst_once(script, n, mode, sink)
            except RuntimeError as exc:
                print(exc)
                return 1
            e2e = r["flushed_wall"] - r["start_wall"]
            attributed = "-" if r["attributed"] is None else str(r["attributed"])
            print(
                f"{label + ' (' + r['config'] + ')':<48}{r['loop_s']:>8.2f}{n / r['loop_s']:>9.0f}"
                f"{r['worst_call_s'] * 1e3:>10.1f}{e2e:>8.2f}{r['arrived'] / e2e:>9.0f}"
                f"{r['arrived']:>9}{n - r['arrived']:>9}{attributed:>9}"
            )
            for line in r["warnings"]:
                print(f"    child: {line}")
            if mode == "own":
                ours = r
    print(
        "loop: the tight loop of calls (spans ended/s); worst: its longest single call; e2e: loop "
        "start to exit flush done (spans arrived/s); wattspan counted "
        f"{ours['dropped_in_loop']} drops in the loop"
    )
    ok = ours["arrived"] == n and ours["attributed"] in (None, n)
    target = "0 dropped" + (" and all attributed" if sink == "run" else "")
    print(f"target {target} (wattspan's own provider): {'target met' if ok else 'target missed'}")
    return 0


#: A ``wattspan.measure()`` window (two synchronous reads of the energy counters) should
#: cost no more than this, so that a loop can measure every step of a few milliseconds.
MEASURE_TARGET_US = 100.0


def measure_window(calls: int, repeat: int, none_ns: float) -> None:
    """Per-window cost of ``with wattspan.measure(): work(i)``: what an energy-aware loop
    pays to know each step's energy (Zeus's ``begin_window``/``end_window``)."""
    import wattspan

    with wattspan.measure() as probe:  # opens the collectors: not part of a window's cost
        pass
    source = "power model (estimated)" if probe.energy_estimated else "RAPL"
    gpus = "NVML" if probe.gpu_energy_joules is not None else "no GPU"

    def call(i: int) -> int:
        with wattspan.measure():
            return work(i)

    ns = _time(call, calls, repeat)
    over_us = (ns - none_ns) / 1e3
    verdict = "target met" if over_us <= MEASURE_TARGET_US else "target missed"
    print(
        f"measure     {ns:>12.0f}   window cost {over_us:.1f} us ({source}, {gpus}); "
        f"target <= {MEASURE_TARGET_US:.0f} us: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="calls per run (default 50000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per column, best kept")
    parser.add_argument("--codecarbon-calls", type=int, default=200, help="calls for codecarbon")
    parser.add_argument("--pipeline", choices=("noop", "receiver", "own"), default="noop")
    parser.add_argument("--no-codecarbon", action="store_true", help="skip the codecarbon column")
    parser.add_argument(
        "--burst", type=int, metavar="N", help="instead of the table: a burst of N spans"
    )
    parser.add_argument("--burst-sink", choices=("receiver", "run"), default="receiver")
    parser.add_argument(
        "--measure-calls",
        type=int,
        default=5000,
        help="windows for the wattspan.measure() column (0: skip it)",
    )
    args = parser.parse_args(argv)
    if args.burst:
        return burst(args.burst, args.burst_sink)

    receiver = None
    if args.pipeline == "own":
        # Big enough that no column waits for room (waiting would measure the sender).
        os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(1 << 20)
        os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = "4096"
        import wattspan.instrument as ws

        ws._tracer()
        assert ws._QUEUE is not None and ws._PROVIDER is not None
        ws._QUEUE.sender = _DiscardSender()  # type: ignore[assignment]
        provider = ws._PROVIDER
    else:
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
    print(f"{time.strftime('%Y-%m-%d')} on {machine()}")
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
    ratio = results["track"] / base
    verdict = "target met" if ratio <= 1.3 else "target missed"
    print(f"track <= 1.3x otel-with: {ratio:.2f}x, {verdict}")
    if args.measure_calls:
        measure_window(args.measure_calls, args.repeat, none)

    provider.shutdown()
    if receiver is not None:
        receiver.stop(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
