"""What one repetition measured, from its stored run: headline figures, process energy, spans.

Also the two pieces the kinds share: :class:`InProcess` (a run measured around work that
happens in this process or in a long-lived child of it, the Spark session's JVM, rather
than in a command spawned per repetition), and :class:`Output` (where the measured program's
stdout and stderr go).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from wattspan.agent.attribution import SpanWindow, attribute, build_series
from wattspan.agent.config import Config
from wattspan.agent.store import Run, SpanRow, Store
from wattspan.agent.summary import RunSummary
from wattspan.analysis.runs import run_figures
from wattspan.collectors.base import Sample

#: Figures a repetition row carries (units in the names); ``None`` where not measured.
FIGURES = (
    "wall_seconds",
    "cpu_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "peak_rss_bytes",
    "energy_joules",
    "process_energy_joules",
    "idle_energy_joules",
    "gpu_energy_joules",
)
#: The figures statistics, the report and the model offer by default.
METRICS = (
    "wall_seconds",
    "cpu_seconds",
    "energy_joules",
    "process_energy_joules",
    "peak_rss_bytes",
)
#: The ``stream`` kind's figures that statistics, the report and the model offer too, where
#: an experiment measured them (``wattspan.experiments.stream_kind``).
STREAM_METRICS = (
    "events_per_second",
    "events_per_joule",
    "window_latency_p50_seconds",
    "window_latency_p99_seconds",
)
OUTPUT_TAIL = 2000


@dataclass(slots=True)
class Outcome:
    """A repetition's result as a kind hands it to the loop."""

    status: str  # ok, failed, timeout, interrupted
    exit_code: int | None
    start_ts: float
    end_ts: float
    run_id: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    spans: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def process_energy(
    store: Store, run: Run, summary: dict[str, Any], cpu_seconds: float | None
) -> dict[str, float]:
    """The run's share of node energy by the attribution model (docs: "How attribution
    works"): its CPU seconds over the node's busy CPU seconds, times the active energy."""
    if cpu_seconds is None or run.end_ts is None:
        return {}
    samples = [
        s for s in store.samples(run.id) if s.source in ("rapl", "power_model", "cpu", "gpu")
    ]
    if not samples:
        return {}
    series = build_series(samples)
    rows = attribute(
        [SpanWindow(run.start_ts, run.end_ts, cpu_seconds=cpu_seconds)],
        series,
        summary.get("idle_power_watts"),
        summary.get("idle_method"),
    )
    r = rows[0] if rows else {}
    return {
        k: float(r[k])
        for k in ("process_energy_joules", "idle_energy_joules", "active_energy_joules")
        if r.get(k) is not None
    }


def span_figures(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's spans summed per name: count, seconds, CPU seconds, process energy."""
    acc: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "seconds": 0.0, "cpu_seconds": None, "process_energy_joules": None}
    )
    for s in store.spans(run_id):
        a = acc[s.name]
        a["count"] += 1
        a["seconds"] += s.duration
        for k in ("cpu_seconds", "process_energy_joules"):
            v = s.resources.get(k)
            if isinstance(v, int | float):
                a[k] = (a[k] or 0.0) + float(v)
    return [{"name": n, **v} for n, v in acc.items()]


