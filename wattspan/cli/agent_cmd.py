"""``wattspan agent``: the daemon's main loop, signals and systemd notifications."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from types import FrameType

from wattspan.agent.config import load_config
from wattspan.agent.errors import ConfigError
from wattspan.agent.store import StoreError

log = logging.getLogger("wattspan.agent")


def _port_arg(flag: str, port: int) -> int:
    if not 0 <= port <= 65535:
        raise ConfigError(flag, f"not a port: {port}")
    return port


def cmd_agent(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if args.interval:
            config["agent"]["interval"] = args.interval
        if args.metrics_port is not None:
            config["metrics"]["port"] = _port_arg("--metrics-port", args.metrics_port)
        if args.metrics_listen:
            config["metrics"]["listen"] = args.metrics_listen
        if args.otlp_port is not None:
            config["otlp"]["port"] = _port_arg("--otlp-port", args.otlp_port)
        if args.store:
            config["store"]["path"] = args.store
        if args.no_store:
            config["store"]["enabled"] = False
        logging.getLogger().setLevel(
            args.log_level.upper() if args.log_level else config["agent"]["log_level"].upper()
        )
        from wattspan.agent.daemon import Agent

        agent = Agent(config)
    except ConfigError as exc:
        print(f"wattspan: config error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        return 2

    from wattspan.agent import systemd

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
    except OSError as exc:
        print(f"wattspan: {exc}", file=sys.stderr)
        agent.stop()
        return 1
    log.info(
        "agent started: %d collectors (%s), interval %.3g s, config %s",
        len(agent.collectors),
        ", ".join(c.name for c in agent.collectors),
        agent.interval,
        config.source,
    )
    from wattspan.agent.daemon import tune_gc

    tune_gc()
    systemd.notify("READY=1\nSTATUS=sampling")
    ping = systemd.watchdog_interval()
    wait = min(ping, 5.0) if ping else 5.0
    while not stop.wait(wait):
        if ping:
            systemd.notify("WATCHDOG=1")
        agent.maintain()
    systemd.notify("STOPPING=1")
    log.info("stopping: flushing")
    began = time.monotonic()
    agent.stop(exit_code=0)
    agent.close_store()
    # The last word, as a collector's: what this process took in and what it turned away
    # (an exporter left holding records says so itself when it closes).
    rx = agent.receiver.stats() if agent.receiver is not None else {}
    log.info(
        "stopped in %.2f s: received %d spans (%d rejected), %d metric points (%d rejected)",
        time.monotonic() - began,
        rx.get("spans_received_total", 0),
        rx.get("spans_rejected_total", 0),
        rx.get("metric_points_received_total", 0),
        rx.get("metric_points_rejected_total", 0),
    )
    return 0
