"""wattspan.dashboards: Grafana dashboards generated with grafanalib, and the provisioning
files that load them.

One module per dashboard (:mod:`.node`, :mod:`.energy`, :mod:`.pipelines`, :mod:`.ml_runs`,
:mod:`.agent`, :mod:`.spark`), each with ``build(kind, settings) -> grafanalib Dashboard`` for the
datasource kinds it has data in; :mod:`.panels` holds the shared helpers; :mod:`.model` is
the one step that turns grafanalib's output into the current Grafana model;
:mod:`.provisioning` writes files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from grafanalib.core import Dashboard

from . import agent, energy, ml_runs, node, pipelines, spark
from .model import SCHEMA_VERSION, to_grafana_json
from .panels import KINDS, Kind, Settings


@dataclass(frozen=True)
class Spec:
    name: str
    kinds: tuple[Kind, ...]
    build: Callable[[Kind, Settings], Dashboard]


DASHBOARDS: tuple[Spec, ...] = (
    Spec("node", KINDS, node.build),
    Spec("energy", KINDS, energy.build),
    Spec("pipelines", pipelines.KINDS, pipelines.build),
    Spec("ml-runs", KINDS, ml_runs.build),
    Spec("agent", agent.KINDS, agent.build),
    Spec("spark", spark.KINDS, spark.build),
)


def datasource_refs(settings: Settings) -> dict[str, dict[str, str]]:
    """String references grafanalib objects may carry, and the objects they stand for."""
    refs: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        obj = {"type": kind, "uid": settings.uid(kind)}
        refs[settings.uid(kind)] = obj
        refs[settings.name(kind)] = obj
    return refs


def build_dashboards(
    settings: Settings | None = None, kinds: Iterable[Kind] = KINDS
) -> dict[str, dict[str, Any]]:
    """``{uid: dashboard JSON data}`` for every dashboard that has data in ``kinds``."""
    settings = settings or Settings()
    wanted = set(kinds)
    out: dict[str, dict[str, Any]] = {}
    for spec in DASHBOARDS:
        for kind in spec.kinds:
            if kind in wanted:
                d = to_grafana_json(spec.build(kind, settings), datasource_refs(settings))
                out[d["uid"]] = d
    return out


__all__ = [
    "DASHBOARDS",
    "KINDS",
    "SCHEMA_VERSION",
    "Kind",
    "Settings",
    "build_dashboards",
    "to_grafana_json",
]
