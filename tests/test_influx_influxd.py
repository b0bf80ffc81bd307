"""InfluxDB exporter against a real influxd 1.x (API v1): values, failures, crashes."""

from __future__ import annotations

import json
import logging
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.procs import kill_when_counted
from tests.servers import unused_url
from wattspan.collectors.base import Sample

pytest_plugins = ["tests.fixtures_influx"]
pytestmark = pytest.mark.server

T0 = 1_700_000_000.0  # fixed base timestamp (s): exact expectations, no clock involved


def _ns(ts: float) -> int:
    return int(ts * 1_000_000_000)


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll until ``predicate()``; the timeout only bounds a hang, it is not a measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_v1_every_point_arrives_with_exact_values_and_tags(
    influxd_server, influx_database, influx_exporter_factory
):
    exp = influx_exporter_factory(url=influxd_server.url, database=influx_database, host="node-7")
    samples = []
    for i in range(1200):
        ts = T0 + i * 0.001
        samples.append(
            Sample(
                "cpu",
                ts,
                {"cpu": str(i % 4)},
                {
                    "user": i / 7,
                    "idle": 1.0 - i / 10_000,
                    "ticks": i * 1_000_003,
                    "busy": i % 2 == 0,
                },
            )
        )
        samples.append(
            Sample(
                "spans",
                ts,
                {"run": "r1", "span": "load data"},
                {"duration_seconds": i * 0.25, "trace_id": f"{i:032x}", "note": f'say "hi" {i}'},
            )
        )
    exp.write(samples[:1000])
    exp.write(samples[1000:])
    assert exp.drain(60), exp.stats()

    cpu = {(r["time"], r["cpu"]): r for r in influxd_server.rows(influx_database, "cpu")}
    assert len(cpu) == 1200
    for i in range(1200):
        r = cpu[(_ns(T0 + i * 0.001), str(i % 4))]
        assert r["host"] == "node-7"
        assert r["user"] == i / 7
        assert r["idle"] == 1.0 - i / 10_000
        assert r["ticks"] == i * 1_000_003
        assert r["busy"] is (i % 2 == 0)
    spans = influxd_server.rows(influx_database, "spans")
    assert len(spans) == 1200
    by_time = {r["time"]: r for r in spans}
    r = by_time[_ns(T0 + 0.005)]
    assert r["span"] == "load data" and r["run"] == "r1" and r["host"] == "node-7"
    assert r["trace_id"] == f"{5:032x}"  # a field, not a tag
    assert r["note"] == 'say "hi" 5'
    keys = influxd_server.query('SHOW TAG KEYS FROM "spans"', db=influx_database)
    tag_keys = {v[0] for v in keys["results"][0]["series"][0]["values"]}
    assert tag_keys == {"host", "run", "span"}
    fields = influxd_server.query('SHOW FIELD KEYS FROM "cpu"', db=influx_database)
    types = dict(map(tuple, fields["results"][0]["series"][0]["values"]))
    assert types == {"user": "float", "idle": "float", "ticks": "integer", "busy": "boolean"}

    st = exp.stats()
    # Beside every sample: the spans' one-minute rollup (spans_1m), one point per write and
    # touched minute, counted as records like any other.
    assert st["rollup_spans_total"] == 1200 and st["rollup_points_total"] >= 2
    assert st["sent_records_total"] == 2400 + st["rollup_points_total"]
    assert st["written_records_total"] == 2400 + st["rollup_points_total"]
    assert st["queued_records"] == 0
    assert st["state"] == "ok"
    assert st["dropped_records_total"] == 0


