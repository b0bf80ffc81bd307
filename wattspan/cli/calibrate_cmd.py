"""``wattspan calibrate``: measure this host's idle power once, for attribution to use.

Run it on a quiet node (nothing but the OS). The figure goes to ``calibration.json`` in the
agent's state directory, where every later ``wattspan agent`` and ``wattspan run`` on this
host finds it and charges exactly that much of the node's power as idle
(``idle_method = "calibration"``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from wattspan.agent.config import load_config
from wattspan.agent.errors import ConfigError


def cmd_calibrate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wattspan: config error: {exc}", file=sys.stderr)
        return 2
    from wattspan.agent.attribution import build_series, primary_domains
    from wattspan.agent.idle import calibrate, interval_power
    from wattspan.collectors import cpu, rapl
    from wattspan.collectors.base import CollectorUnavailable

    try:
        meter = rapl.create(root=config["collectors.rapl"]["root"])
    except CollectorUnavailable as exc:
        print(
            f"wattspan: nothing to calibrate: {exc}. Without RAPL the power model's own idle "
            "figure (collectors.power_model.idle_fraction x tdp_watts) is used.",
            file=sys.stderr,
        )
        return 1
    load = cpu.create(percpu=False)
    samples = []
    deadline = time.monotonic() + args.seconds
    print(f"measuring idle power for {args.seconds:g} s; keep the node quiet", file=sys.stderr)
    while True:
        now = time.time()
        samples.extend(meter.sample(now))
        samples.extend(load.sample(now))
        if time.monotonic() >= deadline:
            break
        time.sleep(args.interval)
    series = build_series(samples)
    domains = primary_domains(series.energy)
    power, busy = interval_power(series, domains)
    if len(power) < 2:
        print("wattspan: too few RAPL readings; calibrate for longer", file=sys.stderr)
        return 1
    cal = calibrate(
        power,
        busy / (os.cpu_count() or 1),
        host=config.host,
        domains=domains,
        seconds=args.seconds,
    )
    path = cal.save(config.state_dir)
    print(
        f"idle power {cal.idle_watts:.2f} W over {', '.join(domains)} "
        f"(CPU {100 * cal.busy_ratio:.1f} % busy): saved to {path}"
    )
    if not cal.quiet:
        print(
            f"wattspan: the node was not quiet ({100 * cal.busy_ratio:.1f} % of CPU busy on "
            "average): the figure is probably too high; run again when the node is idle",
            file=sys.stderr,
        )
    return 0
