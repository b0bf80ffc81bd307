"""Exporters: sinks that deliver the agent's records to external systems.

Each exporter is a subpackage exposing ``from_config(section, *, state_dir, host) -> Sink``.
The agent core knows none of them by name: it walks the ``[exporters.<name>]`` tables of
its config and calls :func:`build` for each. Imports are lazy so that an agent that does
not use InfluxDB never imports influxdb-client.
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


def build(name: str, section: Mapping[str, Any], *, state_dir: Path, host: str) -> Sink:
    """Construct the exporter ``name`` from its config table.

    Raises :class:`ConfigError` for an unknown name or an invalid table. ``state_dir`` is
    where the exporter may keep its disk queue; ``host`` is the node name it tags data with.
    """
    module_name = REGISTRY.get(name)
    if module_name is None:
        raise ConfigError(
            f"exporters.{name}", f"unknown exporter (available: {', '.join(available())})"
        )
    module = importlib.import_module(module_name)
    sink: Sink = module.from_config(dict(section), state_dir=Path(state_dir), host=host)
    return sink


def build_all(exporters: Mapping[str, Any], *, state_dir: Path, host: str) -> list[Sink]:
    """Build every exporter of an ``[exporters]`` table; on error close those already built."""
    built: list[Sink] = []
    try:
        for name, section in exporters.items():
            if not isinstance(section, Mapping):
                raise ConfigError(f"exporters.{name}", "expected a table")
            built.append(build(name, section, state_dir=state_dir, host=host))
    except BaseException:
        for sink in built:
            sink.close(0)
        raise
    return built
