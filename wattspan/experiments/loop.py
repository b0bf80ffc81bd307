"""Running an experiment's plan: quiet check, repetitions, failures, interruption, resume.

Interruption: SIGINT or SIGTERM stops the experiment after the repetition in progress,
which is recorded as ``interrupted`` (not final) and runs again on resume; its child got the
signal too (``wattspan run`` forwards it, a terminal sends it to the whole group). While a
``command`` repetition runs, :func:`run_command`'s own handlers are in place, so the signal
is seen through :func:`signal.set_wakeup_fd`, which gets every signal's number whatever
Python handler takes it.

Resume: the plan is a function of the config and its seed, so a resumed experiment rebuilds
the same plan and skips every repetition with a final row (:meth:`ExperimentStore.done`).
The config must be unchanged (its hash) and the machine the same (the environment's
fingerprint, unless ``allow_mixed_env``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from wattspan.agent.config import load_config as load_agent_config
from wattspan.agent.errors import ConfigError
from wattspan.agent.store import Store, default_store_path
from wattspan.experiments import env as envmod
from wattspan.experiments import quiet as quietmod
from wattspan.experiments.config import Configuration, ExperimentConfig, render_cwd
from wattspan.experiments.kinds import CommandExecutor, Context, Executor, PythonExecutor
from wattspan.experiments.measure import Outcome, Output
from wattspan.experiments.plan import Item, make_plan
from wattspan.experiments.store import (
    ABORTED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    Experiment,
    ExperimentStore,
    Repetition,
)

log = logging.getLogger("wattspan.experiment")

EXIT_INTERRUPTED = 130
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ExperimentError(Exception):
    """The experiment cannot start (or resume); ``exit_code`` says how the CLI exits."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class LoopResult:
    experiment: Experiment
    status: str
    exit_code: int
    ran: int  # repetitions run now (attempts, warm-ups included)
    skipped: int  # already done before a resume
    failed: int
    elapsed: float  # seconds of the loop
    measured_wall: float  # sum of the repetitions' own wall time
    resumed: bool = False
    quiet: quietmod.QuietResult | None = None


def executor_for(kind: str, ctx: Context) -> Executor:
    if kind == "command":
        return CommandExecutor(ctx)
    if kind == "python":
        return PythonExecutor(ctx)
    if kind == "spark-sql":
        from wattspan.experiments.spark_sql import SparkSqlExecutor

        return SparkSqlExecutor(ctx)
    if kind == "stream":
        from wattspan.experiments.stream_kind import StreamExecutor

        return StreamExecutor(ctx)
    raise ExperimentError(f"kind {kind!r} is not available")


class _Stop:
    """SIGINT/SIGTERM: remember, cancel in-process work, and let the loop end cleanly."""

    def __init__(self, callbacks: list[Callable[[], None]]) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._callbacks = callbacks
        self._previous: dict[int, Any] = {}
        self._wake_r: int | None = None
        self._old_wakeup = -1

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.event.set()
        for cb in self._callbacks:
            with contextlib.suppress(Exception):
                cb()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in _STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handler)
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r, self._wake_w = r, w
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def poll(self) -> bool:
        """True once a stop signal came, also one that another handler took meanwhile."""
        if self._wake_r is not None:
            try:
                data = os.read(self._wake_r, 4096)
            except (BlockingIOError, OSError):
                data = b""
            for b in data:
                if b in _STOP_SIGNALS:
                    self.signum = b
                    self.event.set()
        return self.event.is_set()

    def uninstall(self) -> None:
        if self._wake_r is None:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = None
        for s, h in self._previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _progress(enabled: bool, console: TextIO, total: int, done: int) -> Iterator[Any]:
    if not enabled or not console.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=console),
        transient=False,
    ) as p:
        task = p.add_task("starting", total=total, completed=done)
        yield (p, task)


def _find_resumable(estore: ExperimentStore, cfg: ExperimentConfig) -> Experiment | None:
    for e in estore.experiments(name=cfg.name):
        if e.status != FINISHED and e.config_hash == cfg.config_hash:
            return e
    return None


