"""The experiments harness against Debian's ``hyperfine`` on the same command.

Run: ``python bench/bench_experiment.py [--rounds 3] [--loops N] [--runs 10] [--warmup 2]``

Both tools run the same CPU-bound command (``python3 -S -c <loop>``) ``--warmup 2 --runs 10``:
hyperfine with ``-N`` (no shell in between; its ``--export-json`` gives each run's time),
wattspan as an experiment (``order = "sequential"``, one configuration, the ``command`` kind:
every repetition under the measuring of ``wattspan run`` and stored). The two alternate for
``--rounds`` rounds (hyperfine, wattspan, hyperfine, ...) so that drift of a shared machine
lands on both; means are pooled over the rounds.

Targets (the issue): the mean wall time of a repetition is within 2 % of hyperfine's, and the
harness's own time per repetition (the loop's elapsed time minus the repetitions' wall times,
divided by their number: starting the embedded agent, the store writes, the figures) is
under 50 ms. Also printed: what hyperfine does not measure, per repetition: CPU seconds,
node and process energy (RAPL or the power model, labelled), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine

WALL_TARGET = 0.02
OVERHEAD_TARGET = 0.050
LOOP = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"


def hyperfine(cmd: list[str], warmup: int, runs: int, out: Path) -> list[float]:
    import shlex

    subprocess.run(
        [
            "hyperfine",
            "-N",
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
            "--export-json",
            str(out),
            "--style",
            "none",
            shlex.join(cmd),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return [float(t) for t in json.loads(out.read_text())["results"][0]["times"]]


def wattspan_round(cmd: list[str], warmup: int, runs: int, d: Path) -> dict[str, object]:
    from wattspan.experiments.config import parse_config
    from wattspan.experiments.loop import run_experiment
    from wattspan.experiments.store import ExperimentStore, measured

    cfg = parse_config(
        {
            "experiment": {
                "name": "bench",
                "warmups": warmup,
                "repetitions": runs,
                "order": "sequential",
            },
            "quiet": {"check": "off"},
            "run": [{"kind": "command", "argv": cmd}],
        }
    )
    res = run_experiment(cfg, store_path=d / "s.db", progress=False, notify=lambda m: None)
    es = ExperimentStore(d / "s.db")
    try:
        reps = es.repetitions(res.experiment.id)
    finally:
        es.close()
    ok = measured(reps)
    return {
        "walls": [r.figures["wall_seconds"] for r in ok],
        "overhead": (res.elapsed - res.measured_wall) / res.ran,
        "figures": [r.figures for r in ok],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loops", type=int, default=3_000_000, help="iterations of the loop")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("hyperfine") is None:
        print("hyperfine not found: apt-get install hyperfine", file=sys.stderr)
        return 1
    cmd = [shutil.which("python3") or sys.executable, "-S", "-c", LOOP, str(args.loops)]
    print(f"machine: {machine()}")
    print(
        f"command: python3 -S -c <loop> {args.loops}; --warmup {args.warmup} --runs {args.runs}"
        f", {args.rounds} alternating rounds"
    )
    hf: list[float] = []
    ws: list[float] = []
    overheads: list[float] = []
    figs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for i in range(args.rounds):
            h = hyperfine(cmd, args.warmup, args.runs, d / f"hf{i}.json")
            t0 = time.monotonic()
            w = wattspan_round(cmd, args.warmup, args.runs, d)
            el = time.monotonic() - t0
            hf += h
            ws += w["walls"]  # type: ignore[arg-type]
            overheads.append(w["overhead"])  # type: ignore[arg-type]
            figs += w["figures"]  # type: ignore[arg-type]
            print(
                f"round {i + 1}: hyperfine mean {statistics.mean(h) * 1e3:8.2f} ms | wattspan "
                f"mean {statistics.mean(w['walls']) * 1e3:8.2f} ms, harness "  # type: ignore[arg-type]
                f"{w['overhead'] * 1e3:5.1f} ms/rep, round {el:5.1f} s"
            )
    mh, mw = statistics.mean(hf), statistics.mean(ws)
    diff = mw / mh - 1.0
    over = statistics.mean(overheads)
    print()
    print(
        f"hyperfine  mean wall {mh * 1e3:8.2f} ms  sd {statistics.stdev(hf) * 1e3:6.2f} ms "
        f"(n={len(hf)})"
    )
    print(
        f"wattspan   mean wall {mw * 1e3:8.2f} ms  sd {statistics.stdev(ws) * 1e3:6.2f} ms "
        f"(n={len(ws)})"
    )
    print(
        f"mean wall difference {diff * 100:+.2f} %  (target within ±{WALL_TARGET * 100:.0f} %): "
        f"{'target met' if abs(diff) <= WALL_TARGET else 'target missed'}"
    )
    print(
        f"harness overhead {over * 1e3:.1f} ms per repetition (target < "
        f"{OVERHEAD_TARGET * 1e3:.0f} ms): "
        f"{'target met' if over < OVERHEAD_TARGET else 'target missed'}"
    )

    def mean_of(key: str) -> float | None:
        vals = [f[key] for f in figs if isinstance(f.get(key), int | float)]
        return statistics.mean(vals) if vals else None  # type: ignore[arg-type]

    est = any(f.get("energy_estimated") for f in figs)
    print("per repetition, beyond hyperfine (means):")
    for key, unit in (
        ("cpu_seconds", "s"),
        ("energy_joules", "J"),
        ("process_energy_joules", "J"),
        ("peak_rss_bytes", "B"),
    ):
        v = mean_of(key)
        note = " (estimated: power model)" if est and "energy" in key else ""
        print(f"  {key:24s} {'-' if v is None else f'{v:.4g}'} {unit}{note}")
    print(
        "  spans: the command's own OTel spans are stored per repetition (none here: the "
        "loop is not instrumented)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
