"""``wattspan run`` overhead on a CPU-bound child: bare child vs the same child under wattspan.

Run: ``python bench/bench_run_overhead.py [--reps N] [--seconds S] [--parallel K] [--interval S]
[--fixed-reps N]``

Targets: the child's wall time under ``wattspan run`` (default 0.1 s sampling interval,
``--store`` in a temporary directory) is at most 1.01x its bare wall time; ``wattspan run``
end to end at most 1.02x the bare child on a 3 s child, with a fixed cost (end-to-end minus
the child's wall time: wattspan's start-up before the spawn and its end after the child
exited) under 50 ms (issue 15: the child starts first and the agent comes up beside it).
The fixed cost is also shown for ``wattspan run -- true`` against bare ``true`` (there the
whole agent start-up follows the child's end), as min and median of ``--fixed-reps`` runs:
on a loaded machine the min is the figure to compare.

The child is ``python3 -c <busy loop>`` with a fixed amount of work, calibrated once so that
the bare child takes about ``--seconds``; with ``--parallel K`` it forks K-1 copies so K
cores are busy (K = the number of CPUs leaves wattspan no idle core to sample from). Bare and
wrapped runs are interleaved (ABBA order, after one unmeasured warm-up of each), and the
medians are compared. Three wall times are reported for each run:

  loop         the busy loop timed by the child itself (perf_counter around the loop):
               pure interference, no process start-up on either side.
  child        spawn to exit of the child process: for bare runs as this script sees it
               (Popen to wait), under wattspan as wattspan reports it (``wall_seconds`` in
               ``--json``: Popen to wait4). This is the figure the target applies to.
  end-to-end   ``wattspan run ...`` as a whole, including wattspan's own start-up (imports,
               store), the final sample and the summary; for bare runs the same as child.

On a VM whose host is shared, two identical bare runs differ by several per cent (the noise
floor line), more than the targets' 1-2 % margins, so the script also decomposes the ratios
into parts it measures free of that drift: the child's time waiting in a run queue
(``/proc/self/schedstat`` around its loop: what wattspan's threads take from a core the child
runs on; a slower host shows as time on a CPU instead) and the fixed cost (end-to-end minus
the child's wall time, both from the same run). Cache and memory-bandwidth contention from
wattspan on another core, a hyperthread sibling and clock frequency are in neither part, so
the decomposed figure is a lower bound on the slowdown. The last line gives one verdict per
target: from the wall-clock ratio when the run's noise floor is inside that target's margin
(1 % for the child, 2 % end to end), else from the decomposition (``--parallel 1`` only:
schedstat covers the child's first process), and says which.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    children_cpu_seconds,
    machine,
    median,
    node_busy_seconds,
    verdict,
    wattspan_cmd,
)

TARGET = 1.01
E2E_TARGET = 1.02
FIXED_TARGET_S = 0.050

CHILD = r"""
import os, sys, time
n, k = int(sys.argv[1]), int(sys.argv[2])
def work():
    x = 0
    for i in range(n):
        x += i * i
    return x
def schedstat():
    # ns on a CPU, ns waiting in a run queue (sched_info; zeros where the kernel has none)
    try:
        with open("/proc/self/schedstat") as f:
            return [int(v) for v in f.read().split()[:2]]
    except (OSError, ValueError):
        return [0, 0]
s0 = schedstat()
t = time.perf_counter()
kids = []
for _ in range(k - 1):
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    kids.append(pid)
work()
for pid in kids:
    os.waitpid(pid, 0)
wall = time.perf_counter() - t
s1 = schedstat()
print(f"LOOP {wall:.6f} {(s1[0] - s0[0]) / 1e9:.6f} {(s1[1] - s0[1]) / 1e9:.6f}", flush=True)
"""


_LOOP_KEYS = ("loop", "oncpu", "waited")


def _loop(stdout: str) -> dict[str, float]:
    """The child's own figures for its loop (its first process): wall time, and the
    kernel's accounting of that process meanwhile: time on a CPU and time it was runnable
    but waited in a run queue (``/proc/self/schedstat``)."""
    for line in stdout.splitlines():
        if line.startswith("LOOP "):
            return dict(zip(_LOOP_KEYS, (float(v) for v in line.split()[1:4]), strict=True))
    raise RuntimeError(f"child printed no LOOP line: {stdout!r}")


def child_cmd(python: str, n: int, k: int) -> list[str]:
    return [python, "-c", CHILD, str(n), str(k)]


class _Load:
    """CPU that processes other than this script's children used while one run lasted."""

    def __enter__(self) -> _Load:
        self.b0, self.c0 = node_busy_seconds(), children_cpu_seconds()
        self.p0, self.w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.w0
        self.children_cpu = children_cpu_seconds() - self.c0
        ours = self.children_cpu + time.process_time() - self.p0
        self.cores = max(node_busy_seconds() - self.b0 - ours, 0.0) / wall


