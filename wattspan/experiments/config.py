"""An experiment's TOML file, validated into plain dataclasses.

Every error is an :class:`ExperimentConfigError` naming the key it is about
(``run[0].argv[3]``, ``matrix.rows``), so the CLI can print one line and exit 2. The keys and
their defaults are documented in ``docs/experiments.md``; :data:`KINDS` lists the run kinds.

Placeholders (``{rows}``) may appear in argv, shell, SQL, kwargs, env, cwd and the stream
kind's values (:mod:`wattspan.experiments.stream_config`); each must name
a parameter of the matrix (or ``run`` when there are several ``[[run]]`` tables). ``{{`` and
``}}`` are literal braces. A kwargs value that is exactly one placeholder takes the
parameter's own type (``"{rows}"`` becomes the integer 1000000), anything else is a string.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattspan.experiments import stream_config

KINDS = ("command", "python", "spark-sql", "stream")
ORDERS = ("sequential", "interleaved", "random")
FAILURE_POLICIES = ("abort", "continue", "retry")
QUIET_CHECKS = ("warn", "refuse", "off")
SPARK_ACTIONS = ("noop", "collect", "count")
TABLE_FORMATS = ("parquet", "csv", "json", "jdbc")

Scalar = int | float | str | bool


class ExperimentConfigError(ValueError):
    """An invalid experiment config; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# -- small checkers -------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(v), "a table" if isinstance(v, dict) else "an array" if isinstance(v, list) else "?"
    )


