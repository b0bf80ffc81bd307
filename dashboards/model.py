"""The one post-processing step between grafanalib and the JSON we write (issue #17).

grafanalib 0.7 writes the dashboard model of old Grafana: null values where the current
model wants the key absent, legacy keys (``rows``, ``style``, ``timepicker.time_options``,
panel ``span``/``height``/``error``...), string datasource references, and the bar gauge's
pre-7 ``options.fieldOptions``. Grafana migrates much of that on load, so the file would
change the first time someone saves it from the UI; cleaning it here, once, instead of panel
by panel, keeps every generated dashboard in the schema version we declare.
"""

from __future__ import annotations

import json
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard

#: Grafana 10.x / 11.x write dashboards at this schema version.
SCHEMA_VERSION = 39

_DASHBOARD_LEGACY = ("__inputs", "rows", "hideControls", "sharedCrosshair", "style", "gnetId")
_PANEL_LEGACY = (
    "error",
    "height",
    "span",
    "minSpan",
    "editable",
    "cacheTimeout",
    "columns",
    "fontSize",
    "color",
    "mappings",
)
_ROW_KEEP = ("id", "type", "title", "gridPos", "collapsed", "panels")
_PROM_TARGET_LEGACY = ("query", "target", "metric", "step", "intervalFactor", "hide")
_INFLUX_TARGET_LEGACY = ("measurement", "hide")
_TEMPLATE_LEGACY = ("useTags", "tagsQuery", "tagValuesQuery", "auto", "auto_min", "auto_count")


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is None:
                continue
            # A thresholds step's base has ``value: null`` in the model, by definition.
            out[k] = v if k == "steps" else _drop_nulls(v)
        return out
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value if v is not None]
    return value


def _datasource(ref: Any, known: dict[str, dict[str, str]]) -> Any:
    """A string reference (a name or uid) as the ``{type, uid}`` object it stands for."""
    if isinstance(ref, str):
        if ref not in known:
            raise ValueError(f"datasource {ref!r} is not one this package defines")
        return dict(known[ref])
    return ref


def _clean_target(t: dict[str, Any], known: dict[str, dict[str, str]]) -> dict[str, Any]:
    if "datasource" in t:
        t["datasource"] = _datasource(t["datasource"], known)
    if "expr" in t:  # PromQL
        for k in _PROM_TARGET_LEGACY:
            t.pop(k, None)
        if not t.get("interval"):
            t.pop("interval", None)
        t["range"] = not t.get("instant", False)
        t["editorMode"] = "code"
    else:  # InfluxQL
        for k in _INFLUX_TARGET_LEGACY:
            t.pop(k, None)
        if not t.get("alias"):
            t.pop("alias", None)
    return t


def _clean_bargauge(p: dict[str, Any]) -> None:
    """Pre-Grafana-7 ``options.fieldOptions`` -> ``fieldConfig.defaults`` + ``reduceOptions``."""
    fo = p.get("options", {}).pop("fieldOptions", None)
    if fo is None:
        return
    defaults = p.setdefault("fieldConfig", {}).setdefault("defaults", {})
    for k in ("unit", "min", "max", "decimals"):
        if fo.get("defaults", {}).get(k) is not None:
            defaults[k] = fo["defaults"][k]
    p["fieldConfig"].setdefault("overrides", [])
    p["options"]["reduceOptions"] = {
        "calcs": list(fo.get("calcs", ["lastNotNull"])),
        "fields": "",
        "values": bool(fo.get("values", False)),
    }
    p["options"].setdefault("valueMode", "color")
    p["options"].setdefault("namePlacement", "auto")
    p["options"].setdefault("showUnfilled", True)
    p["options"].setdefault("sizing", "auto")
    p["options"].setdefault("minVizWidth", 8)
    p["options"].setdefault("minVizHeight", 16)
    p["options"].setdefault("maxVizHeight", 300)


def _clean_panel(p: dict[str, Any], known: dict[str, dict[str, str]]) -> dict[str, Any]:
    if p.get("type") == "row":
        p = {k: v for k, v in p.items() if k in _ROW_KEEP}
        p["panels"] = [_clean_panel(c, known) for c in p.get("panels", [])]
        return p
    for k in _PANEL_LEGACY:
        p.pop(k, None)
    if not p.get("repeat"):
        for k in ("repeat", "repeatDirection", "maxPerRow"):
            p.pop(k, None)
    if not p.get("hideTimeOverride"):
        p.pop("hideTimeOverride", None)
    if not p.get("transparent"):
        p.pop("transparent", None)
    if p.get("type") == "bargauge":
        _clean_bargauge(p)
    if "datasource" in p:
        p["datasource"] = _datasource(p["datasource"], known)
    p["targets"] = [_clean_target(t, known) for t in p.get("targets", [])]
    thresholds = p.get("fieldConfig", {}).get("defaults", {}).get("thresholds")
    if thresholds is not None and not thresholds.get("steps"):
        thresholds["steps"] = [{"color": "green", "value": None}]
    return p


def _clean_template(t: dict[str, Any], known: dict[str, dict[str, str]]) -> dict[str, Any]:
    for k in _TEMPLATE_LEGACY:
        t.pop(k, None)
    if "datasource" in t:
        t["datasource"] = _datasource(t["datasource"], known)
    if t.get("type") == "datasource":
        t.pop("datasource", None)
    if t.get("current", {}).get("text") is None:
        t.pop("current", None)
    else:
        t["current"].pop("tags", None)
    if not t.get("label"):
        t.pop("label", None)
    if not t.get("regex"):
        t.pop("regex", None)
    return t


def to_grafana_json(
    dashboard: Dashboard, datasources: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """The dashboard as JSON data of the current model.

    ``datasources`` maps a string reference (name, uid or ``${var}``) that may appear in the
    grafanalib objects to its ``{type, uid}`` object; any other string is an error.
    """
    known = datasources or {}
    raw = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    d: dict[str, Any] = _drop_nulls(raw)
    for k in _DASHBOARD_LEGACY:
        d.pop(k, None)
    d["schemaVersion"] = SCHEMA_VERSION
    picker = d.get("timepicker", {})
    picker.pop("time_options", None)
    if not picker.get("hidden"):
        picker.pop("hidden", None)
    d["panels"] = [_clean_panel(p, known) for p in d.get("panels", [])]
    d["templating"]["list"] = [_clean_template(t, known) for t in d["templating"]["list"]]
    for link in d.get("links", []):
        if not link.get("url"):
            link.pop("url", None)
    d.setdefault("annotations", {"list": []})
    d.setdefault("fiscalYearStartMonth", 0)
    d.setdefault("liveNow", False)
    return d
