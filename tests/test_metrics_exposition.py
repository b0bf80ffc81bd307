"""/metrics stays valid and bounded whatever attributes clients send with their metrics."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from tests.procs import require_binary
from wattspan.agent.exporters import prometheus
from wattspan.collectors.base import Sample


class _Fixed(Collector):
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def collect(self):  # type: ignore[no-untyped-def]
        return prometheus._families(self.samples)


def _exposition(samples: list[Sample]) -> str:
    reg = CollectorRegistry()
    reg.register(_Fixed(samples))
    return generate_latest(reg).decode()


def test_attribute_keys_become_valid_label_names_and_promtool_agrees() -> None:
    hostile = {"name": "ml.loss", "0digit": "a", "__reserved": "b", "dash-ed.key": "c", "": "d"}
    text = _exposition([Sample("ml", 1.0, hostile, {"value": 0.5})])
    p = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr + text
    line = next(x for x in text.splitlines() if x.startswith("wattspan_ml_value{"))
    for label in ("attr_0digit=", "attr_reserved=", "dash_ed_key=", "name="):
        assert label in line


def test_client_series_are_capped_and_the_rest_counted() -> None:
    n = prometheus.MAX_CLIENT_SERIES + 500
    samples = [
        Sample("metrics", 1.0, {"name": "req", "id": str(i)}, {"value": i}) for i in range(n)
    ]
    samples.append(Sample("cpu", 1.0, {"cpu": "total"}, {"user_seconds_total": 1.0}))
    text = _exposition(samples)
    shown = [x for x in text.splitlines() if x.startswith("wattspan_metrics_value{")]
    assert len(shown) == prometheus.MAX_CLIENT_SERIES
    assert "wattspan_exposition_client_series_dropped 500.0" in text
    assert "wattspan_cpu_user_seconds_total{" in text  # node series are never capped
