"""``[exporters.influxdb]`` configuration: parsing, validation, secrets.

Every key, its unit and default is listed in docs/influxdb.md. Unknown keys are errors (a
typo such as ``flush_intervall`` must not silently fall back to a default).
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from wattspan.agent.delivery import FsyncPolicy
from wattspan.agent.errors import ConfigError
from wattspan.agent.exporters.influxdb.lineprotocol import PRECISIONS

SECTION = "exporters.influxdb"

#: Environment variables consulted, in order, when the config holds no secret.
TOKEN_ENV = ("WATTSPAN_INFLUXDB_TOKEN", "INFLUX_TOKEN")
USERNAME_ENV = ("WATTSPAN_INFLUXDB_USERNAME", "INFLUXDB_USERNAME")
PASSWORD_ENV = ("WATTSPAN_INFLUXDB_PASSWORD", "INFLUXDB_PASSWORD")


class Secret:
    """A string that never shows up in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only to be put into a request header."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class InfluxDBConfig:
    """Validated exporter settings. Durations in seconds, sizes in bytes."""

    url: str = "http://127.0.0.1:8086"
    api: str = "v1"
    # v1 (/write)
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    create_database: bool = False
    # v2 (/api/v2/write)
    org: str | None = None
    bucket: str | None = None
    token: Secret | None = field(default=None, repr=False)
    # batching and encoding
    batch_size: int = 5000
    max_batch_bytes: int = 4 * 1024 * 1024
    flush_interval: float = 1.0
    gzip: bool = False
    precision: str = "ns"
    timeout: float = 10.0
    tags: Mapping[str, str] = field(default_factory=dict)
    field_tags: tuple[str, ...] = ("trace_id", "span_id", "parent_span_id")
    # which attributes of metric points are tags (the rest are string fields)
    metric_tags_allow: tuple[str, ...] = ("*",)
    metric_tags_deny: tuple[str, ...] = ()
    max_metric_tags: int = 16
    # queue and retry
    queue_dir: Path = Path("influxdb")
    max_queue_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 8 * 1024 * 1024
    fsync: FsyncPolicy = field(default_factory=FsyncPolicy)
    retry_initial_interval: float = 1.0
    retry_max_interval: float = 30.0
    max_dead_letter_bytes: int = 64 * 1024 * 1024
    close_timeout: float = 5.0
    # derived measurements (agent/exporters/influxdb/rollup.py, progress.py)
    rollup: bool = True
    rollup_max_minutes: int = 5_000
    ml_progress: bool = True

    @property
    def endpoint(self) -> str:
        """The write URL without credentials or query string (safe to log)."""
        path = "/write" if self.api == "v1" else "/api/v2/write"
        return self.url.rstrip("/") + path


_DEFAULTS = InfluxDBConfig()

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4
#: (minimum, maximum) of every numeric key; each is checked at load (docs/influxdb.md).
#: The bounds are what works, not what is sensible: they exist so that a typo (1e12, inf,
#: a negative size) is an error naming the key instead of an overflow in a socket or
#: timer call deep in the delivery thread, a busy loop, or a retry that never comes.
SECONDS_RANGES: dict[str, tuple[float, float]] = {
    "flush_interval": (0.001, 3600.0),
    "timeout": (0.01, 3600.0),
    "retry_initial_interval": (0.001, 3600.0),
    "retry_max_interval": (0.001, 3600.0),
    "close_timeout": (0.0, 3600.0),
}
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "max_batch_bytes": (1 * KIB, 256 * MIB),
    "max_queue_bytes": (64 * KIB, 1 * TIB),
    "segment_bytes": (4 * KIB, 1 * GIB),
    "max_dead_letter_bytes": (4 * KIB, 1 * TIB),
}
INT_RANGES: dict[str, tuple[int, int]] = {
    "batch_size": (1, 1_000_000),
    "max_metric_tags": (0, 64),
    "rollup_max_minutes": (16, 10_000_000),
}
#: ``fsync = N``: milliseconds between background fsyncs.
FSYNC_MS_RANGE = (1.0, 3_600_000.0)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}


