"""The ``stream`` kind's keys: checked once as written, then once per configuration rendered.

A ``[[run]]`` of kind ``stream`` names a shipped query of the bundled stream engine
(``wattspan.engines.stream``) and its input, either a file (Parquet, a directory of them, or
CSV) or ``generate = { events = N, seed = S }``: the query's dataset generated once per
experiment into the experiment's directory (see :mod:`wattspan.experiments.stream_kind`).
Every value may hold ``{placeholders}``; :func:`resolve` takes the values with the
configuration's parameters filled in and returns :class:`StreamArgs`, or raises
:class:`StreamValueError` naming the key (relative to the ``[[run]]`` table), which
:mod:`wattspan.experiments.config` turns into an error naming ``run[i].KEY``.

This module imports nothing of the harness (config.py imports it) and the engine only in
:func:`query_names`, :func:`dataset_of` and :func:`check_input`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEYS = (
    "query",
    "input",
    "ads",
    "generate",
    "workers",
    "task_size",
    "scheduler",
    "rate",
    "task_spans",
    "gpu",
)
GENERATE_KEYS = ("events", "seed")
SCHEDULERS = ("fcfs", "static", "hls")
DEFAULTS: dict[str, Any] = {
    "workers": 2,
    "task_size": "1M",
    "scheduler": "fcfs",
    "task_spans": 0.01,
    "gpu": False,
}

# The units of `wattspan stream run`: sizes binary (64k = 65,536 B), counts decimal.
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


class StreamValueError(ValueError):
    """A bad stream value; ``key`` is relative to the ``[[run]]`` table (``generate.events``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Generate:
    """An input generated once per experiment: ``dataset``'s first ``events`` rows of ``seed``."""

    dataset: str
    events: int
    seed: int

    @property
    def filename(self) -> str:
        return f"{self.dataset}-{self.events}-seed{self.seed}.parquet"


@dataclass(frozen=True, slots=True)
class StreamArgs:
    """One configuration's stream run, every value checked."""

    query: str
    input: Path | None  # None: generated
    ads: Path | None  # ysb's ad -> campaign table when the input is a file
    generate: Generate | None
    workers: int
    task_size: int
    scheduler: str
    rate: float | None
    task_spans: float
    gpu: bool


def query_names() -> tuple[str, ...]:
    from wattspan.engines.stream.queries import QUERIES

    return tuple(QUERIES)


def dataset_of(query: str) -> str:
    from wattspan.engines.stream.cli_worker import DATASET_OF

    return DATASET_OF[query]


def ads_beside(path: Path) -> Path:
    """Where ``wattspan stream generate ysb -o FILE`` writes the ads table: STEM.ads.SUFFIX."""
    return path.with_name(f"{path.stem}.ads{path.suffix}")


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(v), "a table" if isinstance(v, dict) else "an array" if isinstance(v, list) else "?"
    )


def check_table(raw: Mapping[str, Any]) -> None:
    """What can be checked before any placeholder is filled in: required keys, one input,
    the ``generate`` table's keys, and that every value is a scalar."""
    if "query" not in raw:
        raise StreamValueError("query", f"required (one of {', '.join(query_names())})")
    if ("input" in raw) == ("generate" in raw):
        raise StreamValueError(
            "input", "give exactly one of input (a file) and generate = { events = N, seed = S }"
        )
    for k in KEYS:
        if k != "generate" and k in raw and not isinstance(raw[k], str | int | float | bool):
            raise StreamValueError(k, f"expected a string, number or boolean, got {_kind(raw[k])}")
    if "generate" in raw:
        g = raw["generate"]
        if not isinstance(g, dict):
            raise StreamValueError(
                "generate", f"expected a table {{ events = N, seed = S }}, got {_kind(g)}"
            )
        for k in g:
            if k not in GENERATE_KEYS:
                raise StreamValueError(
                    f"generate.{k}", f"unknown key (known: {', '.join(GENERATE_KEYS)})"
                )
        if "events" not in g:
            raise StreamValueError("generate.events", "required: how many events to generate")
        if "ads" in raw:
            raise StreamValueError("ads", "not with generate (the generated ads table is used)")


def parse_size(v: Any, key: str) -> int:
    """Bytes: an integer, or ``64k``, ``1M``, ``16MiB`` (binary units)."""
    from wattspan.engines.stream.units import size_bytes

    try:
        return size_bytes(v)
    except ValueError as exc:
        raise StreamValueError(key, str(exc)) from None


