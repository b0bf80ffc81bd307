"""A host's idle power as ``wattspan calibrate`` measured it, kept in the state directory.

Apart from :mod:`wattspan.agent.idle` so that the agent reads it at start without loading
numpy (which comes with the first span).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True, slots=True)
class Calibration:
    """What ``wattspan calibrate`` measured: mean primary-domain power over ``seconds`` of a
    node whose CPUs were ``busy_ratio`` busy on average (0..1)."""

    host: str
    idle_watts: float
    domains: list[str]
    seconds: float
    busy_ratio: float
    measured_at: float
    quiet: bool

    def save(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / CALIBRATION_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, state_dir: Path, host: str) -> Calibration | None:
        """The host's calibration, or None when there is none (or it is for another host,
        or unreadable: a stale or broken file must not stop the agent)."""
        try:
            raw: dict[str, Any] = json.loads((state_dir / CALIBRATION_FILE).read_text("utf-8"))
            cal = cls(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if cal.host != host or not (0.0 <= cal.idle_watts < 1e6):
            return None
        return cal
