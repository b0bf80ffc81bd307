"""``[exporters.influxdb]`` parsing: defaults, validation errors, secrets, registry."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import tomllib
from pathlib import Path

import pytest

from tests.servers import unused_url
from wattspan.agent import exporters
from wattspan.agent.delivery import FsyncPolicy
from wattspan.agent.errors import ConfigError
from wattspan.agent.exporters.influxdb import (
    InfluxDBConfig,
    InfluxDBExporter,
    from_config,
    parse_config,
)
from wattspan.agent.exporters.influxdb.config import INT_RANGES, SECONDS_RANGES, SIZE_RANGES
from wattspan.collectors.base import Sample

STATE = Path("/var/lib/wattspan")

ISSUE_EXAMPLE = """
[exporters.influxdb]
url = "http://127.0.0.1:8086"
api = "v1"                 # "v1": /write with database (+ retention_policy, username, password)
database = "wattspan"      # "v2": /api/v2/write with org, bucket, token or token_file
"""


def test_issue_example_parses_with_documented_defaults():
    section = tomllib.loads(ISSUE_EXAMPLE)["exporters"]["influxdb"]
    c = parse_config(section, state_dir=STATE, env={})
    assert (c.url, c.api, c.database) == ("http://127.0.0.1:8086", "v1", "wattspan")
    assert c.queue_dir == STATE / "influxdb"
    assert c.batch_size == 5000 and c.flush_interval == 1.0 and c.timeout == 10.0
    assert c.gzip is False and c.precision == "ns"
    assert c.fsync == FsyncPolicy("batch")
    assert c.max_queue_bytes == 256 * 1024 * 1024
    assert c.field_tags == ("trace_id", "span_id", "parent_span_id")
    assert c.endpoint == "http://127.0.0.1:8086/write"


def test_full_v2_config():
    c = parse_config(
        {
            "url": "https://influx.example:8086/",
            "api": "v2",
            "org": "lab",
            "bucket": "energy",
            "token": "s3cr3t",
            "batch_size": 1000,
            "flush_interval": 0.5,
            "gzip": True,
            "precision": "ms",
            "timeout": 3,
            "tags": {"cluster": "a", "rack": 7},
            "field_tags": ["trace_id"],
            "queue_dir": "q/influx",
            "max_queue_bytes": "1GiB",
            "fsync": 200,
            "retry_initial_interval": 0.2,
            "retry_max_interval": 10,
        },
        state_dir=STATE,
        env={},
    )
    assert c.url == "https://influx.example:8086" and c.endpoint.endswith("/api/v2/write")
    assert c.token is not None and c.token.reveal() == "s3cr3t"
    assert c.tags == {"cluster": "a", "rack": "7"}
    assert c.queue_dir == STATE / "q/influx"
    assert c.max_queue_bytes == 1024**3
    assert c.fsync == FsyncPolicy("interval", 0.2)


def test_api_inferred_from_keys():
    assert parse_config({"bucket": "b"}, state_dir=STATE, env={}).api == "v2"
    assert parse_config({"database": "d"}, state_dir=STATE, env={}).api == "v1"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"database": "d", "flush_intervall": 1}, "exporters.influxdb.flush_intervall"),
        ({"api": "v3", "database": "d"}, "exporters.influxdb.api"),
        ({"api": "v1"}, "exporters.influxdb.database"),
        ({"api": "v2", "org": "o"}, "exporters.influxdb.bucket"),
        ({"api": "v1", "database": "d", "token": "t"}, "exporters.influxdb.token"),
        ({"api": "v2", "bucket": "b", "database": "d"}, "exporters.influxdb.database"),
        ({"database": "d", "url": "ftp://x"}, "exporters.influxdb.url"),
        ({"database": "d", "url": "http://u:p@host:8086"}, "exporters.influxdb.url"),
        ({"database": "d", "batch_size": 0}, "exporters.influxdb.batch_size"),
        ({"database": "d", "batch_size": "10"}, "exporters.influxdb.batch_size"),
        ({"database": "d", "flush_interval": -1}, "exporters.influxdb.flush_interval"),
        ({"database": "d", "gzip": "yes"}, "exporters.influxdb.gzip"),
        ({"database": "d", "precision": "n"}, "exporters.influxdb.precision"),
        ({"database": "d", "fsync": "sometimes"}, "exporters.influxdb.fsync"),
        ({"database": "d", "max_queue_bytes": "lots"}, "exporters.influxdb.max_queue_bytes"),
        ({"database": "d", "max_queue_bytes": 1000}, "exporters.influxdb.max_queue_bytes"),
        ({"database": "d", "tags": ["a"]}, "exporters.influxdb.tags"),
        ({"database": "d", "password": "p"}, "exporters.influxdb.username"),
        (
            {"database": "d", "retry_initial_interval": 5, "retry_max_interval": 1},
            "exporters.influxdb.retry_max_interval",
        ),
        ({"bucket": "b", "token": "t", "token_file": "/x"}, "exporters.influxdb.token"),
        ({"bucket": "b", "token_file": "/nonexistent/token"}, "exporters.influxdb.token_file"),
    ],
)
def test_invalid_config_names_the_key(section, key):
    with pytest.raises(ConfigError) as info:
        parse_config(section, state_dir=STATE, env={})
    assert info.value.key == key


def test_token_sources_in_order(tmp_path):
    tf = tmp_path / "token"
    tf.write_text("from-file\n")
    env = {"WATTSPAN_INFLUXDB_TOKEN": "from-wattspan-env", "INFLUX_TOKEN": "from-influx-env"}
    t = lambda section, env: parse_config(section, state_dir=STATE, env=env).token  # noqa: E731
    assert t({"bucket": "b", "token": "inline"}, env).reveal() == "inline"
    assert t({"bucket": "b", "token_file": str(tf)}, env).reveal() == "from-file"
    assert t({"bucket": "b"}, env).reveal() == "from-wattspan-env"
    assert t({"bucket": "b"}, {"INFLUX_TOKEN": "from-influx-env"}).reveal() == "from-influx-env"
    assert t({"bucket": "b"}, {}) is None


def test_password_sources(tmp_path):
    pf = tmp_path / "pw"
    pf.write_text("pw-file")
    c = parse_config(
        {"database": "d", "username": "u", "password_file": str(pf)}, state_dir=STATE, env={}
    )
    assert c.password is not None and c.password.reveal() == "pw-file"
    c = parse_config(
        {"database": "d"},
        state_dir=STATE,
        env={"INFLUXDB_USERNAME": "u", "INFLUXDB_PASSWORD": "pw-env"},
    )
    assert c.username == "u" and c.password is not None and c.password.reveal() == "pw-env"


def test_empty_token_file_is_an_error(tmp_path):
    tf = tmp_path / "token"
    tf.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        parse_config({"bucket": "b", "token_file": str(tf)}, state_dir=STATE, env={})


def test_secrets_never_in_repr_or_logs(tmp_path, caplog):
    secret = "hunter2-very-secret"
    c = parse_config(
        {
            "url": unused_url(),
            "database": "d",
            "username": "u",
            "password": secret,
            "queue_dir": str(tmp_path / "q"),
            "retry_initial_interval": 0.01,
            "retry_max_interval": 0.02,
        },
        state_dir=tmp_path,
        env={},
    )
    assert secret not in repr(c) and secret not in str(c.password)
    with caplog.at_level(logging.DEBUG):
        exp = InfluxDBExporter(c, host="h")
        try:
            assert secret not in repr(exp)
            exp.write([Sample("m", 1.0, {}, {"v": 1})])
            deadline = time.monotonic() + 30  # bounds a hang only
            while exp.stats()["retries_total"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert secret not in str(exp.stats())
        finally:
            exp.close(0)
    assert caplog.records  # the failure was logged...
    assert all(secret not in r.getMessage() for r in caplog.records)  # ...without the secret
    v2 = parse_config({"bucket": "b", "token": secret}, state_dir=STATE, env={})
    assert secret not in repr(v2)


def test_registry_builds_influxdb_and_rejects_unknown(tmp_path):
    assert "influxdb" in exporters.available()
    sink = exporters.build(
        "influxdb", {"url": unused_url(), "database": "d"}, state_dir=tmp_path, host="n1"
    )
    try:
        assert isinstance(sink, InfluxDBExporter)
        assert sink.config.queue_dir == tmp_path / "influxdb"
        assert sink.name == "influxdb"
    finally:
        sink.close(0)
    with pytest.raises(ConfigError) as info:
        exporters.build("graphite", {}, state_dir=tmp_path, host="n1")
    assert info.value.key == "exporters.graphite"


def test_build_all_closes_built_exporters_on_error(tmp_path):
    cfg = tomllib.loads(
        f"""
        [exporters.influxdb]
        url = "{unused_url()}"
        database = "d"
        [exporters.nope]
        """
    )["exporters"]
    with pytest.raises(ConfigError):
        exporters.build_all(cfg, state_dir=tmp_path, host="n1")
    # The influxdb exporter built first was closed: its queue directory is free again.
    sink = from_config({"url": unused_url(), "database": "d"}, state_dir=tmp_path, host="n1")
    sink.close(0)


def test_build_all_skips_a_disabled_table_but_still_checks_names(tmp_path):
    on = {"url": unused_url(), "database": "d"}
    sinks = exporters.build_all(
        {"influxdb": {**on, "enabled": False}}, state_dir=tmp_path, host="n1"
    )
    assert sinks == []
    (sink,) = exporters.build_all(
        {"influxdb": {**on, "enabled": True}}, state_dir=tmp_path, host="n1"
    )
    try:
        assert sink.name == "influxdb"
    finally:
        sink.close(0)
    with pytest.raises(ConfigError):
        exporters.build_all({"nope": {"enabled": False}}, state_dir=tmp_path, host="n1")


# --- every numeric key has a finite documented range --------------------------------------

_BASE = {"database": "d"}


def _error(section: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config({**_BASE, **section}, state_dir=STATE, env={})
    return info.value


def test_every_numeric_key_has_a_range():
    numeric = {
        f.name
        for f in dataclasses.fields(InfluxDBConfig)
        if f.type in ("int", "float") and f.name != "gzip"
    }
    ranged = set(SECONDS_RANGES) | set(SIZE_RANGES) | set(INT_RANGES)
    assert numeric == ranged
    doc = (Path(__file__).parent.parent / "docs" / "influxdb.md").read_text()
    for key in ranged:
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{key}` |"))
        assert "[" in row or "between" in row, f"{key}: no range in docs/influxdb.md"


@pytest.mark.parametrize(
    ("key", "lo", "hi"),
    [(k, lo, hi) for k, (lo, hi) in {**SECONDS_RANGES, **INT_RANGES, **SIZE_RANGES}.items()],
)
def test_numeric_bounds_are_inclusive_and_enforced(key, lo, hi):
    # retry_initial_interval <= retry_max_interval must hold at either bound
    extra = {
        "retry_max_interval": {"retry_initial_interval": lo},
        "retry_initial_interval": {"retry_max_interval": hi},
    }.get(key, {})
    for ok in (lo, hi):
        parse_config({**_BASE, **extra, key: ok}, state_dir=STATE, env={})
    step = 1 if isinstance(lo, int) else lo / 2 or 0.5
    for bad in (lo - step, hi + (1 if isinstance(hi, int) else hi)):
        e = _error({**extra, key: bad})
        assert e.key == f"exporters.influxdb.{key}"


ABSURD = [
    ("timeout", 1e12),
    ("timeout", math.inf),
    ("timeout", -math.inf),
    ("timeout", math.nan),
    ("timeout", 0),
    ("timeout", "10"),
    ("flush_interval", 1e-9),  # would spin the delivery thread
    ("flush_interval", math.nan),
    ("retry_initial_interval", 0),
    ("retry_max_interval", 1e12),
    ("close_timeout", -1),
    ("close_timeout", math.inf),
    ("batch_size", 10**20),
    ("batch_size", -1),
    ("batch_size", 2.5),
    ("batch_size", True),
    ("max_metric_tags", 65),
    ("max_metric_tags", -1),
    ("max_queue_bytes", -5),
    ("max_queue_bytes", "-1KiB"),
    ("max_queue_bytes", "1.5"),  # half a byte
    ("max_queue_bytes", 1.5e9),  # a float is not a byte count
    ("max_queue_bytes", "99999TiB"),
    ("max_queue_bytes", math.inf),
    ("max_batch_bytes", "0.1KiB"),
    ("max_batch_bytes", 0),
    ("segment_bytes", 10),
    ("max_dead_letter_bytes", "nanMiB"),
    ("fsync", math.inf),
    ("fsync", 1e12),
    ("fsync", math.nan),
    ("fsync", -1),
    ("fsync", "1e400ms"),
    ("fsync", 0.001),
    ("url", "http://127.0.0.1:99999"),
    ("url", "http://127.0.0.1:0"),
    ("url", "http://127.0.0.1:port"),
    ("url", "http://[::1"),
    ("url", "http://[::1]:-1"),
    ("url", "http://host name:8086"),
    ("url", "http://:8086"),
    ("url", "http://h\n:8086"),
    ("tags", {"x": math.nan}),
    ("metric_tags_allow", "*"),
    ("metric_tags_deny", [""]),
    ("field_tags", [1]),
]


@pytest.mark.parametrize(("key", "value"), ABSURD, ids=[f"{k}={v!r}" for k, v in ABSURD])
def test_absurd_values_are_config_errors_naming_the_key(key, value):
    e = _error({key: value})
    assert e.key == f"exporters.influxdb.{key}" or e.key.startswith(f"exporters.influxdb.{key}.")
    assert "\n" not in str(e) and len(str(e)) < 300  # one clear line


def test_url_errors_do_not_repeat_credentials():
    for url in ("http://u:hunter2@[::1", "ftp://u:hunter2@h", "http://u:hunter2@h:99999"):
        e = _error({"url": url})
        assert e.key == "exporters.influxdb.url" and "hunter2" not in str(e)


def test_bounds_themselves_are_safe_to_run_with(tmp_path):
    """The largest accepted durations reach socket timeouts and timed waits: they must not
    overflow there (1e12 did) or stop close() from returning."""
    exp = from_config(
        {
            "url": unused_url(),
            "database": "d",
            "timeout": 3600,
            "flush_interval": 3600,
            "retry_initial_interval": 3600,
            "retry_max_interval": 3600,
            "fsync": 3_600_000,
            "queue_dir": str(tmp_path / "q"),
        },
        state_dir=tmp_path,
        host="n1",
    )
    try:
        exp.write([Sample("m", 1.0, {}, {"v": 1})])
        exp.flush(0.5)  # one attempt at the unreachable server, then a 1 h backoff
        deadline = time.monotonic() + 30  # bounds a hang only
        while exp.stats()["retries_total"] < 1:
            assert time.monotonic() < deadline, exp.stats()
            time.sleep(0.02)
        assert exp.stats()["state"] == "retrying"
    finally:
        t = time.monotonic()
        exp.close(0)
    assert time.monotonic() - t < 10  # close cut the hour-long backoff short


def _unwritable_dirs(tmp_path: Path) -> list[tuple[str, Path]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [("under a regular file", blocker / "queue")]
    if os.geteuid() == 0:
        # root ignores file modes; sysfs refuses mkdir to everyone.
        cases.append(("permission denied", Path("/sys/wattspan-test-queue")))
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append(("permission denied", locked / "queue"))
    return cases


def test_queue_dir_that_cannot_be_created_is_a_config_error(tmp_path):
    for what, path in _unwritable_dirs(tmp_path):
        with pytest.raises(ConfigError) as info:
            from_config(
                {"url": unused_url(), "database": "d", "queue_dir": str(path)},
                state_dir=tmp_path,
                host="n1",
            )
        e = info.value
        assert e.key == "exporters.influxdb.queue_dir", what
        assert str(path) in str(e) and "\n" not in str(e), what
        assert e.__cause__ is None and e.__suppress_context__, what  # no chained traceback