def run_experiment(
    cfg: ExperimentConfig,
    *,
    store_path: str | os.PathLike[str] | None = None,
    config_path: str = "",
    resume: str | bool | None = None,
    quiet_check: str | None = None,
    allow_mixed_env: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
) -> LoopResult:
    """Runs (or resumes) the experiment ``cfg``; raises :class:`ExperimentError` when it
    cannot start. ``notify`` gets one-line warnings (default: the log)."""
    say = notify or log.warning
    try:
        agent_config = load_agent_config(cfg.agent_config)
    except ConfigError as exc:
        raise ExperimentError(f"agent config: {exc}") from None
    path = Path(store_path) if store_path else default_store_path()
    path = path.expanduser().resolve()
    estore = ExperimentStore(path)
    store = Store(path)
    try:
        return _run(
            cfg,
            agent_config,
            estore,
            store,
            path,
            config_path,
            resume,
            quiet_check,
            allow_mixed_env,
            progress,
            say,
        )
    finally:
        estore.close()
        store.close()


def _run(
    cfg: ExperimentConfig,
    agent_config: Any,
    estore: ExperimentStore,
    store: Store,
    path: Path,
    config_path: str,
    resume: str | bool | None,
    quiet_check: str | None,
    allow_mixed_env: bool,
    progress: bool,
    say: Callable[[str], None],
) -> LoopResult:
    # The git commit is that of each run's working directory (of its first configuration:
    # a cwd may hold placeholders).
    cwds = [
        Path(render_cwd(cfg.runs[c.run], c.params, cfg.base_dir) or cfg.base_dir)
        for c in cfg.configurations
    ]
    env = envmod.capture(agent_config.sections, agent_config.host, cwds, cfg.packages)
    fp = envmod.fingerprint(env)
    plan = make_plan(len(cfg.configurations), cfg.warmups, cfg.repetitions, cfg.order, cfg.seed)

    exp: Experiment | None = None
    if resume:
        if isinstance(resume, str):
            try:
                exp = estore.resolve(resume)
            except KeyError as exc:
                raise ExperimentError(str(exc.args[0])) from None
        else:
            exp = _find_resumable(estore, cfg)
            if exp is None:
                raise ExperimentError(
                    f"--resume: no unfinished experiment {cfg.name!r} with this config"
                )
        if exp.config_hash != cfg.config_hash:
            raise ExperimentError(
                f"cannot resume {exp.id[:8]}: its config differs from {config_path or 'this one'}"
                " (start a new experiment, or restore the config it ran with)"
            )
        if exp.status == FINISHED:
            say(f"experiment {exp.id[:8]} is already finished: nothing to resume")
        diffs = envmod.machine_differences(exp.env, env)
        if diffs and not allow_mixed_env:
            raise ExperimentError(
                f"cannot resume {exp.id[:8]} on a different machine ({'; '.join(diffs)}); "
                "--allow-mixed-env to mix the results anyway"
            )
        if diffs:
            say(f"mixing results of different machines: {'; '.join(diffs)}")
    else:
        prior = estore.experiments(limit=1, name=cfg.name)
        if prior:
            diffs = envmod.machine_differences(prior[0].env, env)
            if diffs:
                say(
                    f"the previous experiment {cfg.name!r} ({prior[0].id[:8]}) ran on a "
                    f"different machine ({'; '.join(diffs)}): do not compare them directly"
                )
            if prior[0].status != FINISHED and prior[0].config_hash == cfg.config_hash:
                say(f"experiment {prior[0].id[:8]} was not finished: --resume continues it")

    mode = quiet_check or cfg.quiet.check
    quiet: quietmod.QuietResult | None = None
    if mode != "off":
        quiet = quietmod.check(cfg.quiet)
        if not quiet.quiet:
            if mode == "refuse":
                raise ExperimentError(f"the node is not quiet: {quiet.message()}", exit_code=1)
            say(f"the node is not quiet: {quiet.message()}")

    if exp is None:
        exp = Experiment(
            id=str(uuid.uuid4()),
            name=cfg.name,
            description=cfg.description,
            config_path=config_path,
            config=cfg.raw,
            config_hash=cfg.config_hash,
            seed=cfg.seed,
            host=agent_config.host,
            env=env,
            env_fingerprint=fp,
            planned=len(plan),
            start_ts=time.time(),
            end_ts=None,
            status=RUNNING,
        )
        estore.create(exp)
        resumed = False
    else:
        estore.set_status(exp.id, RUNNING)
        resumed = True

    done = estore.done(exp.id)
    attempts = estore.attempts(exp.id)
    confs = cfg.configurations
    todo = [i for i in plan if (confs[i.config].key, i.phase, i.repetition) not in done]
    output = Output(cfg.output)
    ctx = Context(cfg, agent_config, str(path), store, exp.id, output)

    def record(
        conf: Configuration,
        item_phase: str,
        rep: int,
        seq: int,
        attempt: int,
        out: Outcome,
        final: bool,
    ) -> None:
        estore.add_repetition(
            Repetition(
                experiment_id=exp.id,
                config_key=conf.key,
                params=dict(conf.params),
                run_name=cfg.runs[conf.run].name,
                phase=item_phase,
                repetition=rep,
                attempt=attempt,
                seq=seq,
                status=out.status,
                final=final,
                run_id=out.run_id,
                start_ts=out.start_ts,
                end_ts=out.end_ts,
                exit_code=out.exit_code,
                figures=out.figures,
                spans=out.spans,
                error=out.error,
            )
        )

    ctx.record_extra = lambda conf, ph, rep, out: record(conf, ph, rep, -1, 1, out, False)
    stop = _Stop(ctx.on_interrupt)
    executors: dict[str, Executor] = {}
    status = FINISHED
    ran = failed = 0
    wall = 0.0
    t_start = time.monotonic()
    stop.install()
    try:
        with _progress(progress, output.console, len(plan), len(plan) - len(todo)) as bar:
            for n, item in enumerate(todo):
                if stop.poll():
                    status = INTERRUPTED
                    break
                conf = confs[item.config]
                spec = cfg.runs[conf.run]
                if bar is not None:
                    p, task = bar
                    what = "warm-up" if item.warmup else f"rep {item.repetition + 1}"
                    p.update(task, description=f"{conf.label} {what}")
                ex = executors.get(spec.kind)
                if ex is None:
                    ex = executors[spec.kind] = executor_for(spec.kind, ctx)
                outcome, n_attempts, aborted = _attempts(
                    ex, conf, item, cfg, attempts, stop, record
                )
                ran += n_attempts
                wall += outcome.figures.get("wall_seconds") or (outcome.end_ts - outcome.start_ts)
                if outcome.status == "interrupted":
                    status = INTERRUPTED
                    break
                if outcome.status != "ok":
                    failed += 1
                    say(
                        f"{conf.label} {item.phase} {item.repetition}: {outcome.status}: "
                        f"{outcome.error.splitlines()[0] if outcome.error else ''}"
                    )
                if bar is not None:
                    bar[0].advance(bar[1])
                if aborted:
                    status = ABORTED
                    break
                if cfg.cooldown > 0 and n + 1 < len(todo) and stop.event.wait(cfg.cooldown):
                    status = INTERRUPTED
                    break
    finally:
        stop.uninstall()
        for ex in executors.values():
            with contextlib.suppress(Exception):
                ex.close()
        output.close()
        estore.set_status(exp.id, status)
    elapsed = time.monotonic() - t_start
    code = {FINISHED: 0, INTERRUPTED: EXIT_INTERRUPTED, ABORTED: 1}[status]
    if status == FINISHED and failed:
        code = 1
    final = estore.resolve(exp.id)
    return LoopResult(
        final, status, code, ran, len(plan) - len(todo), failed, elapsed, wall, resumed, quiet
    )


