"""``wattspan status``: what a running agent is doing, read from its ``/metrics``."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from wattspan.agent.config import load_config
from wattspan.agent.errors import ConfigError

# Components whose self-metrics the status shows, by metric-name prefix.
_PREFIXES = {
    "wattspan_exporter_": "exporter",
    "wattspan_receiver_": "receiver",
    "wattspan_ingest_": "ingest",
    "wattspan_store_": "store",
}


def scrape(url: str, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """``{component: {key: value}}`` from an agent's exposition."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for prefix, kind in _PREFIXES.items():
                if not s.name.startswith(prefix):
                    continue
                comp = f"{kind}:{s.labels.get(kind, '?')}"
                key = s.name[len(prefix) :]
                if key.endswith("_info") and "value" in s.labels:
                    out[comp][key[: -len("_info")]] = s.labels["value"]
                else:
                    out[comp][key] = s.value
        if fam.name == "wattspan_scheduler_ticks":
            out["scheduler"]["ticks_total"] = fam.samples[0].value
        if fam.name == "wattspan_scheduler_missed_ticks":
            out["scheduler"]["missed_ticks_total"] = fam.samples[0].value
    return dict(out)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wattspan: config error: {exc}", file=sys.stderr)
        return 2
    host = config["metrics"]["listen"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = args.metrics_port or config["metrics"]["port"]
    url = f"http://{host}:{port}/metrics"
    try:
        status = scrape(url)
    except (urllib.error.URLError, OSError) as exc:
        print(f"wattspan: no agent answering at {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(status, sort_keys=True) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"wattspan agent at {host}:{port}")
    t.add_column("component")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for comp in sorted(status):
        for key, value in sorted(status[comp].items()):
            shown = (
                f"{value:,.0f}" if isinstance(value, float) and value.is_integer() else str(value)
            )
            t.add_row(comp, key, shown)
    Console().print(t)
    return 0
