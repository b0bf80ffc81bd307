"""``wattspan run``: one command under an embedded agent, summarised when it ends."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from wattspan.agent.config import Config
from wattspan.agent.daemon import Agent, tune_gc
from wattspan.agent.receiver.security import load_bearer_token
from wattspan.agent.store import Run
from wattspan.agent.summary import RunSummary
from wattspan.collectors.base import Sample

log = logging.getLogger("wattspan.run")

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_FROM_TTY = (signal.SIGINT, signal.SIGQUIT)


@dataclass
class RunResult:
    exit_code: int
    run: Run
    summary: dict[str, Any]


def _child_in_our_foreground_group() -> bool:
    """True when we (and so the child) are the terminal's foreground process group: then a
    Ctrl-C already reached the child from the terminal and must not be sent twice."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
        except (OSError, ValueError, AttributeError):
            continue
    return False


def _usage_sample(ru: resource.struct_rusage, now: float) -> Sample:
    return Sample(
        "run",
        now,
        {},
        {
            "cpu_user_seconds_total": ru.ru_utime,
            "cpu_system_seconds_total": ru.ru_stime,
            # ru_maxrss is left out on purpose: it counts the forked copy of this agent
            # before exec, so it overstates a small child. Per-process VmHWM is exact.
        },
    )


def run_command(
    cmd: Sequence[str],
    config: Config,
    *,
    interval: float = 0.1,
    store_path: str | None = None,
    name: str | None = None,
    description: str = "",
    env_extra: dict[str, str] | None = None,
    on_start: Callable[[Agent], dict[str, str]] | None = None,
) -> RunResult:
    """Runs ``cmd`` to completion while sampling it and the node; stores and summarises."""
    host = config.host
    run = Run(
        id=str(uuid.uuid4()),
        name=name or os.path.basename(cmd[0]),
        host=host,
        start_ts=time.time(),
        kind="run",
        description=description,
        command=list(cmd),
    )
    # The embedded receiver takes a free loopback port: runs may go on side by side, and a
    # daemon agent may already hold 4317.
    agent = Agent(
        config,
        interval=interval,
        store_path=store_path,
        process_roots=[],
        run=run,
        serve_metrics=False,
        otlp_port=0,
    )
    measured = RunSummary()
    agent.pipeline.add_sink(measured)
    env = dict(os.environ)
    env["WATTSPAN_RUN_ID"] = run.id
    try:
        agent.start_receiver()
    except OSError as exc:
        log.warning("%s; the command's spans will not be received", exc)
    if agent.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = agent.otlp_endpoint
        o = config["otlp"]
        token = load_bearer_token(
            "otlp", o["bearer_token_file"] or None, o["bearer_token_env"] or None
        )
        if token is not None:
            # The embedded receiver asks for the configured token: hand it to the child the
            # way every OTel SDK reads headers (W3C baggage-style, the space %-encoded).
            header = "authorization=Bearer%20" + token.decode()
            prior = env.get("OTEL_EXPORTER_OTLP_HEADERS")
            env["OTEL_EXPORTER_OTLP_HEADERS"] = f"{prior},{header}" if prior else header
        env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        env.pop("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", None)
        env.pop("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", None)
    if on_start is not None:
        env.update(on_start(agent))
    if env_extra:
        env.update(env_extra)

    agent.scheduler.tick(force=True)  # baseline: counters at the start of the run
    start = time.time()
    # Handlers go in before the child exists: a signal sent once the child is up (it may
    # already have said it is ready) must be forwarded, not kill us with the default action.
    # One that comes before the child exists is held and sent to it once it does.
    child: list[subprocess.Popen[bytes]] = []
    held: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not child:
            held.append(signum)
            return
        if signum in _FROM_TTY and _child_in_our_foreground_group():
            return
        with contextlib.suppress(ProcessLookupError):
            child[0].send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        try:
            proc = subprocess.Popen(list(cmd), env=env)
        except FileNotFoundError:
            print(f"wattspan: {cmd[0]}: command not found", file=sys.stderr)
            return _finish(agent, measured, run, start, 127)
        except PermissionError:
            print(f"wattspan: {cmd[0]}: Permission denied", file=sys.stderr)
            return _finish(agent, measured, run, start, 126)
        child.append(proc)
        for signum in held:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        if agent.process_collector is not None:
            agent.process_collector.add_root(proc.pid)
        agent.start()
        tune_gc()
        _, status, ru = os.wait4(proc.pid, 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    proc.returncode = status  # the Popen object must not try to reap the pid again
    end = time.time()
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    agent.scheduler.stop()
    agent.pipeline.emit([_usage_sample(ru, end)])
    return _finish(agent, measured, run, start, code, end)


def _store_trouble(agent: Agent) -> int:
    """Writes of this run's records that the store refused or still holds back."""
    n = agent.pipeline.sink_errors.get("store", 0)
    for sink in agent.pipeline.sinks:
        if sink.name in ("store", "ingest"):
            stats = sink.stats()
            n += int(stats.get("write_errors_total", 0)) + int(stats.get("queued_records", 0))
            n += int(stats.get("attribution_errors_total", 0))
    return n


def _finish(
    agent: Agent,
    measured: RunSummary,
    run: Run,
    start: float,
    code: int,
    end: float | None = None,
) -> RunResult:
    end = time.time() if end is None else end
    agent.scheduler.tick(force=True)  # final counters, so energy covers the whole run
    agent.stop()
    # The table comes from what this process measured (wait4, samples folded in as they
    # were taken), never from reading the store back: a store that failed mid-run would
    # otherwise shrink the figures without a word.
    summary = measured.result(start, end)
    idle = agent.ingest.idle_of(run.id)
    if idle is not None:
        summary["idle_power_watts"] = idle.watts
        summary["idle_method"] = idle.method
    if agent.store is not None:
        trouble = _store_trouble(agent)
        if trouble:
            summary["store_incomplete"] = True
            summary["store_errors"] = trouble
            log.warning(
                "the store missed part of this run (%d failed or pending writes); "
                "the figures above are complete, the stored samples are not",
                trouble,
            )
        try:
            agent.store.finish_run(run.id, end, code, summary, start_ts=start)
        except sqlite3.Error as exc:
            summary["store_incomplete"] = True
            log.warning("could not record the end of the run in the store: %s", exc)
        agent.close_store()
    run.start_ts, run.end_ts, run.exit_code, run.summary = start, end, code, summary
    return RunResult(code, run, summary)