def figures(store: Store, run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    """A repetition's figures from its run (summary already computed by the measuring)."""
    f = run_figures(store, run)
    out: dict[str, Any] = {k: f.get(k) for k in FIGURES if k in f}
    out["cpu_user_seconds"] = summary.get("cpu_user_seconds")
    out["cpu_system_seconds"] = summary.get("cpu_system_seconds")
    out["energy_estimated"] = f.get("energy_estimated")
    out["cpu_source"] = summary.get("cpu_source")
    out.update(process_energy(store, run, summary, out.get("cpu_seconds")))
    return out


class InProcess:
    """A run measured around work this process drives: an agent samples the node and the
    process trees ``roots``; CPU seconds come from ``cpu()`` (a cumulative figure read at
    start and end), since the sampled tree's counters began before the run did."""

    def __init__(
        self,
        config: Config,
        store_path: str,
        name: str,
        command: list[str],
        description: str,
        roots: Sequence[int],
        cpu: Callable[[], tuple[float, float]],
        interval: float,
    ) -> None:
        from wattspan.agent.daemon import Agent

        self.run = Run(
            id=str(uuid.uuid4()),
            name=name,
            host=config.host,
            start_ts=time.time(),
            kind="run",
            description=description,
            command=command,
        )
        self._cpu = cpu
        self.agent = Agent(
            config,
            interval=interval,
            store_path=store_path,
            process_roots=list(roots),
            run=self.run,
            serve_metrics=False,
            otlp=False,
        )
        self.summary_sink = RunSummary()
        self.agent.pipeline.add_sink(self.summary_sink)
        self.start = self.end = 0.0
        self._cpu0 = (0.0, 0.0)

    def begin(self) -> None:
        self.agent.scheduler.tick(force=True)
        self._cpu0 = self._cpu()
        self.start = time.time()
        self.agent.start()

    def finish(self, exit_code: int, cpu_source: str) -> dict[str, Any]:
        """Ends the run and stores it; returns its summary."""
        self.end = time.time()
        cpu1 = self._cpu()
        self.agent.scheduler.stop()
        user, system = cpu1[0] - self._cpu0[0], cpu1[1] - self._cpu0[1]
        fields: dict[str, float | int | str | bool] = {
            "cpu_user_seconds_total": user,
            "cpu_system_seconds_total": system,
        }
        self.agent.pipeline.emit([Sample("run", self.end, {}, fields)])
        self.agent.scheduler.tick(force=True)
        self.agent.stop()
        summary = self.summary_sink.result(self.start, self.end)
        summary["cpu_source"] = cpu_source
        summary.pop("cpu_seconds_reaped", None)
        idle = self.agent.ingest.idle_of(self.run.id)
        if idle is not None:
            summary["idle_power_watts"] = idle.watts
            summary["idle_method"] = idle.method
        if self.agent.store is not None:
            self.agent.store.finish_run(self.run.id, self.end, exit_code, summary, self.start)
        self.agent.close_store()
        self.run.start_ts, self.run.end_ts = self.start, self.end
        self.run.exit_code, self.run.summary = exit_code, summary
        return summary


def snippet_rows(
    run: Run, spans: Sequence[tuple[str, float, float]], pid: int | None
) -> list[SpanRow]:
    """Spans ``(name, start, end)`` of ``run``, one trace, no parents (not yet stored)."""
    trace = uuid.uuid4().hex
    return [
        SpanRow(
            run_id=run.id,
            trace_id=trace,
            span_id=uuid.uuid4().hex[:16],
            parent_span_id=None,
            name=name,
            start_ts=a,
            end_ts=b,
            status="ok",
            service="wattspan-experiment",
            pid=pid,
        )
        for name, a, b in spans
    ]


def store_spans(
    store: Store, run: Run, rows: Sequence[SpanRow], cpu: Sequence[float | None]
) -> None:
    """Stores ``rows`` (spans of ``run``) attributed from the run's samples the way the agent
    attributes received spans; ``cpu`` is each span's own CPU seconds where it knows them
    (the process's share of node energy then uses them), else None (sampled)."""
    if not rows:
        return
    series = build_series(store.samples(run.id))
    windows = [
        SpanWindow(r.start_ts, r.end_ts, pid=r.pid, cpu_seconds=c)
        for r, c in zip(rows, cpu, strict=True)
    ]
    idle = (run.summary or {}).get("idle_power_watts")
    resources = attribute(windows, series, idle, (run.summary or {}).get("idle_method"))
    for r, res in zip(rows, resources, strict=True):
        r.resources = res
    bid = store.add_span_batch(run.id, list(rows))
    store.set_batch_resources([(bid, resources)])


class Output:
    """Where a repetition's stdout and stderr go: ``discard`` (a temporary file whose tail
    is kept for the error message of a failed repetition), ``inherit`` (the terminal) or a
    file path (appended). The progress display must write to :attr:`console`, a copy of the
    original stderr that the redirection leaves alone."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._saved: tuple[int, int] | None = None
        self._file: TextIO | None = None
        self._console_fd = os.dup(2)
        self.console: TextIO = os.fdopen(self._console_fd, "w", buffering=1, closefd=True)
        self.last_tail = ""

    @contextlib.contextmanager
    def redirect(self) -> Iterator[None]:
        if self.mode == "inherit":
            yield
            return
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mode == "discard":
            fh = tempfile.TemporaryFile("w+b")  # noqa: SIM115 - closed below
        else:
            Path(self.mode).parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.mode, "a+b")  # noqa: SIM115 - closed below
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            try:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - OUTPUT_TAIL))
                self.last_tail = fh.read().decode("utf-8", "replace")
            except OSError:
                self.last_tail = ""
            fh.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.console.close()
