"""``[exporters.influxdb]`` configuration: parsing, validation, secrets.

Every key, its unit and default is listed in docs/influxdb.md. Unknown keys are errors (a
typo such as ``flush_intervall`` must not silently fall back to a default).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
    # queue and retry
    queue_dir: Path = Path("influxdb")
    max_queue_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 8 * 1024 * 1024
    fsync: FsyncPolicy = field(default_factory=FsyncPolicy)
    retry_initial_interval: float = 1.0
    retry_max_interval: float = 30.0
    max_dead_letter_bytes: int = 64 * 1024 * 1024
    close_timeout: float = 5.0

    @property
    def endpoint(self) -> str:
        """The write URL without credentials or query string (safe to log)."""
        path = "/write" if self.api == "v1" else "/api/v2/write"
        return self.url.rstrip("/") + path


_DEFAULTS = InfluxDBConfig()

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


def parse_size(value: object, key: str) -> int:
    """Bytes from an int or a string such as ``"256MiB"``/``"1GB"``."""
    if isinstance(value, bool):
        raise ConfigError(key, "expected a size in bytes")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        n = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    else:
        raise ConfigError(
            key, f'expected a size in bytes (e.g. 268435456 or "256MiB"), got {value!r}'
        )
    if n <= 0:
        raise ConfigError(key, "must be > 0")
    return n


def _str(section: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = section.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{SECTION}.{name}", f"expected a string, got {type(value).__name__}")
    return value


def _number(
    section: Mapping[str, Any], name: str, default: float, *, allow_zero: bool = False
) -> float:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigError(f"{SECTION}.{name}", f"expected a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise ConfigError(f"{SECTION}.{name}", "must be a finite number > 0")
    return float(value)


def _int(section: Mapping[str, Any], name: str, default: int) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{SECTION}.{name}", f"expected an integer, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{SECTION}.{name}", "must be > 0")
    return value


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

    url = _str(section, "url", _DEFAULTS.url) or ""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{SECTION}.url", f"expected an http(s):// URL, got {url!r}")
    if parsed.username or parsed.password:
        raise ConfigError(
            f"{SECTION}.url", "put credentials in username/password or token, not in the URL"
        )
    if parsed.query or parsed.fragment:
        raise ConfigError(f"{SECTION}.url", "must not contain a query string or fragment")

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
        tags[str(k)] = str(v)

    field_tags_raw = section.get("field_tags", list(_DEFAULTS.field_tags))
    if not isinstance(field_tags_raw, list | tuple) or not all(
        isinstance(x, str) for x in field_tags_raw
    ):
        raise ConfigError(f"{SECTION}.field_tags", "expected a list of tag keys")

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

    max_queue_bytes = parse_size(
        section.get("max_queue_bytes", _DEFAULTS.max_queue_bytes), f"{SECTION}.max_queue_bytes"
    )
    if max_queue_bytes < 64 * 1024:
        raise ConfigError(f"{SECTION}.max_queue_bytes", "must be at least 64KiB")
    retry_initial = _number(section, "retry_initial_interval", _DEFAULTS.retry_initial_interval)
    retry_max = _number(section, "retry_max_interval", _DEFAULTS.retry_max_interval)
    if retry_max < retry_initial:
        raise ConfigError(f"{SECTION}.retry_max_interval", "must be >= retry_initial_interval")

    return InfluxDBConfig(
        url=url.rstrip("/"),
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
        max_batch_bytes=parse_size(
            section.get("max_batch_bytes", _DEFAULTS.max_batch_bytes),
            f"{SECTION}.max_batch_bytes",
        ),
        flush_interval=_number(section, "flush_interval", _DEFAULTS.flush_interval),
        gzip=_bool(section, "gzip", False),
        precision=precision,
        timeout=_number(section, "timeout", _DEFAULTS.timeout),
        tags=tags,
        field_tags=tuple(field_tags_raw),
        queue_dir=queue_dir,
        max_queue_bytes=max_queue_bytes,
        segment_bytes=parse_size(
            section.get("segment_bytes", _DEFAULTS.segment_bytes), f"{SECTION}.segment_bytes"
        ),
        fsync=fsync,
        retry_initial_interval=retry_initial,
        retry_max_interval=retry_max,
        max_dead_letter_bytes=parse_size(
            section.get("max_dead_letter_bytes", _DEFAULTS.max_dead_letter_bytes),
            f"{SECTION}.max_dead_letter_bytes",
        ),
        close_timeout=_number(section, "close_timeout", _DEFAULTS.close_timeout, allow_zero=True),
    )
