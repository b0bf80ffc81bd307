"""Configuration: TOML, environment overrides, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wattspan.agent.config import DEFAULT_METRICS_PORT, load_config
from wattspan.agent.errors import ConfigError


def test_defaults_are_loopback_and_documented_ports() -> None:
    c = load_config(environ={})
    assert c["metrics"]["listen"] == "127.0.0.1"
    assert c["metrics"]["port"] == DEFAULT_METRICS_PORT
    assert c["otlp"]["listen"] == "127.0.0.1"
    assert c["otlp"]["port"] == 4317
    assert c["agent"]["interval"] == 1.0


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text(
        '[agent]\ninterval = 2\n[collectors.rapl]\nroot = "/x"\n'
        '[exporters.influxdb]\nurl = "http://a"\n'
    )
    c = load_config(
        f,
        environ={
            "WATTSPAN_AGENT__INTERVAL": "0.5",
            "WATTSPAN_COLLECTORS__RAPL__ROOT": "/host/sys/class/powercap",
            "WATTSPAN_EXPORTERS__INFLUXDB__DATABASE": "db",
            "WATTSPAN_METRICS__ENABLED": "false",
        },
    )
    assert c["agent"]["interval"] == 0.5
    assert c["collectors.rapl"]["root"] == "/host/sys/class/powercap"
    assert c["metrics"]["enabled"] is False
    assert c.exporters["influxdb"] == {"url": "http://a", "database": "db"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agent]\ninterval = -1\n", "agent.interval"),
        ("[agent]\ninterval = 'fast'\n", "agent.interval"),
        ("[metrics]\nport = 70000\n", "metrics.port"),
        ("[metrics]\nprot = 1\n", "metrics.prot"),
        ("[nosuch]\nx = 1\n", "nosuch"),
        ("[collectors.power_model]\nidle_fraction = 2\n", "collectors.power_model.idle_fraction"),
        ("[collectors.process]\npids = ['a']\n", "collectors.process.pids"),
        # Non-finite and absurd numbers fail at load, not later in a thread.
        ("[agent]\ninterval = inf\n", "agent.interval"),
        ("[agent]\ninterval = nan\n", "agent.interval"),
        ("[agent]\ninterval = 1e10\n", "agent.interval"),
        ("[agent]\nshutdown_timeout_seconds = 1e12\n", "agent.shutdown_timeout_seconds"),
        ("[otlp]\nmax_message_bytes = inf\n", "otlp.max_message_bytes"),
        ("[otlp]\nmax_message_bytes = 0.5\n", "otlp.max_message_bytes"),
        ("[store]\nretention_hours = nan\n", "store.retention_hours"),
        ("[store]\nmax_bytes = -1\n", "store.max_bytes"),
        ("[collectors.nvml]\ninterval = inf\n", "collectors.nvml.interval"),
        ("[collectors.power_model]\ntdp_watts = inf\n", "collectors.power_model.tdp_watts"),
        ("[collectors.power_model]\nidle_fraction = nan\n", "collectors.power_model.idle_fraction"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "w.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    assert err.value.key == key


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f, environ={})


def test_agent_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text("[metrics]\nport = 'x'\n")
    p = subprocess.run(
        [sys.executable, "-m", "wattspan", "agent", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "metrics.port" in lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--interval", "nan", "--", "true"], "--interval"),
        (["run", "--interval", "inf", "--", "true"], "--interval"),
        (["agent", "--interval", "1e10"], "--interval"),
    ],
)
def test_absurd_command_line_numbers_exit_2_naming_the_option(argv: list[str], needle: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "wattspan", *argv], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert needle in last and "expected a number" in last


def test_zero_store_size_bound_means_off() -> None:
    c = load_config(environ={"WATTSPAN_STORE__MAX_BYTES": "0"})
    assert c["store"]["max_bytes"] == 0
    c = load_config(environ={"WATTSPAN_STORE__MAX_BYTES": "1073741824"})
    assert c["store"]["max_bytes"] == 1 << 30