def test_nan_and_inf_fields_are_dropped_and_counted(
    influxd_server, influx_database, influx_exporter_factory
):
    exp = influx_exporter_factory(url=influxd_server.url, database=influx_database)
    exp.write(
        [
            Sample("gpu", T0, {"gpu": "0"}, {"power_watts": float("nan"), "util": 0.5}),
            Sample("gpu", T0 + 1, {"gpu": "0"}, {"power_watts": float("inf")}),
            Sample("gpu", T0 + 2, {"gpu": "0"}, {"power_watts": 300.0, "util": float("-inf")}),
        ]
    )
    assert exp.drain(30)
    rows = sorted(influxd_server.rows(influx_database, "gpu"), key=lambda r: r["time"])
    assert [(r["time"], r["power_watts"], r["util"]) for r in rows] == [
        (_ns(T0), None, 0.5),
        (_ns(T0 + 2), 300.0, None),
    ]
    st = exp.stats()
    assert st["dropped_fields_total"] == 3
    assert st["dropped_records_total"] == 1  # the point left without fields
    assert st["sent_records_total"] == 2


def test_rejected_batch_goes_to_dead_letter_and_later_batches_flow(
    influxd_server, influx_database, influx_exporter_factory, caplog
):
    exp = influx_exporter_factory(url=influxd_server.url, database=influx_database)
    exp.write([Sample("m", T0, {}, {"f": 1.5})])
    assert exp.drain(30)
    # Same field as a string: influxd answers 400 "partial write: field type conflict".
    with caplog.at_level(logging.ERROR, logger="wattspan.agent.exporters.influxdb"):
        exp.write([Sample("m", T0 + 1, {}, {"f": "oops"}), Sample("m", T0 + 2, {}, {"g": 7})])
        assert exp.drain(30)
    exp.write([Sample("m", T0 + 3, {}, {"f": 2.5})])
    assert exp.drain(30)

    entries = [json.loads(line) for line in exp.dead_letter_path.read_text().splitlines()]
    assert len(entries) == 1
    e = entries[0]
    assert e["status"] == 400 and e["records"] == 2
    assert "field type conflict" in e["reason"]
    assert 'm,host=testhost f="oops"' in e["line_protocol"]
    rows = influxd_server.rows(influx_database, "m")
    assert {r["time"]: r["f"] for r in rows if r["f"] is not None} == {
        _ns(T0): 1.5,
        _ns(T0 + 3): 2.5,
    }
    st = exp.stats()
    assert st["dead_lettered_records_total"] == 2
    assert st["sent_records_total"] == 2
    assert st["queued_records"] == 0
    assert st["state"] == "ok"
    errors = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(errors) == 1 and str(exp.dead_letter_path) in errors[0].getMessage()


def test_413_splits_batches_and_dead_letters_single_oversized_point(
    influxd_factory, influx_exporter_factory
):
    server = influxd_factory(max_body_size=4000)
    server.create_database("db")
    exp = influx_exporter_factory(
        url=server.url, database="db", batch_size=400, max_batch_bytes=1 << 20
    )
    samples = [
        Sample("big", T0 + i, {"k": "v"}, {"x": float(i), "pad": "p" * 40}) for i in range(300)
    ]
    exp.write(samples)
    exp.write([Sample("huge", T0, {}, {"blob": "b" * 10_000})])
    exp.write([Sample("after", T0, {}, {"ok": 1})])
    assert exp.drain(60), exp.stats()
    assert server.count("db", "big", "x") == 300
    assert server.count("db", "after", "ok") == 1
    assert server.count("db", "huge", "blob") == 0
    entries = [json.loads(x) for x in exp.dead_letter_path.read_text().splitlines()]
    assert [(e["status"], e["records"]) for e in entries] == [(413, 1)]
    st = exp.stats()
    assert st["sent_records_total"] == 301
    assert st["dead_lettered_records_total"] == 1