def parse_count(v: Any, key: str, what: str) -> float:
    """A count or rate: a number, or ``200k``, ``2.5M``, ``1G`` (decimal units)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        n = float(v)
    elif isinstance(v, str) and (m := _COUNT.match(v.replace("_", "").replace(",", ""))):
        n = float(m.group(1)) * _COUNT_UNITS[m.group(2).lower()]
    else:
        raise StreamValueError(key, f"not {what}: {v!r} (e.g. 1000, 200k, 2.5M)")
    if not math.isfinite(n):
        raise StreamValueError(key, f"not {what}: {v!r}")
    return n


def _whole(v: Any, key: str, what: str, minimum: int) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise StreamValueError(key, f"expected a whole number ({what}), got {v!r}")
    if v < minimum:
        raise StreamValueError(key, f"must be at least {minimum} ({what}), got {v}")
    return v


def _flag(v: Any, key: str) -> bool:
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise StreamValueError(key, f"expected true or false, got {v!r}")
    return v


def _path(v: Any, key: str, base: Path) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise StreamValueError(key, f"expected a file path, got {v!r}")
    p = Path(v).expanduser()
    return p if p.is_absolute() else base / p


def resolve(values: Mapping[str, Any], base: Path) -> StreamArgs:
    """One configuration's values (placeholders filled in) checked; relative paths are taken
    from ``base`` (the config file's directory). Files are checked to exist, not read."""
    v = {**DEFAULTS, **values}
    names = query_names()
    query = v["query"]
    if query not in names:
        raise StreamValueError("query", f"unknown query {query!r} (known: {', '.join(names)})")
    workers = _whole(v["workers"], "workers", "CPU worker threads; 0 runs tasks inline", 0)
    task_size = parse_size(v["task_size"], "task_size")
    scheduler = v["scheduler"]
    if scheduler not in SCHEDULERS:
        raise StreamValueError("scheduler", f"{scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    rate: float | None = None
    if v.get("rate") is not None:
        rate = parse_count(v["rate"], "rate", "a rate in events/s")
        if rate < 0:
            raise StreamValueError(
                "rate", f"must be >= 0 events/s (0: as fast as read), got {rate:g}"
            )
        rate = rate or None
    task_spans = v["task_spans"]
    if isinstance(task_spans, bool) or not isinstance(task_spans, int | float):
        raise StreamValueError("task_spans", f"expected a fraction from 0 to 1, got {task_spans!r}")
    if not 0.0 <= task_spans <= 1.0:
        raise StreamValueError("task_spans", f"must be between 0 and 1, got {task_spans!r}")
    gpu = _flag(v["gpu"], "gpu")

    inp = ads = None
    gen: Generate | None = None
    if "generate" in v:
        g = v["generate"]
        events = parse_count(g["events"], "generate.events", "a number of events")
        if events < 1 or events != int(events):
            raise StreamValueError(
                "generate.events", f"must be a whole number >= 1, got {g['events']!r}"
            )
        seed = _whole(g.get("seed", 0), "generate.seed", "the generator's seed", 0)
        gen = Generate(dataset_of(query), int(events), seed)
    else:
        inp = _path(v["input"], "input", base)
        if not inp.exists():
            raise StreamValueError("input", f"{inp}: no such file")
        if "ads" in v:
            if query != "ysb":
                raise StreamValueError("ads", f"only ysb joins an ads table, not {query}")
            ads = _path(v["ads"], "ads", base)
        elif query == "ysb":
            ads = ads_beside(inp)
        if ads is not None and not ads.exists():
            raise StreamValueError(
                "ads",
                f"{ads}: no such file (ysb's ad -> campaign table; `wattspan stream generate "
                "ysb` writes it beside the events as STEM.ads.SUFFIX, or give ads = FILE)",
            )
    return StreamArgs(
        query=query,
        input=inp,
        ads=ads,
        generate=gen,
        workers=workers,
        task_size=task_size,
        scheduler=scheduler,
        rate=rate,
        task_spans=float(task_spans),
        gpu=gpu,
    )


def check_input(args: StreamArgs) -> None:
    """Reads the first rows of a file input as the worker will (``StreamValueError`` on
    ``input`` for a format, column or dtype the query cannot read)."""
    if args.input is None:
        return
    from wattspan.engines.stream.cli_worker import check_input as worker_check
    from wattspan.engines.stream.errors import StreamError

    try:
        worker_check(args.query, args.input, None if args.ads is None else str(args.ads))
    except (StreamError, ValueError, ImportError) as exc:
        raise StreamValueError("input", str(exc)) from None
    except OSError as exc:
        where = exc.filename or args.input
        raise StreamValueError("input", f"{where}: {exc.strerror or exc}") from None
