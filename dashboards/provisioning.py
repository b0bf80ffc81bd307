"""Write dashboards and Grafana's provisioning files for them.

Layout under the output directory::

    dashboards/<uid>.json
    provisioning/dashboards/wattspan.yaml    (a file provider reading dashboards/)
    provisioning/datasources/wattspan.yaml   (the InfluxDB and/or Prometheus datasources)

The YAML is written by hand (JSON strings are valid YAML scalars), so the agent needs no
YAML library.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from . import build_dashboards
from .panels import Kind, Settings


def _q(s: str) -> str:
    return json.dumps(s)


def dashboards_yaml(path: str, folder: str = "wattspan") -> str:
    return (
        "apiVersion: 1\n"
        "providers:\n"
        f"  - name: {_q('wattspan')}\n"
        f"    folder: {_q(folder)}\n"
        "    type: file\n"
        "    disableDeletion: false\n"
        "    allowUiUpdates: true\n"
        "    updateIntervalSeconds: 60\n"
        "    options:\n"
        f"      path: {_q(path)}\n"
        "      foldersFromFilesStructure: false\n"
    )


def datasources_yaml(settings: Settings, kinds: Iterable[Kind]) -> str:
    lines = ["apiVersion: 1", "datasources:"]
    for kind in kinds:
        lines += [
            f"  - name: {_q(settings.name(kind))}",
            f"    type: {kind}",
            f"    uid: {_q(settings.uid(kind))}",
            "    access: proxy",
        ]
        if kind == "influxdb":
            lines += [
                f"    url: {_q(settings.influxdb_url)}",
                "    jsonData:",
                "      version: InfluxQL",
                f"      dbName: {_q(settings.influxdb_database)}",
                "      httpMode: GET",
            ]
        else:
            lines += [
                f"    url: {_q(settings.prometheus_url)}",
                "    jsonData:",
                "      httpMethod: POST",
                '      timeInterval: "5s"',
            ]
    return "\n".join(lines) + "\n"


def write(
    out_dir: Path,
    settings: Settings | None = None,
    kinds: Iterable[Kind] = ("influxdb", "prometheus"),
    *,
    dashboards_path: str | None = None,
) -> list[Path]:
    """Write everything under ``out_dir``; returns the files written.

    ``dashboards_path`` is where Grafana will find the JSON files (the provider's
    ``options.path``); default: the absolute path of ``out_dir/dashboards``.
    """
    settings = settings or Settings()
    kinds = tuple(kinds)
    written: list[Path] = []
    dash_dir = out_dir / "dashboards"
    dash_dir.mkdir(parents=True, exist_ok=True)
    for uid, data in sorted(build_dashboards(settings, kinds).items()):
        p = dash_dir / f"{uid}.json"
        p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        written.append(p)
    prov = out_dir / "provisioning"
    (prov / "dashboards").mkdir(parents=True, exist_ok=True)
    (prov / "datasources").mkdir(parents=True, exist_ok=True)
    p = prov / "dashboards" / "wattspan.yaml"
    p.write_text(dashboards_yaml(dashboards_path or str(dash_dir.resolve())))
    written.append(p)
    p = prov / "datasources" / "wattspan.yaml"
    p.write_text(datasources_yaml(settings, kinds))
    written.append(p)
    return written
