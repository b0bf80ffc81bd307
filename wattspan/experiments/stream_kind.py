"""The ``stream`` kind: a shipped query of the bundled stream engine, one run per repetition.

Each repetition runs ``python -m wattspan.engines.stream.cli_worker QUERY ...`` as a
``command`` repetition (:class:`~wattspan.experiments.kinds.CommandExecutor`, i.e.
:func:`wattspan.agent.runner.run_command`, the measuring of ``wattspan run`` and of
``wattspan stream run``), so the repetition is a stored run with the worker's
``stream.query`` span and its sample of ``stream.task`` spans. The worker hands its stream
figures back in a JSON file; they are added to the repetition's figures under the names of
:data:`FIGURES`, with events per joule from the ``stream.query`` span's attributed process
energy (else the run's process energy, else the node's), as ``wattspan stream run`` reports.

A ``generate`` input is written once per experiment, before the first stream repetition and
outside any measured run, by ``wattspan stream generate`` into ``DIR/data/`` of the
experiment's directory (:attr:`Context.directory`); a resumed experiment finds it there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from wattspan.experiments.config import Configuration, RunSpec
from wattspan.experiments.kinds import CommandExecutor, Context
from wattspan.experiments.measure import Outcome
from wattspan.experiments.stream_config import Generate, StreamArgs, ads_beside

QUERY_SPAN = "stream.query"  # wattspan.engines.stream.instrument.SPAN_QUERY
#: The stream figures a repetition gets (besides the run's), units in the names.
FIGURES = (
    "events",
    "events_per_second",
    "events_per_second_per_core",
    "events_per_joule",
    "events_per_joule_basis",
    "window_latency_p50_seconds",
    "window_latency_p99_seconds",
    "window_latency_kind",
    "windows",
    "result_rows",
    "query_seconds",
    "query_cpu_seconds",
    "query_process_energy_joules",
    "tasks",
    "gpu_tasks",
    "input_bytes",
    "input_rate_achieved",
)
#: Seconds a generation may take per million events before it is given up.
GENERATE_SECONDS_PER_MEVENT = 60.0


class StreamExecutor(CommandExecutor):
    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._tmp = tempfile.TemporaryDirectory(prefix="wattspan-experiment-stream-")
        self._result = Path(self._tmp.name) / "figures.json"
        self._generated: dict[Generate, Path] = {}
        self._prepared = False

    # -- the input --------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Every generated input of the experiment, before the first repetition measures."""
        wanted: dict[Generate, None] = {}
        for spec in self.ctx.cfg.runs:
            for args in spec.stream_args.values():
                if args.generate is not None:
                    wanted[args.generate] = None
        for gen in wanted:
            if gen not in self._generated:
                self._generated[gen] = self._generate(gen)
        # Only now: a failed generation fails this repetition and is tried again by the next.
        self._prepared = True

    def _generate(self, gen: Generate) -> Path:
        out = self.ctx.directory / "data" / gen.filename
        # `stream generate` writes both files atomically, the ads table last: with it there,
        # the events are complete (a resume, or a second run of the same configuration).
        if out.exists() and (gen.dataset != "ysb" or ads_beside(out).exists()):
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-P",  # as worker_argv: a checkout's `wattspan/` folder must not shadow the install
            "-m",
            "wattspan",
            "stream",
            "generate",
            gen.dataset,
            "--events",
            str(gen.events),
            "--seed",
            str(gen.seed),
            "-o",
            str(out),
        ]
        timeout = 30.0 + GENERATE_SECONDS_PER_MEVENT * gen.events / 1e6
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"generating {gen.filename} took over {timeout:.0f} s") from None
        if p.returncode != 0:
            why = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
            raise RuntimeError(f"generating {gen.filename} failed: {why}")
        return out

    def _files(self, args: StreamArgs) -> tuple[Path, Path | None]:
        if args.generate is None:
            assert args.input is not None
            return args.input, args.ads
        path = self._generated[args.generate]
        return path, ads_beside(path) if args.query == "ysb" else None

    # -- a repetition -----------------------------------------------------------------------

    def _args(self, spec: RunSpec, conf: Configuration) -> StreamArgs:
        return spec.stream_args[conf.key]

    def argv(self, spec: RunSpec, conf: Configuration) -> tuple[list[str], dict[str, str]]:
        a = self._args(spec, conf)
        inp, ads = self._files(a)
        self._result.unlink(missing_ok=True)
        from wattspan.engines.stream.cli_worker import worker_argv

        argv = worker_argv(a, inp, str(ads) if ads is not None else None, self._result)
        return argv, {}

    def tags(self, spec: RunSpec, conf: Configuration) -> dict[str, str] | None:
        from wattspan.engines.stream.cli_worker import run_tags

        return run_tags(self._args(spec, conf))

    def run(self, conf: Configuration, phase: str, repetition: int) -> Outcome:
        if not self._prepared:
            self._prepare()
        out = super().run(conf, phase, repetition)
        try:
            worker = json.loads(self._result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            worker = {}
        if out.status == "ok" and not worker:
            out.status = "failed"
            out.error = out.error or "the stream worker wrote no figures"
        if worker:
            span = _query_span(self.ctx, out.run_id)
            out.figures.update(stream_figures(worker, span, out.figures))
        return out

    def close(self) -> None:
        self._tmp.cleanup()


def _query_span(ctx: Context, run_id: str | None) -> dict[str, Any] | None:
    """The attributed resources of the run's ``stream.query`` span, if it was stored."""
    if run_id is None:
        return None
    spans = [s for s in ctx.store.spans(run_id) if s.name == QUERY_SPAN]
    return dict(spans[-1].resources or {}) if spans else None


def events_per_joule(
    events: int, span: dict[str, Any] | None, run: dict[str, Any]
) -> tuple[float | None, str]:
    """Events per joule and what the joules are: the query span's process share of the
    node's active energy, else the whole run's, else the node's energy over the run."""
    for basis, block, key in (
        ("query span, process share", span, "process_energy_joules"),
        ("run, process share", run, "process_energy_joules"),
        ("run, node energy", run, "energy_joules"),
    ):
        joules = (block or {}).get(key)
        if isinstance(joules, int | float) and not isinstance(joules, bool) and joules > 0:
            return events / joules, basis
    return None, "no energy measured"


def stream_figures(
    worker: dict[str, Any], span: dict[str, Any] | None, run: dict[str, Any]
) -> dict[str, Any]:
    """The figures of :data:`FIGURES` from the worker's JSON, the query span's attributed
    resources and the run's figures."""
    lat = worker.get("latency_seconds") or {}
    tasks = worker.get("tasks") or {}
    events = int(worker["events"])
    epj, basis = events_per_joule(events, span, run)
    out: dict[str, Any] = {
        "events": events,
        "events_per_second": worker.get("events_per_second"),
        "events_per_second_per_core": worker.get("events_per_second_per_core"),
        "events_per_joule": epj,
        "events_per_joule_basis": basis,
        "window_latency_p50_seconds": lat.get("p50"),
        "window_latency_p99_seconds": lat.get("p99"),
        "window_latency_kind": worker.get("latency_kind"),
        "windows": worker.get("windows"),
        "result_rows": worker.get("result_rows"),
        # The engine's own wall time (reading the input to the last result), beside the
        # run's wall_seconds, which adds the interpreter's start-up and imports.
        "query_seconds": worker.get("wall_seconds"),
        "query_cpu_seconds": (span or {}).get("cpu_seconds"),
        "query_process_energy_joules": (span or {}).get("process_energy_joules"),
        "tasks": sum(v for v in tasks.values() if isinstance(v, int)),
        "gpu_tasks": tasks.get("gpu", 0),
        "input_bytes": worker.get("bytes"),
    }
    if worker.get("rate") is not None:
        out["input_rate_achieved"] = worker.get("input_rate_achieved")
    return out
