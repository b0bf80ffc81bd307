"""Human output of run summaries (rich tables) and machine output (JSON).

``wattspan run``'s table is drawn by :func:`print_summary` without rich (whose import costs
more than the rest of the table's end of a run); it looks as rich draws the same rows.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from wattspan.agent.store import Run


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_num(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}{(' ' + unit) if unit else ''}"


def fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


class Rows:
    """The rows of a run's summary table (metric, value, note), before any drawing."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, str]] = []

    def add_row(self, metric: str, value: str, note: str) -> None:
        self.rows.append((metric, value, note))


def summary_table(run: Run, summary: dict[str, Any]) -> Table:
    """The summary as a rich table (``wattspan show``)."""
    from rich.table import Table

    rows = summary_rows(run, summary)
    t = Table(title=rows.title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("note", style="dim")
    for row in rows.rows:
        t.add_row(*row)
    return t


def summary_rows(run: Run, summary: dict[str, Any]) -> Rows:
    t = Rows(f"wattspan run {run.name} ({run.id[:8]})")
    if run.exit_code is not None:
        t.add_row("exit code", str(run.exit_code), "")
    elif run.end_ts is None:
        t.add_row("exit code", "-", f"{run.kind} still running")
    else:
        t.add_row("exit code", "-", "not reported")
    if run.description:
        t.add_row("description", "", run.description)
    tags = summary.get("tags") or {}
    if tags:
        t.add_row("tags", str(len(tags)), ", ".join(f"{k}={v}" for k, v in sorted(tags.items())))
    t.add_row("wall time", fmt_num(summary.get("wall_seconds"), "s", 3), "")
    source = summary.get("cpu_source")
    tree = {
        "wait4-child-only": "command + what it waited for",
        "samples": "process tree, sampled",
    }.get(source or "", "process tree")
    t.add_row("CPU user", fmt_num(summary.get("cpu_user_seconds"), "s", 3), tree)
    t.add_row("CPU system", fmt_num(summary.get("cpu_system_seconds"), "s", 3), tree)
    orphans = summary.get("orphans_reaped") or 0
    # Only a tree that orphans or leaves processes behind has parts worth a row.
    if source in ("wait4", "wait4+proc") and (orphans or summary.get("outlived_processes")):
        note = "wait4"
        if orphans:
            note += f", {fmt_num(summary.get('cpu_seconds_orphans'), 's', 3)} of it from "
            note += f"{orphans} orphan{'s' if orphans != 1 else ''} wattspan reaped"
        t.add_row("CPU reaped", fmt_num(summary.get("cpu_seconds_reaped"), "s", 3), note)
    if summary.get("outlived_processes"):
        n = summary["outlived_processes"]
        t.add_row(
            "CPU outlived",
            fmt_num(summary.get("cpu_seconds_outlived"), "s", 3),
            f"{n} process{'es' if n != 1 else ''} left running by the command: CPU so far",
        )
        listed = summary.get("outlived") or []
        for o in listed:
            state = "CPU, exited, unreaped" if o.get("exited") else "CPU so far"
            t.add_row(
                "outlived",
                f"pid {o.get('pid')}",
                f"{o.get('name', '')}, {fmt_num(o.get('cpu_seconds'), 's', 3)} {state}",
            )
        if n > len(listed):
            t.add_row("outlived", f"{n - len(listed)} more", "not listed")
    t.add_row("CPU avg", fmt_num(summary.get("cpu_percent_avg"), "%", 1), "100% = one core")
    t.add_row("CPU peak", fmt_num(summary.get("cpu_percent_peak"), "%", 1), "highest 1 s average")
    t.add_row("peak RSS", fmt_bytes(summary.get("peak_rss_bytes")), "")
    _energy_rows(t, summary)
    for g in summary.get("gpus", []):
        gid = f"GPU {g['gpu']}"
        method = g.get("energy_method") or ""
        note = "NVML counter" if method == "counter" else "integrated power"
        if g.get("joules") is None:
            # NVML is not read at the spawn (it takes tens of ms to open): a command that
            # ended before the first sample has no GPU window of its own.
            note = "no NVML reading inside the run: it ended before the first sample"
        t.add_row(f"{gid} energy", fmt_num(g.get("joules"), "J"), note)
        t.add_row(f"{gid} power avg", fmt_num(g.get("watts_avg"), "W", 1), g.get("name", ""))
        util = g.get("utilization_avg")
        t.add_row(f"{gid} util avg", fmt_num(None if util is None else util * 100, "%", 1), "")
        t.add_row(
            f"{gid} memory peak",
            fmt_bytes(g.get("memory_used_peak_bytes")),
            f"of {fmt_bytes(g.get('memory_total_bytes'))}",
        )
    if not summary.get("gpus"):
        t.add_row("GPU", "-", "no NVIDIA GPU found")
    if summary.get("store_incomplete"):
        t.add_row(
            "stored",
            "incomplete",
            f"{summary.get('store_errors', '?')} store writes failed; figures are complete",
        )
    return t


def fmt_grams(g: float | None) -> str:
    """CO2e mass in a unit that keeps three significant digits readable."""
    if g is None:
        return "-"
    if abs(g) >= 1000:
        return f"{g / 1000:,.2f} kg"
    if abs(g) >= 1 or g == 0:
        return f"{g:,.2f} g"
    if abs(g) >= 1e-3:
        return f"{g * 1e3:,.2f} mg"
    return f"{g * 1e6:,.2f} µg"


def _energy_rows(t: Rows, summary: dict[str, Any]) -> None:
    """The run's process share first (what it used on a shared node), then the node's
    energy per domain, idle power, and CO2e with the intensity it was computed with."""
    energy = summary.get("energy") or []
    est = summary.get("energy_estimated")
    label = "estimated" if est else "measured (RAPL)"
    proc = summary.get("process_energy_joules")
    if proc is not None:
        share = summary.get("process_cpu_share") or 0.0
        t.add_row(
            "energy process",
            fmt_num(proc, "J"),
            f"{label}, {share * 100:.1f}% of the node's active energy (CPU-time share)",
        )
    wall = summary.get("wall_seconds")
    for e in energy:
        elabel = "estimated" if e.get("estimated") else "measured (RAPL)"
        note = f"whole node, {elabel}, avg {fmt_num(e.get('watts_avg'), 'W', 1)}"
        secs = e.get("seconds")
        # The counters run from the spawn to their reading at the exit; where that came too
        # late to be used (the exit raced the agent's start), to the final sample, which
        # cannot come before the agent is up: then say how long the figure covers.
        if secs is not None and wall is not None and secs - wall > max(0.02, 0.1 * wall):
            note += f" over {secs:.3f} s, to the agent's final sample"
        t.add_row(f"energy node {e['domain']}", fmt_num(e.get("joules"), "J"), note)
    if not energy:
        t.add_row("energy", "-", "no RAPL and power model off")
    if summary.get("idle_power_watts") is not None:
        t.add_row(
            "idle power",
            fmt_num(summary["idle_power_watts"], "W", 1),
            f"charged to no process ({summary.get('idle_method', '?')})",
        )
    carbon = summary.get("carbon") or {}
    if carbon and (summary.get("co2e_grams") is not None):
        how = f"{carbon.get('g_per_kwh', 0):g} g/kWh, {carbon.get('source', '?')}, "
        how += f"PUE {carbon.get('pue', 1.0):g}"
        if summary.get("process_co2e_grams") is not None:
            t.add_row(
                "CO2e process",
                fmt_grams(summary["process_co2e_grams"]),
                f"process energy + GPU; {how}",
            )
        t.add_row("CO2e node", fmt_grams(summary["co2e_grams"]), f"node energy + GPU; {how}")


def run_energy(summary: dict[str, Any]) -> tuple[float | None, float | None, bool]:
    """(process J, node J of the primary domains, estimated) of a stored summary; runs
    stored before the process share existed have only the node figure."""
    node = summary.get("node_energy_joules")
    if node is None:
        from wattspan.agent.domains import primary_domains

        by = {e["domain"]: e for e in summary.get("energy") or [] if e.get("joules") is not None}
        primary = primary_domains(by)
        node = sum(by[d]["joules"] for d in primary) if primary else None
        est = any(by[d].get("estimated") for d in primary)
    else:
        est = bool(summary.get("energy_estimated"))
    return summary.get("process_energy_joules"), node, est


def runs_table(runs: list[Run]) -> Table:
    from rich import box
    from rich.table import Table

    t = Table(show_header=True, header_style="bold", box=box.SIMPLE_HEAD)
    kinds = len({r.kind for r in runs}) > 1
    right = ("wall s", "exit", "process J", "node J", "CO2e")
    cols = ("id", "name", *(("kind",) if kinds else ()), "start", *right)
    for col in cols:
        t.add_column(
            col,
            justify="right" if col in right else "left",
            no_wrap=True,
            min_width={"start": 16, "id": 8, "name": 8, "CO2e": 8}.get(col, len(col)),
            overflow="ellipsis",
        )
    t.add_column("description / command", overflow="ellipsis", no_wrap=True, max_width=40)
    t.caption_justify = "left"
    any_est = False
    for r in runs:
        s = r.summary or {}
        proc, node, est = run_energy(s)
        any_est |= est and (proc is not None or node is not None)
        mark = "~" if est else ""
        wall = (r.end_ts - r.start_ts) if r.end_ts else None
        co2 = s.get("process_co2e_grams", s.get("co2e_grams"))
        what = r.description or " ".join(r.command)
        t.add_row(
            r.id[:8],
            r.name,
            *((r.kind,) if kinds else ()),
            fmt_ts(r.start_ts)[:16],
            fmt_num(wall, digits=2),
            "-" if r.exit_code is None else str(r.exit_code),
            "-" if proc is None else mark + fmt_num(proc, digits=1),
            "-" if node is None else mark + fmt_num(node, digits=1),
            fmt_grams(co2),
            what[:60],
        )
    notes = ["process J: the run's CPU-time share of the node's active energy"]
    if any_est:
        notes.append("~ estimated (power model, no RAPL)")
    notes.append("CO2e of process energy + GPU at the intensity stored with each run")
    t.caption = "; ".join(notes)
    return t


def console(stderr: bool = False) -> Console:
    """A console for tables and trees: the terminal's width, or on a pipe or a file (no
    width to fit) at least 160 columns, where rich's 80-column default would cut columns
    and wrap tree lines."""
    from rich.console import Console

    out = Console(stderr=stderr, soft_wrap=False)
    if not out.is_terminal:
        out.width = max(out.width, 160)
    return out


def print_table(table: Table, stderr: bool = False) -> None:
    console(stderr).print(table)


def _styles(stream: IO[str]) -> tuple[str, str, str, str]:
    """(bold, dim, italic, reset) escapes where rich would colour: a terminal, no NO_COLOR."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return "", "", "", ""
    return "\x1b[1m", "\x1b[2m", "\x1b[3m", "\x1b[0m"


def _width(stream: IO[str]) -> int:
    """Columns to fit: the terminal's, else (a pipe, a file) 160, as :func:`print_table`."""
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        pass
    return int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160


def render_rows(rows: Rows, width: int = 160, color: tuple[str, ...] = ("", "", "", "")) -> str:
    """``rows`` drawn as rich draws a three-column table (heavy head, values right-aligned);
    notes wrap to keep the table within ``width``."""
    bold, dim, italic, reset = color
    header = ("metric", "value", "note")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows.rows]) for i in range(3)]
    # 10 = the four borders and one space either side of each cell.
    room = width - 10 - widths[0] - widths[1]
    wrap = widths[2] > room > 10
    if wrap:
        widths[2] = room
    import textwrap

    def cells(row: tuple[str, str, str]) -> list[tuple[str, str, str]]:
        notes = textwrap.wrap(row[2], widths[2]) if wrap and len(row[2]) > widths[2] else []
        lines = [(row[0], row[1], notes[0] if notes else row[2])]
        lines.extend(("", "", n) for n in notes[1:])
        return lines

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    total = sum(widths) + 10
    out = [f"{italic}{rows.title.center(total).rstrip()}{reset}", line("┏", "━", "┳", "┓")]
    out.append(
        "┃"
        + "┃".join(
            f" {bold}{h.rjust(w) if h == 'value' else h.ljust(w)}{reset} "
            for h, w in zip(header, widths, strict=True)
        )
        + "┃"
    )
    out.append(line("┡", "━", "╇", "┩"))
    for row in rows.rows:
        for metric, value, note in cells(row):
            note_cell = f"{dim}{note.ljust(widths[2])}{reset}" if note else " " * widths[2]
            out.append(f"│ {metric.ljust(widths[0])} │ {value.rjust(widths[1])} │ {note_cell} │")
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"


def print_summary(run: Run, summary: dict[str, Any], stream: IO[str] | None = None) -> None:
    """``wattspan run``'s table, on stderr unless ``stream`` is given (no rich loaded)."""
    stream = sys.stderr if stream is None else stream
    stream.write(render_rows(summary_rows(run, summary), _width(stream), _styles(stream)))
    stream.flush()