def test_outage_of_30s_every_point_arrives_exactly_once(
    influxd_factory, influx_exporter_factory, caplog
):
    server = influxd_factory()
    server.create_database("db")
    exp = influx_exporter_factory(url=server.url, database="db", batch_size=200)
    written = 0
    stop = threading.Event()

    def producer() -> None:
        nonlocal written
        while not stop.is_set():
            batch = [
                Sample(
                    "power_model", T0 + (written + j) * 0.001, {"node": "n"}, {"seq": written + j}
                )
                for j in range(50)
            ]
            exp.write(batch)
            written += len(batch)
            time.sleep(0.02)

    t = threading.Thread(target=producer)
    with caplog.at_level(logging.INFO, logger="wattspan.agent.exporters.influxdb"):
        t.start()
        try:
            _wait_for(lambda: exp.stats()["sent_records_total"] >= 500, what="first deliveries")
            server.stop()
            _wait_for(lambda: exp.stats()["state"] == "retrying", what="retrying state")
            time.sleep(30)  # the required outage
            st = exp.stats()
            assert st["state"] == "retrying"
            assert st["queued_records"] > 0
            retries_during_outage = st["retries_total"]
            server.start()
            time.sleep(0.5)
        finally:
            stop.set()
            t.join()
        assert exp.drain(60), exp.stats()

    assert server.count("db", "power_model", "seq") == written
    rows = server.query('SELECT COUNT(DISTINCT("seq")) FROM "power_model"', db="db")
    assert rows["results"][0]["series"][0]["values"][0][1] == written
    st = exp.stats()
    assert st["sent_records_total"] == written
    assert st["state"] == "ok"
    assert retries_during_outage >= 3  # several failed requests...
    messages = [r.getMessage() for r in caplog.records]
    unreachable = [m for m in messages if "unreachable" in m]
    recovered = [m for m in messages if "delivering again" in m]
    assert len(unreachable) == 1, messages  # ...but one log line for the change of state
    assert "queuing on disk" in unreachable[0]
    assert len(recovered) == 1, messages


CHILD = textwrap.dedent(
    """
    import sys
    from wattspan.agent.exporters.influxdb import InfluxDBExporter, parse_config
    from wattspan.collectors.base import Sample
    url, queue_dir = sys.argv[1], sys.argv[2]
    cfg = parse_config({"url": url, "database": "db", "batch_size": 100, "flush_interval": 0.01,
                        "queue_dir": queue_dir, "retry_initial_interval": 0.05,
                        "retry_max_interval": 0.2}, state_dir=queue_dir, env={})
    exp = InfluxDBExporter(cfg, host="child")
    seq = 0
    while True:
        exp.write([Sample("rapl", 1.7e9 + (seq + j) * 1e-3, {"domain": "package-0"},
                          {"seq": seq + j, "energy_joules_total": (seq + j) * 0.5})
                   for j in range(20)])
        seq += 20
        print(seq, flush=True)
    """
)


def test_sigkill_mid_stream_loses_no_acknowledged_point(
    influxd_factory, influx_exporter_factory, tmp_path
):
    server = influxd_factory()
    server.create_database("db")
    queue_dir = tmp_path / "child-queue"
    # Killed mid-stream: delivery is running and a good part is still queued.
    acked = kill_when_counted(CHILD, [server.url, str(queue_dir)], 20_000)
    assert acked >= 20_000
    delivered_before = server.count("db", "rapl", "seq")
    assert delivered_before > 0  # the child was delivering when it died

    exp = influx_exporter_factory(url=server.url, database="db", queue_dir=str(queue_dir))
    assert exp.drain(120), exp.stats()
    acked_rows = server.query(f'SELECT COUNT("seq") FROM "rapl" WHERE "seq" < {acked}', db="db")
    assert acked_rows["results"][0]["series"][0]["values"][0][1] == acked
    total = server.count("db", "rapl", "seq")
    # At most the one write() in progress at the kill is there beyond the acknowledged ones.
    assert acked <= total <= acked + 20
    rows = server.rows("db", "rapl")
    assert all(r["energy_joules_total"] == r["seq"] * 0.5 and r["host"] == "child" for r in rows)


