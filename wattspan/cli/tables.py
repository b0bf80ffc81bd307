"""Human output of run summaries (rich tables) and machine output (JSON)."""

from __future__ import annotations

import datetime as dt
from typing import Any

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


def summary_table(run: Run, summary: dict[str, Any]) -> Table:
    title = f"wattspan run {run.name} ({run.id[:8]})"
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("note", style="dim")
    if run.exit_code is not None:
        t.add_row("exit code", str(run.exit_code), "")
    elif run.end_ts is None:
        t.add_row("exit code", "-", f"{run.kind} still running")
    else:
        t.add_row("exit code", "-", "not reported")
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
    t.add_row("CPU peak", fmt_num(summary.get("cpu_percent_peak"), "%", 1), "per sample interval")
    t.add_row("peak RSS", fmt_bytes(summary.get("peak_rss_bytes")), "")
    for e in summary.get("energy", []):
        label = "estimated" if e.get("estimated") else "measured (RAPL)"
        t.add_row(
            f"energy {e['domain']}",
            fmt_num(e.get("joules"), "J"),
            f"{label}, avg {fmt_num(e.get('watts_avg'), 'W', 1)}",
        )
    if not summary.get("energy"):
        t.add_row("energy", "-", "no RAPL and power model off")
    if summary.get("idle_power_watts") is not None:
        t.add_row(
            "idle power",
            fmt_num(summary["idle_power_watts"], "W", 1),
            f"charged to no span ({summary.get('idle_method', '?')})",
        )
    for g in summary.get("gpus", []):
        gid = f"GPU {g['gpu']}"
        method = g.get("energy_method") or ""
        note = "NVML counter" if method == "counter" else "integrated power"
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


def runs_table(runs: list[Run]) -> Table:
    t = Table(show_header=True, header_style="bold")
    for col in ("id", "name", "kind", "start", "wall s", "exit", "energy J", "command"):
        t.add_column(col, justify="right" if col in ("wall s", "exit", "energy J") else "left")
    for r in runs:
        s = r.summary or {}
        energy = sum(e.get("joules") or 0.0 for e in s.get("energy", [])) or None
        wall = (r.end_ts - r.start_ts) if r.end_ts else None
        t.add_row(
            r.id[:8],
            r.name,
            r.kind,
            fmt_ts(r.start_ts),
            fmt_num(wall, digits=2),
            "-" if r.exit_code is None else str(r.exit_code),
            fmt_num(energy, digits=1),
            " ".join(r.command)[:60],
        )
    return t


def print_table(table: Table, stderr: bool = False) -> None:
    Console(stderr=stderr, soft_wrap=False).print(table)
