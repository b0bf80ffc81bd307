"""``wattspan run``: one command under an embedded agent, summarised when it ends.

Start-up order: the command starts first and the agent comes up beside it, so that
wattspan's own start-up (imports of grpc, the store, the collectors: 0.2-0.3 s) is not added
to the command's wall time. Before the spawn only what the command's environment needs is
done: the run id, and a port for the OTLP receiver reserved by binding a socket
(``SO_REUSEADDR``, not listening) that the receiver binds over once it is built. The
command's spans wait for it: ``WATTSPAN_OTLP_READY_BY`` tells :mod:`wattspan.instrument`
that an agent is coming up at the endpoint, so its first export waits for the port instead
of counting the agent unreachable. The first sample is taken right after the collectors are
built (tens of ms after the spawn; the stored samples show when), but the energy and CPU
counters are read once just before the spawn (:mod:`wattspan.collectors.head`), so node
energy and busy CPU count from the spawn; CPU seconds and wall time come from wait4 and the
spawn and are exact regardless. A hook that needs the
agent before the command exists (``on_start``, the Spark engine's) gets the old order.
"""

from __future__ import annotations

# The C module under ``signal``: the same functions and numbers, without the enum classes
# ``signal`` builds at import (enum's import and their conversion cost ~2 ms before the
# spawn). Handlers here are plain ints and functions either way.
import _signal as signal
import os
import sys
import time

from wattspan.agent.named import record
from wattspan.agent.subreaper import is_subreaper, set_subreaper

# Everything imported above is what the spawn needs; the rest (logging, typing, dataclasses,
# the agent) loads once the command runs: each costs milliseconds that every `wattspan run`
# would add to its command's wall time (bench/bench_run_overhead.py, issue 15).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import resource
    from collections.abc import Callable, Sequence
    from types import FrameType
    from typing import IO, Any

    from wattspan.agent.carbon import Intensity
    from wattspan.agent.config import Config
    from wattspan.agent.daemon import Agent
    from wattspan.agent.store import Run
    from wattspan.agent.summary import RunSummary
    from wattspan.collectors.base import Collector, Sample
    from wattspan.collectors.head import Head


class _LazyLog:
    """``logging.getLogger("wattspan.run")``, imported at the first message."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("wattspan.run"), name)


log = _LazyLog()

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_FROM_TTY = (signal.SIGINT, signal.SIGQUIT)


class RunResult(record("RunResult", "exit_code run summary")):
    """The command's exit code, its stored run and the summary the table prints."""

    __slots__ = ()
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
#: processes that outlived the command named one by one (the largest); totals count all
_OUTLIVED_LISTED = 64


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
    import psutil

    try:
        return frozenset(p.pid for p in psutil.Process().children())
    except psutil.Error:
        return frozenset()


class _Reaped:
    """CPU seconds of the tree's orphans that this process reaped as their subreaper, and
    the largest ``ru_maxrss`` among them (KiB; they were not spawned by this process, so
    theirs is their own)."""

    __slots__ = ("maxrss", "n", "system", "user")

    def __init__(self) -> None:
        self.user = 0.0
        self.system = 0.0
        self.n = 0
        self.maxrss = 0

    def add(self, ru: resource.struct_rusage) -> None:
        self.user += ru.ru_utime
        self.system += ru.ru_stime
        self.n += 1
        self.maxrss = max(self.maxrss, ru.ru_maxrss)


class _Outlived(record("_Outlived", "pid name user system exited")):
    """A process of the tree still there when the command ended; ``exited``: a zombie
    whose parent, still running, has not reaped it yet."""

    __slots__ = ()
    pid: int
    name: str
    user: float
    system: float
    exited: bool