def _unknown(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for k in table:
        if k not in known:
            raise ExperimentConfigError(
                f"{where}.{k}" if where else k, f"unknown key (known: {', '.join(known)})"
            )


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise ExperimentConfigError(key, f"expected a string, got {_type_name(v)}")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ExperimentConfigError(key, f"expected true or false, got {_type_name(v)}")
    return v


def _int(v: Any, key: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ExperimentConfigError(key, f"expected an integer, got {_type_name(v)}")
    if v < minimum:
        raise ExperimentConfigError(key, f"must be at least {minimum}, got {v}")
    return v


def _num(v: Any, key: str, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ExperimentConfigError(key, f"expected a number, got {_type_name(v)}")
    if v < minimum or (strict and v == minimum):
        raise ExperimentConfigError(key, f"must be {'>' if strict else '>='} {minimum}, got {v}")
    return float(v)


def _choice(v: Any, key: str, choices: Sequence[str]) -> str:
    s = _str(v, key)
    if s not in choices:
        raise ExperimentConfigError(key, f"{s!r} is not one of {', '.join(choices)}")
    return s


def _table(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ExperimentConfigError(key, f"expected a table, got {_type_name(v)}")
    return v


def _str_list(v: Any, key: str) -> list[str]:
    if not isinstance(v, list):
        raise ExperimentConfigError(key, f"expected an array of strings, got {_type_name(v)}")
    return [_str(x, f"{key}[{i}]") for i, x in enumerate(v)]


def _scalar(v: Any, key: str) -> Scalar:
    if isinstance(v, float) and not math.isfinite(v):
        raise ExperimentConfigError(key, "expected a finite number")
    if not isinstance(v, int | float | str | bool):
        raise ExperimentConfigError(
            key, f"a parameter value must be a string, number or boolean, got {_type_name(v)}"
        )
    return v


# -- placeholders ---------------------------------------------------------------------------

_FORMATTER = string.Formatter()


def placeholders(text: str, key: str) -> list[str]:
    """The parameter names ``text`` refers to; bad syntax is an error naming ``key``."""
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ExperimentConfigError(
            key, f"bad placeholder syntax ({exc}); write {{{{ for {{"
        ) from None
    names = []
    for _, name, _spec, _conv in parts:
        if name is None:
            continue
        if not name.isidentifier():
            raise ExperimentConfigError(
                key, f"placeholder {{{name}}} must be a parameter name (write {{{{ for {{)"
            )
        names.append(name)
    return names


def render(text: str, params: Mapping[str, Any]) -> str:
    """``text`` with its placeholders filled from ``params`` (checked at load time)."""
    return _FORMATTER.vformat(text, (), dict(params))


def render_value(v: Any, params: Mapping[str, Any]) -> Any:
    """A kwargs value filled in: a lone ``"{p}"`` keeps ``p``'s type; tables and arrays are
    filled recursively."""
    if isinstance(v, str):
        parts = list(_FORMATTER.parse(v))
        lone = len(parts) == 1 and parts[0][0] == "" and parts[0][1]
        if lone and not parts[0][2] and not parts[0][3]:
            return params[parts[0][1]]  # type: ignore[index]
        return render(v, params)
    if isinstance(v, list):
        return [render_value(x, params) for x in v]
    if isinstance(v, dict):
        return {k: render_value(x, params) for k, x in v.items()}
    return v


def _check_refs(v: Any, key: str, names: set[str]) -> None:
    """Every placeholder in ``v`` (strings, nested in arrays and tables) names a parameter."""
    if isinstance(v, str):
        for name in placeholders(v, key):
            if name not in names:
                known = ", ".join(sorted(names)) or "none: the config has no [matrix]"
                raise ExperimentConfigError(
                    key, f"placeholder {{{name}}} names no parameter (parameters: {known})"
                )
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_refs(x, f"{key}[{i}]", names)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_refs(x, f"{key}.{k}", names)


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableSource:
    """A table registered in the Spark session before any snippet runs."""

    name: str
    format: str
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snippet:
    name: str
    sql: str


@dataclass(slots=True)
class RunSpec:
    """One ``[[run]]`` table: what a repetition executes (placeholders still in)."""

    index: int
    kind: str
    name: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    # command
    argv: list[str] = field(default_factory=list)
    # python
    function: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    fresh_process: bool = True
    python: str = ""
    span: bool = False
    # spark-sql
    snippets: list[Snippet] = field(default_factory=list)
    tables: list[TableSource] = field(default_factory=list)
    master: str = "local[2]"
    conf: dict[str, str] = field(default_factory=dict)
    session_warmups: int = 1
    action: str = "noop"
    # stream: the [[run]] table's stream keys as written (placeholders in); checked per
    # configuration into ``stream_args`` (by Configuration.key)
    stream: dict[str, Any] = field(default_factory=dict)
    stream_args: dict[str, stream_config.StreamArgs] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Configuration:
    """One point of the grid: a run spec and the parameter values it is rendered with."""

    index: int
    run: int  # index into ExperimentConfig.runs
    params: dict[str, Scalar]

    @property
    def key(self) -> str:
        """Stable identity across resumes: the parameters as canonical JSON."""
        return config_key(self.params)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items()) or "(no parameters)"


def config_key(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


@dataclass(slots=True)
class QuietCheck:
    check: str = "warn"
    seconds: float = 1.0
    max_load_per_cpu: float = 0.5
    max_other_cpu: float = 0.2


@dataclass(slots=True)
class ExperimentConfig:
    name: str
    runs: list[RunSpec]
    configurations: list[Configuration]
    parameters: list[str]
    description: str = ""
    warmups: int = 1
    repetitions: int = 10
    order: str = "interleaved"
    seed: int = 0
    baseline: dict[str, Scalar] | None = None
    cooldown: float = 0.0
    on_failure: str = "abort"
    retries: int = 2
    success_codes: tuple[int, ...] = (0,)
    interval: float = 0.1
    output: str = "discard"
    agent_config: str | None = None
    packages: list[str] = field(default_factory=list)
    quiet: QuietCheck = field(default_factory=QuietCheck)
    #: the file's directory: relative cwd, sql_file and table paths are taken from it
    base_dir: Path = field(default_factory=Path.cwd)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        """What a resumed experiment must match: the parsed file, canonically encoded."""
        text = json.dumps(self.raw, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def baseline_of(self, c: Configuration) -> Configuration | None:
        """``c``'s baseline: the configuration with the baseline's values in place of
        ``c``'s and its other parameters unchanged (None when the grid has no such one)."""
        if self.baseline is None:
            return None
        want = {**c.params, **self.baseline}
        for other in self.configurations:
            if other.params == want:
                return other
        return None


# -- parsing --------------------------------------------------------------------------------

_EXPERIMENT_KEYS = (
    "name",
    "description",
    "warmups",
    "repetitions",
    "order",
    "seed",
    "baseline",
    "cooldown",
    "timeout",
    "on_failure",
    "retries",
    "success_codes",
    "interval",
    "output",
    "agent_config",
    "packages",
)
_QUIET_KEYS = ("check", "seconds", "max_load_per_cpu", "max_other_cpu")
_COMMON_RUN_KEYS = ("kind", "name", "env", "cwd", "timeout")
_RUN_KEYS = {
    "command": ("argv", "shell"),
    "python": ("function", "kwargs", "fresh_process", "python", "span"),
    "spark-sql": (
        "sql",
        "sql_file",
        "tables",
        "master",
        "conf",
        "session_warmups",
        "action",
    ),
    "stream": stream_config.KEYS,
}
_TABLE_KEYS = ("path", "format", "options", "url", "dbtable")


def _matrix(raw: Any) -> tuple[list[str], list[dict[str, Scalar]]]:
    """Parameter names and the grid's points (product, minus exclude, plus include)."""
    if raw is None:
        return [], [{}]
    m = _table(raw, "matrix")
    axes: dict[str, list[Scalar]] = {}
    for name, values in m.items():
        if name in ("include", "exclude"):
            continue
        key = f"matrix.{name}"
        if not name.isidentifier():
            raise ExperimentConfigError(key, "a parameter name must be an identifier")
        if name == "run":
            raise ExperimentConfigError(key, "'run' is reserved (the [[run]] table's name)")
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise ExperimentConfigError(key, "empty list: a grid axis needs at least one value")
        checked = [_scalar(v, f"{key}[{i}]") for i, v in enumerate(values)]
        if len({json.dumps(v) for v in checked}) != len(checked):
            raise ExperimentConfigError(key, "a value is listed twice")
        axes[name] = checked
    names = list(axes)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]
    if not axes:
        points = []
    for which in ("exclude", "include"):
        entries = m.get(which, [])
        if not isinstance(entries, list):
            raise ExperimentConfigError(f"matrix.{which}", "expected an array of tables")
        for i, e in enumerate(entries):
            key = f"matrix.{which}[{i}]"
            e = _table(e, key)
            if not e:
                raise ExperimentConfigError(key, "an empty table matches every point")
            vals = {k: _scalar(v, f"{key}.{k}") for k, v in e.items()}
            if which == "exclude":
                for k in vals:
                    if k not in axes:
                        raise ExperimentConfigError(
                            f"{key}.{k}", f"not a matrix parameter ({', '.join(names) or 'none'})"
                        )
                points = [p for p in points if any(p[k] != v for k, v in vals.items())]
            else:
                for k in vals:
                    if k not in names:
                        names.append(k)
                if vals not in points:
                    points.append(vals)
    if not points:
        raise ExperimentConfigError("matrix", "empty grid: no configuration is left to run")
    # Include entries may bring parameters the grid lacks: every point gets every name.
    missing = [p for p in points if set(p) != set(names)]
    if missing:
        lack = sorted(set(names) - set(missing[0]))
        raise ExperimentConfigError(
            "matrix", f"configuration {config_key(missing[0])} has no value for {', '.join(lack)}"
        )
    return names, [{n: p[n] for n in names} for p in points]


def _env(raw: Any, key: str) -> dict[str, str]:
    t = _table(raw, key)
    out = {}
    for k, v in t.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        out[k] = _str(v, f"{key}.{k}")
    return out


def _split_sql(text: str, key: str) -> list[Snippet]:
    """Statements separated by ``;``; a ``-- name: X`` line names the statement after it."""
    out: list[Snippet] = []
    name: str | None = None
    buf: list[str] = []

    def close() -> None:
        nonlocal name
        sql = "\n".join(buf).strip()
        buf.clear()
        if sql:
            out.append(Snippet(name or f"q{len(out) + 1}", sql))
        name = None

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower().startswith("-- name:"):
            close()
            name = stripped.split(":", 1)[1].strip() or None
            continue
        while ";" in line:
            head, line = line.split(";", 1)
            buf.append(head)
            close()
        buf.append(line)
    close()
    if not out:
        raise ExperimentConfigError(key, "no SQL statement found")
    return out


def _snippets(run: dict[str, Any], where: str, base: Path) -> list[Snippet]:
    if ("sql" in run) == ("sql_file" in run):
        raise ExperimentConfigError(f"{where}.sql", "give exactly one of sql and sql_file")
    if "sql_file" in run:
        key = f"{where}.sql_file"
        p = Path(_str(run["sql_file"], key))
        p = p if p.is_absolute() else base / p
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ExperimentConfigError(key, f"cannot read {p}: {exc.strerror or exc}") from None
        return _split_sql(text, key)
    sql = run["sql"]
    key = f"{where}.sql"
    if isinstance(sql, str):
        return _split_sql(sql, key)
    if isinstance(sql, list):
        if not sql:
            raise ExperimentConfigError(key, "empty array: give at least one statement")
        return [
            Snippet(f"q{i + 1}", _str(s, f"{key}[{i}]").strip().rstrip(";"))
            for i, s in enumerate(sql)
        ]
    if isinstance(sql, dict):
        if not sql:
            raise ExperimentConfigError(key, "empty table: give at least one statement")
        return [Snippet(k, _str(s, f"{key}.{k}").strip().rstrip(";")) for k, s in sql.items()]
    raise ExperimentConfigError(key, "expected a string, an array of strings or a table")


def _tables(raw: Any, where: str, base: Path) -> list[TableSource]:
    t = _table(raw, f"{where}.tables")
    out = []
    for name, spec in t.items():
        key = f"{where}.tables.{name}"
        if not name.isidentifier():
            raise ExperimentConfigError(key, "a table name must be an identifier")
        if isinstance(spec, str):
            spec = {"path": spec}
        spec = _table(spec, key)
        _unknown(spec, _TABLE_KEYS, key)
        opts = {k: str(v) for k, v in _table(spec.get("options", {}), f"{key}.options").items()}
        if "url" in spec:
            fmt = _choice(spec.get("format", "jdbc"), f"{key}.format", TABLE_FORMATS)
            opts["url"] = _str(spec["url"], f"{key}.url")
            opts["dbtable"] = _str(spec.get("dbtable", name), f"{key}.dbtable")
            out.append(TableSource(name, fmt, "", opts))
            continue
        if "path" not in spec:
            raise ExperimentConfigError(f"{key}.path", "required (or url for a JDBC table)")
        path = _str(spec["path"], f"{key}.path")
        default = "csv" if path.lower().endswith(".csv") else "parquet"
        fmt = _choice(spec.get("format", default), f"{key}.format", TABLE_FORMATS)
        if fmt == "jdbc":
            raise ExperimentConfigError(f"{key}.url", "a JDBC table needs url (and dbtable)")
        if fmt == "csv":
            opts.setdefault("header", "true")
            opts.setdefault("inferSchema", "true")
        p = Path(path)
        out.append(TableSource(name, fmt, str(p if p.is_absolute() else base / p), opts))
    return out


def _run_spec(i: int, raw: Any, defaults: dict[str, Any], base: Path) -> RunSpec:
    where = f"run[{i}]"
    r = _table(raw, where)
    if "kind" not in r:
        raise ExperimentConfigError(f"{where}.kind", f"required ({', '.join(KINDS)})")
    kind = _str(r["kind"], f"{where}.kind")
    if kind not in KINDS:
        raise ExperimentConfigError(
            f"{where}.kind", f"unknown kind {kind!r} (known: {', '.join(KINDS)})"
        )
    _unknown(r, (*_COMMON_RUN_KEYS, *_RUN_KEYS[kind]), where)
    spec = RunSpec(index=i, kind=kind, name=_str(r.get("name", kind), f"{where}.name"))
    spec.env = _env(r.get("env", {}), f"{where}.env")
    if "cwd" in r:
        spec.cwd = _str(r["cwd"], f"{where}.cwd")
    timeout = r.get("timeout", defaults.get("timeout"))
    if timeout is not None:
        spec.timeout = _num(timeout, f"{where}.timeout", strict=True)
    if kind == "command":
        if ("argv" in r) == ("shell" in r):
            raise ExperimentConfigError(f"{where}.argv", "give exactly one of argv and shell")
        if "shell" in r:
            spec.argv = ["/bin/sh", "-c", _str(r["shell"], f"{where}.shell")]
        else:
            spec.argv = _str_list(r["argv"], f"{where}.argv")
            if not spec.argv:
                raise ExperimentConfigError(f"{where}.argv", "empty: name a program to run")
    elif kind == "python":
        if "function" not in r:
            raise ExperimentConfigError(f"{where}.function", "required (module:function)")
        fn = _str(r["function"], f"{where}.function")
        mod, sep, attr = fn.partition(":")
        if not sep or not all(p.isidentifier() for p in mod.split(".")) or not attr:
            raise ExperimentConfigError(
                f"{where}.function", f"expected module:function, got {fn!r}"
            )
        spec.function = fn
        spec.kwargs = _table(r.get("kwargs", {}), f"{where}.kwargs")
        spec.fresh_process = _bool(r.get("fresh_process", True), f"{where}.fresh_process")
        spec.python = _str(r.get("python", ""), f"{where}.python")
        spec.span = _bool(r.get("span", False), f"{where}.span")
        if spec.timeout is not None and not spec.fresh_process:
            raise ExperimentConfigError(
                f"{where}.timeout",
                "needs fresh_process = true (an in-process call cannot be stopped safely)",
            )
    elif kind == "stream":
        try:
            stream_config.check_table(r)
        except stream_config.StreamValueError as exc:
            raise ExperimentConfigError(f"{where}.{exc.key}", exc.message) from None
        spec.stream = {k: r[k] for k in stream_config.KEYS if k in r}
    else:
        spec.snippets = _snippets(r, where, base)
        names = [s.name for s in spec.snippets]
        if len(set(names)) != len(names):
            raise ExperimentConfigError(f"{where}.sql", "two statements have the same name")
        spec.tables = _tables(r.get("tables", {}), where, base)
        spec.master = _str(r.get("master", "local[2]"), f"{where}.master")
        spec.conf = {
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in _table(r.get("conf", {}), f"{where}.conf").items()
        }
        spec.session_warmups = _int(r.get("session_warmups", 1), f"{where}.session_warmups")
        spec.action = _choice(r.get("action", "noop"), f"{where}.action", SPARK_ACTIONS)
    return spec


def _check_run_refs(spec: RunSpec, raw: dict[str, Any], names: set[str]) -> None:
    where = f"run[{spec.index}]"
    for k in ("argv", "shell", "kwargs", "env", "cwd", "sql", *stream_config.KEYS):
        if k in raw:
            _check_refs(raw[k], f"{where}.{k}", names)
    for s in spec.snippets:
        _check_refs(s.sql, f"{where}.sql[{s.name}]", names)


def _has_refs(v: Any) -> bool:
    if isinstance(v, str):
        return any(name for _, name, _, _ in _FORMATTER.parse(v))
    if isinstance(v, dict):
        return any(_has_refs(x) for x in v.values())
    return False


def _resolve_streams(
    runs: Sequence[RunSpec], configurations: Sequence[Configuration], base: Path
) -> None:
    """Each stream configuration's values rendered and checked, and each input file's first
    rows read (once per file), so a bad value or input is refused before anything runs."""
    checked: set[tuple[str, str, str]] = set()
    for c in configurations:
        spec = runs[c.run]
        if spec.kind != "stream":
            continue
        where = f"run[{spec.index}]"
        try:
            args = stream_config.resolve(render_value(spec.stream, c.params), base)
            seen = (args.query, str(args.input), str(args.ads))
            if args.input is not None and seen not in checked:
                checked.add(seen)
                stream_config.check_input(args)
        except stream_config.StreamValueError as exc:
            # A value rendered from the grid: say which configuration gave it.
            raw = spec.stream.get(exc.key.split(".")[0])
            at = f" (configuration {c.label})" if _has_refs(raw) else ""
            raise ExperimentConfigError(f"{where}.{exc.key}", exc.message + at) from None
        spec.stream_args[c.key] = args


def parse_config(
    raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a parsed TOML document."""
    base = base_dir or Path.cwd()
    _unknown(raw, ("experiment", "matrix", "run", "quiet"), "")
    exp = _table(raw.get("experiment", {}), "experiment")
    _unknown(exp, _EXPERIMENT_KEYS, "experiment")
    default_name = Path(source).stem if source != "<config>" else "experiment"
    cfg_kw: dict[str, Any] = {"name": _str(exp.get("name", default_name), "experiment.name")}
    if not cfg_kw["name"].strip():
        raise ExperimentConfigError("experiment.name", "must not be empty")
    cfg_kw["description"] = _str(exp.get("description", ""), "experiment.description")
    cfg_kw["warmups"] = _int(exp.get("warmups", 1), "experiment.warmups")
    cfg_kw["repetitions"] = _int(exp.get("repetitions", 10), "experiment.repetitions", 1)
    cfg_kw["order"] = _choice(exp.get("order", "interleaved"), "experiment.order", ORDERS)
    cfg_kw["seed"] = _int(exp.get("seed", 0), "experiment.seed")
    cfg_kw["cooldown"] = _num(exp.get("cooldown", 0.0), "experiment.cooldown")
    cfg_kw["on_failure"] = _choice(
        exp.get("on_failure", "abort"), "experiment.on_failure", FAILURE_POLICIES
    )
    cfg_kw["retries"] = _int(exp.get("retries", 2), "experiment.retries")
    codes = exp.get("success_codes", [0])
    if not isinstance(codes, list) or not codes:
        raise ExperimentConfigError("experiment.success_codes", "expected a non-empty array")
    cfg_kw["success_codes"] = tuple(
        _int(c, f"experiment.success_codes[{i}]") for i, c in enumerate(codes)
    )
    cfg_kw["interval"] = _num(exp.get("interval", 0.1), "experiment.interval", 0.01)
    cfg_kw["output"] = _str(exp.get("output", "discard"), "experiment.output")
    if "agent_config" in exp:
        p = Path(_str(exp["agent_config"], "experiment.agent_config"))
        cfg_kw["agent_config"] = str(p if p.is_absolute() else base / p)
    cfg_kw["packages"] = _str_list(exp.get("packages", []), "experiment.packages")
    defaults = {"timeout": exp.get("timeout")}
    if defaults["timeout"] is not None:
        _num(defaults["timeout"], "experiment.timeout", strict=True)

    q = _table(raw.get("quiet", {}), "quiet")
    _unknown(q, _QUIET_KEYS, "quiet")
    quiet = QuietCheck(
        check=_choice(q.get("check", "warn"), "quiet.check", QUIET_CHECKS),
        seconds=_num(q.get("seconds", 1.0), "quiet.seconds", 0.1),
        max_load_per_cpu=_num(q.get("max_load_per_cpu", 0.5), "quiet.max_load_per_cpu"),
        max_other_cpu=_num(q.get("max_other_cpu", 0.2), "quiet.max_other_cpu"),
    )

    names, points = _matrix(raw.get("matrix"))
    runs_raw = raw.get("run")
    if runs_raw is None:
        raise ExperimentConfigError("run", "required: at least one [[run]] table")
    if isinstance(runs_raw, dict):
        runs_raw = [runs_raw]
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ExperimentConfigError("run", "expected one or more [[run]] tables")
    runs = [_run_spec(i, r, defaults, base) for i, r in enumerate(runs_raw)]
    run_names = [r.name for r in runs]
    if len(set(run_names)) != len(run_names):
        raise ExperimentConfigError("run", "two [[run]] tables share a name: give each a name")
    several = len(runs) > 1
    refs = set(names) | ({"run"} if several else set())
    for spec, r in zip(runs, runs_raw, strict=True):
        _check_run_refs(spec, r, refs)

    configurations: list[Configuration] = []
    for ri, spec in enumerate(runs):
        for p in points:
            params: dict[str, Scalar] = {"run": spec.name, **p} if several else dict(p)
            configurations.append(Configuration(len(configurations), ri, params))
    parameters = (["run"] if several else []) + names
    _resolve_streams(runs, configurations, base)

    if "baseline" in exp:
        b = _table(exp["baseline"], "experiment.baseline")
        if not b:
            raise ExperimentConfigError("experiment.baseline", "empty: name a parameter value")
        for k, v in b.items():
            key = f"experiment.baseline.{k}"
            if k not in parameters:
                raise ExperimentConfigError(
                    key, f"not a parameter (parameters: {', '.join(parameters) or 'none'})"
                )
            _scalar(v, key)
            if all(c.params[k] != v for c in configurations):
                raise ExperimentConfigError(key, f"no configuration has {k} = {v!r}")
        cfg_kw["baseline"] = dict(b)

    return ExperimentConfig(
        runs=runs,
        configurations=configurations,
        parameters=parameters,
        quiet=quiet,
        base_dir=base,
        raw=raw,
        **cfg_kw,
    )


def load_config(path: str | Path) -> ExperimentConfig:
    """Reads and validates the TOML file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExperimentConfigError(str(p), "file not found") from None
    except OSError as exc:
        raise ExperimentConfigError(str(p), f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentConfigError(str(p), f"not valid TOML: {exc}") from None
    return parse_config(raw, str(p), p.resolve().parent)


def render_argv(spec: RunSpec, params: Mapping[str, Any]) -> list[str]:
    return [render(a, params) for a in spec.argv]


def render_env(spec: RunSpec, params: Mapping[str, Any]) -> dict[str, str]:
    return {k: render(v, params) for k, v in spec.env.items()}


def render_cwd(spec: RunSpec, params: Mapping[str, Any], base: Path) -> str | None:
    if spec.cwd is None:
        return None
    p = Path(render(spec.cwd, params))
    return str(p if p.is_absolute() else base / p)
