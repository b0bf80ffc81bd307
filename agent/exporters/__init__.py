"""Exporters: every output the agent writes its records to.

- ``sqlite``: the embedded store as a sink (on by default, ``[store]``);
- ``prometheus``: the ``/metrics`` endpoint (``[metrics]``);
- ``influxdb/``: InfluxDB v1/v2 over HTTP with a disk queue (``[exporters.influxdb]``).

The first two are wired by the agent from their own config sections. Those configured as
``[exporters.<name>]`` tables are subpackages exposing
``from_config(section, *, state_dir, host) -> Sink``; the agent core knows none of them by
name: it calls :func:`build_all` on the ``[exporters]`` table. Imports are lazy so that an
agent that does not use InfluxDB never imports its exporter.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wattspan.agent.errors import ConfigError
from wattspan.agent.sinks import Sink

#: exporter name (the key under ``[exporters]``) -> module providing ``from_config``.
REGISTRY: dict[str, str] = {
    "influxdb": "wattspan.agent.exporters.influxdb",
}


def available() -> list[str]:
    """Names accepted under ``[exporters]``."""
    return sorted(REGISTRY)


def _module_name(name: str) -> str:
    module_name = REGISTRY.get(name)
    if module_name is None:
        raise ConfigError(
            f"exporters.{name}", f"unknown exporter (available: {', '.join(available())})"
        )
    return module_name


def build(name: str, section: Mapping[str, Any], *, state_dir: Path, host: str) -> Sink:
    """Construct the exporter ``name`` from its config table.

    Raises :class:`ConfigError` for an unknown name or an invalid table. ``state_dir`` is
    where the exporter may keep its disk queue; ``host`` is the node name it tags data with.
    """
    module = importlib.import_module(_module_name(name))
    sink: Sink = module.from_config(dict(section), state_dir=Path(state_dir), host=host)
    return sink


def build_all(exporters: Mapping[str, Any], *, state_dir: Path, host: str) -> list[Sink]:
    """Build every enabled exporter of an ``[exporters]`` table; on error close those
    already built."""
    built: list[Sink] = []
    try:
        for name, section in exporters.items():
            if not isinstance(section, Mapping):
                raise ConfigError(f"exporters.{name}", "expected a table")
            # ``enabled = false`` keeps a table in the config without building its exporter;
            # a misspelt name is still an error.
            if section.get("enabled", True) is False:
                _module_name(name)
                continue
            section = {k: v for k, v in section.items() if k != "enabled"}
            built.append(build(name, section, state_dir=state_dir, host=host))
    except BaseException:
        for sink in built:
            sink.close(0)
        raise
    return built
