"""``wattspan run``: one command under an embedded agent, summarised when it ends."""

from __future__ import annotations

import contextlib
import ctypes
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

import psutil

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


# Where the run's CPU seconds come from. wait4(2) of the command counts the command and,
# recursively, every descendant that was waited for by its parent; a descendant whose parent
# exits first is reparented, and whoever reaps it then gets its CPU. Two ways to count
# those orphans were weighed:
# - sampled: add the last CPU the process collector saw of each vanished process that was
#   not reaped inside the tree. Lossy (up to one interval per process, all of a process
#   shorter than one interval), and /proc does not say who reaped a process, so telling
#   "in wait4's figure" from "not" is a guess that can count a process twice or never.
# - subreaper (chosen; what tini and systemd do): PR_SET_CHILD_SUBREAPER makes the tree's
#   orphans ours, so this process reaps them and wait4 hands over each one's exact rusage
#   (its own CPU and that of the descendants it reaped). Every process of the tree is then
#   reaped exactly once, inside the tree (in the command's figure) or by us (added here),
#   or is still there when the command ends (read from /proc then, see _outlived): no
#   process is in two figures. Per-pid rusage is summed rather than RUSAGE_CHILDREN, which
#   also holds every earlier child of a process that calls run_command in-process.
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
#: processes that outlived the command named one by one (the largest); totals count all
_OUTLIVED_LISTED = 64


def _prctl() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _is_subreaper() -> bool:
    prctl = _prctl()
    if prctl is None:
        return False
    flag = ctypes.c_int(0)
    if prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), *[ctypes.c_ulong(0)] * 3) != 0:
        return False
    return bool(flag.value)


def _set_subreaper(on: bool) -> bool:
    """True when the kernel took the setting (Linux 3.4 and later)."""
    prctl = _prctl()
    if prctl is None:
        return False
    return bool(
        prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(int(on)), *[ctypes.c_ulong(0)] * 3) == 0
    )


def _child_pids() -> frozenset[int]:
    """This process's children, zombies included."""
    # The per-thread children lists cost a few reads; psutil reads every process's stat.
    try:
        tids = os.listdir("/proc/self/task")
        kids: set[int] = set()
        for tid in tids:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                kids.update(int(c) for c in f.read().split())
        return frozenset(kids)
    except (OSError, ValueError):
        pass
    try:
        return frozenset(p.pid for p in psutil.Process().children())
    except psutil.Error:
        return frozenset()


@dataclass
class _Reaped:
    """CPU seconds of the tree's orphans that this process reaped as their subreaper."""

    user: float = 0.0
    system: float = 0.0
    n: int = 0

    def add(self, ru: resource.struct_rusage) -> None:
        self.user += ru.ru_utime
        self.system += ru.ru_stime
        self.n += 1


@dataclass(frozen=True)
class _Outlived:
    pid: int
    name: str
    user: float
    system: float
    exited: bool  # a zombie whose parent, still running, has not reaped it yet


def _wait(
    pid: int, orphans: _Reaped | None, theirs: frozenset[int]
) -> tuple[int, resource.struct_rusage]:
    """Waits for ``pid``. As a subreaper (``orphans`` given) reaps every other child that
    ends meanwhile, so orphans do not pile up as zombies, and adds up their usage (not that
    of ``theirs``, children this process had before the run)."""
    if orphans is None:
        _, status, ru = os.wait4(pid, 0)
        return status, ru
    while True:
        got, status, ru = os.wait4(-1, 0)
        if got == pid:
            return status, ru
        if got not in theirs:
            orphans.add(ru)


def _reap_orphans(orphans: _Reaped, theirs: frozenset[int]) -> None:
    """Reaps the orphans that ended by now: those the command killed as it exited end up
    here as zombies, reparented on its exit."""
    while True:
        try:
            got, _, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return
        if got not in theirs:
            orphans.add(ru)