def install_kind() -> str:
    """How the wattspan the bench runs is installed: an editable install's import finder
    costs every start-up several ms that ``pip install .`` (what users run) does not. Asked
    from outside the source tree, whose ``wattspan.egg-info`` would answer otherwise."""
    probe = (
        "import json; from importlib import metadata\n"
        "try: d = metadata.distribution('wattspan')\n"
        "except metadata.PackageNotFoundError: print('none'); raise SystemExit\n"
        "u = json.loads(d.read_text('direct_url.json') or '{}')\n"
        "print('editable' if u.get('dir_info', {}).get('editable') else 'regular')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", check=False
    ).stdout.strip()
    return {"editable": "editable install", "regular": "regular install"}.get(out, "not installed")


def run_bare(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    with _Load() as load:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    return {
        **_loop(out.stdout),
        "child": wall,
        "end_to_end": wall,
        "other_load": load.cores,
    }


def run_wrapped(
    cmd: list[str], env: dict[str, str], store: Path, interval: float | None
) -> dict[str, float]:
    argv = [*wattspan_cmd(), "run", "--json", "--store", str(store), "--name", "bench"]
    if interval is not None:
        argv += ["--interval", str(interval)]
    with _Load() as load:
        t0 = time.perf_counter()
        out = subprocess.run([*argv, "--", *cmd], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"wattspan run failed ({out.returncode}): {out.stderr[-2000:]}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # --json sends the child's stdout to stderr, so that stdout is the summary alone.
    loop = _loop(out.stderr) if "LOOP " in out.stderr else dict.fromkeys(_LOOP_KEYS, 0.0)
    return {
        **loop,
        "child": float(summary["wall_seconds"]),
        "end_to_end": wall,
        "other_load": load.cores,
        # wattspan's own CPU: all CPU of the wattspan process tree minus the child tree's
        # (the summary's cpu_seconds, exact from wait4).
        "agent_cpu": load.children_cpu - float(summary["cpu_seconds"]),
    }


def run_bare_plain(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


def calibrate(python: str, seconds: float, env: dict[str, str]) -> int:
    n = 2_000_000
    # The median of three: one run on a noisy host can be 30 % off, and the targets are
    # stated for a child of ``seconds``.
    loop = median([run_bare(child_cmd(python, n, 1), env)["loop"] for _ in range(3)])
    return max(int(n * seconds / loop), 1000)


def _resolve(python: str) -> str:
    """The real interpreter behind ``python`` (a pyenv shim costs ~100 ms per start)."""
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
    )
    return out.stdout.strip() or python


def _table(bare: list[dict[str, float]], wrapped: list[dict[str, float]]) -> dict[str, float]:
    print(f"  {'median wall time':16} {'bare':>10} {'wattspan':>10} {'ratio':>8}")
    ratios = {}
    for key, label in (("loop", "loop"), ("child", "child"), ("end_to_end", "end-to-end")):
        mb = median([r[key] for r in bare])
        mw = median([r[key] for r in wrapped])
        ratios[key] = mw / mb
        print(f"  {label:16} {mb:9.3f}s {mw:9.3f}s {mw / mb:7.4f}x")
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=8, help="measured runs of each kind (8)")
    ap.add_argument("--seconds", type=float, default=3.0, help="bare child's target time (3)")
    ap.add_argument("--parallel", type=int, default=1, help="busy processes in the child (1)")
    ap.add_argument(
        "--interval", type=float, default=None, help="wattspan run --interval (its default 0.1)"
    )
    ap.add_argument(
        "--fixed-reps", type=int, default=20, help="runs of `wattspan run -- true` (20)"
    )
    ap.add_argument("--python", default="python3", help="interpreter for the child (python3)")
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=0.05,
        help="a pair of runs is 'quiet' when other processes used less than this many cores "
        "during both (0.05)",
    )
    args = ap.parse_args()
    python = _resolve(args.python)

    with tempfile.TemporaryDirectory(prefix="wattspan-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WATTSPAN_", "OTEL_"))}
        env.update(XDG_DATA_HOME=f"{tmp}/data", XDG_STATE_HOME=f"{tmp}/state")
        # An installed wattspan has its bytecode cached; let the editable checkout cache it too.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # The bare child gets variables of the same size as those wattspan adds, so both
        # children start with the same environment (and stack) layout.
        bare_env = dict(
            env,
            WATTSPAN_RUN_ID=str(uuid.uuid4()),
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:40000",
        )
        store = Path(tmp) / "bench.db"
        n = calibrate(python, args.seconds, bare_env)
        cmd = child_cmd(python, n, args.parallel)
        print(f"machine: {machine()}")
        print(f"wattspan: {' '.join(wattspan_cmd())} ({install_kind()})")
        print(
            f"child: {python} busy loop of {n} iterations x {args.parallel} process(es); "
            f"wattspan run --interval {args.interval or 'default (0.1)'} --store {store.name}"
        )
        run_bare(cmd, bare_env)  # warm-up: page cache, store schema
        run_wrapped(cmd, env, store, args.interval)
        # wattspan's fixed CPU (start-up, baseline and final samples, summary) around a child
        # that does nothing: the rest of its CPU in the real runs is sampling.
        trues = [run_wrapped(["true"], env, store, args.interval) for _ in range(args.fixed_reps)]
        fixed_cpu = median([r["agent_cpu"] for r in trues])
        bare_true = [run_bare_plain(["true"], env) for _ in range(args.fixed_reps)]
        bare: list[dict[str, float]] = []
        wrapped: list[dict[str, float]] = []
        for i in range(args.reps):
            order = ("bare", "wrapped") if i % 2 == 0 else ("wrapped", "bare")
            for kind in order:
                if kind == "bare":
                    bare.append(run_bare(cmd, bare_env))
                else:
                    wrapped.append(run_wrapped(cmd, env, store, args.interval))
            b, w = bare[-1], wrapped[-1]
            print(
                f"  rep {i + 1}: bare child {b['child']:.3f} s (loop {b['loop']:.3f}, "
                f"other load {b['other_load']:.2f} cores) | wattspan child {w['child']:.3f} s "
                f"(loop {w['loop']:.3f}, end-to-end {w['end_to_end']:.3f}, "
                f"other load {w['other_load']:.2f} cores)"
            )

    print()
    print(f"all {len(bare)} pairs:")
    ratios = _table(bare, wrapped)
    quiet = [
        (b, w)
        for b, w in zip(bare, wrapped, strict=True)
        if max(b["other_load"], w["other_load"]) < args.quiet_load
    ]
    if quiet:
        print(f"{len(quiet)} quiet pairs (other processes < {args.quiet_load} cores during both):")
        ratios = _table([b for b, _ in quiet], [w for _, w in quiet])
    else:
        print("no quiet pair: the machine was busy with other work throughout; ratios are noisy")
    fixed_all = [r["end_to_end"] - r["child"] for r in wrapped]
    fixed, fixed_min = median(fixed_all), min(fixed_all)
    print(
        f"wattspan's fixed cost on the {args.seconds:g} s child (end-to-end minus child): "
        f"min {fixed_min * 1e3:.1f} ms, median {fixed * 1e3:.1f} ms "
        f"(target < {FIXED_TARGET_S * 1e3:.0f} ms: min {verdict(fixed_min, FIXED_TARGET_S)}, "
        f"median {verdict(fixed, FIXED_TARGET_S)})"
    )
    true_cost = [t["end_to_end"] - b for t, b in zip(trues, bare_true, strict=True)]
    print(
        f"`wattspan run -- true` minus bare `true`, {len(trues)} runs: "
        f"min {min(true_cost) * 1e3:.1f} ms, median {median(true_cost) * 1e3:.1f} ms "
        "(the agent's whole start-up follows the child's end here; no target)"
    )
    agent_cpu = median([r["agent_cpu"] for r in wrapped])
    child_wall = median([r["child"] for r in wrapped])
    sampling = max(agent_cpu - fixed_cpu, 0.0)
    stolen = sampling / (child_wall * args.parallel)
    print(
        f"wattspan's own CPU per run: {agent_cpu:.3f} s, of which fixed {fixed_cpu:.3f} s "
        f"(start-up, first/last sample, summary: `wattspan run -- true`) and sampling "
        f"{sampling:.3f} s = {sampling / child_wall * 100:.2f}% of one core while the child ran"
    )
    print(
        f"  if every core the child uses were contended, sampling would slow it by about "
        f"{stolen * 100:.2f}% (CPU-time estimate, insensitive to other load): "
        f"{1 + stolen:.4f}x ({verdict(1 + stolen, TARGET)})"
    )
    # The same bare child run after run: how far two runs differ with no wattspan at all.
    # On a VM whose host is shared this is often several per cent, more than the targets'
    # margins; a ratio inside it cannot be told from the machine's own drift.
    drift = [abs(b2["loop"] / b1["loop"] - 1) for b1, b2 in itertools.pairwise(bare)]
    if drift:
        print(
            f"noise floor: consecutive bare runs differ by a median {median(drift) * 100:.1f}% "
            f"(max {max(drift) * 100:.1f}%) in their own loop time; the loop ratio above "
            "(no wattspan code inside the timed loop) shows what of a ratio is drift"
        )
    # The kernel's view of the same loops: what wattspan can do to a CPU-bound child on a
    # core of its own is take that core from it, which the child then spends waiting in a
    # run queue (schedstat). Host drift (a neighbour VM, steal) shows in the time on a CPU
    # instead, so the difference in waiting is wattspan's share of the slowdown, free of
    # that drift; not in it: cache and memory-bandwidth contention from the other core.
    waited_b = median([r["waited"] for r in bare])
    waited_w = median([r["waited"] for r in wrapped])
    loop_b = median([r["loop"] for r in bare])
    child_b = median([r["child"] for r in bare])
    print(
        f"the kernel's view of the child's loop (schedstat, medians): on a CPU "
        f"{median([r['oncpu'] for r in bare]):.3f} s bare, "
        f"{median([r['oncpu'] for r in wrapped]):.3f} s under wattspan; waiting in a run queue "
        f"{waited_b * 1e3:.1f} ms bare, {waited_w * 1e3:.1f} ms under wattspan"
    )
    contention = max(waited_w - waited_b, 0.0) / loop_b if loop_b > 0 else 0.0
    est_child = 1 + contention
    # The target is stated for a 3 s child: the fixed cost over that, and over the child
    # as it ran here (calibrated to it, but the host's speed drifts).
    est_e2e = 1 + contention + fixed / args.seconds
    est_here = 1 + contention + fixed / child_b if child_b > 0 else 0.0
    print(
        f"  decomposed (drift-free, a lower bound: run-queue wait + fixed cost, each measured "
        f"in this run): "
        f"child {est_child:.4f}x ({verdict(est_child, TARGET)}), end-to-end on a "
        f"{args.seconds:g} s child {est_e2e:.4f}x ({verdict(est_e2e, E2E_TARGET)}; "
        f"{est_here:.4f}x on the {child_b:.2f} s the bare child took here)"
    )
    print()
    print(
        f"ratio child under wattspan / bare: {ratios['child']:.4f}x "
        f"(target <= {TARGET}x: {verdict(ratios['child'], TARGET)})"
    )
    print(
        f"ratio end-to-end / bare:           {ratios['end_to_end']:.4f}x "
        f"(target <= {E2E_TARGET}x: {verdict(ratios['end_to_end'], E2E_TARGET)})"
    )
    # One verdict per target: the wall-clock ratio where this run's noise floor is inside
    # that target's margin (it can then tell), else the decomposed figure, saying which.
    # The decomposition needs schedstat figures and covers the child's first process only.
    floor = median(drift) if drift else 0.0
    decomposable = args.parallel == 1 and all(r["oncpu"] > 0 for r in (*bare, *wrapped))
    parts = []
    for label, wall_ratio, est, target in (
        ("child", ratios["child"], est_child, TARGET),
        ("end-to-end", ratios["end_to_end"], est_e2e, E2E_TARGET),
    ):
        if floor <= target - 1:
            parts.append(f"{label} {wall_ratio:.4f}x ({verdict(wall_ratio, target)}, wall clock)")
        elif decomposable:
            parts.append(f"{label} {est:.4f}x ({verdict(est, target)}, decomposed)")
        else:
            parts.append(f"{label} undecided (noise floor {floor * 100:.1f}%, no decomposition)")
    print(
        f"verdict: {', '.join(parts)}, fixed cost median {fixed * 1e3:.1f} ms "
        f"({verdict(fixed, FIXED_TARGET_S)}). Wall clock where the noise floor "
        f"({floor * 100:.1f}% between consecutive identical runs) is inside the target's "
        "margin; else decomposed, a lower bound on the slowdown: a hyperthread sibling, "
        "clock frequency and cache contention from wattspan's other core are not in it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