class _Child:
    """The command's process, as much of ``subprocess.Popen`` as the run needs.

    Started with ``posix_spawn`` rather than ``Popen``: subprocess's import (locale, re,
    selectors) alone costs about 10 ms before the command can start. Differences from
    Popen's defaults: like ``time(1)`` and ``env(1)``, the command inherits this process's
    inheritable descriptors (Python's own are close-on-exec); SIGPIPE and SIGXFSZ, which
    Python ignores, are reset to their defaults for it as Popen's ``restore_signals`` does.
    """

    __slots__ = ("pid", "returncode")

    def __init__(self, cmd: Sequence[str], env: dict[str, str], stdout: IO[Any] | None) -> None:
        path = _which(cmd[0], env)
        actions = [(os.POSIX_SPAWN_DUP2, stdout.fileno(), 1)] if stdout is not None else []
        self.pid = os.posix_spawn(
            path, list(cmd), env, file_actions=actions, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
        )
        self.returncode: int | None = None

    def send_signal(self, signum: int) -> None:
        """Sends ``signum`` unless the process was reaped (its pid may be another's now) or
        is gone."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:  # not contextlib.suppress: its import, before the spawn
                return


def _which(name: str, env: dict[str, str]) -> str:
    """The file ``name`` runs, searched in the command's own ``PATH`` as ``Popen`` (and
    ``execvpe``) would: FileNotFoundError, or PermissionError when only files that may not be
    executed were found."""
    if os.sep in name:
        return name
    denied = None
    for d in os.get_exec_path(env):
        path = os.path.join(d, name)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = denied or path
    if denied is not None:
        raise PermissionError(13, "Permission denied", denied)
    raise FileNotFoundError(2, "No such file or directory", name)


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
    import psutil

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


def _rss_margin(head: Head) -> int:
    return max(1 << 20, (head.hwm_bytes or 0) // 50)


def _peak_rss(ru: resource.struct_rusage, orphans: _Reaped | None, head: Head | None) -> int:
    """The largest single process's peak RSS in bytes that wait4 saw, 0 when unknown.

    The kernel keeps it for every process the command's tree reaped, so it holds peaks that
    fell between two samples, or came before the first. The command's own figure is at
    least this process's peak at the spawn (:class:`~wattspan.collectors.head.Head` says
    why), so it counts only above that; the orphans' is theirs."""
    own = ru.ru_maxrss * 1024
    # The margin covers what the kernel may count a little differently (RSS counters are
    # per-CPU caches synced at exec): below it, the figure may still be this process's.
    if head is None or head.hwm_bytes is None or own <= head.hwm_bytes + _rss_margin(head):
        own = 0
    return max(own, orphans.maxrss * 1024 if orphans is not None else 0)


def _usage_samples(
    ru: resource.struct_rusage,
    orphans: _Reaped | None,
    outlived: Sequence[_Outlived],
    now: float,
    head: Head | None = None,
) -> list[Sample]:
    """The ``run`` sample (the tree's CPU seconds, and their parts; the peak RSS wait4 saw)
    and one ``run_outlived`` sample per process that outlived the command (the largest
    few)."""
    from wattspan.collectors.base import Sample

    user, system = ru.ru_utime, ru.ru_stime
    peak = _peak_rss(ru, orphans, head)
    if orphans is None:
        fields: dict[str, float | int | str | bool] = {
            "cpu_user_seconds_total": user,
            "cpu_system_seconds_total": system,
            "subreaper": False,
        }
        if peak:
            fields["peak_rss_bytes"] = peak
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
    if peak:
        fields["peak_rss_bytes"] = peak
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


#: How long the command's instrumentation waits, at most, for the embedded receiver to listen
#: (it takes 0.1-0.3 s; a loaded node can take seconds).
_READY_WITHIN_S = 15.0


def _reserve_port(host: str) -> tuple[_socket.socket | None, str]:
    """A socket bound to a free port of ``host`` and not listening: the port is ours until
    the receiver binds it too (grpc sets ``SO_REUSEADDR``, as this socket does, so it may
    while nothing listens here; anyone else is refused). Else None and why (logged once the
    command runs: logging is not loaded before)."""
    # _socket, not socket: the wrapper module's enum set-up alone costs a few milliseconds,
    # before the command starts; the receiver only needs the port held.
    import _socket

    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    s = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
    except OSError as exc:
        s.close()
        return None, f"cannot reserve an OTLP port on {host} ({exc}); no spans will be received"
    return s, ""