def _attempts(
    ex: Executor,
    conf: Configuration,
    item: Item,
    cfg: ExperimentConfig,
    attempts: dict[tuple[str, str, int], int],
    stop: _Stop,
    record: Callable[..., None],
) -> tuple[Outcome, int, bool]:
    """Runs one repetition of the plan with the failure policy; (last outcome, attempts
    made, whether the experiment must abort)."""
    key = (conf.key, item.phase, item.repetition)
    n = 0
    while True:
        attempt = attempts.get(key, 0) + 1
        attempts[key] = attempt
        try:
            out = ex.run(conf, item.phase, item.repetition)
        except Exception as exc:  # a kind that fails outright fails this repetition
            log.debug("repetition failed", exc_info=True)
            now = time.time()
            out = Outcome("failed", None, now, now, error=f"{type(exc).__name__}: {exc}")
        n += 1
        if stop.poll():
            out.status = "interrupted"
            record(conf, item.phase, item.repetition, item.seq, attempt, out, False)
            return out, n, False
        if out.status == "ok":
            record(conf, item.phase, item.repetition, item.seq, attempt, out, True)
            return out, n, False
        retry = cfg.on_failure == "retry" and attempt <= cfg.retries
        if retry:
            record(conf, item.phase, item.repetition, item.seq, attempt, out, False)
            continue
        record(conf, item.phase, item.repetition, item.seq, attempt, out, True)
        return out, n, cfg.on_failure == "abort"