def test_disk_quota_drops_oldest_keeps_running_delivers_newest(
    influxd_factory, influx_exporter_factory
):
    server = influxd_factory()
    server.create_database("db")
    exp = influx_exporter_factory(
        url=server.url, database="db", max_queue_bytes=65536, batch_size=50, fsync="none"
    )
    server.stop()
    n = 0
    for _ in range(200):
        exp.write(
            [
                Sample("memory", T0 + (n + j) * 0.001, {}, {"seq": n + j, "pad": "x" * 60})
                for j in range(10)
            ]
        )
        n += 10
    st = exp.stats()
    assert st["queue_bytes"] <= 65536
    dropped = st["dropped_records_total"]
    assert dropped > 0
    assert st["queued_records"] == n - dropped
    server.start()
    assert exp.drain(60), exp.stats()
    got = sorted(r["seq"] for r in server.rows("db", "memory"))
    st = exp.stats()
    # Whatever was not counted as dropped arrived, and it is the newest data.
    assert len(got) == n - st["dropped_records_total"]
    assert got == list(range(n - len(got), n))
    assert st["sent_records_total"] == len(got)


def test_close_keeps_undelivered_data_for_next_start(
    influxd_factory, influx_exporter_factory, tmp_path
):
    server = influxd_factory()
    server.create_database("db")
    queue_dir = str(tmp_path / "q")
    server.stop()
    exp = influx_exporter_factory(url=server.url, database="db", queue_dir=queue_dir)
    exp.write([Sample("process", T0 + i, {"pid": "1"}, {"rss_bytes": i}) for i in range(100)])
    exp.close(0.2)
    assert exp.stats()["queued_records"] == 100
    server.start()
    exp2 = influx_exporter_factory(url=server.url, database="db", queue_dir=queue_dir)
    assert exp2.stats()["queued_records"] == 100
    assert exp2.drain(30)
    assert server.count("db", "process", "rss_bytes") == 100


def test_unreachable_server_reports_state_and_last_error(influx_exporter_factory):
    exp = influx_exporter_factory(url=unused_url(), database="db")
    exp.write([Sample("cpu", T0, {}, {"x": 1.0})])
    _wait_for(lambda: exp.stats()["retries_total"] >= 2, what="retries")
    st = exp.stats()
    assert st["state"] == "retrying"
    assert "ConnectionRefusedError" in st["last_error"]
    assert st["queued_records"] == 1
    assert st["sent_records_total"] == 0


def test_create_database_on_404(influxd_factory, influx_exporter_factory):
    server = influxd_factory()
    exp = influx_exporter_factory(url=server.url, database="fresh", create_database=True)
    exp.write([Sample("cpu", T0, {}, {"x": 1.0})])
    assert exp.drain(30), exp.stats()
    assert server.count("fresh", "cpu", "x") == 1


def test_gzip_and_precision(influxd_server, influx_database, influx_exporter_factory):
    exp = influx_exporter_factory(
        url=influxd_server.url, database=influx_database, gzip=True, precision="ms"
    )
    exp.write([Sample("rapl", T0 + 0.123456, {"domain": "dram"}, {"j": 1.0})])
    assert exp.drain(30)
    rows = influxd_server.rows(influx_database, "rapl")
    assert [r["time"] for r in rows] == [int((T0 + 0.123456) * 1000) * 1_000_000]


def test_queue_dir_can_not_be_shared(
    influxd_server, influx_database, influx_exporter_factory, tmp_path
):
    from wattspan.agent.delivery import QueueLockedError

    q = str(tmp_path / "shared")
    influx_exporter_factory(url=influxd_server.url, database=influx_database, queue_dir=q)
    with pytest.raises(QueueLockedError):
        influx_exporter_factory(url=influxd_server.url, database=influx_database, queue_dir=q)


def test_dead_letter_file_is_in_queue_dir(influx_exporter_factory, tmp_path):
    exp = influx_exporter_factory(url=unused_url(), database="db", queue_dir=str(tmp_path / "qq"))
    assert exp.dead_letter_path == Path(tmp_path / "qq" / "deadletter.jsonl")