def _endpoint(config: Config, port: int) -> str:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` of the embedded receiver (as
    :attr:`wattspan.agent.daemon.Agent.otlp_endpoint` says once it runs)."""
    host = config["otlp"]["listen"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if config["otlp"]["tls_cert_file"] else "http"
    return f"{scheme}://{host}:{port}"


def _otlp_env(env: dict[str, str], config: Config, endpoint: str) -> None:
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    o = config["otlp"]
    if o["bearer_token_file"] or o["bearer_token_env"]:
        from wattspan.agent.receiver.security import load_bearer_token

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


def _check_store_path(config: Config, store_path: str | None) -> None:
    """The store errors a path shows without opening it (the store module and SQLite load
    after the spawn): a directory, or a path under a file. Raises ``StoreError``."""
    if not config["store"]["enabled"]:
        return
    path = store_path or config["store"]["path"]
    if not path:
        return
    path = os.path.expanduser(str(path))
    cause = None
    if os.path.isdir(path):
        cause = "is a directory"
    else:
        parent = os.path.dirname(os.path.abspath(path))
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
        if parent and not os.path.isdir(parent):
            cause = f"{parent} is not a directory"
    if cause is not None:
        import errno

        from wattspan.agent.store import StoreError

        raise StoreError(path, cause, errno.EISDIR if "is a" in cause else errno.ENOTDIR)


def _uuid4() -> str:
    """A random (version 4) UUID as text, without the uuid module (it loads platform)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _new_run(run_id: str, name: str, config: Config, cmd: Sequence[str], description: str) -> Run:
    from wattspan.agent.store import Run

    return Run(
        id=run_id,
        name=name,
        host=config.host,
        start_ts=time.time(),
        kind="run",
        description=description,
        command=list(cmd),
    )


def _new_agent(
    config: Config,
    run: Run,
    *,
    interval: float,
    store_path: str | None,
    otlp_port: int,
    collectors: list[Any] | None = None,
) -> tuple[Agent, RunSummary]:
    from wattspan.agent.daemon import Agent
    from wattspan.agent.store import StoreError
    from wattspan.agent.summary import RunSummary

    def build(cfg: Config) -> Agent:
        return Agent(
            cfg,
            interval=interval,
            store_path=store_path,
            process_roots=[],
            run=run,
            serve_metrics=False,
            otlp_port=otlp_port,
            collectors=collectors,
        )

    try:
        agent = build(config)
    except StoreError as exc:
        if collectors is None:
            raise  # before the command started: nothing ran, the caller stops here
        # The command already runs: measure it all the same, and say the run is not stored.
        log.warning("%s; the command already runs: it is measured but not stored", exc)
        sections = dict(config.sections)
        sections["store"] = dict(sections["store"], enabled=False)
        agent = build(config.replace(sections=sections))
    measured = RunSummary()
    agent.pipeline.add_sink(measured)
    return agent, measured


def _start_receiver(agent: Agent) -> None:
    try:
        agent.start_receiver()
    except OSError as exc:
        log.warning("%s; the command's spans will not be received", exc)


#: The interpreter's switch interval while a command's exit may need its counters read.
_EXIT_SWITCH_S = 0.0001


class _ExitClock:
    """When the child exited, seen by a thread waiting with ``WNOWAIT`` (the child stays a
    zombie for the main thread's wait4 and its rusage): the agent may still be coming up
    when a short command ends, and its end must not wait for that.

    With ``read_counters`` (:func:`~wattspan.collectors.head.reread` of the spawn's), the
    node's energy and CPU counters are read at that instant too (:meth:`take_counters`): a command
    that ends before its agent is up would otherwise be charged the agent's start-up, up to
    the next sample (``wattspan run -- true``: 8 ms of command, 0.2 s of counters).

    ``lock`` is held around that read and by whoever takes the collectors' readings while
    the exit may come (the first sample), so an exit's reading comes wholly before theirs
    (and is taken first) or wholly after.
    """

    def __init__(self, pid: int, read_counters: Callable[[float], Head] | None = None) -> None:
        import threading  # after the spawn: this watches the command that already runs

        self.at: float | None = None
        self.lock = threading.RLock()
        self._counters: Head | None = None
        self._read = read_counters
        self._pid = pid
        threading.Thread(target=self._watch, name="wattspan-exit", daemon=True).start()

    def _watch(self) -> None:
        try:
            os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOWAIT)
        except OSError:  # ChildProcessError included: already reaped
            return
        self.at = time.time()
        with self.lock:
            if self._read is not None:
                counters = self._read(self.at)
                # Each read gave up the interpreter lock to a main thread busy building the
                # agent: stamped when they were done, the window holds all they counted.
                counters.ts = time.time()
                self._counters = counters

    def take_counters(self, last: bool = False) -> Head | None:
        """The counters read at the exit, once (None: not exited yet, or taken). After the
        ``last`` call an exit reads none: they would come too late to be used."""
        with self.lock:
            if last:
                self._read = None
            counters, self._counters = self._counters, None
            return counters


def _samples_of(collectors: Sequence[Collector], method: str, counters: Head) -> list[Sample]:
    """What each collector that has ``method`` (``seed``, ``sample_head``) makes of
    counters read elsewhere."""
    out: list[Sample] = []
    for c in collectors:
        m = getattr(c, method, None)
        if m is not None:
            out.extend(m(counters))
    return out


def _agent_beside(
    config: Config,
    run: Run,
    pid: int,
    *,
    interval: float,
    store_path: str | None,
    placeholder: _socket.socket | None,
    adopt: frozenset[int] | None,
    exit_clock: _ExitClock,
    head: Head | None = None,
) -> tuple[Agent, RunSummary, float]:
    """The agent for a command that already runs as ``pid``: collectors first, seeded with
    ``head`` (the counters read at the spawn), then the counters read at the command's exit
    if it has ended already, and their first sample at once, then the rest, then the
    receiver on the reserved port. Returns the agent, its summary sink and when the first
    sample's reads were done."""
    from wattspan.agent.scheduler import Scheduler
    from wattspan.collectors.process import ProcessCollector
    from wattspan.collectors.registry import build_collectors

    collectors = build_collectors(config.sections, process_roots=[pid])
    process = next((c for c in collectors if isinstance(c, ProcessCollector)), None)
    if process is not None and adopt is not None:
        process.adopt_orphans(pid, os.getpid(), adopt)
    # The counters read at the spawn go first: the cumulative ones count from there.
    first = _samples_of(collectors, "seed", head) if head is not None else []
    with exit_clock.lock:
        # An exit before these reads goes first (ts order); one during them waits for them.
        ended = exit_clock.take_counters()
        if ended is not None:
            first.extend(_samples_of(collectors, "sample_head", ended))
        Scheduler(collectors, interval, first.extend).tick(force=True)
        first_ts = time.time()  # the first sample's reads are done
    try:
        agent, measured = _new_agent(
            config,
            run,
            interval=interval,
            store_path=store_path,
            otlp_port=placeholder.getsockname()[1] if placeholder is not None else 0,
            collectors=collectors,
        )
        agent.pipeline.emit(first)
        if placeholder is not None:
            _start_receiver(agent)
    finally:
        if placeholder is not None:
            placeholder.close()
    return agent, measured, first_ts


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
    on_exit: Callable[[], object] | None = None,
    on_running: Callable[[], object] | None = None,
    on_spawn: Callable[[], object] | None = None,
    carbon: Intensity | None = None,
    tags: dict[str, str] | None = None,
    child_stdout: IO[Any] | None = None,
) -> RunResult:
    """Runs ``cmd`` to completion while sampling it and the node; stores and summarises.

    ``carbon`` is the intensity the summary's CO2e is computed with (default: the config's
    ``[carbon]`` section, see :mod:`wattspan.agent.carbon`); ``tags`` are stored in the
    summary (``tags``); ``child_stdout`` replaces the command's stdout (``--json`` sends it
    to stderr so that stdout carries only the summary).

    The command starts before the agent is built (the module doc says why). ``on_start``
    is called with the agent before the command starts, and returns variables for its
    environment: with it the agent comes first. ``on_running`` is called once the agent is
    up, while the command may still run (the CLI loads its table code then). ``on_spawn``
    is called as soon as the command runs (the CLI sets up logging then, not before).

    While ``cmd`` runs this process is a child subreaper (the note above
    ``_OUTLIVED_LISTED`` says why) and reaps every child of its own that ends, not
    only ``cmd``: a program calling this in-process must not spawn children of its own
    meanwhile, or their exit status is lost to it (the CLI spawns none). Descendants still
    running when ``cmd`` ends stay children of this process until it exits.

    ``on_exit`` is called once ``cmd`` ended, while the agent still samples and receives
    (the Spark engine's tailer sends the command's last spans then).
    """
    run_id = _uuid4()
    run_name = name or os.path.basename(cmd[0])
    env = dict(os.environ)
    env["WATTSPAN_RUN_ID"] = run_id
    agent: Agent | None = None
    measured: RunSummary | None = None
    run: Run | None = None
    placeholder: _socket.socket | None = None
    endpoint: str | None = None
    deferred: list[str] = []  # warnings found before the spawn, logged after it
    if on_start is not None:
        run = _new_run(run_id, run_name, config, cmd, description)
        agent, measured = _new_agent(
            config, run, interval=interval, store_path=store_path, otlp_port=0
        )
        _start_receiver(agent)
        endpoint = agent.otlp_endpoint
    else:
        _check_store_path(config, store_path)
        if config["otlp"]["enabled"]:
            placeholder, why = _reserve_port(config["otlp"]["listen"])
            if why:
                deferred.append(why)
            if placeholder is not None:
                endpoint = _endpoint(config, placeholder.getsockname()[1])
                env["WATTSPAN_OTLP_READY_BY"] = f"{time.time() + _READY_WITHIN_S:.3f}"
    if endpoint:
        _otlp_env(env, config, endpoint)
    if on_start is not None and agent is not None:
        env.update(on_start(agent))
    if env_extra:
        env.update(env_extra)

    if agent is not None:
        agent.scheduler.tick(force=True)  # baseline: counters at the start of the run
    was_subreaper = is_subreaper()
    subreaper = was_subreaper or set_subreaper(True)
    orphans = _Reaped() if subreaper else None
    theirs = _child_pids() if subreaper else frozenset()
    # Handlers go in before the child exists: a signal sent once the child is up (it may
    # already have said it is ready) must be forwarded, not kill us with the default action.
    # One that comes before the child exists is held and sent to it once it does.
    child: list[_Child] = []
    held: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not child:
            held.append(signum)
            return
        if signum in _FROM_TTY and _child_in_our_foreground_group():
            return
        child[0].send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    outlived: list[_Outlived] = []
    first_ts: float | None = None
    head: Head | None = None
    if agent is None:
        # The energy and CPU counters at the spawn (collectors/head.py says why; < 0.5 ms).
        from wattspan.collectors import head as _head

        rapl = config["collectors.rapl"]
        head = _head.read(rapl["root"] if rapl["enabled"] else None, time.time())
    switch = sys.getswitchinterval()
    start = time.time()
    try:
        try:
            proc = _Child(cmd, env, child_stdout)
            if head is not None:
                head.spawned()
        except (FileNotFoundError, PermissionError) as exc:
            failed = time.time()
            not_found = isinstance(exc, FileNotFoundError)
            why = "command not found" if not_found else "Permission denied"
            print(f"wattspan: {cmd[0]}: {why}", file=sys.stderr)
            if on_spawn is not None:
                on_spawn()
            if agent is None:
                if placeholder is not None:
                    placeholder.close()
                run = _new_run(run_id, run_name, config, cmd, description)
                agent, measured = _new_agent(
                    config, run, interval=interval, store_path=store_path, otlp_port=0
                )
                agent.scheduler.tick(force=True)
            assert run is not None and measured is not None
            code = 127 if not_found else 126
            return _finish(agent, measured, run, start, code, failed, carbon=carbon, tags=tags)
        child.append(proc)
        for signum in held:
            proc.send_signal(signum)
        if on_spawn is not None:
            on_spawn()
        for why in deferred:
            log.warning("%s", why)
        if not subreaper:
            log.info("not a child subreaper: CPU of orphaned descendants will not be counted")
        exit_clock = _ExitClock(
            proc.pid, (lambda now: _head.reread(head, now)) if head is not None else None
        )
        # The exit's reads are system calls, each handing over the interpreter lock and
        # waiting a switch interval (5 ms) to get it back from a main thread busy building
        # the agent: 14-22 ms of reads (with five RAPL zones), counting that much of the
        # agent's start. Until the last take the wait is 0.1 ms (no other thread wants the
        # lock meanwhile).
        sys.setswitchinterval(_EXIT_SWITCH_S)

        if agent is None:
            run = _new_run(run_id, run_name, config, cmd, description)
            try:
                agent, measured, first_ts = _agent_beside(
                    config,
                    run,
                    proc.pid,
                    interval=interval,
                    store_path=store_path,
                    placeholder=placeholder,
                    adopt=theirs if subreaper else None,
                    head=head,
                    exit_clock=exit_clock,
                )
            except BaseException:
                # The command runs and must not be left behind: wait for it, then fail.
                _wait(proc.pid, orphans, theirs)
                proc.returncode = 0
                raise
        elif agent.process_collector is not None:
            agent.process_collector.add_root(proc.pid)
            if subreaper:
                agent.process_collector.adopt_orphans(proc.pid, os.getpid(), theirs)
        ended = exit_clock.take_counters(last=True)
        sys.setswitchinterval(switch)
        if ended is not None:
            # Ended while its agent was being built, after the first sample (the lock saw to
            # that: read before it, fed after it, a counter would go backwards and RAPL
            # would take it for a wrap): its exit's counters come before the scheduler's
            # first tick (agent.start), as the end of the run's window.
            agent.pipeline.emit(_samples_of(agent.scheduler.collectors, "sample_head", ended))
        agent.start()
        # Loaded now, while the command runs, rather than by the summary at its end.
        import wattspan.agent.attribution
        import wattspan.agent.idle  # noqa: F401
        from wattspan.agent.daemon import tune_gc

        tune_gc()
        if on_running is not None:
            on_running()
        status, ru = _wait(proc.pid, orphans, theirs)
        proc.returncode = status  # reaped: no signal may go to the pid now
        end = time.time() if exit_clock.at is None else min(exit_clock.at, time.time())
        if orphans is not None:
            _reap_orphans(orphans, theirs)
            _reap_dying(orphans, theirs)
            outlived = _outlived(theirs)
        if on_exit is not None:
            on_exit()
    finally:
        sys.setswitchinterval(switch)
        for s, h in previous.items():
            signal.signal(s, h)
        if subreaper and not was_subreaper:
            set_subreaper(False)
    assert run is not None and measured is not None
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    agent.scheduler.stop()
    agent.pipeline.emit(_usage_samples(ru, orphans, outlived, end, head))
    if first_ts is not None:
        # How long after the spawn the energy counters started (the module doc says why);
        # the stored samples say it too (the first one's ts against the run's start).
        log.debug(
            "first sample read %.3f s after the command started; energy counted from %.4f s before",
            first_ts - start,
            start - head.ts if head is not None else 0.0,
        )
    return _finish(agent, measured, run, start, code, end, carbon=carbon, tags=tags)


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
    carbon: Intensity | None = None,
    tags: dict[str, str] | None = None,
) -> RunResult:
    import sqlite3

    from wattspan.agent.carbon import annotate, from_config

    end = time.time() if end is None else end
    agent.scheduler.tick(force=True)  # final counters, so energy covers the whole run
    agent.stop()
    # The table comes from what this process measured (wait4, samples folded in as they
    # were taken), never from reading the store back: a store that failed mid-run would
    # otherwise shrink the figures without a word.
    # The idle figure the run's spans were charged, else the best one for the samples held:
    # the run's own process share needs one even when no span came.
    idle = agent.ingest.idle_of(run.id) or agent.ingest.estimate_idle()
    summary = measured.result(
        start, end, idle.watts if idle else None, idle.method if idle else None
    )
    annotate(summary, carbon or from_config(agent.config["carbon"]))
    if tags:
        summary["tags"] = dict(tags)
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
