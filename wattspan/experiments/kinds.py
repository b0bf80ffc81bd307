"""How each kind of ``[[run]]`` executes one repetition.

* ``command``: :func:`wattspan.agent.runner.run_command`, exactly what ``wattspan run``
  does (wait4 CPU of the whole tree, sampled memory, node energy, the command's own spans
  through the embedded OTLP receiver), so each repetition is a stored run.
* ``python``: ``module:function`` with keyword arguments. Fresh process per repetition by
  default (``python -m wattspan.experiments.pycall``, measured as a command); with
  ``fresh_process = false`` called in this process, measured by :class:`InProcess`.
* ``spark-sql``: see :mod:`wattspan.experiments.spark_sql`.
* ``stream``: see :mod:`wattspan.experiments.stream_kind` (a command of this kind's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from wattspan.agent.config import Config
from wattspan.agent.store import Store
from wattspan.experiments.config import (
    Configuration,
    ExperimentConfig,
    RunSpec,
    render_argv,
    render_cwd,
    render_env,
    render_value,
)
from wattspan.experiments.measure import InProcess, Outcome, Output, figures, span_figures

#: Seconds between SIGTERM and SIGKILL when a repetition runs past its timeout.
KILL_GRACE = 2.0


@dataclass
class Context:
    """What every kind needs from the loop."""

    cfg: ExperimentConfig
    agent_config: Config
    store_path: str
    store: Store
    experiment_id: str
    output: Output
    #: stores an extra repetition (a Spark session's warm-up) outside the plan
    record_extra: Callable[[Configuration, str, int, Outcome], None] = lambda *a: None
    #: called from the signal handler on SIGINT/SIGTERM (cancel what runs in-process)
    on_interrupt: list[Callable[[], None]] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        """Where the experiment keeps files of its own (a generated stream input): beside
        the store, by experiment id, so a resume finds them."""
        return Path(self.store_path).parent / "experiments" / self.experiment_id


class Executor(Protocol):
    def run(self, conf: Configuration, phase: str, repetition: int) -> Outcome: ...

    def close(self) -> None: ...


def run_name(ctx: Context, spec: RunSpec) -> str:
    return ctx.cfg.name if len(ctx.cfg.runs) == 1 else f"{ctx.cfg.name}/{spec.name}"


def description(ctx: Context, conf: Configuration, phase: str, repetition: int) -> str:
    return f"experiment {ctx.experiment_id} [{conf.label}] {phase} {repetition}"


@contextlib.contextmanager
def _cwd(path: str | None):  # type: ignore[no-untyped-def]
    """The child inherits the working directory: run_command has no cwd of its own."""
    if path is None:
        yield
        return
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _Deadline:
    """Kills the processes a repetition started (not those that were there before) when it
    runs past ``timeout``: SIGTERM to the tree, SIGKILL after :data:`KILL_GRACE`."""

    def __init__(self, timeout: float | None) -> None:
        self.fired = False
        self._timers: list[threading.Timer] = []
        self._before = {p.pid for p in psutil.Process().children()}
        if timeout is not None:
            self._arm(timeout, signal.SIGTERM)

    def _arm(self, delay: float, sig: int) -> None:
        t = threading.Timer(delay, self._fire, (sig,))
        t.daemon = True
        self._timers.append(t)
        t.start()

    def _fire(self, sig: int) -> None:
        self.fired = True
        try:
            kids = [p for p in psutil.Process().children() if p.pid not in self._before]
        except psutil.Error:
            return
        procs = list(kids)
        for k in kids:
            with contextlib.suppress(psutil.Error):
                procs += k.children(recursive=True)
        for p in procs:
            # Never wait() here: the measuring thread reaps its child with wait4.
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        if sig == signal.SIGTERM and procs:
            self._arm(KILL_GRACE, signal.SIGKILL)

    def cancel(self) -> None:
        for t in self._timers:
            t.cancel()


def _status(ctx: Context, code: int, deadline: _Deadline) -> str:
    if deadline.fired:
        return "timeout"
    return "ok" if code in ctx.cfg.success_codes else "failed"


def _error(ctx: Context, status: str, code: int | None, spec: RunSpec) -> str:
    if status == "ok":
        return ""
    head = f"timed out after {spec.timeout:g} s" if status == "timeout" else f"exit code {code}"
    tail = ctx.output.last_tail.strip()
    return f"{head}: {tail[-500:]}" if tail else head


class CommandExecutor:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def argv(self, spec: RunSpec, conf: Configuration) -> tuple[list[str], dict[str, str]]:
        return render_argv(spec, conf.params), {}

    def tags(self, spec: RunSpec, conf: Configuration) -> dict[str, str] | None:
        """Tags stored with the repetition's run (``wattspan runs --tag``)."""
        return None

    def run(self, conf: Configuration, phase: str, repetition: int) -> Outcome:
        from wattspan.agent.runner import run_command

        ctx = self.ctx
        spec = ctx.cfg.runs[conf.run]
        argv, extra = self.argv(spec, conf)
        env = {**render_env(spec, conf.params), **extra}
        cwd = render_cwd(spec, conf.params, ctx.cfg.base_dir)
        start = time.time()
        with ctx.output.redirect(), _cwd(cwd):
            deadline = _Deadline(spec.timeout)
            try:
                result = run_command(
                    argv,
                    ctx.agent_config,
                    interval=ctx.cfg.interval,
                    store_path=ctx.store_path,
                    name=run_name(ctx, spec),
                    description=description(ctx, conf, phase, repetition),
                    env_extra=env,
                    tags=self.tags(spec, conf),
                )
            finally:
                deadline.cancel()
        run = result.run
        status = _status(ctx, result.exit_code, deadline)
        figs = figures(ctx.store, run, result.summary)
        figs["exit_code"] = result.exit_code
        ctx.store.write_params(run.id, None, dict(conf.params))
        return Outcome(
            status=status,
            exit_code=result.exit_code,
            start_ts=run.start_ts if run.start_ts else start,
            end_ts=run.end_ts or time.time(),
            run_id=run.id,
            figures=figs,
            spans=span_figures(ctx.store, run.id),
            error=_error(ctx, status, result.exit_code, spec),
        )

    def close(self) -> None:
        pass


