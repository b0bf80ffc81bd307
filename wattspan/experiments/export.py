"""One flat row per repetition, as CSV, Parquet, JSON lines or a Markdown table.

Every format has the same columns: the experiment, the configuration's parameters
(``param.NAME``), phase / warm-up flag / repetition / attempt / status, every measured
figure (units in the names), per-span figures (``span.NAME.seconds``, ...) and the machine
environment (``env.cpu_model``, ...). Rows are the repetitions' final attempts in the order
they ran; ``all_attempts`` adds retried and interrupted ones.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wattspan.analysis.export import csv_cell, flatten_row, json_safe, write_csv, write_jsonl
from wattspan.experiments.env import MACHINE_KEYS
from wattspan.experiments.store import Experiment, Repetition

FORMATS = ("csv", "parquet", "jsonl", "md")
_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".md": "md",
    ".markdown": "md",
}


def format_for(path: str | None, given: str | None) -> str:
    """The export format: as given, else from the file's suffix, else CSV."""
    if given:
        return given
    if path:
        return _SUFFIXES.get(Path(path).suffix.lower(), "csv")
    return "csv"


def rows(
    exp: Experiment,
    reps: Sequence[Repetition],
    all_attempts: bool = False,
    warmups: bool = True,
) -> list[dict[str, Any]]:
    machine = exp.env.get("machine", {})
    software = exp.env.get("software", {})
    git = next(iter(software.get("git", {}).values()), {})
    env = {f"env.{k}": machine.get(k) for k in MACHINE_KEYS}
    env["env.python"] = software.get("python")
    env["env.git_commit"] = git.get("commit")
    env["env.git_dirty"] = git.get("dirty")
    out = []
    for r in reps:
        if not r.final and not all_attempts and r.phase != "session-warmup":
            continue
        if not warmups and r.warmup:
            continue
        row: dict[str, Any] = {
            "experiment_id": exp.id,
            "experiment": exp.name,
            "run": r.run_name,
        }
        row.update({f"param.{k}": v for k, v in r.params.items()})
        row.update(
            {
                "phase": r.phase,
                "warmup": r.warmup,
                "repetition": r.repetition,
                "attempt": r.attempt,
                "final": r.final,
                "status": r.status,
                "seq": r.seq,
                "run_id": r.run_id,
                "start_ts": r.start_ts,
                "end_ts": r.end_ts,
                "exit_code": r.exit_code,
            }
        )
        row.update(flatten_row({k: v for k, v in r.figures.items() if k != "exit_code"}))
        for s in r.spans:
            name = s.get("name", "?")
            for k, v in s.items():
                if k != "name":
                    row[f"span.{name}.{k}"] = v
        row["error"] = r.error
        row.update(env)
        out.append(row)
    return out


def _columns(data: Sequence[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in data:
        cols.update(dict.fromkeys(r))
    return list(cols)


def to_markdown(data: Sequence[dict[str, Any]]) -> str:
    cols = _columns(data)

    def cell(v: Any) -> str:
        text = f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else csv_cell(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in data:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _arrow_table(data: Sequence[dict[str, Any]]) -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise RuntimeError("Parquet export needs pyarrow: pip install pyarrow") from None
    cols = _columns(data)
    arrays = {}
    for c in cols:
        values = [json_safe(r.get(c)) for r in data]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int, float} and kinds != {int, float}:
            arrays[c] = pa.array(values)
        elif kinds == {int, float}:
            arrays[c] = pa.array([None if v is None else float(v) for v in values], pa.float64())
        elif len(kinds) == 1 and kinds <= {str, bool}:
            arrays[c] = pa.array(values)
        elif not kinds:
            arrays[c] = pa.array(values, pa.null())
        else:
            # Mixed or nested values (a python kind's result): one string column.
            arrays[c] = pa.array([None if v is None else csv_cell(v) for v in values])
    return pa.table(arrays)


def write(data: Sequence[dict[str, Any]], fmt: str, path: str | None) -> str | None:
    """Writes ``data`` to ``path`` (None: returns the text, for stdout; not for Parquet)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "parquet":
        if path is None:
            raise ValueError("Parquet is binary: give -o FILE.parquet")
        table = _arrow_table(data)
        import pyarrow.parquet as pq

        tmp = Path(path + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return None
    buf = io.StringIO()
    if fmt == "csv":
        write_csv(data, buf)
    elif fmt == "jsonl":
        write_jsonl(data, buf)
    else:
        buf.write(to_markdown(data))
    if path is None:
        return buf.getvalue()
    tmp = Path(path + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return None
