"""Every query of every generated panel returns data from a real agent's output.

One real ``wattspan agent`` with ``[exporters.influxdb]`` receives the spans and loss/accuracy
of an instrumented program (``PLAIN_OTEL``), run twice (the second time its spans count
items), and writes into a real influxd, while a real Prometheus scrapes its ``/metrics``.
Each panel target then runs the way Grafana would send it: variables replaced by values
present in the data (regex-escaped, as Grafana formats a variable inside ``/.../`` or
``=~``), macros expanded. A target that errors, or that returns no non-null value, fails.

This host has no RAPL and no GPU, so for the ``rapl``/``gpu`` panels the test adds points and
series in the documented schema (docs/influxdb.md, README's Metrics table) when, and only
when, the agent wrote none; every other panel reads what the agent wrote.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.procs import free_port, http_get, wait_for
from tests.prometheus_server import PrometheusServer
from tests.servers import InfluxD
from tests.test_agent_influx import _config, _send_plain_otel, _start
from tests.test_pipeline_e2e import PLAIN_OTEL
from wattspan.dashboards import build_dashboards

pytest_plugins = ["tests.fixtures_influx"]
pytestmark = pytest.mark.server

DB = "dashboards"
DASHBOARDS = build_dashboards()
#: Dashboards proven against a world of their own: the Spark dashboard against a real Spark
#: application's spans (tests/test_dashboards_spark.py).
OWN_WORLD = {"wattspan-spark-influxdb"}

#: Grafana's expansion of its built-in macros for a 1 h range at a 10 s interval.
MACROS = {
    "$timeFilter": "time > now() - 1h",
    "$__interval_ms": "10000",
    "$__interval": "10s",
    "$interval": "10s",
    "$__rate_interval": "1m",
    "$__range": "1h",
}


class _FakeHardware(BaseHTTPRequestHandler):
    """``/metrics`` of a node with RAPL and a GPU: counters that grow on every scrape."""

    scrapes = 0

    def do_GET(self) -> None:
        _FakeHardware.scrapes += 1
        n = _FakeHardware.scrapes
        rapl = 'domain="package-0",zone="intel-rapl:0",estimated="false"'
        gpu = 'gpu="0",uuid="GPU-1",name="H200",energy_method="counter"'
        series = [
            (f"wattspan_rapl_power_watts{{{rapl}}}", 40 + n % 3),
            (f"wattspan_rapl_energy_joules_total{{{rapl}}}", 40.0 * n),
            (f"wattspan_gpu_utilization_gpu_ratio{{{gpu}}}", 0.5),
            (f"wattspan_gpu_memory_used_bytes{{{gpu}}}", 1e9),
            (f"wattspan_gpu_power_watts{{{gpu}}}", 300),
            (f"wattspan_gpu_temperature_celsius{{{gpu}}}", 55),
            (f"wattspan_gpu_sm_clock_hertz{{{gpu}}}", 1.98e9),
            (f"wattspan_gpu_energy_joules_total{{{gpu}}}", 300.0 * n),
        ]
        body = "".join(f"{k} {v}\n" for k, v in series).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


#: PLAIN_OTEL whose inner spans count items (``wattspan.items``, what ``count_items`` sets).
WITH_ITEMS = PLAIN_OTEL.replace(
    'attributes={"i": i}', 'attributes={"i": i, "wattspan.items": 100 * (i + 1)}'
)
assert WITH_ITEMS != PLAIN_OTEL
#: ... and whose outer span carries hyperparameters and a confusion matrix, the way
#: ``wattspan.log_params`` and ``log_confusion_matrix`` send them.
_OUTER = 'with tracer.start_as_current_span("outer") as outer:'
WITH_ITEMS = WITH_ITEMS.replace(
    _OUTER,
    'with tracer.start_as_current_span("outer", attributes={"ml.hyperparameters": '
    '\'{"lr": 0.01, "batch_size": 32}\', "ml.param.optimizer": "adam"}) as outer:\n'
    '    outer.add_event("ml.confusion_matrix", {"ml.confusion_matrix.matrix": '
    '"[[5, 1], [2, 7]]", "ml.confusion_matrix.labels": \'["cat", "dog"]\', "ml.step": 2})',
)
assert "ml.confusion_matrix" in WITH_ITEMS
#: The accuracy target of the ML dashboard's time/energy-to-accuracy panels: the client's
#: accuracy goes 0.5, 0.6, 0.7.
ACC_TARGET = "0.6"


def _send_with_items(otlp: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITH_ITEMS, f"http://127.0.0.1:{otlp}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _prom_value(prom: PrometheusServer, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else math.nan


def _hardware_lines(influx: InfluxD) -> None:
    """RAPL and GPU points as the exporter writes them, where the agent wrote none."""
    now = time.time_ns()
    lines = []
    if influx.count(DB, "rapl", "power_watts") == 0:
        for i in range(5):
            lines.append(
                "rapl,domain=package-0,estimated=false,host=node-a,zone=intel-rapl:0 "
                f"energy_joules_total={40.0 * i},power_watts=40 {now - (5 - i) * 10**9}"
            )
    if influx.count(DB, "gpu", "power_watts") == 0:
        for i in range(5):
            lines.append(
                "gpu,energy_method=counter,gpu=0,host=node-a,name=H200,uuid=GPU-1 "
                "utilization_gpu_ratio=0.5,utilization_memory_ratio=0.2,memory_used_bytes=1000000000i,"
                f"memory_total_bytes=141000000000i,power_watts=300,energy_joules_total={300.0 * i},"
                f"temperature_celsius=55,sm_clock_hertz=1980000000 {now - (5 - i) * 10**9}"
            )
    if lines:
        status, body = influx.write_lines(DB, "\n".join(lines).encode())
        assert status == 204, body


@dataclass
class World:
    influx: InfluxD
    prom: PrometheusServer
    instances: list[str]
    run: str
    #: every run (program) the clients made: only the second logs hyperparameters
    runs: list[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, influxd_server: InfluxD) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dashboards")
    influxd_server.create_database(DB)
    otlp = free_port()
    agent, mport = _start(_config(tmp, influxd_server, DB), tmp, otlp)
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHardware)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    instances = [f"127.0.0.1:{mport}", f"127.0.0.1:{fake.server_address[1]}"]
    prom = PrometheusServer(tmp, instances)
    try:
        p = _send_plain_otel(otlp)
        assert p.returncode == 0, p.stderr
        wait_for(
            lambda: influxd_server.count(DB, "spans", "cpu_seconds") == 4, 60, "attributed spans"
        )
        wait_for(lambda: influxd_server.count(DB, "ml", "value") >= 6, 60, "loss and accuracy")
        # The span counters must grow while Prometheus watches: increase() and rate() see
        # nothing of what a series held at its first scrape. Once it has scraped the first
        # run's spans, a second run adds spans (and items).
        inner = 'wattspan_spans_total{span_name="inner"}'
        wait_for(lambda: _prom_value(prom, inner) == 3, 60, "span counters scraped")
        p = _send_with_items(otlp)
        assert p.returncode == 0, p.stderr
        wait_for(
            lambda: influxd_server.count(DB, "spans", "cpu_seconds") == 8, 60, "second run's spans"
        )
        wait_for(lambda: _prom_value(prom, inner) == 6, 60, "second run's span counters")
        wait_for(lambda: influxd_server.count(DB, "ml_param", "value") >= 3, 60, "ml_param")
        wait_for(lambda: influxd_server.count(DB, "ml_confusion", "value") == 4, 60, "cells")
        wait_for(
            lambda: (
                _prom_value(prom, "count(wattspan_ml_confusion_value)") == 4
                and _prom_value(prom, "count(wattspan_ml_param_info)") == 3
            ),
            60,
            "hyperparameters and confusion cells scraped",
        )
        _hardware_lines(influxd_server)
        # rate()/increase() need two samples in their window; 1 s scrapes.
        wait_for(
            lambda: (
                prom.query("min(count_over_time(up[1m]))")
                and float(prom.query("min(count_over_time(up[1m]))")[0]["value"][1]) >= 4
            ),
            60,
            "a few scrapes of both targets",
        )
        # The Energy dashboard's subqueries step at $__interval (10 s) on absolute
        # multiples of it: a series younger than one step can have no point in them.
        wait_for(
            lambda: (
                prom.query('count_over_time(wattspan_process_energy_power_watts{pid="other"}[1m])')
                and float(prom.query(
                    'count_over_time(wattspan_process_energy_power_watts{pid="other"}[1m])'
                )[0]["value"][1]) >= 12
            ),
            60,
            "12 s of process_energy samples",
        )  # fmt: skip
        # Two program runs (one per client process); either has loss and accuracy.
        runs = sorted(v[1] for r in _series(influxd_server.query(
            'SHOW TAG VALUES FROM "ml" WITH KEY = "run"', db=DB)) for v in r["values"])  # fmt: skip
        yield World(influxd_server, prom, instances, runs[0], runs)
    finally:
        prom.stop()
        fake.shutdown()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()


def _series(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for r in data.get("results", []) for s in r.get("series", []) or []]


def _expand(text: str, values: dict[str, str]) -> str:
    for k, v in sorted(MACROS.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(k, v)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in text.replace("$/", "").replace("$'", ""), text
    return text


def _targets(kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for uid, d in DASHBOARDS.items():
        if kind not in d["tags"] or uid in OWN_WORLD:
            continue
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((f"{uid}/{p['title']}/{t['refId']}", p["type"], t))
    return out


def _variable_queries(kind: str) -> list[tuple[str, str]]:
    out = []
    for uid, d in DASHBOARDS.items():
        if kind in d["tags"] and uid not in OWN_WORLD:
            for v in d["templating"]["list"]:
                if v["type"] == "query":
                    q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
                    out.append((f"{uid}/${v['name']}", q))
    return out


def _influx_values(w: World) -> dict[str, str]:
    raw = {"host": "node-a", "service": "plain-otel", "span_name": "inner"}
    values = {k: re.escape(v) for k, v in raw.items()}
    # Both runs selected (a multi-value variable: (a|b)); a custom variable is not escaped.
    values["run"] = "(" + "|".join(re.escape(r) for r in w.runs) + ")"
    values["acc_target"] = ACC_TARGET
    return values


def _prom_regex(value: str) -> str:
    """A value as Grafana writes it into a PromQL string: regex-escaped, backslashes doubled."""
    return re.escape(value).replace("\\", "\\\\")


def _prom_values(w: World) -> dict[str, str]:
    # Two hosts selected: Grafana sends a multi-value variable as (a|b).
    return {
        "host": "(" + "|".join(_prom_regex(i) for i in w.instances) + ")",
        "run": "(" + "|".join(_prom_regex(r) for r in w.runs) + ")",
        "acc_target": ACC_TARGET,
        "service": _prom_regex("plain-otel"),
        "span_name": _prom_regex("inner"),
    }


INFLUX_TARGETS = _targets("influxdb")
PROM_TARGETS = _targets("prometheus")


def test_every_panel_has_targets_of_its_kind() -> None:
    assert len(INFLUX_TARGETS) > 30 and len(PROM_TARGETS) > 40
    assert all("query" in t for _, _, t in INFLUX_TARGETS)
    assert all("expr" in t for _, _, t in PROM_TARGETS)


@pytest.mark.parametrize(
    ("where", "query"),
    _variable_queries("influxdb"),
)
def test_influx_variable_query_has_values(world: World, where: str, query: str) -> None:
    data = world.influx.query(_expand(query, _influx_values(world)), db=DB)
    assert [v for s in _series(data) for v in s["values"]], where


@pytest.mark.parametrize(
    ("where", "ptype", "target"), INFLUX_TARGETS, ids=[w for w, _, _ in INFLUX_TARGETS]
)
def test_influx_target_returns_data(
    world: World, where: str, ptype: str, target: dict[str, Any]
) -> None:
    q = _expand(target["query"], _influx_values(world))
    data = world.influx.query(q, db=DB, epoch="ms")
    values = [v for s in _series(data) for row in s["values"] for v in row[1:]]
    assert any(v is not None for v in values), f"{where}: no value for {q}"


def _prom_get(w: World, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    status, body = http_get(f"{w.prom.url}{path}?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    data = json.loads(body)["data"]
    return data if isinstance(data, list) else data["result"]  # /series: a list of label sets


@pytest.mark.parametrize(("where", "query"), _variable_queries("prometheus"))
def test_prometheus_variable_query_has_values(world: World, where: str, query: str) -> None:
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
    assert m, query
    selector, label = _expand(m.group(1), _prom_values(world)), m.group(2)
    result = _prom_get(
        world, "/api/v1/series", {"match[]": selector, "start": str(time.time() - 3600)}
    )
    assert {s[label] for s in result if label in s}, where


@pytest.mark.parametrize(
    ("where", "ptype", "target"), PROM_TARGETS, ids=[w for w, _, _ in PROM_TARGETS]
)
def test_prometheus_target_returns_data(
    world: World, where: str, ptype: str, target: dict[str, Any]
) -> None:
    expr = _expand(target["expr"], _prom_values(world))
    now = time.time()
    if target["instant"]:
        result = _prom_get(world, "/api/v1/query", {"query": expr, "time": str(now)})
        values = [float(r["value"][1]) for r in result]
    else:
        # A 1 s step: the test's data span only some seconds (Grafana's step would be ~2 s for
        # 1 h at its default 1,500-2,000 points; the query is the same).
        params = {"query": expr, "start": str(now - 300), "end": str(now), "step": "1"}
        result = _prom_get(world, "/api/v1/query_range", params)
        values = [float(v[1]) for r in result for v in r["values"]]
    assert any(not math.isnan(v) for v in values), f"{where}: no value for {expr}"


def test_energy_dashboard_targets_are_run() -> None:
    # The Energy dashboard's targets are in the parametrised lists above, so each one runs.
    for kind, targets in (("influxdb", INFLUX_TARGETS), ("prometheus", PROM_TARGETS)):
        mine = [w for w, _, _ in targets if w.startswith(f"wattspan-energy-{kind}/")]
        assert len(mine) >= 12, mine


def test_energy_active_power_is_node_power_minus_idle(world: World) -> None:
    """This host runs the power model, whose idle figure is what the agent charges as idle:
    the dashboard's active power must then be the model's node power minus that figure, in
    every interval whose ticks all have a ``process_energy`` interval (the first tick has
    none, and a tick that missed its neighbour is left out by the agent)."""
    d = DASHBOARDS["wattspan-energy-influxdb"]
    (panel,) = [p for p in d["panels"] if p["title"] == "Node, active and idle power"]
    queries = {t["alias"]: t["query"] for t in panel["targets"]}
    values = _influx_values(world)

    def per_interval(q: str) -> dict[int, float]:
        (s,) = _series(world.influx.query(_expand(q, values), db=DB, epoch="ms"))
        return {row[0]: row[1] for row in s["values"] if row[1] is not None}

    where = "\"host\" = 'node-a' AND time > now() - 1h GROUP BY time(10s)"

    def whole() -> bool:
        model_ticks = per_interval(f'SELECT count("power_watts") FROM "power_model" WHERE {where}')
        energy_ticks = per_interval(
            f'SELECT count("power_watts") FROM "process_energy" WHERE "pid" = \'other\' AND {where}'
        )
        # Intervals still being written are left out too: their counts can be caught apart,
        # and even equal counts can be (a tick's process rows in, its "other" row and model
        # sample not yet: a CI run read 0.94 W against 0.77). The exporter writes in time
        # order, so an interval with a later one in the store is complete.
        newest = max(model_ticks, default=0)
        out = [
            t for t, n in energy_ticks.items() if n > 0 and model_ticks.get(t) == n and t < newest
        ]
        found.append(out)
        return bool(out)

    found: list[list[int]] = []
    wait_for(whole, 30, "a whole 10 s interval of energy with a later one written")
    node = per_interval(queries["node $tag_host (estimated)"])
    idle = per_interval(queries["idle $tag_host (estimated)"])
    active = per_interval(queries["active $tag_host"])
    for t in found[-1]:
        assert active[t] == pytest.approx(node[t] - idle[t], rel=1e-6, abs=1e-9), t


# -- annotations, the rollup and the derived ML measurements -------------------------------


def _annotations(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{uid}/{a['name']}", a)
        for uid, d in DASHBOARDS.items()
        if kind in d["tags"] and uid not in OWN_WORLD
        for a in d["annotations"]["list"]
    ]


def test_pipelines_and_ml_dashboards_annotate_runs() -> None:
    for kind in ("influxdb", "prometheus"):
        where = {w.split("/")[0] for w, _ in _annotations(kind)}
        assert where == {f"wattspan-pipelines-{kind}", f"wattspan-ml-runs-{kind}"}


@pytest.mark.parametrize(("where", "ann"), _annotations("influxdb"))
def test_influx_annotation_returns_runs(world: World, where: str, ann: dict[str, Any]) -> None:
    data = world.influx.query(_expand(ann["query"], _influx_values(world)), db=DB, epoch="ms")
    tags = {s["tags"][ann["tagsColumn"]] for s in _series(data) if s["values"][0][1] is not None}
    assert tags and tags <= set(world.runs), where


@pytest.mark.parametrize(("where", "ann"), _annotations("prometheus"))
def test_prometheus_annotation_returns_runs(world: World, where: str, ann: dict[str, Any]) -> None:
    expr = _expand(ann["expr"], _prom_values(world))
    now = time.time()
    params = {"query": expr, "start": str(now - 300), "end": str(now), "step": "1"}
    result = _prom_get(world, "/api/v1/query_range", params)
    assert {r["metric"]["run"] for r in result} == set(world.runs), where


def test_rollup_matches_the_raw_spans(world: World) -> None:
    """spans_1m holds what the raw spans hold, summed per stage: counts, CPU seconds, energy."""
    where = 'time > now() - 1h GROUP BY "service", "span_name"'
    raw = world.influx.query(
        'SELECT count("duration_seconds"), sum("cpu_seconds"), sum("process_energy_joules"), '
        f'max("duration_seconds") FROM "spans" WHERE {where}',
        db=DB,
    )
    rolled = world.influx.query(
        'SELECT sum("count"), sum("cpu_seconds"), sum("process_energy_joules"), '
        f'max("duration_max_seconds") FROM "spans_1m" WHERE {where}',
        db=DB,
    )

    def by_stage(data: dict[str, Any]) -> dict[tuple[str, str], list[float]]:
        return {
            (s["tags"]["service"], s["tags"]["span_name"]): s["values"][0][1:]
            for s in _series(data)
        }

    want, got = by_stage(raw), by_stage(rolled)
    assert set(want) == set(got) == {("plain-otel", "outer"), ("plain-otel", "inner")}
    for k, w in want.items():
        assert got[k][0] == w[0] == (2 if k[1] == "outer" else 6)
        assert got[k][1:] == pytest.approx(w[1:], rel=1e-9)


@pytest.mark.parametrize(
    ("title", "field"),
    [("Slowest spans", "duration_seconds"), ("Costliest spans", "process_energy_joules")],
)
def test_top_span_tables_match_the_raw_spans(world: World, title: str, field: str) -> None:
    """The tables read spans_top, written by the agent; their rows are the spans top()
    over the raw spans returns, with the same trace and span ids."""
    d = DASHBOARDS["wattspan-pipelines-influxdb"]
    (panel,) = [p for p in d["panels"] if p["title"] == title]
    values = _influx_values(world)
    del values["span_name"]  # every stage: the table lists outer and inner spans
    query = _expand(panel["targets"][0]["query"].replace("$span_name", ".*"), values)
    assert '"spans_top"' in query
    got = _series(world.influx.query(query, db=DB))
    want = _series(world.influx.query(
        f'SELECT top("{field}", 20), "trace_id", "span_id" FROM "spans" '
        "WHERE time > now() - 1h", db=DB))  # fmt: skip
    assert len(got) == len(want) == 1

    def rows(s: dict[str, Any], *cols: str) -> set[tuple[Any, ...]]:
        return {tuple(r[s["columns"].index(c)] for c in cols) for r in s["values"]}

    name = {"duration_seconds": "duration", "process_energy_joules": "energy"}[field]
    expected = rows(want[0], "top", "trace_id", "span_id")
    assert rows(got[0], name, "trace_id", "span_id") == expected
    assert len(expected) == 8  # both runs' outer and inner spans


def test_time_and_energy_to_accuracy(world: World) -> None:
    """Each run reaches 0.6 at its second accuracy point: after the first inner span and
    its 0.25 s pause, with energy spent in between."""
    d = DASHBOARDS["wattspan-ml-runs-influxdb"]
    got = {}
    for title in ("Time to accuracy", "Energy to accuracy"):
        (p,) = [p for p in d["panels"] if p["title"] == title]
        data = world.influx.query(_expand(p["targets"][0]["query"], _influx_values(world)), db=DB)
        got[title] = {s["tags"]["run"]: s["values"][0][1] for s in _series(data)}
    assert set(got["Time to accuracy"]) == set(world.runs)
    for run in world.runs:
        # The second inner span burns 0.1 s of CPU after a 0.25 s sleep; the first record of
        # the run is its first accuracy point.
        assert 0.3 <= got["Time to accuracy"][run] < 5.0, got
        assert got["Energy to accuracy"][run] > 0.0, got


def test_hyperparameters_and_confusion_cells_arrive(world: World) -> None:
    rows = world.influx.rows(DB, "ml_param")
    assert {(r["param"], r["value"]) for r in rows} == {
        ("lr", "0.01"), ("batch_size", "32"), ("optimizer", "adam")}  # fmt: skip
    cells = {
        (r["actual"], r["predicted"]): r["value"] for r in world.influx.rows(DB, "ml_confusion")
    }
    assert cells == {("cat", "cat"): 5, ("cat", "dog"): 1, ("dog", "cat"): 2, ("dog", "dog"): 7}
    result = world.prom.query("last_over_time(wattspan_ml_param_info[1h])")
    assert {(r["metric"]["param"], r["metric"]["value"]) for r in result} == {
        ("lr", "0.01"), ("batch_size", "32"), ("optimizer", "adam")}  # fmt: skip
