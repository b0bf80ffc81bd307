"""Where a running agent listens, for ``wattspan status``: ``STATE_DIR/agent.json``.

With ``metrics.port = 0`` (or ``--metrics-port 0``) the kernel picks the port, and the
config alone cannot say which; the agent writes what it bound (pid, config source, the
``/metrics`` URL and the OTLP endpoint) when it has started, owner-only and atomically, and
removes the file when it stops. A file left by an agent that died is ignored: its pid is
gone, or is another program's (the start time is compared too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from wattspan.agent.pids import stat_field
from wattspan.agent.private import make_private_dirs, open_private

log = logging.getLogger("wattspan.endpoints")

FILE = "agent.json"


def record(state_dir: Path, config_source: str, metrics_url: str | None, otlp: str | None) -> None:
    """Write this process's endpoints; a state dir that cannot be written is one warning."""
    body = {
        "pid": os.getpid(),
        # The start time (/proc/PID/stat field 22) tells a pid reused by another program
        # apart from the agent's.
        "started": stat_field(os.getpid(), 22),
        "config": config_source,
        "metrics_url": metrics_url,
        "otlp_endpoint": otlp,
    }
    path = state_dir / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}")
    try:
        make_private_dirs(state_dir)
        fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot record the agent's endpoints in %s (wattspan status): %s", path, exc)


def forget(state_dir: Path) -> None:
    """Remove the record if it is this process's (a newer agent's stays)."""
    path = state_dir / FILE
    rec = _read(path)
    if rec is not None and rec.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()


def lookup(state_dir: Path, config_source: str) -> dict[str, Any] | None:
    """The record of a live agent started with the same config, else None."""
    rec = _read(state_dir / FILE)
    if rec is None or rec.get("config") != config_source:
        return None
    pid = rec.get("pid")
    if not isinstance(pid, int):
        return None
    started = stat_field(pid, 22)
    return rec if started is not None and started == rec.get("started") else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def source_of(source: str) -> str:
    """A config's identity in the record: ``Config.source`` (a path, or ``defaults``) with
    the path made absolute, so an agent and a status run from another folder agree."""
    return source if source == "defaults" else str(Path(source).resolve())
