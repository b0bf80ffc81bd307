"""Builds the enabled collectors from configuration sections ``collectors.<name>``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from wattspan.collectors.base import Collector, CollectorUnavailable

log = logging.getLogger("wattspan.collectors")


def build_collectors(
    sections: Mapping[str, Mapping[str, Any]],
    process_roots: Iterable[int] | None = None,
) -> list[Collector]:
    """The collectors to run. Sources missing on this node are logged once and skipped.

    ``process_roots`` overrides ``collectors.process.pids`` (``wattspan run`` passes the
    child's PID). The power model runs when ``enabled = "always"``, or with ``"auto"`` when
    no RAPL domain is readable.
    """
    from wattspan.collectors import cpu, memory, power_model, process

    def conf(name: str) -> Mapping[str, Any]:
        return sections.get(f"collectors.{name}", {})

    out: list[Collector] = []
    if conf("cpu").get("enabled", True):
        out.append(cpu.create(percpu=conf("cpu").get("percpu", True)))
    if conf("memory").get("enabled", True):
        out.append(memory.create())
    if conf("process").get("enabled", True):
        # The daemon watches itself unless told which trees to watch; ``wattspan run`` passes
        # an explicit (initially empty) list and adds the child once it is spawned.
        if process_roots is not None:
            roots = list(process_roots)
        else:
            roots = list(conf("process").get("pids") or [os.getpid()])
        out.append(process.create(roots, per_process=conf("process").get("per_process", True)))
    # ``wattspan run`` (explicit roots) watches its child from its first instant and samples
    # 10 times a second: reading every process on the node as often would cost more than its
    # overhead budget for nothing it lacks.
    if conf("node_processes").get("enabled", True) and process_roots is None:
        from wattspan.collectors import node_processes

        out.append(
            node_processes.create(max_processes=conf("node_processes").get("max_processes", 4096))
        )
    have_rapl = False
    if conf("rapl").get("enabled", True):
        from wattspan.collectors import rapl

        try:
            out.append(rapl.create(root=conf("rapl").get("root", "/sys/class/powercap")))
            have_rapl = True
        except CollectorUnavailable as exc:
            log.warning("rapl: %s", exc) if "energy_uj" in str(exc) else log.info("rapl: %s", exc)
    if conf("nvml").get("enabled", True):
        from wattspan.collectors import nvml

        try:
            out.append(nvml.create())
        except CollectorUnavailable as exc:
            log.info("nvml: %s", exc)
    mode = conf("power_model").get("enabled", "auto")
    if mode == "always" or (mode == "auto" and not have_rapl):
        pm = conf("power_model")
        collector = power_model.create(pm.get("tdp_watts"), pm.get("idle_fraction", 0.3))
        log.info(
            "power model on: CPU energy is estimated from utilisation and TDP %.0f W "
            "(labelled estimated=true)",
            collector.tdp_watts,
        )
        out.append(collector)
    return out
