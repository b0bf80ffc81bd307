"""pytest fixtures for the InfluxDB exporter tests (real influxd / VictoriaMetrics).

Test modules load them with ``pytest_plugins = ["tests.fixtures_influx"]``; a conftest may
instead ``from tests.fixtures_influx import *``. Fixtures:

* ``influxd_server`` (session): one shared influxd 1.x; tests use their own databases and
  must not stop it.
* ``influx_database`` (function): a fresh database name on ``influxd_server``.
* ``influxd_factory`` (function): ``influxd_factory(**kw) -> InfluxD``, private servers a
  test may stop/restart/kill; all torn down after the test.
* ``victoria_metrics_server`` (session): one shared VictoriaMetrics.
* ``influx_exporter_factory`` (function): ``factory(url=..., database=..., **config) ->
  InfluxDBExporter`` with test-friendly defaults; closes them after the test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import INFLUXD, VICTORIA_METRICS, InfluxD, VictoriaMetrics, which
from wattspan.agent.exporters.influxdb import InfluxDBExporter, parse_config

_db_counter = itertools.count()


def _require(binary: str) -> None:
    # As everywhere in this suite: CI installs the servers (.ci/run), so absence is an error.
    if which(binary) is None:
        raise RuntimeError(f"{binary} is not installed; run .ci/run or install the Debian package")


@pytest.fixture(scope="session")
def influxd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxD]:
    _require(INFLUXD)
    with InfluxD(tmp_path_factory.mktemp("influxd-shared")) as server:
        yield server


@pytest.fixture
def influx_database(influxd_server: InfluxD) -> str:
    name = f"t{next(_db_counter)}"
    influxd_server.create_database(name)
    return name


@pytest.fixture
def influxd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., InfluxD]]:
    _require(INFLUXD)
    servers: list[InfluxD] = []

    def make(**kwargs: Any) -> InfluxD:
        server = InfluxD(tmp_path_factory.mktemp("influxd"), **kwargs)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="session")
def victoria_metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    _require(VICTORIA_METRICS)
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria-metrics")) as server:
        yield server


#: Defaults that keep tests fast: small batches, short intervals, quick retries.
TEST_DEFAULTS: dict[str, Any] = {
    "api": "v1",
    "batch_size": 500,
    "flush_interval": 0.05,
    "timeout": 5.0,
    "retry_initial_interval": 0.05,
    "retry_max_interval": 0.5,
    "close_timeout": 5.0,
}


@pytest.fixture
def influx_exporter_factory(tmp_path: Path) -> Iterator[Callable[..., InfluxDBExporter]]:
    made: list[InfluxDBExporter] = []
    counter = itertools.count()

    def make(*, host: str = "testhost", start: bool = True, **section: Any) -> InfluxDBExporter:
        cfg = {**TEST_DEFAULTS, **section}
        if cfg.get("api") == "v2":
            cfg.pop("database", None)
        cfg.setdefault("queue_dir", str(tmp_path / f"queue{next(counter)}"))
        config = parse_config(cfg, state_dir=tmp_path, env={})
        exporter = InfluxDBExporter(config, host=host, start=start)
        made.append(exporter)
        return exporter

    try:
        yield make
    finally:
        for e in made:
            e.close(0)
