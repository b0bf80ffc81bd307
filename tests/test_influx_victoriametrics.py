"""The v2 write path (``/api/v2/write`` through influxdb-client) against VictoriaMetrics.

VictoriaMetrics stores each numeric field as the metric ``<measurement>_<field>`` with the
tags as labels, in milliseconds; it does not keep strings, so only numbers are compared.
"""

from __future__ import annotations

import time

import pytest

from wattspan.collectors.base import Sample

pytest_plugins = ["tests.fixtures_influx"]
pytestmark = pytest.mark.server


def test_v2_write_reaches_victoria_metrics_with_exact_values_and_labels(
    victoria_metrics_server, influx_exporter_factory
):
    vm = victoria_metrics_server
    t0 = float(int(time.time()) - 600)  # recent whole seconds: inside VM's retention
    exp = influx_exporter_factory(
        url=vm.url,
        api="v2",
        org="wattspan",
        bucket="node",
        token="unused-by-vm",
        host="gpu-node-1",
        gzip=True,
        precision="ms",
        batch_size=100,
    )
    samples = []
    for i in range(300):
        ts = t0 + i * 0.5
        samples.append(
            Sample(
                "gpu",
                ts,
                {"gpu": str(i % 2), "pipeline": "train"},
                {"power_watts": 100.0 + i / 8, "memory_used_bytes": 1_000_000 + i, "name": "H100"},
            )
        )
    exp.write(samples)
    assert exp.drain(30), exp.stats()
    st = exp.stats()
    assert st["sent_records_total"] == 300 and st["state"] == "ok"

    series = vm.export('{__name__=~"gpu_.*"}')
    got: dict[tuple[str, str], dict[int, float]] = {}
    for s in series:
        m = s["metric"]
        assert m["host"] == "gpu-node-1" and m["pipeline"] == "train"
        got.setdefault((m["__name__"], m["gpu"]), {}).update(
            zip(s["timestamps"], s["values"], strict=True)
        )
    for i, sample in enumerate(samples):
        ms = int(sample.ts * 1000)
        gpu = str(i % 2)
        assert got[("gpu_power_watts", gpu)][ms] == 100.0 + i / 8
        assert got[("gpu_memory_used_bytes", gpu)][ms] == 1_000_000 + i
    assert sum(len(v) for k, v in got.items() if k[0] == "gpu_power_watts") == 300
    assert sum(len(v) for k, v in got.items() if k[0] == "gpu_memory_used_bytes") == 300
