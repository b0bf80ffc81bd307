"""Headline figures of a run and side-by-side comparison of runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from wattspan.agent.attribution import primary_domains
from wattspan.agent.carbon import Intensity, resolve
from wattspan.agent.store import Run, Store
from wattspan.agent.summary import summarize
from wattspan.analysis._common import Mode, as_run, finite, run_samples
from wattspan.analysis.metrics import metric_mode, metric_summaries
from wattspan.analysis.targets import time_to_target


def run_summary(store: Store, run: Run) -> dict[str, Any]:
    """The stored summary, or one computed from the samples for a run that has none yet
    (still running, an agent session, a program that sent spans to a daemon)."""
    if run.summary and run.kind != "program":
        return run.summary
    samples = run_samples(store, run)
    end = run.end_ts or (samples[-1].ts if samples else run.start_ts)
    idle, method = _idle_of(store, run)
    # A program run's stored summary only says which process it was.
    return {**(run.summary or {}), **summarize(samples, run.start_ts, end, idle, method)}


def _idle_of(store: Store, run: Run) -> tuple[float | None, str | None]:
    """The idle figure a run was charged: stored with its summary, else with its spans
    (every span of a run carries the same one)."""
    s = run.summary or {}
    if s.get("idle_power_watts") is not None:
        return float(s["idle_power_watts"]), s.get("idle_method")
    for span in store.spans(run.id):
        res = span.resources or {}
        if res.get("idle_power_watts") is not None:
            return float(res["idle_power_watts"]), res.get("idle_method")
    return None, None


def run_carbon(run: Run) -> Intensity | None:
    """The intensity stored with a run's summary (what ``wattspan run`` computed with)."""
    c = (run.summary or {}).get("carbon")
    return Intensity.from_dict(c) if isinstance(c, dict) else None


def run_figures(store: Store, run: Run) -> dict[str, Any]:
    """Headline numbers of a run, with the energy summed over primary domains only (the
    sub-domains such as ``package-0/dram`` are inside their package and would double count).
    """
    s = run_summary(store, run)
    energy = s.get("energy") or []
    by_domain = {e["domain"]: e for e in energy if e.get("joules") is not None}
    primary = primary_domains(by_domain)
    node = sum(by_domain[d]["joules"] for d in primary) if primary else None
    gpus = [g for g in s.get("gpus") or [] if g.get("joules") is not None]
    gpu = sum(g["joules"] for g in gpus) if gpus else None
    total = None if node is None and gpu is None else (node or 0.0) + (gpu or 0.0)
    wall = s.get("wall_seconds")
    if wall is None and run.end_ts is not None:
        wall = run.end_ts - run.start_ts
    proc = s.get("process_energy_joules")
    return {
        "wall_seconds": wall,
        "cpu_seconds": s.get("cpu_seconds"),
        "cpu_percent_avg": s.get("cpu_percent_avg"),
        "peak_rss_bytes": s.get("peak_rss_bytes"),
        "process_energy_joules": proc,
        "process_total_energy_joules": None if proc is None else proc + (gpu or 0.0),
        "energy_joules": node,
        "energy_estimated": any(by_domain[d].get("estimated") for d in primary)
        if primary
        else None,
        "gpu_energy_joules": gpu,
        "total_energy_joules": total,
    }


@dataclass(slots=True)
class CompareRow:
    """One line of a comparison: a figure for every run and its difference to the first.

    ``delta``/``pct`` are None for the first run (the baseline), for non-numeric values, and
    (``pct``) where the baseline is 0. ``better`` says which direction is better, if any.
    """

    key: str
    label: str
    unit: str
    group: Literal["resources", "metrics", "target", "params"]
    values: list[Any]
    delta: list[float | None]
    pct: list[float | None]
    better: Literal["min", "max"] | None = None


