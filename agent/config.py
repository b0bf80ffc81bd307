"""Agent configuration: TOML file, then ``WATTSPAN_<SECTION>__<KEY>`` environment overrides.

Every key is validated here; an invalid value raises :class:`ConfigError` naming the dotted
key. Exporter sections are validated by each exporter's own ``from_config``.
"""

from __future__ import annotations

import os

from wattspan.agent.errors import ConfigError

# ``wattspan run`` loads the config before it starts its command: nothing here imports what
# only the agent needs (typing, dataclasses, pathlib and socket cost milliseconds each).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    Check = Callable[[str, Any], Any]

_INF = float("inf")
DEFAULT_METRICS_PORT = 9879  # clear of node_exporter 9100, dcgm 9400, Telegraf 9273, etc.
DEFAULT_OTLP_PORT = 4317


def _bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ConfigError(key, f"expected true or false, got {v!r}")


def _pos(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < _INF:
        raise ConfigError(key, f"expected a positive number, got {v!r}")
    return float(v)


def _within(lo: float, hi: float, *, integer: bool = False, zero: bool = False) -> Check:
    """A number in ``(lo, hi]`` (``[lo, hi]`` when ``lo`` is 0 and ``zero`` allows 0 as
    "off"): finite, so ``inf``, ``nan`` and absurd values fail at load, not in a thread."""
    what = "a whole number" if integer else "a number"

    def check(key: str, v: Any) -> float | int:
        ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok_type:
            raise ConfigError(key, f"expected {what} in ({lo:g}, {hi:g}], got {v!r}")
        if (zero and v == 0) or (lo < v <= hi):
            return int(v) if integer else float(v)
        span = f"[0, {hi:g}]" if zero else f"({lo:g}, {hi:g}]"
        raise ConfigError(key, f"expected {what} in {span}, got {v!r}")

    return check


# Sampling faster than 10 ms costs more than it measures; slower than an hour is no sampling.
INTERVAL = _within(0.01, 3600.0)
TIMEOUT = _within(0.0, 3600.0)


def _port(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise ConfigError(key, f"expected a port number 0..65535, got {v!r}")
    return v


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a string, got {v!r}")
    return v


def _opt_interval(key: str, v: Any) -> float | None:
    return None if v in (None, 0, "auto") else INTERVAL(key, v)


def _opt_watts(key: str, v: Any) -> float | None:
    return None if v in (None, 0, "auto") else _within(0.0, 100_000.0)(key, v)


def _ratio(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise ConfigError(key, f"expected a number between 0 and 1, got {v!r}")
    return float(v)


def _int_list(key: str, v: Any) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and x > 0 for x in v):
        raise ConfigError(key, f"expected a list of process ids, got {v!r}")
    return list(v)


def _choice(*options: str) -> Check:
    def check(key: str, v: Any) -> str:
        if v not in options:
            raise ConfigError(key, f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)

    return check


def _opt_intensity(key: str, v: Any) -> float | None:
    """g CO2e/kWh; unset (None or "auto") falls back to the country's, then the default."""
    return None if v in (None, "auto") else _within(0.0, 2000.0, zero=True)(key, v)


def _pue(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= 5:
        raise ConfigError(key, f"expected a PUE between 1 and 5, got {v!r}")
    return float(v)


def _country(key: str, v: Any) -> str:
    from wattspan.agent.carbon import CarbonError, country

    text = _str(key, v)
    if text:
        try:
            country(text)
        except CarbonError as exc:
            raise ConfigError(key, str(exc)) from None
    return text


SCHEMA: dict[str, dict[str, tuple[Check, Any]]] = {
    "agent": {
        "interval": (INTERVAL, 1.0),
        "host": (_str, ""),
        "state_dir": (_str, ""),
        "log_level": (_choice("debug", "info", "warning", "error"), "info"),
        # The whole stop (flush, exporters, store) within systemd's TimeoutStopSec=30s and
        # Kubernetes' 30 s grace period, with room to spare; undelivered data stays queued.
        "shutdown_timeout_seconds": (TIMEOUT, 20.0),
    },
    "store": {
        "enabled": (_bool, True),
        "path": (_str, ""),
        # Every table: samples, spans, metrics, logs, runs that ended before the horizon.
        # 0 = no age limit (max_bytes may still bound the store).
        "retention_hours": (_within(0.0, 24 * 365 * 10, zero=True), 168.0),
        # 0 = no size bound; else the oldest runs' data is deleted first (and counted).
        "max_bytes": (_within(0, 2**50, integer=True, zero=True), 0),
    },
    "metrics": {
        "enabled": (_bool, True),
        "listen": (_str, "127.0.0.1"),
        "port": (_port, DEFAULT_METRICS_PORT),
        "tls_cert_file": (_str, ""),
        "tls_key_file": (_str, ""),
        "tls_client_ca_file": (_str, ""),
        "bearer_token_file": (_str, ""),
        "bearer_token_env": (_str, ""),
        # (service, span name) series of the span counters; later pairs are counted under
        # span_name="other". 0: no span counters (and no per-span work for them).
        "max_span_series": (_within(0, 100_000, integer=True, zero=True), 500),
    },
    "otlp": {
        "enabled": (_bool, True),
        "listen": (_str, "127.0.0.1"),
        "port": (_port, DEFAULT_OTLP_PORT),
        "max_message_bytes": (_within(1024, 64 * 1024 * 1024, integer=True), 4 * 1024 * 1024),
        "tls_cert_file": (_str, ""),
        "tls_key_file": (_str, ""),
        "tls_client_ca_file": (_str, ""),
        "bearer_token_file": (_str, ""),
        "bearer_token_env": (_str, ""),
        # Wire bytes of requests being decoded and handled at once. Decoded, a request takes
        # up to ~15x its wire size: one largest request (max_message_bytes) at a time keeps
        # the worst legal load under MemoryMax=256M (bench/bench_receiver_rss.py).
        "max_inflight_bytes": (_within(1024, 2**31, integer=True), 4 * 1024 * 1024),
        "max_connections": (_within(0, 100_000, integer=True), 256),
        "max_concurrent_streams": (_within(0, 10_000, integer=True), 16),
        "max_connection_idle_seconds": (TIMEOUT, 300.0),
        "keepalive_time_seconds": (TIMEOUT, 60.0),
        # How far in the future a span's end may be (clock skew between client and node).
        "max_clock_skew_seconds": (TIMEOUT, 60.0),
        # Spans received but not yet attributed; past it new spans are refused (counted).
        "max_pending_spans": (_within(0, 10_000_000, integer=True), 200_000),
        # Process trees clients may ask the agent to watch (each costs a /proc walk a tick).
        "max_watched_processes": (_within(0, 100_000, integer=True), 64),
    },
    # CO2e of energy (agent/carbon.py): the intensity given, else the country's, else the
    # documented world average; PUE scales energy up to what the building drew.
    "carbon": {
        "intensity_g_per_kwh": (_opt_intensity, None),
        "country": (_country, ""),
        "pue": (_pue, 1.0),
    },
    "collectors.cpu": {"enabled": (_bool, True), "percpu": (_bool, True)},
    "collectors.memory": {"enabled": (_bool, True)},
    "collectors.process": {
        "enabled": (_bool, True),
        "pids": (_int_list, []),
        "per_process": (_bool, True),
    },
    "collectors.rapl": {"enabled": (_bool, True), "root": (_str, "/sys/class/powercap")},
    "collectors.nvml": {"enabled": (_bool, True), "interval": (_opt_interval, None)},
    "collectors.node_processes": {
        "enabled": (_bool, True),
        # Each costs one /proc/PID/stat read a tick and up to a point per tick of history.
        "max_processes": (_within(0, 1_000_000, integer=True), 4096),
        # Processes named in process_energy per tick (the rest are summed as "other"); 0: off.
        "top_n": (_within(0, 10_000, integer=True, zero=True), 10),
    },
    "collectors.power_model": {
        "enabled": (_choice("auto", "always", "never"), "auto"),
        "tdp_watts": (_opt_watts, None),
        "idle_fraction": (_ratio, 0.3),
    },
}


class Config:
    """Validated sections (``config["otlp"]["listen"]``), exporter tables and where they
    came from (a file's path or ``"defaults"``)."""

    __slots__ = ("exporters", "sections", "source")

    def __init__(
        self,
        sections: dict[str, dict[str, Any]],
        exporters: dict[str, dict[str, Any]] | None = None,
        source: str = "defaults",
    ) -> None:
        self.sections = sections
        self.exporters = {} if exporters is None else exporters
        self.source = source

    def __repr__(self) -> str:
        return f"Config(source={self.source!r}, sections={self.sections!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return (self.sections, self.exporters, self.source) == (
            other.sections,
            other.exporters,
            other.source,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaced

    def replace(self, **changes: Any) -> Config:
        """A copy with ``sections``, ``exporters`` or ``source`` replaced."""
        kw = {"sections": self.sections, "exporters": self.exporters, "source": self.source}
        kw.update(changes)
        return Config(**kw)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    @property
    def host(self) -> str:
        import socket

        return self.sections["agent"]["host"] or socket.gethostname()

    @property
    def state_dir(self) -> Path:
        from pathlib import Path

        explicit = self.sections["agent"]["state_dir"]
        if explicit:
            return Path(explicit).expanduser()
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "wattspan"


def _flatten(raw: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Split the TOML tree into ``{"collectors.cpu": {...}}`` sections and exporter tables."""
    sections: dict[str, dict[str, Any]] = {}
    exporters: dict[str, Any] = {}
    for top, value in raw.items():
        if top == "exporters":
            if not isinstance(value, dict):
                raise ConfigError("exporters", "expected a table of exporter tables")
            exporters = dict(value)
            continue
        if top == "collectors":
            if not isinstance(value, dict):
                raise ConfigError("collectors", "expected a table of collector tables")
            for name, sub in value.items():
                if not isinstance(sub, dict):
                    raise ConfigError(f"collectors.{name}", "expected a table")
                sections[f"collectors.{name}"] = dict(sub)
            continue
        if not isinstance(value, dict):
            raise ConfigError(top, "expected a table")
        sections[top] = dict(value)
    return sections, exporters


def _parse_env_value(text: str) -> Any:
    """TOML literal if it parses (numbers, booleans, arrays, quoted strings), else a string."""
    try:
        import tomllib  # here: most runs have no config file and no overrides to parse

        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(
    sections: dict[str, dict[str, Any]],
    exporters: dict[str, Any],
    environ: Mapping[str, str],
) -> None:
    for name, text in environ.items():
        if not name.startswith("WATTSPAN_") or "__" not in name:
            continue
        parts = name[len("WATTSPAN_") :].lower().split("__")
        value = _parse_env_value(text)
        if parts[0] == "exporters" and len(parts) == 3:
            exporters.setdefault(parts[1], {})[parts[2]] = value
        elif parts[0] == "collectors" and len(parts) == 3:
            sections.setdefault(f"collectors.{parts[1]}", {})[parts[2]] = value
        elif len(parts) == 2:
            sections.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(name, "environment override must be WATTSPAN_SECTION__KEY")


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (optional), apply environment overrides, validate, fill defaults."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        import tomllib
        from pathlib import Path

        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), f"not valid TOML: {exc}") from None
        source = str(p)
    sections, exporters = _flatten(raw)
    _apply_env(sections, exporters, os.environ if environ is None else environ)
    out: dict[str, dict[str, Any]] = {}
    for section, given in sections.items():
        if section not in SCHEMA:
            raise ConfigError(section, f"unknown section (known: {', '.join(SCHEMA)})")
        for key in given:
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"{section}.{key}", f"unknown key (known: {', '.join(SCHEMA[section])})"
                )
    for section, keys in SCHEMA.items():
        given = sections.get(section, {})
        out[section] = {
            key: check(f"{section}.{key}", given[key]) if key in given else default
            for key, (check, default) in keys.items()
        }
    for name, table in exporters.items():
        if not isinstance(table, dict):
            raise ConfigError(f"exporters.{name}", "expected a table")
    return Config(out, exporters, source)