class PythonExecutor(CommandExecutor):
    """``module:function`` in a fresh interpreter per repetition, or in this process."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._tmp = tempfile.TemporaryDirectory(prefix="wattspan-pycall-")
        self._result = Path(self._tmp.name) / "result.json"

    def argv(self, spec: RunSpec, conf: Configuration) -> tuple[list[str], dict[str, str]]:
        kwargs = render_value(spec.kwargs, conf.params)
        python = spec.python or sys.executable
        self._result.unlink(missing_ok=True)
        argv = [python, "-m", "wattspan.experiments.pycall", spec.function, str(self._result)]
        extra = {"WATTSPAN_EXPERIMENT_KWARGS": json.dumps(kwargs)}
        if spec.span:
            extra["WATTSPAN_EXPERIMENT_SPAN"] = "1"
        return argv, extra

    def run(self, conf: Configuration, phase: str, repetition: int) -> Outcome:
        spec = self.ctx.cfg.runs[conf.run]
        if not spec.fresh_process:
            return self._in_process(spec, conf, phase, repetition)
        out = super().run(conf, phase, repetition)
        try:
            call = json.loads(self._result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            call = {}
        for k in ("call_seconds", "call_cpu_seconds"):
            if k in call:
                out.figures[k] = call[k]
        if "result" in call:
            out.figures["result"] = call["result"]
        return out

    def _in_process(self, spec: RunSpec, conf: Configuration, phase: str, rep: int) -> Outcome:
        from wattspan.experiments.pycall import call

        ctx = self.ctx

        def cpu() -> tuple[float, float]:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return ru.ru_utime, ru.ru_stime

        kwargs = render_value(spec.kwargs, conf.params)
        m = InProcess(
            ctx.agent_config,
            ctx.store_path,
            run_name(ctx, spec),
            [spec.function, json.dumps(kwargs)],
            description(ctx, conf, phase, rep),
            [os.getpid()],
            cpu,
            ctx.cfg.interval,
        )
        cwd = render_cwd(spec, conf.params, ctx.cfg.base_dir)
        env = render_env(spec, conf.params)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        result: dict[str, Any] = {}
        error = ""
        try:
            with ctx.output.redirect(), _cwd(cwd):
                m.begin()
                try:
                    result = call(spec.function, kwargs, spec.span)
                    code = 0
                except Exception:
                    error = traceback.format_exc(limit=5)[-1000:]
                    code = 1
                summary = m.finish(code, "process (harness included)")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        figs = figures(ctx.store, m.run, summary)
        figs.update({k: result[k] for k in ("call_seconds", "call_cpu_seconds") if k in result})
        if "result" in result:
            figs["result"] = result["result"]
        figs["exit_code"] = code
        ctx.store.write_params(m.run.id, None, dict(conf.params))
        return Outcome(
            status="ok" if code == 0 else "failed",
            exit_code=code,
            start_ts=m.start,
            end_ts=m.end,
            run_id=m.run.id,
            figures=figs,
            error=error,
        )

    def close(self) -> None:
        self._tmp.cleanup()
