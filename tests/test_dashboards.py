"""Structure of the generated Grafana dashboards, checked against facts of Grafana's
dashboard model (schema version 39, Grafana 10/11) written down here as test data: no
package that ships the foundation SDK's JSON schema installs here (issue #17)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from wattspan.cli import main
from wattspan.dashboards import SCHEMA_VERSION, Settings, build_dashboards

# -- schema facts (the subset of Grafana's dashboard model the validation relies on) -------

DASHBOARD_KEYS = {
    "id", "uid", "title", "description", "tags", "timezone", "editable", "graphTooltip",
    "time", "timepicker", "fiscalYearStartMonth", "liveNow", "weekStart", "refresh",
    "schemaVersion", "version", "panels", "templating", "annotations", "links",
}  # fmt: skip
PANEL_KEYS = {
    "id", "type", "title", "description", "gridPos", "datasource", "targets", "fieldConfig",
    "options", "transformations", "interval", "maxDataPoints", "links", "repeat",
    "repeatDirection", "maxPerRow", "timeFrom", "timeShift", "transparent", "pluginVersion",
    "hideTimeOverride", "libraryPanel", "queryCachingTTL",
}  # fmt: skip
ROW_KEYS = {"id", "type", "title", "gridPos", "collapsed", "panels", "datasource", "repeat"}
PANEL_TYPES = {"row", "timeseries", "stat", "table", "bargauge", "heatmap"}
FIELD_DEFAULTS_KEYS = {
    "unit", "min", "max", "decimals", "displayName", "noValue", "color", "custom",
    "mappings", "thresholds", "links", "filterable",
}  # fmt: skip
OPTIONS_KEYS = {
    "timeseries": {"legend", "tooltip"},
    "stat": {"textMode", "colorMode", "graphMode", "justifyMode", "orientation",
             "reduceOptions", "showPercentChange", "wideLayout", "text"},
    "table": {"showHeader", "sortBy", "cellHeight", "footer", "frameIndex", "showTypeIcons"},
    "bargauge": {"displayMode", "orientation", "showThresholdLabels", "showThresholdMarkers",
                 "reduceOptions", "valueMode", "namePlacement", "showUnfilled", "sizing",
                 "minVizWidth", "minVizHeight", "maxVizHeight", "text", "legend"},
    "heatmap": {"calculate", "calculation", "cellGap", "cellValues", "color", "exemplars",
                "filterValues", "legend", "rowsFrame", "showValue", "tooltip", "yAxis",
                "selectionMode", "showColorScale"},
}  # fmt: skip
#: Keys of an annotation query (``annotations.list[]``) of either datasource.
ANNOTATION_KEYS = {"name", "datasource", "enable", "hide", "iconColor", "query", "target",
                   "textColumn", "tagsColumn", "titleColumn", "timeEndColumn", "expr", "step",
                   "titleFormat", "textFormat", "tagKeys", "useValueForTime", "builtIn",
                   "type"}  # fmt: skip
REDUCE_CALCS = {"lastNotNull", "last", "first", "firstNotNull", "min", "max", "mean", "sum",
                "count", "range", "delta", "step", "diff"}  # fmt: skip
THRESHOLD_STEP_KEYS = {"color", "value"}
PROM_TARGET_KEYS = {"refId", "expr", "legendFormat", "format", "instant", "range",
                    "interval", "datasource", "editorMode", "exemplar", "hide"}  # fmt: skip
INFLUX_TARGET_KEYS = {"refId", "query", "rawQuery", "resultFormat", "alias", "datasource",
                      "hide"}  # fmt: skip
TEMPLATE_KEYS = {"name", "label", "type", "query", "datasource", "current", "options",
                 "hide", "includeAll", "multi", "allValue", "refresh", "regex", "sort",
                 "definition", "description"}  # fmt: skip
#: Grafana unit ids (public/app/.../valueFormats/categories.ts) the dashboards may use.
GRAFANA_UNITS = {"watt", "joule", "kwatth", "percentunit", "percent", "bytes", "decbytes",
                 "s", "ms", "ops", "reqps", "celsius", "hertz", "short", "none"}  # fmt: skip
GRID_WIDTH = 24

#: Grafana built-ins: never defined as dashboard variables.
BUILTIN_VARS = {"timeFilter", "__interval", "__interval_ms", "interval", "__range",
                "__rate_interval", "__range_s", "__from", "__to"}  # fmt: skip
_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))|\[\[(\w+)\]\]")


def _ds_errors(where: str, ds: Any, kind: str | None) -> list[str]:
    if not isinstance(ds, dict) or set(ds) != {"type", "uid"}:
        return [f"{where}: datasource must be a {{type, uid}} object, got {ds!r}"]
    if kind is not None and ds["type"] != kind:
        return [f"{where}: datasource type {ds['type']} in a {kind} dashboard"]
    return []


def validate(d: dict[str, Any]) -> list[str]:
    """Every way ``d`` departs from the model facts above, as messages (empty: valid)."""
    errs = [f"dashboard: unknown key {k}" for k in set(d) - DASHBOARD_KEYS]
    if d.get("schemaVersion") != SCHEMA_VERSION:
        errs.append(f"schemaVersion {d.get('schemaVersion')}")
    if "time_options" in d.get("timepicker", {}):
        errs.append("timepicker.time_options is legacy")
    kind = next((t for t in d.get("tags", []) if t in ("influxdb", "prometheus")), None)

    def no_nulls(path: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if x is None and not (k == "value" and path.endswith("steps[]")):
                    errs.append(f"{path}.{k} is null")
                no_nulls(f"{path}.{k}", x)
        elif isinstance(v, list):
            for x in v:
                no_nulls(path + "[]", x)

    no_nulls("dashboard", d)
    for p in _all_panels(d):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        t = p.get("type")
        if t not in PANEL_TYPES:
            errs.append(f"{where}: type {t}")
            continue
        allowed = ROW_KEYS if t == "row" else PANEL_KEYS
        errs += [f"{where}: unknown key {k}" for k in set(p) - allowed]
        if t == "row":
            continue
        errs += _ds_errors(where, p.get("datasource"), kind)
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        errs += [
            f"{where}: unknown fieldConfig key {k}" for k in set(defaults) - FIELD_DEFAULTS_KEYS
        ]
        for step in defaults.get("thresholds", {}).get("steps", []):
            errs += [f"{where}: threshold step key {k}" for k in set(step) - THRESHOLD_STEP_KEYS]
        opts = p.get("options", {})
        errs += [f"{where}: unknown option {k}" for k in set(opts) - OPTIONS_KEYS.get(t, set())]
        for c in opts.get("reduceOptions", {}).get("calcs", []):
            if c not in REDUCE_CALCS:
                errs.append(f"{where}: reducer {c}")
        if t in ("stat", "bargauge") and "reduceOptions" not in opts:
            errs.append(f"{where}: {t} without options.reduceOptions")
        if not p.get("targets"):
            errs.append(f"{where}: no targets")
        for tg in p.get("targets", []):
            keys = PROM_TARGET_KEYS if "expr" in tg else INFLUX_TARGET_KEYS
            errs += [f"{where} target {tg.get('refId')}: unknown key {k}" for k in set(tg) - keys]
            errs += _ds_errors(f"{where} target", tg.get("datasource"), kind)
    for a in d.get("annotations", {}).get("list", []):
        where = f"annotation {a.get('name')!r}"
        errs += [f"{where}: unknown key {k}" for k in set(a) - ANNOTATION_KEYS]
        errs += _ds_errors(where, a.get("datasource"), kind)
        if not (a.get("query") or a.get("expr")):
            errs.append(f"{where}: no query")
    for v in d.get("templating", {}).get("list", []):
        errs += [f"variable {v.get('name')}: unknown key {k}" for k in set(v) - TEMPLATE_KEYS]
        if "datasource" in v:
            errs += _ds_errors(f"variable {v.get('name')}", v["datasource"], kind)
    return errs


def _all_panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out += p.get("panels", [])
    return out


def _units(d: dict[str, Any]) -> set[str]:
    units = set()
    for p in _all_panels(d):
        fc = p.get("fieldConfig", {})
        if "unit" in fc.get("defaults", {}):
            units.add(fc["defaults"]["unit"])
        for o in fc.get("overrides", []):
            units |= {pr["value"] for pr in o["properties"] if pr["id"] == "unit"}
    return units


# -- tests -------------------------------------------------------------------------------

SETTINGS = Settings()
DASHBOARDS = build_dashboards(SETTINGS)


def test_the_expected_dashboards_exist() -> None:
    # The agent's self-metrics exist on /metrics only.
    assert set(DASHBOARDS) == {
        "wattspan-node-influxdb",
        "wattspan-node-prometheus",
        "wattspan-energy-influxdb",
        "wattspan-energy-prometheus",
        "wattspan-pipelines-influxdb",
        "wattspan-pipelines-prometheus",
        "wattspan-ml-runs-influxdb",
        "wattspan-ml-runs-prometheus",
        "wattspan-agent-prometheus",
        "wattspan-spark-influxdb",
    }


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_validates(uid: str) -> None:
    assert validate(DASHBOARDS[uid]) == []


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_ids_units_and_variables(uid: str) -> None:
    d = DASHBOARDS[uid]
    assert d["uid"] == uid and len(uid) <= 40
    ids = [p["id"] for p in _all_panels(d)]
    assert len(ids) == len(set(ids))
    assert _units(d) <= GRAFANA_UNITS, _units(d) - GRAFANA_UNITS
    # Every panel but rows shows a unit: a bare number of joules or bytes misleads.
    assert all("unit" in p["fieldConfig"]["defaults"] for p in _all_panels(d) if p["type"] != "row")
    defined = {v["name"] for v in d["templating"]["list"]}
    used: set[str] = set()
    for p in _all_panels(d):
        for t in p.get("targets", []):
            used |= {next(g for g in m if g) for m in _VAR.findall(t.get("query") or t["expr"])}
    for v in d["templating"]["list"]:
        q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        used |= {next(g for g in m if g) for m in _VAR.findall(q)}
    used |= {"datasource"}  # every datasource reference names it
    assert used - BUILTIN_VARS <= defined, (used - BUILTIN_VARS) - defined
    # Variables refer only to variables defined before them (Grafana resolves in order).
    order = [v["name"] for v in d["templating"]["list"]]
    for i, v in enumerate(d["templating"]["list"]):
        q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        refs = {next(g for g in m if g) for m in _VAR.findall(q)} - BUILTIN_VARS
        assert refs <= set(order[:i]), (v["name"], refs)


def test_uids_unique_across_dashboards() -> None:
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlap(uid: str) -> None:
    taken: dict[tuple[int, int], int] = {}
    for p in _all_panels(DASHBOARDS[uid]):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= GRID_WIDTH, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, (p["title"], taken[(x, y)])
                taken[(x, y)] = p["id"]


def test_estimated_series_are_distinct() -> None:
    for uid in ("wattspan-node-influxdb", "wattspan-node-prometheus"):
        (power,) = [p for p in _all_panels(DASHBOARDS[uid]) if p["title"] == "Power per domain"]
        (override,) = power["fieldConfig"]["overrides"]
        style = override["properties"][0]
        assert style["id"] == "custom.lineStyle" and style["value"]["fill"] == "dash"
        legends = [t.get("alias") or t.get("legendFormat") for t in power["targets"]]
        pattern = re.compile(override["matcher"]["options"])
        # The override dashes the power-model series and leaves RAPL solid.
        assert [
            bool(pattern.match(s.replace("$tag_domain", "cpu").replace("{{domain}}", "cpu")))
            for s in legends
        ] == [False, True]


def test_validation_rejects_an_unknown_panel_key_and_a_string_datasource() -> None:
    d = copy.deepcopy(DASHBOARDS["wattspan-node-influxdb"])
    d["panels"][1]["span"] = 6
    assert any("unknown key span" in e for e in validate(d))
    d = copy.deepcopy(DASHBOARDS["wattspan-node-prometheus"])
    d["panels"][1]["targets"][0]["datasource"] = "wattspan Prometheus"
    assert any("{type, uid} object" in e for e in validate(d))


def test_raw_grafanalib_output_fails_validation() -> None:
    """The cleaning step is what makes the dashboards valid, not a lenient validator."""
    import json as _json

    from grafanalib._gen import DashboardEncoder

    from wattspan.dashboards import node

    raw = _json.loads(
        _json.dumps(node.build("influxdb", SETTINGS).to_json_data(), cls=DashboardEncoder)
    )
    errs = validate(raw)
    assert any("schemaVersion" in e for e in errs)
    assert any("time_options" in e for e in errs)
    assert any("is null" in e for e in errs)


def test_unknown_string_datasource_is_an_error() -> None:
    from grafanalib.core import Dashboard, Target, TimeSeries

    from wattspan.dashboards import datasource_refs, to_grafana_json

    dash = Dashboard(
        title="t", panels=[TimeSeries(title="p", dataSource="nope", targets=[Target(expr="up")])]
    )
    with pytest.raises(ValueError, match="nope"):
        to_grafana_json(dash, datasource_refs(SETTINGS))
    ok = Dashboard(
        title="t",
        panels=[
            TimeSeries(title="p", dataSource=SETTINGS.prometheus_name, targets=[Target(expr="up")])
        ],
    )
    got = to_grafana_json(ok, datasource_refs(SETTINGS))
    assert got["panels"][0]["datasource"] == {"type": "prometheus", "uid": SETTINGS.prometheus_uid}


def test_cli_writes_dashboards_and_provisioning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grafana"
    rc = main(
        ["dashboards", "-o", str(out), "--datasource", "influxdb", "--influxdb-database", "metrics",
         "--influxdb-uid", "my-influx", "--influxdb-url", "http://influx:8086"]
    )  # fmt: skip
    assert rc == 0
    prov = yaml.safe_load((out / "provisioning/dashboards/wattspan.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    path = Path(provider["options"]["path"])
    files = sorted(p.name for p in path.glob("*.json"))
    assert files == ["wattspan-energy-influxdb.json", "wattspan-ml-runs-influxdb.json",
                     "wattspan-node-influxdb.json", "wattspan-pipelines-influxdb.json",
                     "wattspan-spark-influxdb.json"]  # fmt: skip
    ds = yaml.safe_load((out / "provisioning/datasources/wattspan.yaml").read_text())
    assert ds["apiVersion"] == 1
    (influx,) = ds["datasources"]
    assert influx["type"] == "influxdb" and influx["uid"] == "my-influx"
    assert influx["url"] == "http://influx:8086" and influx["jsonData"]["dbName"] == "metrics"
    provisioned = {(d["type"], d["uid"]) for d in ds["datasources"]}
    for f in path.glob("*.json"):
        d = json.loads(f.read_text())
        assert validate(d) == []
        # Every datasource reference goes through the datasource variable, whose default
        # is a provisioned datasource of the right type.
        (var,) = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
        assert (var["query"], var["current"]["value"]) in provisioned
        refs = [p["datasource"] for p in _all_panels(d) if "datasource" in p]
        refs += [t["datasource"] for p in _all_panels(d) for t in p.get("targets", [])]
        assert refs and all(r == {"type": "influxdb", "uid": "${datasource}"} for r in refs)
    printed = capsys.readouterr().out.split()
    assert str(out / "provisioning/datasources/wattspan.yaml") in printed


def test_cli_rejects_a_bad_uid(tmp_path: Path) -> None:
    assert main(["dashboards", "-o", str(tmp_path), "--prometheus-uid", "has space"]) == 2
    assert not (tmp_path / "dashboards").exists()


# -- Energy by process -------------------------------------------------------------------

ENERGY = ("wattspan-energy-influxdb", "wattspan-energy-prometheus")


def _panel(uid: str, title: str) -> dict[str, Any]:
    (p,) = [p for p in _all_panels(DASHBOARDS[uid]) if p["title"] == title]
    return p


@pytest.mark.parametrize("uid", ENERGY)
def test_energy_over_the_range_in_joules_and_kwh(uid: str) -> None:
    joules = _panel(uid, "Process energy")
    kwh = _panel(uid, "Process energy (kWh)")
    assert joules["type"] == kwh["type"] == "stat"
    assert joules["fieldConfig"]["defaults"]["unit"] == "joule"
    assert kwh["fieldConfig"]["defaults"]["unit"] == "kwatth"
    # The same figure, converted: kwatth is a display unit, Grafana does not scale J to it.
    (j,) = [t.get("query") or t["expr"] for t in joules["targets"]]
    (k,) = [t.get("query") or t["expr"] for t in kwh["targets"]]
    assert k.replace(" / 3600000", "") == j


@pytest.mark.parametrize("uid", ENERGY)
def test_energy_names_other_as_the_rest(uid: str) -> None:
    for title in ("Power by process", "CPU share by process"):
        p = _panel(uid, title)
        (rename,) = [t for t in p["transformations"] if t["id"] == "renameByRegex"]
        legend = p["targets"][0].get("alias") or p["targets"][0]["legendFormat"]
        # Grafana's legend for the other series, the way either datasource fills it in.
        shown = (
            legend.replace("$tag_host", "node-a").replace("{{instance}}", "node-a")
            .replace("$tag_name", "other").replace("{{name}}", "other")
            .replace("$tag_pid", "other").replace("{{pid}}", "other")
        )  # fmt: skip
        renamed = re.sub(rename["options"]["regex"], rename["options"]["renamePattern"], shown)
        assert renamed == "node-a: other (rest of the active power)"
        grey = [o for o in p["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byRegexp"]
        assert any(re.fullmatch(o["matcher"]["options"], renamed) for o in grey)
        # A process is left as it is.
        process = shown.replace("other (other)", "python (1234)")
        assert re.sub(rename["options"]["regex"], "x", process) == process


@pytest.mark.parametrize("uid", ENERGY)
def test_energy_idle_and_estimated_series_are_distinct(uid: str) -> None:
    p = _panel(uid, "Node, active and idle power")
    legends = [t.get("alias") or t["legendFormat"] for t in p["targets"]]
    shown = [s.replace("$tag_host", "h").replace("{{instance}}", "h") for s in legends]
    assert shown == ["node h", "node h (estimated)", "active h", "idle h (estimated)"]
    (dashed,) = [o for o in p["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byRegexp"]
    pattern = re.compile(dashed["matcher"]["options"])
    assert [bool(pattern.match(s)) for s in shown] == [False, True, False, True]


def test_energy_prometheus_table_columns_are_its_targets() -> None:
    p = _panel("wattspan-energy-prometheus", "Top processes")
    rename = next(t for t in p["transformations"] if t["id"] == "organize")["options"][
        "renameByName"
    ]
    assert p["transformations"][0]["id"] == "merge"
    assert sorted(rename) == [f"Value #{t['refId']}" for t in p["targets"]]
    assert all(t["instant"] and t["format"] == "table" for t in p["targets"])
    units = {o["matcher"]["options"] for o in p["fieldConfig"]["overrides"]}
    assert set(rename.values()) == units


def test_energy_reads_process_energy_only_through_documented_fields() -> None:
    influx_fields = set()
    for t in (t for p in _all_panels(DASHBOARDS[ENERGY[0]]) for t in p.get("targets", [])):
        if '"process_energy"' in t["query"]:
            influx_fields |= set(re.findall(r'"(\w+)"', t["query"])) & {
                "power_watts", "joules_total", "cpu_share_ratio", "energy_joules"}  # fmt: skip
    assert influx_fields == {"power_watts", "joules_total", "cpu_share_ratio"}
    exprs = " ".join(t["expr"] for p in _all_panels(DASHBOARDS[ENERGY[1]]) for t in
                     p.get("targets", []))  # fmt: skip
    assert set(re.findall(r"wattspan_process_energy_\w+", exprs)) == {
        "wattspan_process_energy_power_watts",
        "wattspan_process_energy_joules_total",
        "wattspan_process_energy_cpu_share_ratio",
    }


# -- the checked-in provisioning set -----------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
DEPLOY_GRAFANA = REPO / "deploy" / "grafana"
#: Where the checked-in provider tells Grafana to read the JSON (the default would be an
#: absolute path of the machine that generated it).
DEPLOY_DASHBOARDS_PATH = "/var/lib/grafana/dashboards/wattspan"
#: Files in deploy/grafana that the generator does not write.
DEPLOY_GRAFANA_OWN = {"kustomization.yaml", "README.md"}


def test_deploy_grafana_is_the_generated_set(tmp_path: Path) -> None:
    """deploy/grafana is what ``wattspan dashboards -o deploy/grafana --dashboards-path
    /var/lib/grafana/dashboards/wattspan`` writes today, byte for byte; regenerate it with
    that command when this fails."""
    out = tmp_path / "grafana"
    rc = main(["dashboards", "-o", str(out), "--datasource", "both",
               "--dashboards-path", DEPLOY_DASHBOARDS_PATH])  # fmt: skip
    assert rc == 0

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and str(p.relative_to(root)) not in DEPLOY_GRAFANA_OWN
        }

    want, have = files(out), files(DEPLOY_GRAFANA)
    assert sorted(have) == sorted(want), "regenerate deploy/grafana"
    stale = [name for name in want if have[name] != want[name]]
    assert not stale, f"stale, regenerate deploy/grafana: {stale}"


def test_generated_output_is_deterministic(tmp_path: Path) -> None:
    # Two runs in different directories write the same bytes: nothing depends on dict order,
    # time or the output path but the provider's path, which the option fixes.
    for name in ("a", "b"):
        assert main(["dashboards", "-o", str(tmp_path / name),
                     "--dashboards-path", DEPLOY_DASHBOARDS_PATH]) == 0  # fmt: skip
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.*")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.*")}
    assert a == b and a