_PF_EXITING = 0x4
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def _dying(pid: int) -> bool:
    """True for a process that has exited or will at once: a zombie, one inside exit(2)
    (PF_EXITING), or one with SIGKILL pending that was not scheduled yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        if rest[0] in (b"Z", b"X") or int(rest[6]) & _PF_EXITING:
            return True
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                pending = line.startswith((b"SigPnd:", b"ShdPnd:"))
                if pending and int(line.split()[1], 16) & _SIGKILL_BIT:
                    return True
    except (OSError, IndexError, ValueError):
        return False
    return False


def _reap_dying(orphans: _Reaped, theirs: frozenset[int], grace: float = 0.5) -> None:
    """Reaps the orphans that were killed as the command exited, waiting ``grace`` seconds
    at most for them to finish dying. A command that kills a helper and exits at once
    leaves it dying, not running: it belongs with the reaped, not with the outlived."""
    pending = [pid for pid in _child_pids() - theirs if _dying(pid)]
    deadline = time.monotonic() + grace
    while pending:
        for pid in list(pending):
            try:
                got, _, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                pending.remove(pid)
                continue
            if got:
                orphans.add(ru)
                pending.remove(pid)
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _outlived(theirs: frozenset[int]) -> list[_Outlived]:
    """The tree's processes still there once the command ended, zombies included.

    With the command gone each is an orphan, so a child of ours or below one; ``theirs``
    are children this process had before the run. A process's figure is its own CPU plus
    that of the descendants it reaped, which no wait4 of ours will see; its live
    descendants are listed on their own, and a zombie is no one's reaped child yet.
    """
    out: list[_Outlived] = []
    for pid in sorted(_child_pids() - theirs):
        try:
            kid = psutil.Process(pid)
        except psutil.Error:
            continue
        try:
            procs = [kid, *kid.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            procs = [kid]
        for p in procs:
            try:
                with p.oneshot():
                    ct = p.cpu_times()
                    name = p.name()
                    exited = p.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                continue
            user, system = ct.user + ct.children_user, ct.system + ct.children_system
            out.append(_Outlived(p.pid, name, user, system, exited))
    return out


def _usage_samples(
    ru: resource.struct_rusage,
    orphans: _Reaped | None,
    outlived: Sequence[_Outlived],
    now: float,
) -> list[Sample]:
    """The ``run`` sample (the tree's CPU seconds, and their parts) and one ``run_outlived``
    sample per process that outlived the command (the largest few)."""
    # ru_maxrss is left out on purpose: it counts the forked copy of this agent before
    # exec, so it overstates a small child. Per-process VmHWM is exact.
    user, system = ru.ru_utime, ru.ru_stime
    if orphans is None:
        fields: dict[str, float | int | str | bool] = {
            "cpu_user_seconds_total": user,
            "cpu_system_seconds_total": system,
            "subreaper": False,
        }
        return [Sample("run", now, {}, fields)]
    left_user = sum(o.user for o in outlived)
    left_system = sum(o.system for o in outlived)
    fields = {
        "cpu_user_seconds_total": user + orphans.user + left_user,
        "cpu_system_seconds_total": system + orphans.system + left_system,
        "child_cpu_seconds_total": user + system,
        "orphans_cpu_seconds_total": orphans.user + orphans.system,
        "orphans_reaped": orphans.n,
        "outlived_cpu_seconds_total": left_user + left_system,
        "outlived_processes": len(outlived),
        "subreaper": True,
    }
    out = [Sample("run", now, {}, fields)]
    largest = sorted(outlived, key=lambda o: (-(o.user + o.system), o.pid))
    for o in largest[:_OUTLIVED_LISTED]:
        out.append(
            Sample(
                "run_outlived",
                now,
                {"pid": str(o.pid), "name": o.name},
                {
                    "cpu_user_seconds_total": o.user,
                    "cpu_system_seconds_total": o.system,
                    "exited": o.exited,
                },
            )
        )
    return out


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
    """Runs ``cmd`` to completion while sampling it and the node; stores and summarises.

    While ``cmd`` runs this process is a child subreaper (the note above
    ``_PR_SET_CHILD_SUBREAPER`` says why) and reaps every child of its own that ends, not
    only ``cmd``: a program calling this in-process must not spawn children of its own
    meanwhile, or their exit status is lost to it (the CLI spawns none). Descendants still
    running when ``cmd`` ends stay children of this process until it exits.
    """
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
    was_subreaper = _is_subreaper()
    subreaper = was_subreaper or _set_subreaper(True)
    if not subreaper:
        log.info("not a child subreaper: CPU of orphaned descendants will not be counted")
    orphans = _Reaped() if subreaper else None
    theirs = _child_pids() if subreaper else frozenset()
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
    outlived: list[_Outlived] = []
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
            if subreaper:
                agent.process_collector.adopt_orphans(proc.pid, os.getpid(), theirs)
        agent.start()
        tune_gc()
        status, ru = _wait(proc.pid, orphans, theirs)
        proc.returncode = status  # the Popen object must not try to reap the pid again
        end = time.time()
        if orphans is not None:
            _reap_orphans(orphans, theirs)
            _reap_dying(orphans, theirs)
            outlived = _outlived(theirs)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if subreaper and not was_subreaper:
            _set_subreaper(False)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    agent.scheduler.stop()
    agent.pipeline.emit(_usage_samples(ru, orphans, outlived, end))
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
