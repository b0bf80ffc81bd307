"""``wattspan dashboards``: write Grafana dashboards and the provisioning files that load them.

Parsing lives here too (``add_parser``), so the CLI's parser module stays small; grafanalib
is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser(
        "dashboards",
        parents=[common],
        help="write Grafana dashboards (JSON) and provisioning files",
        description="Generate the wattspan Grafana dashboards for InfluxDB and/or Prometheus "
        "plus provisioning files (a dashboards provider, the datasources). Copy "
        "DIR/provisioning/* to /etc/grafana/provisioning/ and the JSON to --dashboards-path.",
    )
    d.add_argument("-o", "--output", metavar="DIR", default="grafana", help="(grafana)")
    d.add_argument(
        "--datasource", choices=["influxdb", "prometheus", "both"], default="both", help="(both)"
    )
    d.add_argument(
        "--dashboards-path",
        metavar="PATH",
        help="where Grafana reads the JSON files (the provider's options.path); "
        "default: the absolute path of DIR/dashboards",
    )
    d.add_argument("--influxdb-name", default="wattspan InfluxDB")
    d.add_argument("--influxdb-uid", default="wattspan-influxdb")
    d.add_argument("--influxdb-url", default="http://localhost:8086")
    d.add_argument("--influxdb-database", default="wattspan", help="InfluxQL database (wattspan)")
    d.add_argument("--prometheus-name", default="wattspan Prometheus")
    d.add_argument("--prometheus-uid", default="wattspan-prometheus")
    d.add_argument("--prometheus-url", default="http://localhost:9090")
    d.add_argument("--prometheus-job", default="", help="job label of the agents' scrape job")


def cmd_dashboards(args: argparse.Namespace) -> int:
    from wattspan.dashboards import Settings
    from wattspan.dashboards.provisioning import write

    for uid in (args.influxdb_uid, args.prometheus_uid):
        # Grafana refuses datasource uids over 40 characters or outside [A-Za-z0-9_-].
        if not uid or len(uid) > 40 or not all(c.isalnum() or c in "-_" for c in uid):
            print(f"wattspan: invalid datasource uid {uid!r}", file=sys.stderr)
            return 2
    settings = Settings(
        influxdb_name=args.influxdb_name,
        influxdb_uid=args.influxdb_uid,
        influxdb_url=args.influxdb_url,
        influxdb_database=args.influxdb_database,
        prometheus_name=args.prometheus_name,
        prometheus_uid=args.prometheus_uid,
        prometheus_url=args.prometheus_url,
        prometheus_job=args.prometheus_job,
    )
    kinds = ("influxdb", "prometheus") if args.datasource == "both" else (args.datasource,)
    written = write(Path(args.output), settings, kinds, dashboards_path=args.dashboards_path)
    for p in written:
        print(p)
    return 0
