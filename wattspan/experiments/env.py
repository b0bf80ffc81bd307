"""The environment an experiment ran in, captured once at its start.

``machine`` holds what makes results comparable or not (CPU model and count, memory, kernel,
governor, host, energy source); its fingerprint is checked when an experiment is resumed and
when experiments are put side by side, so results of two machines are never mixed silently.
``software`` (Python and package versions, the git commit of the working directory) is
recorded for the reader but does not block a resume: a rebuilt venv is still the same node.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

#: Packages whose versions are always recorded (when installed).
PACKAGES = ("wattspan", "numpy", "psutil", "pyarrow", "pyspark", "scikit-learn")

#: The machine fields the fingerprint covers.
MACHINE_KEYS = (
    "host",
    "cpu_model",
    "cpu_count",
    "memory_bytes",
    "kernel",
    "governor",
    "energy_source",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _governor() -> str:
    """The frequency governor of every CPU, or ``mixed: a, b`` / ``unknown`` (VMs have none)."""
    base = Path("/sys/devices/system/cpu")
    seen: set[str] = set()
    for p in base.glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            seen.add(p.read_text().strip())
        except OSError:
            continue
    if not seen:
        return "unknown"
    return seen.pop() if len(seen) == 1 else "mixed: " + ", ".join(sorted(seen))


def _git(cwd: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``cwd`` (empty outside one)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _versions(names: Iterable[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def energy_source(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """``rapl``, ``power_model`` (an estimate) or ``none``: what the collectors of this agent
    config would measure energy with on this node."""
    from wattspan.collectors.registry import build_collectors

    names = {c.name for c in build_collectors(sections, process_roots=[])}
    if "rapl" in names:
        return "rapl"
    return "power_model" if "power_model" in names else "none"


def capture(
    sections: Mapping[str, Mapping[str, Any]],
    host: str,
    cwds: Iterable[Path],
    packages: Iterable[str] = (),
) -> dict[str, Any]:
    """The environment, as ``{"machine": {...}, "software": {...}}``."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    machine = {
        "host": host,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "cpu_affinity": affinity,
        "memory_bytes": int(psutil.virtual_memory().total),
        "kernel": platform.release(),
        "os": platform.system(),
        "arch": platform.machine(),
        "governor": _governor(),
        "energy_source": energy_source(sections),
    }
    git = {}
    for cwd in dict.fromkeys(Path(c).resolve() for c in cwds):
        info = _git(cwd)
        if info:
            git[str(cwd)] = info
    software = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "packages": _versions([*PACKAGES, *packages]),
        "git": git,
    }
    return {"machine": machine, "software": software}


def fingerprint(env: Mapping[str, Any]) -> str:
    m = env.get("machine", {})
    picked = {k: m.get(k) for k in MACHINE_KEYS}
    text = json.dumps(picked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``key: A != B`` for each machine field that differs between two environments."""
    ma, mb = a.get("machine", {}), b.get("machine", {})
    return [f"{k}: {ma.get(k)!r} != {mb.get(k)!r}" for k in MACHINE_KEYS if ma.get(k) != mb.get(k)]