def _fmt_size(n: int) -> str:
    for unit, name in ((TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)


def parse_size(value: object, key: str, limits: tuple[int, int] = (1, TIB)) -> int:
    """Bytes from an int or a string such as ``"256MiB"``/``"1GB"``, within ``limits``
    (inclusive); a fraction of a byte (``"1.5"``) is an error."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        # Fraction, not float: "0.1KiB" must not become 102.40000000000001 bytes.
        exact = Fraction(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
        if exact.denominator != 1:
            raise ConfigError(key, f"{value!r} is not a whole number of bytes")
        n = int(exact)
    else:
        raise ConfigError(
            key, f'expected a size in bytes (e.g. 268435456 or "256MiB"), got {value!r}'
        )
    lo, hi = limits
    if not lo <= n <= hi:
        raise ConfigError(
            key, f"must be between {_fmt_size(lo)} and {_fmt_size(hi)}, got {value!r}"
        )
    return n


def _size(section: Mapping[str, Any], name: str, default: int) -> int:
    return parse_size(section.get(name, default), f"{SECTION}.{name}", SIZE_RANGES[name])


def _str(section: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = section.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{SECTION}.{name}", f"expected a string, got {type(value).__name__}")
    return value


def _seconds(section: Mapping[str, Any], name: str, default: float) -> float:
    value = section.get(name, default)
    lo, hi = SECONDS_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{SECTION}.{name}", f"expected a number of seconds, got {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(
            f"{SECTION}.{name}",
            f"must be a finite number of seconds in [{lo:g}, {hi:g}], got {value!r}",
        )
    return float(value)


def _int(section: Mapping[str, Any], name: str, default: int) -> int:
    value = section.get(name, default)
    lo, hi = INT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{SECTION}.{name}", f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{SECTION}.{name}", f"must be an integer in [{lo}, {hi}], got {value}")
    return value


def _str_list(section: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = section.get(name, list(default))
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) and x for x in value):
        raise ConfigError(f"{SECTION}.{name}", "expected a list of non-empty strings")
    return tuple(value)


def _url(section: Mapping[str, Any]) -> str:
    """The server base URL. Error messages never repeat the URL: it may hold credentials."""
    key = f"{SECTION}.url"
    url = _str(section, "url", _DEFAULTS.url) or ""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ConfigError(key, "must not contain spaces or control characters")
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port  # parsed lazily: "Port out of range", "could not be cast"
    except ValueError as e:
        raise ConfigError(key, f"not a valid URL ({e})") from None
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(key, f"expected an http:// or https:// URL, got {parsed.scheme!r}")
    if not parsed.hostname:
        raise ConfigError(key, "the URL has no host")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(key, f"port must be in [1, 65535], got {port}")
    if parsed.username or parsed.password:
        raise ConfigError(key, "put credentials in username/password or token, not in the URL")
    if parsed.query or parsed.fragment:
        raise ConfigError(key, "must not contain a query string or fragment")
    return url.rstrip("/")


def _bool(section: Mapping[str, Any], name: str, default: bool) -> bool:
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{SECTION}.{name}", f"expected true or false, got {value!r}")
    return value


def _secret(
    section: Mapping[str, Any],
    name: str,
    env_names: tuple[str, ...],
    env: Mapping[str, str],
) -> Secret | None:
    """``name`` from the config, else the file named by ``name_file``, else the env vars."""
    inline = section.get(name)
    file_key = f"{name}_file"
    path = section.get(file_key)
    if inline is not None and path is not None:
        raise ConfigError(f"{SECTION}.{name}", f"set either {name} or {file_key}, not both")
    if inline is not None:
        if not isinstance(inline, str):
            raise ConfigError(f"{SECTION}.{name}", "expected a string")
        return Secret(inline)
    if path is not None:
        if not isinstance(path, str):
            raise ConfigError(f"{SECTION}.{file_key}", "expected a file path")
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as e:
            # The message names the file, never its content.
            raise ConfigError(
                f"{SECTION}.{file_key}", f"cannot read {path}: {e.strerror}"
            ) from None
        if not text:
            raise ConfigError(f"{SECTION}.{file_key}", f"{path} is empty")
        return Secret(text)
    for var in env_names:
        value = env.get(var)
        if value:
            return Secret(value)
    return None


#: Keys that only the v1 (``/write``) or only the v2 (``/api/v2/write``) API takes.
_V1_ONLY_KEYS = (
    "database",
    "retention_policy",
    "username",
    "password",
    "password_file",
    "create_database",
)
_V2_ONLY_KEYS = ("org", "bucket", "token", "token_file")
# Every setting of InfluxDBConfig, plus the files that may hold its secrets.
_KNOWN_KEYS = frozenset(f.name for f in fields(InfluxDBConfig)) | {"password_file", "token_file"}


def parse_config(
    section: Mapping[str, Any],
    *,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
) -> InfluxDBConfig:
    """Validate an ``[exporters.influxdb]`` table; raise :class:`ConfigError` on any problem.

    ``env`` defaults to ``os.environ`` (secret fallbacks); ``queue_dir`` defaults to
    ``state_dir/influxdb``, and a relative ``queue_dir`` is taken relative to ``state_dir``.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(SECTION, "expected a table")
    env = os.environ if env is None else env
    unknown = sorted(set(section) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{SECTION}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})"
        )

    url = _url(section)

    api = _str(section, "api")
    if api is None:
        # Inferred from the keys present; explicit is better, but a v1-only config that
        # names a database should not need to also say "v1".
        api = "v2" if ("bucket" in section or "org" in section) else "v1"
    if api not in ("v1", "v2"):
        raise ConfigError(f"{SECTION}.api", f'expected "v1" or "v2", got {api!r}')

    database = _str(section, "database")
    bucket = _str(section, "bucket")
    org = _str(section, "org")
    if api == "v1":
        if not database:
            raise ConfigError(f"{SECTION}.database", 'required with api = "v1"')
        for k in _V2_ONLY_KEYS:
            if k in section:
                raise ConfigError(f"{SECTION}.{k}", 'only valid with api = "v2"')
    else:
        if not bucket:
            raise ConfigError(f"{SECTION}.bucket", 'required with api = "v2"')
        for k in _V1_ONLY_KEYS:
            if k in section:
                raise ConfigError(f"{SECTION}.{k}", 'only valid with api = "v1"')

    username = _str(section, "username")
    password = token = None
    if api == "v1":
        if username is None:
            username = next((env[v] for v in USERNAME_ENV if env.get(v)), None)
        password = _secret(section, "password", PASSWORD_ENV, env)
        if password is not None and not username:
            raise ConfigError(f"{SECTION}.username", "a password is set but no username")
    else:
        token = _secret(section, "token", TOKEN_ENV, env)

    precision = _str(section, "precision", "ns") or ""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"{SECTION}.precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}"
        )

    tags_raw = section.get("tags", {})
    if not isinstance(tags_raw, Mapping):
        raise ConfigError(f"{SECTION}.tags", "expected a table of tag = value")
    tags: dict[str, str] = {}
    for k, v in tags_raw.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool) or not str(k):
            raise ConfigError(f"{SECTION}.tags.{k}", "expected a string value")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{SECTION}.tags.{k}", f"expected a string value, got {v!r}")
        tags[str(k)] = str(v)

    field_tags_raw = _str_list(section, "field_tags", _DEFAULTS.field_tags)

    queue_dir_raw = section.get("queue_dir")
    if queue_dir_raw is None:
        queue_dir = Path(state_dir) / "influxdb"
    elif isinstance(queue_dir_raw, str) and queue_dir_raw:
        queue_dir = Path(state_dir) / Path(queue_dir_raw).expanduser()
    else:
        raise ConfigError(f"{SECTION}.queue_dir", "expected a directory path")

    try:
        fsync = FsyncPolicy.parse(section.get("fsync", "batch"))
    except ValueError as e:
        raise ConfigError(f"{SECTION}.fsync", str(e)) from None
    if fsync.mode == "interval":
        lo, hi = FSYNC_MS_RANGE
        ms = fsync.interval * 1000.0
        if not (math.isfinite(ms) and lo <= ms <= hi):
            raise ConfigError(
                f"{SECTION}.fsync",
                f'milliseconds must be in [{lo:.0f}, {hi:.0f}] (or "batch", "none"), '
                f"got {section.get('fsync')!r}",
            )

    max_queue_bytes = _size(section, "max_queue_bytes", _DEFAULTS.max_queue_bytes)
    retry_initial = _seconds(section, "retry_initial_interval", _DEFAULTS.retry_initial_interval)
    retry_max = _seconds(section, "retry_max_interval", _DEFAULTS.retry_max_interval)
    if retry_max < retry_initial:
        raise ConfigError(f"{SECTION}.retry_max_interval", "must be >= retry_initial_interval")

    return InfluxDBConfig(
        url=url,
        api=api,
        database=database,
        retention_policy=_str(section, "retention_policy"),
        username=username,
        password=password,
        create_database=_bool(section, "create_database", False),
        org=org,
        bucket=bucket,
        token=token,
        batch_size=_int(section, "batch_size", _DEFAULTS.batch_size),
        max_batch_bytes=_size(section, "max_batch_bytes", _DEFAULTS.max_batch_bytes),
        flush_interval=_seconds(section, "flush_interval", _DEFAULTS.flush_interval),
        gzip=_bool(section, "gzip", False),
        precision=precision,
        timeout=_seconds(section, "timeout", _DEFAULTS.timeout),
        tags=tags,
        field_tags=field_tags_raw,
        metric_tags_allow=_str_list(section, "metric_tags_allow", _DEFAULTS.metric_tags_allow),
        metric_tags_deny=_str_list(section, "metric_tags_deny", _DEFAULTS.metric_tags_deny),
        max_metric_tags=_int(section, "max_metric_tags", _DEFAULTS.max_metric_tags),
        queue_dir=queue_dir,
        max_queue_bytes=max_queue_bytes,
        segment_bytes=_size(section, "segment_bytes", _DEFAULTS.segment_bytes),
        fsync=fsync,
        retry_initial_interval=retry_initial,
        retry_max_interval=retry_max,
        max_dead_letter_bytes=_size(
            section, "max_dead_letter_bytes", _DEFAULTS.max_dead_letter_bytes
        ),
        close_timeout=_seconds(section, "close_timeout", _DEFAULTS.close_timeout),
        rollup=_bool(section, "rollup", _DEFAULTS.rollup),
        rollup_max_minutes=_int(section, "rollup_max_minutes", _DEFAULTS.rollup_max_minutes),
        ml_progress=_bool(section, "ml_progress", _DEFAULTS.ml_progress),
    )