@dataclass(slots=True)
class Comparison:
    runs: list[Run]
    rows: list[CompareRow]
    target: dict[str, Any] | None = None
    carbon: Intensity | None = None

    def row(self, key: str) -> CompareRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``wattspan compare --json``)."""
        return {
            "runs": [
                {"id": r.id, "name": r.name, "start_ts": r.start_ts, "host": r.host}
                for r in self.runs
            ],
            "target": self.target,
            "carbon": self.carbon.to_dict() if self.carbon else None,
            "rows": [asdict(r) for r in self.rows],
        }


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _diffs(values: Sequence[Any]) -> tuple[list[float | None], list[float | None]]:
    base = values[0] if values else None
    delta: list[float | None] = [None]
    pct: list[float | None] = [None]
    for v in values[1:]:
        if _is_num(v) and _is_num(base) and finite(v) and finite(base):
            d = v - base
            delta.append(d)
            pct.append(d / abs(base) * 100.0 if base != 0 else None)
        else:
            delta.append(None)
            pct.append(None)
    return delta, pct


def _row(key: str, label: str, unit: str, group: Any, values: list[Any], better: Any) -> CompareRow:
    delta, pct = _diffs(values)
    return CompareRow(key, label, unit, group, values, delta, pct, better)


def compare_runs(
    store: Store,
    run_ids: Sequence[str | Run],
    target_metric: str = "ml.accuracy",
    target: float | None = None,
    mode: Mode = "auto",
    carbon: Intensity | None = None,
) -> Comparison:
    """Side-by-side figures of runs, with differences against the first run.

    Rows: resources (wall time, CPU seconds, peak RSS, the run's process energy first, then
    node energy of the primary domains, GPU energy, their total, CO2e), the runs' rank by
    process energy (node energy where a run has no process share), per metric the final and
    best value, time- and energy-to-target for ``target_metric``, and every hyperparameter.

    CO2e of every run is computed with one intensity, so the runs compare on energy alone:
    ``carbon`` if given, else the one stored with the first run that has one, else the
    default (:func:`wattspan.agent.carbon.resolve`). ``Comparison.carbon`` says which.

    Without ``target`` the target is the best value that *every* run reached (the lowest
    of the runs' best accuracies, or the highest of their best losses), so each run gets a
    time-to-target and the rows answer "which run got to a common quality level first, and
    for how many joules". The chosen target is in ``Comparison.target``.
    """
    runs = [as_run(store, r) for r in run_ids]
    rows: list[CompareRow] = []
    figs = [run_figures(store, r) for r in runs]
    if carbon is None:
        carbon = next((c for r in runs if (c := run_carbon(r)) is not None), None) or resolve()
    for f in figs:
        f["process_co2e_grams"] = carbon.grams(f["process_total_energy_joules"])
        f["co2e_grams"] = carbon.grams(f["total_energy_joules"])
    for key, label, unit, better in (
        ("wall_seconds", "wall time", "s", "min"),
        ("cpu_seconds", "CPU time", "s", "min"),
        ("cpu_percent_avg", "CPU avg", "%", None),
        ("peak_rss_bytes", "peak RSS", "B", "min"),
        ("process_energy_joules", "process energy", "J", "min"),
        ("energy_joules", "node energy", "J", "min"),
        ("gpu_energy_joules", "GPU energy", "J", "min"),
        ("total_energy_joules", "total energy (node + GPU)", "J", "min"),
        ("process_co2e_grams", "CO2e process (+ GPU)", "g", "min"),
        ("co2e_grams", "CO2e node (+ GPU)", "g", "min"),
    ):
        values = [f[key] for f in figs]
        if any(v is not None for v in values):
            rows.append(_row(key, label, unit, "resources", values, better))
    ranked = _rank(figs)
    if ranked is not None:
        none: list[float | None] = [None] * len(runs)  # a rank's difference means nothing
        rows.append(
            CompareRow("energy_rank", ranked[0], "", "resources", ranked[1], none, none, "min")
        )
    if any(f["energy_estimated"] for f in figs):
        rows.append(
            _row(
                "energy_estimated",
                "node energy estimated",
                "",
                "resources",
                [f["energy_estimated"] for f in figs],
                None,
            )
        )

    summaries = [metric_summaries(store, r) for r in runs]
    names = sorted({n for s in summaries for n in s})
    for name in names:
        mode_n = metric_mode(name)
        finals = [s[name].last if name in s else None for s in summaries]
        bests = [s[name].best if name in s else None for s in summaries]
        rows.append(_row(f"{name}.final", f"{name} final", "", "metrics", finals, mode_n))
        rows.append(_row(f"{name}.best", f"{name} best", "", "metrics", bests, mode_n))

    tmode = metric_mode(target_metric) if mode == "auto" else mode
    target_info: dict[str, Any] | None = None
    if target is None:
        # Best per run in the direction asked (which --mode may set against the name).
        points = [
            [m.value for m in store.metrics(r.id, name=target_metric) if finite(m.value)]
            for r in runs
        ]
        if points and all(points):
            bests = [max(p) if tmode == "max" else min(p) for p in points]
            target = min(bests) if tmode == "max" else max(bests)
            target_info = {
                "metric": target_metric,
                "target": target,
                "mode": tmode,
                "chosen": "common best",
            }
    else:
        target_info = {"metric": target_metric, "target": target, "mode": tmode, "chosen": "given"}
    if target is not None and any(target_metric in s for s in summaries):
        tts = [time_to_target(store, r, target_metric, target, tmode) for r in runs]
        op = ">=" if tmode == "max" else "<="
        rows.append(
            _row(
                "time_to_target_seconds",
                f"time to {target_metric} {op} {target:g}",
                "s",
                "target",
                [t["seconds"] for t in tts],
                "min",
            )
        )
        rows.append(
            _row(
                "energy_to_target_joules",
                f"energy to {target_metric} {op} {target:g}",
                "J",
                "target",
                [t["joules"] for t in tts],
                "min",
            )
        )
        if target_info is not None:
            target_info["reached"] = [t["reached"] for t in tts]

    params = [store.params(r.id) for r in runs]
    for key in sorted({k for p in params for k in p}):
        rows.append(_row(f"param.{key}", key, "", "params", [p.get(key) for p in params], None))
    return Comparison(runs, rows, target_info, carbon)


def _rank(figs: Sequence[dict[str, Any]]) -> tuple[str, list[int | None]] | None:
    """1 for the run that used the least energy: its process share (+ GPU) when every run
    has one, else node + GPU. Ties share a rank."""
    key = "process_total_energy_joules"
    label = "rank by process energy"
    if not all(f[key] is not None for f in figs):
        key, label = "total_energy_joules", "rank by node energy"
    values = [f[key] for f in figs]
    known = sorted({v for v in values if v is not None})
    if len(known) < 1:
        return None
    return label, [None if v is None else 1 + sum(1 for k in known if k < v) for v in values]
