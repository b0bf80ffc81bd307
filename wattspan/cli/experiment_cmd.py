"""``wattspan experiment run|list|show|export|model|report``.

Parsing is here (``add_parser``); everything heavier (the harness, numpy, rich, plotly) is
imported when a command runs. Exit codes: 0 success; 1 a repetition failed, the experiment
aborted, the node was not quiet (with ``refuse``), or nothing matched; 2 a bad config or
usage; 130 interrupted (resume with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STORE_HELP = "SQLite store (default: $WATTSPAN_STORE or $XDG_DATA_HOME/wattspan/wattspan.db)"
REF_HELP = "experiment id, id prefix, name, or 'latest'"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser(
        "experiment",
        parents=[common],
        help="run experiments from a config file: warm-ups, repetitions, grids, statistics",
        description="Experiments from one TOML file (docs/experiments.md): a grid of "
        "configurations, each repeated under wattspan's measuring, with statistics, export, "
        "a performance model and an HTML report.",
    )
    es = e.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND")
    e.set_defaults(handler=lambda args: _usage(e))

    r = es.add_parser("run", parents=[common], help="run (or resume) an experiment")
    r.add_argument("config", metavar="CONFIG.toml")
    r.add_argument("--store", metavar="PATH", help=STORE_HELP)
    r.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="ID",
        help="continue an interrupted experiment (default: the newest unfinished one with "
        "this config); finished repetitions are not run again",
    )
    r.add_argument(
        "--quiet-check",
        choices=["warn", "refuse", "off"],
        help="check that the node is quiet first (default: the config's quiet.check, warn)",
    )
    r.add_argument(
        "--allow-mixed-env",
        action="store_true",
        help="resume even if the machine differs from the one the experiment started on",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    r.set_defaults(handler=_lazy("cmd_run"))

    ls = es.add_parser("list", parents=[common], help="list stored experiments")
    ls.add_argument("--store", metavar="PATH", help=STORE_HELP)
    ls.add_argument("-n", "--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_lazy("cmd_list"))

    sh = es.add_parser("show", parents=[common], help="statistics per configuration")
    sh.add_argument("experiment", metavar="EXPERIMENT", help=REF_HELP)
    sh.add_argument("--store", metavar="PATH", help=STORE_HELP)
    sh.add_argument(
        "--metric", default="wall_seconds", help="figure compared with the baseline (wall_seconds)"
    )
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(handler=_lazy("cmd_show"))

    ex = es.add_parser("export", parents=[common], help="one row per repetition")
    ex.add_argument("experiment", metavar="EXPERIMENT", help=REF_HELP)
    ex.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    ex.add_argument(
        "--format",
        choices=["csv", "parquet", "jsonl", "md"],
        help="default: from the -o suffix (.csv .parquet .jsonl .md), else CSV",
    )
    ex.add_argument("--all-attempts", action="store_true", help="retried/interrupted ones too")
    ex.add_argument("--no-warmups", action="store_true", help="measured repetitions only")
    ex.add_argument("--store", metavar="PATH", help=STORE_HELP)
    ex.set_defaults(handler=_lazy("cmd_export"))

    m = es.add_parser("model", parents=[common], help="fit a performance model")
    m.add_argument("experiment", metavar="EXPERIMENT", help=REF_HELP)
    m.add_argument(
        "--target",
        default="wall_seconds",
        help="figure to model: wall_seconds (time), cpu_seconds, energy_joules (energy), "
        "process_energy_joules, peak_rss_bytes (memory), ...",
    )
    m.add_argument("--method", choices=["auto", "linear", "gbr"], default="auto")
    m.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    m.add_argument(
        "--predict",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="predict for these parameters (repeatable)",
    )
    m.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="K=V",
        help="leave out configurations with this value when fitting (repeatable)",
    )
    m.add_argument("--json", action="store_true")
    m.add_argument("--store", metavar="PATH", help=STORE_HELP)
    m.set_defaults(handler=_lazy("cmd_model"))

    rp = es.add_parser("report", parents=[common], help="write an HTML report")
    rp.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help=REF_HELP)
    rp.add_argument("-o", "--output", required=True, metavar="FILE", help="HTML file to write")
    rp.add_argument("--title")
    rp.add_argument("--store", metavar="PATH", help=STORE_HELP)
    rp.set_defaults(handler=_lazy("cmd_report"))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _lazy(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        return int(globals()[name](args))

    return run


def _err(msg: str) -> None:
    print(f"wattspan: {msg}", file=sys.stderr)


def _store_path(arg: str | None) -> Path:
    from wattspan.agent.store import default_store_path

    return Path(arg).expanduser() if arg else default_store_path()


def _open(arg: str | None) -> Any:
    """The experiment tables of an existing store; None (after saying so) when there is none."""
    from wattspan.agent.store import StoreError
    from wattspan.experiments.store import ExperimentStore

    p = _store_path(arg)
    if not p.exists():
        _err(f"no store at {p} (run an experiment with `wattspan experiment run` first)")
        return None
    try:
        return ExperimentStore(p)
    except StoreError as exc:
        _err(str(exc))
        raise SystemExit(2) from None


def _resolve(es: Any, ref: str) -> Any:
    try:
        return es.resolve(ref)
    except KeyError as exc:
        _err(str(exc.args[0]))
        return None


def _print(table: Any) -> None:
    from rich.console import Console

    Console(soft_wrap=False).print(table)


def cmd_run(args: argparse.Namespace) -> int:
    from wattspan.agent.store import StoreError
    from wattspan.experiments.config import ExperimentConfigError, load_config
    from wattspan.experiments.loop import ExperimentError, run_experiment

    try:
        cfg = load_config(args.config)
    except ExperimentConfigError as exc:
        _err(f"experiment config error: {args.config}: {exc}")
        return 2
    try:
        res = run_experiment(
            cfg,
            store_path=args.store,
            config_path=str(Path(args.config).resolve()),
            resume=args.resume,
            quiet_check=args.quiet_check,
            allow_mixed_env=args.allow_mixed_env,
            progress=not args.no_progress and not args.json,
            notify=lambda m: _err(m),
        )
    except ExperimentError as exc:
        _err(str(exc))
        return exc.exit_code
    except StoreError as exc:
        _err(str(exc))
        return 2
    from wattspan.experiments.results import results, to_dict
    from wattspan.experiments.store import ExperimentStore

    es = ExperimentStore(_store_path(args.store).resolve())
    try:
        reps = es.repetitions(res.experiment.id)
    finally:
        es.close()
    rows = results(res.experiment, reps)
    per_rep = (res.elapsed - res.measured_wall) / res.ran if res.ran else 0.0
    if args.json:
        out = {
            "experiment_id": res.experiment.id,
            "name": res.experiment.name,
            "status": res.status,
            "ran": res.ran,
            "skipped": res.skipped,
            "failed": res.failed,
            "harness_seconds_per_repetition": per_rep,
            "configurations": [to_dict(c) for c in rows],
        }
        sys.stdout.write(json.dumps(out, sort_keys=True, default=str, allow_nan=True) + "\n")
    else:
        from wattspan.cli.experiment_tables import results_table

        _print(results_table(res.experiment, rows))
        note = f" ({res.skipped} done before)" if res.resumed else ""
        print(
            f"experiment {res.experiment.id[:8]} {res.status}: {res.ran} repetitions run"
            f"{note}, {res.failed} failed, harness {per_rep * 1000:.0f} ms per repetition",
            file=sys.stderr,
        )
        if res.status == "interrupted":
            print(
                f"resume with: wattspan experiment run {args.config} --resume "
                f"{res.experiment.id[:8]}",
                file=sys.stderr,
            )
    return res.exit_code


def cmd_list(args: argparse.Namespace) -> int:
    es = _open(args.store)
    if es is None:
        return 1
    try:
        exps = es.experiments(limit=args.limit)
        counts = {e.id: len(es.done(e.id)) for e in exps}
    finally:
        es.close()
    if args.json:
        for e in exps:
            row = {
                k: getattr(e, k)
                for k in ("id", "name", "status", "start_ts", "end_ts", "planned", "host")
            }
            row["done"] = counts[e.id]
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        return 0
    from wattspan.cli.experiment_tables import experiments_table

    _print(experiments_table(exps, counts))
    return 0


def _load(args: argparse.Namespace, ref: str) -> tuple[Any, list[Any]] | int:
    es = _open(args.store)
    if es is None:
        return 1
    try:
        exp = _resolve(es, ref)
        if exp is None:
            return 1
        return exp, es.repetitions(exp.id)
    finally:
        es.close()


def cmd_show(args: argparse.Namespace) -> int:
    from wattspan.experiments.results import results, to_dict

    got = _load(args, args.experiment)
    if isinstance(got, int):
        return got
    exp, reps = got
    rows = results(exp, reps)
    if args.json:
        out = {
            "experiment_id": exp.id,
            "name": exp.name,
            "status": exp.status,
            "env": exp.env,
            "configurations": [to_dict(c) for c in rows],
        }
        sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")
        return 0
    from wattspan.cli.experiment_tables import results_table

    _print(results_table(exp, rows, args.metric))
    for c in rows:
        s = c.stats.get(args.metric)
        if s is not None and s.hint:
            _err(f"{c.label}: {s.hint}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from wattspan.experiments import export

    got = _load(args, args.experiment)
    if isinstance(got, int):
        return got
    exp, reps = got
    data = export.rows(exp, reps, all_attempts=args.all_attempts, warmups=not args.no_warmups)
    fmt = export.format_for(args.output, args.format)
    try:
        text = export.write(data, fmt, args.output)
    except (ValueError, RuntimeError, OSError) as exc:
        _err(f"export: {exc}")
        return 2 if isinstance(exc, ValueError) else 1
    if text is not None:
        sys.stdout.write(text)
    else:
        _err(f"wrote {len(data)} rows to {args.output}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from wattspan.experiments import model as mod
    from wattspan.experiments.store import measured

    got = _load(args, args.experiment)
    if isinstance(got, int):
        return got
    exp, reps = got
    target = mod.ALIASES.get(args.target, args.target)
    try:
        exclude = mod.parse_assignments(args.exclude)
        predict = [mod.parse_assignments([p]) for p in args.predict]
        rows = [
            r for r in measured(reps) if not any(r.params.get(k) == v for k, v in exclude.items())
        ]
        params = list(rows[0].params) if rows else []
        fitted = mod.fit(
            [(r.params, r.figures.get(target)) for r in rows],
            target,
            params,
            method=args.method,
            folds=args.folds,
            seed=exp.seed,
        )
        preds = [(p, fitted.predict(p)) for p in predict]
    except mod.ModelError as exc:
        _err(f"model: {exc}")
        return 2
    if args.json:
        out = fitted.to_dict()
        out["predictions"] = [{"params": p, "value": y} for p, y in preds]
        sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")
        return 0
    from wattspan.cli.experiment_tables import model_table

    _print(model_table(fitted.to_dict(), preds))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from wattspan.experiments.report import write

    es = _open(args.store)
    if es is None:
        return 1
    try:
        data = []
        for ref in args.experiments:
            exp = _resolve(es, ref)
            if exp is None:
                return 1
            data.append((exp, es.repetitions(exp.id)))
    finally:
        es.close()
    try:
        out = write(data, args.output, args.title)
    except OSError as exc:
        _err(f"cannot write {args.output}: {exc.strerror or exc}")
        return 1
    print(out)
    return 0
